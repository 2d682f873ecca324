//! The management HTTP API: RabbitMQ's paths, methods, JSON and status codes under `/api`, so
//! that rabbitmqadmin, the management clients and provisioning tools work unchanged; and the web
//! UI over it at `/` (`ui`).
//!
//! Requests are authenticated with HTTP Basic against the broker's users (guest stays
//! loopback-only) and authorised by user tag as RabbitMQ does: `management` to see one's own
//! vhosts, `policymaker` for policies and parameters, `monitoring` to see everything,
//! `administrator` for all of it. Nothing here runs on the AMQP hot path: listings take the
//! topology's read locks for as long as a copy takes.

mod channels;
mod convert;
pub mod definitions;
mod list;
pub mod metrics;
mod overview;
mod policies;
mod stats;
mod topology;
mod ui;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt as _;
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::broker::admin::UserRecord;
use crate::broker::manage::ManageError;
use crate::protocol::{ChannelError, code};

/// The largest request body accepted, as RabbitMQ's default `management.http.max_body_size`.
const MAX_BODY: usize = 20 * 1024 * 1024;

/// Shared by every handler.
#[derive(Clone)]
pub(crate) struct Api {
    broker: Arc<Broker>,
}

/// Serves the API and the UI on `listener` (HTTPS with `tls`) until `shutdown` turns true (or
/// its sender goes).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    serve_until(listener, tls, router(broker), shutdown, "management API").await;
}

/// Serves `app` on `listener` (HTTPS with `tls`) until `shutdown`; logs that `what` started, and
/// why if it stops on its own.
pub(crate) async fn serve_until(
    listener: TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    what: &str,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(listen = %addr, tls = tls.is_some(), "{what} started");
    }
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    let served = match tls {
        Some(tls) => {
            // axum gives handlers the peer's address only through a tapped listener.
            let listener = crate::tls::HttpsListener::new(listener, tls).tap_io(|_| {});
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        }
        None => {
            // Replies go out in two writes (head, body): without TCP_NODELAY the second waits
            // for the client's delayed ACK, 40 ms on Linux.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        }
    };
    if let Err(e) = served {
        warn!(cause = %e, "{what} stopped");
    }
}

/// Every route of the API.
fn router(broker: Arc<Broker>) -> Router {
    let api = Router::new()
        .merge(overview::routes())
        .merge(channels::routes())
        .merge(users::routes())
        .merge(topology::routes())
        .merge(policies::routes())
        .merge(definitions::routes())
        .fallback(|| async { ApiError::NotFound });
    Router::new()
        .nest("/api", api)
        .merge(ui::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(ui::no_browser_prompt))
        .with_state(Api { broker })
}

/// What a request can fail with, each answered as RabbitMQ answers it.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// 404 `Object Not Found`.
    NotFound,
    /// 400 `bad_request` with a reason.
    BadRequest(Value),
    /// 400 `invalid_pagination_parameters` with a reason.
    Pagination(String),
    /// 401 with no body, for a request without credentials.
    NoCredentials,
    /// 401 for a login that failed.
    LoginFailed,
    /// 401 for a vhost the user has no permissions in.
    VhostRefused,
    /// 404 for a vhost that does not exist, where a PUT names it.
    VhostNotFound,
    /// 401 for a user whose tags do not allow the request; the reason says which tag it needs.
    NotAuthorised(&'static str),
    /// 401 `Access refused.`, for a resource the user's permissions do not cover.
    AccessRefused,
    /// 500 with a reason.
    Internal(String),
}

impl ApiError {
    /// 400 with a text reason.
    pub(crate) fn bad(reason: impl Into<String>) -> Self {
        Self::BadRequest(Value::String(reason.into()))
    }

    /// The reason as text, for a log or a command line.
    pub(crate) fn reason(&self) -> String {
        match self {
            Self::BadRequest(Value::String(s)) => s.clone(),
            Self::BadRequest(v) => v.to_string(),
            Self::Pagination(s) | Self::Internal(s) => s.clone(),
            Self::NotAuthorised(s) => (*s).to_owned(),
            Self::NotFound => "not found".into(),
            Self::VhostNotFound => "vhost not found".into(),
            Self::NoCredentials | Self::LoginFailed => "login failed".into(),
            Self::VhostRefused | Self::AccessRefused => "access refused".into(),
        }
    }
}

impl From<ManageError> for ApiError {
    fn from(e: ManageError) -> Self {
        match e {
            ManageError::NotFound => Self::NotFound,
            ManageError::BadRequest(r) => Self::bad(r),
            ManageError::Store => Self::Internal("the store could not write the change".into()),
        }
    }
}

