//! `warren ctl`, the real binary against a real broker's management API: changes made with it
//! govern AMQP, listings read back as tables and as JSON, failures exit with the documented
//! codes and one line, and definitions round-trip through a file.

mod common;

use std::time::Duration;

use common::{TestBroker, WAIT};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::Value;

/// What one run of `warren ctl` did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `warren ctl --url URL ARGS...` as guest, with no WARREN_* settings from outside.
async fn ctl_at(url: &str, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("ctl")
        .args(["--url", url])
        .args(args)
        .env_remove("WARREN_URL")
        .env_remove("WARREN_USER")
        .env_remove("WARREN_PASSWORD")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("warren ctl finishes")
        .expect("warren ctl runs");
    Run {
        code: out.status.code().expect("an exit code"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 output"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 errors"),
    }
}

async fn ctl(b: &TestBroker, args: &[&str]) -> Run {
    ctl_at(&format!("http://{}", b.http), args).await
}

/// Runs a command that must succeed, and returns what it printed.
async fn ok(b: &TestBroker, args: &[&str]) -> String {
    let run = ctl(b, args).await;
    assert_eq!(run.code, 0, "warren ctl {args:?}: {run:?}");
    assert_eq!(run.stderr, "", "warren ctl {args:?}");
    run.stdout
}

/// The rows of a table, split on runs of spaces (the header first).
fn rows(table: &str) -> Vec<Vec<&str>> {
    table
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect()
}

fn amqp_uri(b: &TestBroker, user: &str, password: &str, vhost: &str) -> String {
    let vhost = vhost.replace('/', "%2f");
    format!("amqp://{user}:{password}@{}/{vhost}", b.addr)
}

async fn try_connect(uri: &str) -> Result<Connection, lapin::Error> {
    Connection::connect(uri, ConnectionProperties::default()).await
}

