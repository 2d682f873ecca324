//! The log cannot be forged by what clients send: control characters in client text (here a user
//! name with a newline and an ANSI escape) are escaped in the real binary's log output.

mod common;

use common::process::{free_port, start_logged};
use common::raw::Raw;

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