impl From<ChannelError> for ApiError {
    /// An AMQP refusal as the management plugin reports it: the text without its code name.
    fn from(e: ChannelError) -> Self {
        let text = &e.0.reply_text;
        let reason = text.split_once(" - ").map_or(text.as_str(), |(_, r)| r);
        match e.code() {
            code::NOT_FOUND => Self::NotFound,
            code::ACCESS_REFUSED => Self::AccessRefused,
            _ => Self::bad(reason),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, reason) = match self {
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                "Object Not Found",
                Value::from("Not Found"),
            ),
            Self::BadRequest(r) => (StatusCode::BAD_REQUEST, "bad_request", r),
            Self::Pagination(r) => (
                StatusCode::BAD_REQUEST,
                "invalid_pagination_parameters",
                Value::from(r),
            ),
            Self::NoCredentials => {
                let mut r = StatusCode::UNAUTHORIZED.into_response();
                r.headers_mut().insert(header::WWW_AUTHENTICATE, realm());
                return r;
            }
            Self::VhostRefused => (
                StatusCode::UNAUTHORIZED,
                "not_authorised",
                Value::from("User not authorised to access virtual host"),
            ),
            Self::VhostNotFound => (
                StatusCode::NOT_FOUND,
                "not_found",
                Value::from("vhost_not_found"),
            ),
            Self::LoginFailed => (
                StatusCode::UNAUTHORIZED,
                "not_authorized",
                Value::from("Login failed"),
            ),
            Self::NotAuthorised(why) => {
                (StatusCode::UNAUTHORIZED, "not_authorised", Value::from(why))
            }
            Self::AccessRefused => (
                StatusCode::UNAUTHORIZED,
                "not_authorised",
                Value::from("Access refused."),
            ),
            Self::Internal(r) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_server_error",
                Value::from(r),
            ),
        };
        let mut response = (
            status,
            axum::Json(json!({"error": error, "reason": reason})),
        )
            .into_response();
        // Only a failed login asks the browser for credentials again.
        if error == "not_authorized" {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, realm());
        }
        response
    }
}

fn realm() -> HeaderValue {
    HeaderValue::from_static("Basic realm=\"RabbitMQ Management\"")
}

/// A handler's result.
pub(crate) type ApiResult = Result<Response, ApiError>;

/// What a user's tags let them do through the API, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Role {
    /// `management`: their own vhosts' objects.
    Management,
    /// `policymaker`: also policies and parameters of their vhosts.
    Policymaker,
    /// `monitoring`: also every vhost's objects, connections and the node.
    Monitoring,
    /// `administrator`: everything.
    Administrator,
}

impl Role {
    /// The highest role a user's tags give, if any.
    fn of(user: &UserRecord) -> Option<Self> {
        if user.has_tag("administrator") {
            Some(Self::Administrator)
        } else if user.has_tag("monitoring") {
            Some(Self::Monitoring)
        } else if user.has_tag("policymaker") {
            Some(Self::Policymaker)
        } else if user.has_tag("management") {
            Some(Self::Management)
        } else {
            None
        }
    }
}

/// The authenticated caller.
pub(crate) struct Caller {
    /// Who they are.
    pub user: UserRecord,
    /// What their tags allow.
    pub role: Role,
}

impl Caller {
    /// Refuses a caller below `role`, with RabbitMQ's reason.
    pub(crate) fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            return Ok(());
        }
        Err(ApiError::NotAuthorised(match role {
            Role::Administrator => "Not administrator user",
            Role::Monitoring => "Not monitor user",
            Role::Policymaker => "Not policymaker user",
            Role::Management => "Not management user",
        }))
    }

    /// Whether the caller may see what is in `vhost`: a monitor or administrator sees every
    /// vhost, anyone else the vhosts they have permissions in.
    pub(crate) fn sees(&self, broker: &Broker, vhost: &str) -> bool {
        self.role >= Role::Monitoring || self.permitted(broker, vhost)
    }

    /// Whether the caller has permissions in `vhost`.
    pub(crate) fn permitted(&self, broker: &Broker, vhost: &str) -> bool {
        broker
            .registry()
            .permissions
            .contains_key(&(vhost.to_owned(), self.user.name.clone()))
    }

    /// Refuses a vhost the caller may not see (401), or one that does not exist (404).
    pub(crate) fn vhost(
        &self,
        broker: &Broker,
        name: &str,
    ) -> Result<Arc<crate::broker::VHost>, ApiError> {
        let vhost = broker.vhost(name).ok_or(ApiError::NotFound)?;
        if !self.sees(broker, name) {
            return Err(ApiError::VhostRefused);
        }
        Ok(vhost)
    }
}

impl FromRequestParts<Api> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Err(ApiError::NoCredentials);
        }
        let (name, password) = basic_credentials(&parts.headers).ok_or(ApiError::LoginFailed)?;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |c| {
                SocketAddr::new(c.0.ip().to_canonical(), c.0.port())
            });
        let user = api
            .broker
            .login_paced(peer.ip(), |b| b.login(&name, &password, peer))
            .await
            .map_err(|_| ApiError::LoginFailed)?;
        let role = Role::of(&user).ok_or(ApiError::NotAuthorised("Not management user"))?;
        Ok(Self { user, role })
    }
}

/// The user and password of an HTTP Basic `Authorization` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Parses a JSON request body into an object; an empty body is an empty object, as RabbitMQ
/// reads it.
pub(crate) fn body_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) | Err(_) => Err(ApiError::bad("not_json")),
    }
}

/// 201 for something created, 204 for something updated, as RabbitMQ answers a PUT.
pub(crate) fn created_or_updated(created: bool) -> Response {
    if created {
        StatusCode::CREATED.into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

/// 204.
pub(crate) fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// A JSON 200.
pub(crate) fn json_ok(value: Value) -> Response {
    axum::Json(value).into_response()
}
