//! One plain HTTP/1.1 request to the management API as guest, for status codes and bodies the
//! client crate does not show.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::TestBroker;

/// Sends `method path` with a JSON `body` as guest; returns the status and the body.
pub async fn request(b: &TestBroker, method: &str, path: &str, body: &str) -> (u16, String) {
    request_to(b.http, method, path, body).await
}

/// A GET of the broker's Prometheus endpoint `path`: the status and the body.
pub async fn scrape(b: &TestBroker, path: &str) -> (u16, String) {
    request_to(b.metrics, "GET", path, "").await
}

async fn request_to(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    request_as(addr, ("guest", "guest"), method, path, body).await
}

/// Sends `method path` with a JSON `body` as `user` with `password`; returns the status and
/// the body.
pub async fn request_as(
    addr: std::net::SocketAddr,
    (user, password): (&str, &str),
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, _, body) = exchange(addr, &request).await;
    (status, body)
}

/// Sends `request` as it is written (it should ask for `Connection: close`); returns the status,
/// the head and the body of the reply.
pub async fn exchange(addr: std::net::SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (status, head.to_owned(), body.to_owned())
}

/// A GET as guest, its body parsed as JSON.
pub async fn get_json(b: &TestBroker, path: &str) -> serde_json::Value {
    let (status, body) = request(b, "GET", path, "").await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}
