//! The web UI: one page, a stylesheet and a script, embedded in the binary and served by the
//! management listener at `/`. The page logs in with HTTP Basic against the API under `/api`,
//! as RabbitMQ's UI does, and draws everything from the API's JSON.

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Api;

/// The page, its stylesheet and its script, as written in `src/management/ui/`.
const INDEX: &str = include_str!("ui/index.html");
const STYLE: &str = include_str!("ui/app.css");
const SCRIPT: &str = include_str!("ui/app.js");

/// The UI's routes.
pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/index.html",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
}

/// A file of the UI. Browsers check it again on every load (it changes with the binary), and it
/// may not be framed by another site's page.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response()
}

/// Keeps the browser's own login dialog away from the UI: a request the page made itself (it
/// says so with `X-Requested-With`) gets its 401 without `WWW-Authenticate`, so the page shows
/// the refusal in its own login form. Other clients still get the challenge.
pub(super) async fn no_browser_prompt(request: Request, next: Next) -> Response {
    let from_page = request.headers().contains_key("x-requested-with");
    let mut response = next.run(request).await;
    if from_page {
        response.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    response
}