#[tokio::test]
async fn users_vhosts_and_permissions_made_with_ctl_govern_amqp_and_list_back() {
    let b = TestBroker::start().await;
    assert_eq!(ok(&b, &["add_vhost", "apps"]).await, "Added vhost 'apps'\n");
    assert_eq!(
        ok(&b, &["add_user", "app", "s3cret"]).await,
        "Added user 'app'\n"
    );
    ok(&b, &["set_user_tags", "app", "management"]).await;
    ok(
        &b,
        &[
            "set_permissions",
            "-p",
            "apps",
            "app",
            "^app\\.",
            ".*",
            ".*",
        ],
    )
    .await;

    let conn = try_connect(&amqp_uri(&b, "app", "s3cret", "apps"))
        .await
        .expect("the user logs in to the vhost");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "app.orders".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("configure matches ^app\\.");
    for _ in 0..3 {
        ch.basic_publish(
            "".into(),
            "app.orders".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    let refused = ch
        .queue_declare(
            "other".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(refused.is_err(), "configure does not match 'other'");

    let vhosts = ok(&b, &["list_vhosts"]).await;
    assert_eq!(rows(&vhosts), [vec!["name"], vec!["/"], vec!["apps"]]);
    let users = ok(&b, &["list_users"]).await;
    assert!(
        rows(&users).contains(&vec!["app", "[management]"]),
        "{users}"
    );
    assert_eq!(rows(&users)[0], ["user", "tags"]);
    let permissions = ok(&b, &["list_permissions", "-p", "apps"]).await;
    assert_eq!(
        rows(&permissions),
        [
            vec!["user", "configure", "write", "read"],
            vec!["app", "^app\\.", ".*", ".*"],
            vec!["guest", ".*", ".*", ".*"],
        ]
    );
    let queues = tokio::time::timeout(WAIT, async {
        loop {
            let out = ok(&b, &["list_queues", "-p", "apps"]).await;
            if rows(&out).get(1).is_some_and(|r| r.get(1) == Some(&"3")) {
                break out;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the three messages are counted");
    assert_eq!(
        queues, "name        messages\napp.orders  3\n",
        "aligned, header first"
    );
    let picked = ok(
        &b,
        &["list_queues", "-p", "apps", "-q", "name", "durable", "type"],
    )
    .await;
    assert_eq!(picked, "app.orders  false  classic\n");

    let json = ok(&b, &["--json", "list_queues", "-p", "apps"]).await;
    let listed: Value = serde_json::from_str(&json).expect("the API's JSON");
    assert_eq!(listed[0]["name"], "app.orders");
    assert_eq!(listed[0]["vhost"], "apps");
    assert_eq!(listed[0]["messages"], 3);
    let json = ok(&b, &["list_users", "--json", "name"]).await;
    let users: Value = serde_json::from_str(&json).expect("the API's JSON");
    assert!(
        users
            .as_array()
            .expect("a list")
            .contains(&serde_json::json!({"name": "app"})),
        "{json}"
    );

    assert_eq!(
        ok(&b, &["purge_queue", "-p", "apps", "app.orders"]).await,
        "Purged queue 'app.orders' in vhost 'apps'\n"
    );
    ok(&b, &["change_password", "app", "n3w"]).await;
    assert!(
        try_connect(&amqp_uri(&b, "app", "n3w", "apps"))
            .await
            .is_ok(),
        "the new password works"
    );
    assert!(
        rows(&ok(&b, &["list_users"]).await).contains(&vec!["app", "[management]"]),
        "the tags stay"
    );
    drop(conn);
}

#[tokio::test]
async fn failures_say_what_failed_and_why_in_one_line_with_their_exit_code() {
    let b = TestBroker::start().await;
    let run = ctl(&b, &["delete_user", "nobody"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "warren ctl: cannot delete user 'nobody': Not Found (user 'nobody' does not exist: list users with `warren ctl list_users`)\n"
    );

    let run = ctl(&b, &["purge_queue", "-p", "nowhere", "q"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(
            "(vhost 'nowhere' does not exist: list vhosts with `warren ctl list_vhosts`)"
        ),
        "{run:?}"
    );
    let run = ctl(&b, &["delete_queue", "missing"]).await;
    assert!(
        run.stderr.contains(
            "queue 'missing' does not exist in vhost '/': list them with `warren ctl list_queues`"
        ),
        "{run:?}"
    );

    let run = ctl(&b, &["set_permissions", "ghost", ".*", ".*", ".*"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("vhost_or_user_not_found (user 'ghost' does not exist"),
        "{run:?}"
    );
    let run = ctl(&b, &["set_policy", "p", "(", "{}"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(
        run.stderr.starts_with(
            "warren ctl: cannot set policy 'p' in vhost '/': Validation failed: pattern"
        ),
        "{run:?}"
    );
    ok(&b, &["add_user", "dup", "pw"]).await;
    let run = ctl(&b, &["add_user", "dup", "pw"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("user_already_exists"), "{run:?}");

    let run = ctl(&b, &["--password", "wrong", "list_users"]).await;
    assert_eq!(run.code, 77, "a refused login: {run:?}");
    assert!(
        run.stderr.starts_with(
            "warren ctl: cannot list users: Login failed (user 'guest' was refused: check --user and --password"
        ),
        "{run:?}"
    );
    ok(&b, &["add_user", "viewer", "pw"]).await;
    ok(&b, &["set_user_tags", "viewer", "management"]).await;
    let run = ctl(&b, &["--user", "viewer", "--password", "pw", "list_users"]).await;
    assert_eq!(run.code, 77, "a user without the tag: {run:?}");
    assert!(
        run.stderr.contains(
            "Not administrator user (user 'viewer' needs the administrator tag: an administrator can run `warren ctl set_user_tags viewer administrator`)"
        ),
        "{run:?}"
    );

    let run = ctl(&b, &["list_queues", "nonsense_column"]).await;
    assert_eq!(run.code, 0, "no queue, nothing to check the column against");
    let conn = b.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let run = ctl(&b, &["list_queues", "mesages"]).await;
    assert_eq!(run.code, 2, "an unknown column: {run:?}");
    assert!(
        run.stderr
            .starts_with("warren ctl: no column 'mesages' in the API's queues; there are: "),
        "{run:?}"
    );
    let run = ctl(&b, &["add_user"]).await;
    assert_eq!(run.code, 2, "clap's usage error: {run:?}");
    let run = ctl(&b, &["set_policy", "p", ".*", "not json"]).await;
    assert_eq!(run.code, 2, "{run:?}");
}

#[tokio::test]
async fn definitions_round_trip_through_a_file() {
    let b = TestBroker::start().await;
    ok(&b, &["add_vhost", "shop"]).await;
    ok(&b, &["add_user", "clerk", "till"]).await;
    ok(
        &b,
        &["set_permissions", "-p", "shop", "clerk", ".*", ".*", ".*"],
    )
    .await;
    ok(
        &b,
        &[
            "set_policy",
            "-p",
            "shop",
            "--apply-to",
            "queues",
            "--priority",
            "3",
            "cap",
            "^orders",
            r#"{"max-length": 100}"#,
        ],
    )
    .await;
    let conn = try_connect(&amqp_uri(&b, "clerk", "till", "shop"))
        .await
        .expect("the clerk logs in");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "orders".into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
    drop(conn);

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("defs.json");
    let file = file.to_str().expect("a UTF-8 path");
    assert_eq!(
        ok(&b, &["export_definitions", file]).await,
        format!("Exported definitions to {file}\n")
    );
    let to_stdout = ok(&b, &["export_definitions", "-"]).await;
    let exported: Value = serde_json::from_str(&to_stdout).expect("JSON on stdout");
    assert!(
        exported["users"]
            .as_array()
            .expect("users")
            .iter()
            .any(|u| u["name"] == "clerk")
    );

    ok(&b, &["delete_vhost", "shop"]).await;
    ok(&b, &["delete_user", "clerk"]).await;
    assert_eq!(rows(&ok(&b, &["list_vhosts"]).await).len(), 2);

    assert_eq!(
        ok(&b, &["import_definitions", file]).await,
        format!("Imported definitions from {file}\n")
    );
    assert_eq!(
        rows(&ok(&b, &["list_queues", "-p", "shop", "name", "durable"]).await),
        [vec!["name", "durable"], vec!["orders", "true"]]
    );
    let policies = ok(
        &b,
        &[
            "list_policies",
            "-p",
            "shop",
            "name",
            "apply-to",
            "priority",
        ],
    )
    .await;
    assert_eq!(
        rows(&policies),
        [
            vec!["name", "apply-to", "priority"],
            vec!["cap", "queues", "3"]
        ]
    );
    assert!(
        try_connect(&amqp_uri(&b, "clerk", "till", "shop"))
            .await
            .is_ok(),
        "the imported hash keeps the password"
    );

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{not json").expect("write");
    let run = ctl(&b, &["import_definitions", bad.to_str().expect("UTF-8")]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("not JSON"), "{run:?}");
}

#[tokio::test]
async fn close_connection_closes_a_client_with_the_explanation() {
    let b = TestBroker::start().await;
    let conn = b.connect().await;
    let name = tokio::time::timeout(WAIT, async {
        loop {
            let out = ok(&b, &["list_connections", "--quiet", "name"]).await;
            if let Some(line) = out.lines().next() {
                break line.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the connection is listed");
    let mut events = {
        use futures::StreamExt;
        conn.events_listener().boxed()
    };
    assert_eq!(
        ok(&b, &["close_connection", &name, "maintenance window"]).await,
        format!("Closed connection '{name}'\n")
    );
    let e = common::next_error(&mut events).await;
    let text = common::reply_text(&e).unwrap_or_else(|| e.to_string());
    assert!(
        text.contains("CONNECTION_FORCED - maintenance window"),
        "{text}"
    );
    let run = ctl(&b, &["close_connection", &name, "again"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("is not open"), "{run:?}");
}

#[tokio::test]
async fn status_shows_the_node() {
    let b = TestBroker::start().await;
    let out = ok(&b, &["status"]).await;
    assert!(out.contains("Product"), "{out}");
    assert!(out.contains("Warren"), "{out}");
    assert!(
        out.contains(&format!("amqp 127.0.0.1:{}", b.addr.port())),
        "{out}"
    );
    let json = ok(&b, &["status", "--json"]).await;
    let status: Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(status["overview"]["product_name"], "Warren");
    assert_eq!(status["node"]["running"], true);
}

#[tokio::test]
async fn an_unreachable_api_exits_69() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let run = ctl_at(&url, &["list_queues"]).await;
    assert_eq!(run.code, 69, "{run:?}");
    assert_eq!(
        run.stderr,
        format!(
            "warren ctl: cannot reach the management API at {url}: connection refused; is warren running, and is management.listen set?\n"
        )
    );
}
