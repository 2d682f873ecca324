//! The real binary's log: what an operator needs is there (startup summary, connections opened
//! and closed with the client's name, channel errors with code, text and method), in text or
//! as JSON lines, and it cannot be forged by what clients send: control characters in client
//! text (here a user name with a newline and an ANSI escape) are escaped.

mod common;

use common::http::request_as;
use common::process::{
    Process, free_port, serve_args, set_arg, start_logged, start_logged_args, start_logged_with,
};
use common::raw::Raw;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

/// Connects as `name`, makes one channel error (a passive declare of a missing queue), closes,
/// and returns the broker's log.
async fn a_session(warren: Process, port: u16, name: &str) -> String {
    let conn = Connection::connect(
        &format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        ConnectionProperties::default().with_client_property("connection_name".into(), name.into()),
    )
    .await
    .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let missing = ch
        .queue_declare(
            "no-such-queue".into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    assert!(
        missing.is_err(),
        "a passive declare of a missing queue fails"
    );
    conn.close(200, "bye".into()).await.expect("close");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    String::from_utf8_lossy(&warren.log()).into_owned()
}

/// The one line of `log` that contains `what`.
fn line<'a>(log: &'a str, what: &str) -> &'a str {
    let found: Vec<&str> = log.lines().filter(|l| l.contains(what)).collect();
    assert_eq!(found.len(), 1, "one line with {what:?}: {log}");
    found[0]
}

#[tokio::test]
async fn the_log_says_what_started_who_connected_and_what_failed() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let warren = start_logged_with(dir.path(), port, &[]).await;
    let log = a_session(warren, port, "orders-service").await;
    let started = line(&log, "warren started");
    for field in [
        "listeners=amqp=127.0.0.1:",
        "data_dir=",
        "memory_budget=",
        "queues=0",
    ] {
        assert!(started.contains(field), "{field} in {started}");
    }
    let opened = line(&log, "connection opened");
    assert!(opened.contains("client=orders-service"), "{opened}");
    assert!(opened.contains("user=guest"), "{opened}");
    let error = line(&log, "channel error");
    for field in [
        "code=404",
        "method=\"queue.declare\"",
        "no queue 'no-such-queue'",
    ] {
        assert!(error.contains(field), "{field} in {error}");
    }
    let closed = line(&log, "connection closed");
    assert!(closed.contains("client=orders-service"), "{closed}");
}

#[tokio::test]
async fn with_log_format_json_every_line_is_a_json_object() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let warren = start_logged_with(dir.path(), port, &["--log-format", "json"]).await;
    let log = a_session(warren, port, "billing").await;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let event = |message: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} in {log}"))
    };
    assert_eq!(event("connection opened")["fields"]["client"], "billing");
    assert_eq!(event("connection opened")["level"], "INFO");
    let error = &event("channel error")["fields"];
    assert_eq!(error["code"], 404);
    assert_eq!(error["method"], "queue.declare");
    assert!(
        event("warren started")["fields"]["listeners"]
            .as_str()
            .is_some_and(|l| l.starts_with("amqp="))
    );
}

#[tokio::test]
async fn a_user_name_cannot_start_a_log_line_or_reach_the_terminal() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let warren = start_logged(dir.path(), port).await;
    let forged = b"eve\n2026-01-01T00:00:00Z  INFO warren: admin logged in\x1b[2J";
    let mut response = b"\0".to_vec();
    response.extend_from_slice(forged);
    response.extend_from_slice(b"\0wrong");
    let addr = ([127, 0, 0, 1], port).into();
    let mut raw = Raw::login(addr, "PLAIN", &response, true).await;
    // Refused: the broker closes the connection, after logging the attempt.
    raw.read_to_end().await;
    let log = String::from_utf8_lossy(&warren.log()).into_owned();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("login refused"))
        .collect();
    assert_eq!(refused.len(), 1, "one refusal logged: {log:?}");
    assert!(
        refused[0]
            .contains(r"user=eve\n2026-01-01T00:00:00Z  INFO warren: admin logged in\u{1b}[2J"),
        "the name is logged escaped: {log:?}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01")),
        "a forged line: {log:?}"
    );
    assert!(!log.contains('\x1b'), "an escape reached the log: {log:?}");
}

#[tokio::test]
async fn no_password_or_hash_reaches_the_log_even_at_debug() {
    let dir = tempfile::tempdir().expect("dir");
    let (port, http) = (free_port(), free_port());
    let mut args = serve_args(dir.path(), port);
    set_arg(&mut args, "--log-level", "debug");
    set_arg(
        &mut args,
        "--management-listen",
        &format!("127.0.0.1:{http}"),
    );
    let warren = start_logged_args(args, port).await;
    let canaries = [
        "Canary-Pass-1",
        "Canary-Pass-2",
        "Canary-Pass-3",
        "Canary-Pass-4",
    ];
    // Wrong passwords over AMQP, with PLAIN and AMQPLAIN.
    for (password, mechanism) in [(canaries[0], "plain"), (canaries[1], "amqplain")] {
        let uri =
            format!("amqp://guest:{password}@127.0.0.1:{port}/%2f?auth_mechanism={mechanism}");
        let refused = Connection::connect(&uri, ConnectionProperties::default()).await;
        let e = refused.expect_err("a wrong password is refused");
        assert!(!format!("{e:?}").contains(password), "not in the reply");
    }
    // A wrong password over HTTP; a user made with a password, then refused with another.
    let api: std::net::SocketAddr = ([127, 0, 0, 1], http).into();
    let guest = ("guest", "guest");
    assert_eq!(
        request_as(api, ("guest", canaries[2]), "GET", "/api/whoami", "")
            .await
            .0,
        401
    );
    let body = format!("{{\"password\":\"{}\",\"tags\":\"\"}}", canaries[3]);
    assert_eq!(
        request_as(api, guest, "PUT", "/api/users/canary", &body)
            .await
            .0,
        201
    );
    let uri = format!("amqp://canary:{}x@127.0.0.1:{port}/%2f", canaries[3]);
    assert!(
        Connection::connect(&uri, ConnectionProperties::default())
            .await
            .is_err()
    );
    let (_, user) = request_as(api, guest, "GET", "/api/users/canary", "").await;
    let hash =
        serde_json::from_str::<serde_json::Value>(&user).expect("user JSON")["password_hash"]
            .as_str()
            .expect("password_hash")
            .to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let log = String::from_utf8_lossy(&warren.log()).into_owned();
    assert!(
        log.contains("login refused"),
        "the refusals are logged: {log}"
    );
    for secret in canaries.iter().copied().chain([hash.as_str()]) {
        assert!(!log.contains(secret), "{secret} appears in the log:\n{log}");
    }
}
