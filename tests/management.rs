//! The management HTTP API, driven by the real `rabbitmq_http_client` crate, with the AMQP side
//! checked by lapin: users, vhosts, permissions and limits at runtime, queues, exchanges and
//! bindings, connection force-close, and RabbitMQ's status codes and error bodies.

mod common;

use std::time::Duration;

use common::{TestBroker, WAIT, failure};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use rabbitmq_http_client::api::Client;
use rabbitmq_http_client::commons::QueueType;
use rabbitmq_http_client::requests::{
    ExchangeParams, Permissions, QueueParams, UserParams, VirtualHostParams,
};

type Api = Client<String, &'static str, &'static str>;

fn api(b: &TestBroker) -> Api {
    Client::new(format!("http://{}/api", b.http), "guest", "guest")
}

/// An AMQP URI for `user` on `vhost` of `b`.
fn uri(b: &TestBroker, user: &str, password: &str, vhost: &str) -> String {
    let vhost = vhost.replace('/', "%2f");
    format!("amqp://{user}:{password}@{}/{vhost}", b.addr)
}

async fn try_connect(uri: &str) -> Result<Connection, lapin::Error> {
    Connection::connect(uri, ConnectionProperties::default()).await
}

async fn add_user(api: &Api, name: &str, password: &str, tags: &str) {
    let hash = rabbitmq_http_client::password_hashing::base64_encoded_salted_password_hash_sha256(
        &rabbitmq_http_client::password_hashing::salt(),
        password,
    );
    api.create_user(&UserParams {
        name,
        password_hash: &hash,
        tags,
    })
    .await
    .expect("create user");
}

async fn add_vhost(api: &Api, name: &str) {
    api.create_vhost(&VirtualHostParams {
        name,
        description: Some("made by a test"),
        tags: Some(vec!["t1", "t2"]),
        default_queue_type: None,
        tracing: false,
    })
    .await
    .expect("create vhost");
}

async fn grant(api: &Api, user: &str, vhost: &str, configure: &str, write: &str, read: &str) {
    api.declare_permissions(&Permissions {
        user,
        vhost,
        configure,
        write,
        read,
    })
    .await
    .expect("grant permissions");
}

/// The events of a connection, to see the broker close it.
type CloseWatch = futures::stream::BoxStream<'static, lapin::Event>;

/// Starts watching `conn` for the broker closing it.
fn watch_close(conn: &Connection) -> CloseWatch {
    use futures::StreamExt;
    conn.events_listener().boxed()
}

/// Waits until the watched connection is closed and returns the reply text it was closed with.
async fn closed_with(watch: &mut CloseWatch) -> String {
    let e = common::next_error(watch).await;
    common::reply_text(&e).unwrap_or_else(|| e.to_string())
}

#[tokio::test]
async fn users_vhosts_and_permissions_made_through_the_api_govern_amqp() {
    let b = TestBroker::start().await;
    let api = api(&b);
    add_vhost(&api, "apps").await;
    add_user(&api, "app", "s3cret", "management").await;
    // Not yet allowed on the vhost: refused at connection.open, as RabbitMQ.
    let refused = try_connect(&uri(&b, "app", "s3cret", "apps")).await;
    assert!(refused.is_err(), "no permissions yet");
    grant(&api, "app", "apps", "^app\\.", ".*", ".*").await;
    let conn = try_connect(&uri(&b, "app", "s3cret", "apps"))
        .await
        .expect("permitted now");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "app.q".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("configure allows app.*");
    let (code, text) = failure(
        ch.queue_declare(
            "other".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
    );
    assert_eq!(
        (code, text.as_str()),
        (
            403,
            "ACCESS_REFUSED - access to queue 'other' in vhost 'apps' refused for user 'app'"
        )
    );
    let users = api.list_users().await.expect("users");
    assert!(users.iter().any(|u| u.name == "app"));
    let vhost = api.get_vhost("apps").await.expect("vhost");
    assert_eq!(vhost.description.as_deref(), Some("made by a test"));
    let perms = api.list_permissions_of("app").await.expect("permissions");
    assert_eq!(perms.len(), 1);
    assert_eq!(perms[0].configure, "^app\\.");
    let conn2 = try_connect(&uri(&b, "app", "s3cret", "apps"))
        .await
        .expect("connect");
    let mut closed = watch_close(&conn2);
    api.delete_user("app", false).await.expect("delete user");
    let text = closed_with(&mut closed).await;
    assert!(text.contains("user 'app' is deleted"), "{text}");
    assert!(
        try_connect(&uri(&b, "app", "s3cret", "apps"))
            .await
            .is_err(),
        "a deleted user cannot log in"
    );
    drop(conn);
}

#[tokio::test]
async fn deleting_a_vhost_closes_its_connections_and_drops_what_is_in_it() {
    let b = TestBroker::start().await;
    let api = api(&b);
    add_vhost(&api, "doomed").await;
    let conn = try_connect(&uri(&b, "guest", "guest", "doomed"))
        .await
        .expect("the creator may use it");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "q".into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let mut closed = watch_close(&conn);
    api.delete_vhost("doomed", false).await.expect("delete");
    let text = closed_with(&mut closed).await;
    assert!(text.contains("vhost 'doomed' is deleted"), "{text}");
    add_vhost(&api, "doomed").await;
    let queues = api.list_queues_in("doomed").await.expect("queues");
    assert!(
        queues.is_empty(),
        "a new vhost of the same name starts empty"
    );
}

#[tokio::test]
async fn limits_refuse_as_rabbitmq_does() {
    use rabbitmq_http_client::commons::{UserLimitTarget, VirtualHostLimitTarget};
    use rabbitmq_http_client::requests::EnforcedLimitParams;
    let b = TestBroker::start().await;
    let api = api(&b);
    add_vhost(&api, "lim").await;
    api.set_vhost_limit(
        "lim",
        EnforcedLimitParams::new(VirtualHostLimitTarget::MaxConnections, 1),
    )
    .await
    .expect("limit");
    api.set_vhost_limit(
        "lim",
        EnforcedLimitParams::new(VirtualHostLimitTarget::MaxQueues, 0),
    )
    .await
    .expect("limit");
    let first = try_connect(&uri(&b, "guest", "guest", "lim"))
        .await
        .expect("first connection");
    let second = try_connect(&uri(&b, "guest", "guest", "lim"))
        .await
        .expect_err("over the limit");
    assert!(
        format!("{second}").contains(
            "access to vhost 'lim' refused for user 'guest': connection limit (1) is reached"
        ),
        "{second}"
    );
    let ch = first.create_channel().await.expect("channel");
    let (code, text) = failure(
        ch.queue_declare(
            "lq".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
    );
    assert_eq!(
        (code, text.as_str()),
        (
            406,
            "PRECONDITION_FAILED - cannot declare queue 'lq': queue limit in vhost 'lim' (0) is reached"
        )
    );
    add_user(&api, "limu", "p", "").await;
    grant(&api, "limu", "/", ".*", ".*", ".*").await;
    api.set_user_limit(
        "limu",
        EnforcedLimitParams::new(UserLimitTarget::MaxChannels, 1),
    )
    .await
    .expect("limit");
    api.set_user_limit(
        "limu",
        EnforcedLimitParams::new(UserLimitTarget::MaxConnections, 1),
    )
    .await
    .expect("limit");
    let limu = try_connect(&uri(&b, "limu", "p", "/"))
        .await
        .expect("connect");
    let again = try_connect(&uri(&b, "limu", "p", "/"))
        .await
        .expect_err("over the user's limit");
    assert!(
        format!("{again}")
            .contains("connection refused for user 'limu': user connection limit (1) is reached"),
        "{again}"
    );
    let mut closed = watch_close(&limu);
    let _one = limu.create_channel().await.expect("first channel");
    let two = limu.create_channel().await;
    assert!(two.is_err(), "the second channel is over the limit");
    let text = closed_with(&mut closed).await;
    assert!(
        text.contains(
            "number of channels opened for user 'limu' has reached the maximum allowed user limit of (1)"
        ),
        "{text}"
    );
    let limits = api.list_all_vhost_limits().await.expect("limits");
    assert_eq!(limits.len(), 1);
}

#[tokio::test]
async fn queues_exchanges_and_bindings_through_the_api() {
    let b = TestBroker::start().await;
    let api = api(&b);
    api.declare_queue(
        "/",
        &QueueParams::new("hq", QueueType::Classic, true, false, None),
    )
    .await
    .expect("declare queue");
    api.declare_exchange(
        "/",
        &ExchangeParams::durable(
            "hx",
            rabbitmq_http_client::commons::ExchangeType::Topic,
            None,
        ),
    )
    .await
    .expect("declare exchange");
    api.bind_queue("/", "hq", "hx", Some("a.#"), None)
        .await
        .expect("bind");
    let (conn, ch) = b.channel().await;
    ch.basic_publish(
        "hx".into(),
        "a.b".into(),
        BasicPublishOptions::default(),
        b"hello",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    // Wait for the message to land before reading the count.
    tokio::time::timeout(WAIT, async {
        loop {
            let q = api.get_queue_info("/", "hq").await.expect("queue");
            if q.message_count == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the queue shows its message");
    let bindings = api.list_queue_bindings("/", "hq").await.expect("bindings");
    assert!(
        bindings
            .iter()
            .any(|b| b.source == "hx" && b.routing_key == "a.#"),
        "{bindings:?}"
    );
    let exchanges = api.list_exchanges_in("/").await.expect("exchanges");
    assert!(
        exchanges
            .iter()
            .any(|x| x.name == "hx" && x.exchange_type == "topic")
    );
    api.purge_queue("/", "hq").await.expect("purge");
    assert_eq!(
        api.get_queue_info("/", "hq")
            .await
            .expect("queue")
            .message_count,
        0
    );
    api.delete_queue("/", "hq", false).await.expect("delete");
    assert!(api.get_queue_info("/", "hq").await.is_err(), "gone");
    drop(conn);
}

#[tokio::test]
async fn a_connection_closed_through_the_api_gets_320() {
    let b = TestBroker::start().await;
    let api = api(&b);
    let conn = b.connect().await;
    let listed = tokio::time::timeout(WAIT, async {
        loop {
            let all = api.list_connections().await.expect("connections");
            if let Some(c) = all.into_iter().next() {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the connection is listed");
    assert_eq!(listed.username, "guest");
    let mut closed = watch_close(&conn);
    api.close_connection(&listed.name, None, false)
        .await
        .expect("close");
    let text = closed_with(&mut closed).await;
    assert!(
        text.contains("CONNECTION_FORCED - Closed via management plugin"),
        "{text}"
    );
}

/// A RabbitMQ 3.10.8 export (`GET /api/definitions`): user `u1`'s password is `secret1`.
const RABBITMQ_EXPORT: &str = include_str!("fixtures/rabbitmq-3.10-definitions.json");

#[tokio::test]
async fn a_rabbitmq_export_imports_unchanged_and_round_trips() {
    let b = TestBroker::start().await;
    let api = api(&b);
    let defs: serde_json::Value = serde_json::from_str(RABBITMQ_EXPORT).expect("fixture");
    api.import_definitions(defs.clone())
        .await
        .expect("import RabbitMQ's export");
    // Its user logs in with the password RabbitMQ hashed, on the vhost it made.
    let conn = try_connect(&uri(&b, "u1", "secret1", "v1"))
        .await
        .expect("u1 logs in to v1");
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            "dq1".into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the queue was imported");
    assert_eq!(q.message_count(), 0);
    let bindings = api
        .list_queue_bindings("v1", "dq1")
        .await
        .expect("bindings");
    assert!(
        bindings
            .iter()
            .any(|b| b.source == "dx1" && b.routing_key == "r.#")
    );
    let policies = api.list_policies_in("v1").await.expect("policies");
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].name, "pol1");
    let topic = api.list_topic_permissions_of("u1").await.expect("topic");
    assert_eq!(topic.len(), 1);
    // Importing it again changes nothing, and our export imports into a fresh broker whole.
    api.import_definitions(defs).await.expect("idempotent");
    let ours: serde_json::Value =
        serde_json::from_str(&api.export_cluster_wide_definitions().await.expect("export"))
            .expect("JSON");
    for key in [
        "users",
        "vhosts",
        "permissions",
        "policies",
        "queues",
        "exchanges",
        "bindings",
    ] {
        assert!(
            ours[key].as_array().is_some_and(|a| !a.is_empty()),
            "{key} exported"
        );
    }
    let fresh = TestBroker::start().await;
    let fresh_api = self::api(&fresh);
    fresh_api
        .import_definitions(ours.clone())
        .await
        .expect("import our own export");
    let again: serde_json::Value = serde_json::from_str(
        &fresh_api
            .export_cluster_wide_definitions()
            .await
            .expect("export"),
    )
    .expect("JSON");
    for key in [
        "users",
        "vhosts",
        "permissions",
        "topic_permissions",
        "policies",
        "queues",
        "exchanges",
        "bindings",
    ] {
        assert_eq!(ours[key], again[key], "{key} round-trips");
    }
    drop(conn);
}

use common::http::request as raw;

#[tokio::test]
async fn a_bad_definitions_file_changes_nothing() {
    let b = TestBroker::start().await;
    let bad = r#"{"users":[{"name":"sneaky","password_hash":"","tags":""}],
                  "queues":[{"name":"q","vhost":"nowhere","durable":true,"auto_delete":false,"arguments":{}}]}"#;
    let (status, body) = raw(&b, "POST", "/api/definitions", bad).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no_such_vhost"), "{body}");
    assert!(
        !b.broker.registry().users.contains_key("sneaky"),
        "nothing of a refused file is applied"
    );
    let (status, body) = raw(&b, "POST", "/api/definitions", "{\"users\": [").await;
    assert_eq!(
        (status, body.as_str()),
        (
            400,
            r#"{"error":"bad_request","reason":"failed_to_parse_json"}"#
        )
    );
    let (status, body) = raw(
        &b,
        "PUT",
        "/api/policies/%2F/p",
        r#"{"pattern":"^q","definition":{"max-priority":5}}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("are not recognised policy settings"),
        "{body}"
    );
    let (status, _) = raw(&b, "PUT", "/api/queues/%2F/q1", r#"{"durable": tru"#).await;
    assert_eq!(status, 400);
    let (status, body) = raw(
        &b,
        "PUT",
        "/api/permissions/%2F/guest",
        r#"{"configure":"(","write":".*","read":".*"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = raw(&b, "GET", "/api/queues/nowhere", "").await;
    assert_eq!(
        (status, body.as_str()),
        (404, r#"{"error":"Object Not Found","reason":"Not Found"}"#)
    );
}

#[tokio::test]
async fn policies_and_parameters_are_stored_and_listed() {
    use rabbitmq_http_client::commons::PolicyTarget;
    use rabbitmq_http_client::requests::PolicyParams;
    let b = TestBroker::start().await;
    let api = api(&b);
    let mut definition = serde_json::Map::new();
    definition.insert("max-length".into(), 10.into());
    definition.insert("ha-mode".into(), "all".into());
    let mut params = PolicyParams::new("/", "limit-q", "^q", definition);
    params.apply_to = PolicyTarget::Queues;
    params.priority = 3;
    api.declare_policy(&params).await.expect("declare policy");
    let got = api.get_policy("/", "limit-q").await.expect("policy");
    assert_eq!((got.pattern.as_str(), got.priority), ("^q", 3));
    api.delete_policy("/", "limit-q", false)
        .await
        .expect("delete");
    assert!(api.list_policies().await.expect("policies").is_empty());
    let (status, _) = raw(
        &b,
        "PUT",
        "/api/global-parameters/cluster_note",
        r#"{"value":{"a":1}}"#,
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = raw(
        &b,
        "PUT",
        "/api/global-parameters/cluster_note",
        r#"{"value":{"a":2}}"#,
    )
    .await;
    assert_eq!(status, 204);
    let (status, body) = raw(&b, "GET", "/api/global-parameters/cluster_note", "").await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"name":"cluster_note","value":{"a":2}}"#)
    );
}

#[tokio::test]
async fn users_and_vhosts_made_at_runtime_survive_kill_9() {
    use common::process::{free_port, start_with_http};
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    let http = free_port();
    let start = || start_with_http(dir.path(), port, http);
    let broker = start().await;
    let api: Api = Client::new(format!("http://127.0.0.1:{http}/api"), "guest", "guest");
    api.create_vhost(&VirtualHostParams {
        name: "kept",
        description: None,
        tags: None,
        default_queue_type: None,
        tracing: false,
    })
    .await
    .expect("vhost");
    let hash = rabbitmq_http_client::password_hashing::base64_encoded_salted_password_hash_sha256(
        &rabbitmq_http_client::password_hashing::salt(),
        "pw",
    );
    api.create_user(&UserParams {
        name: "kept-user",
        password_hash: &hash,
        tags: "",
    })
    .await
    .expect("user");
    grant(&api, "kept-user", "kept", ".*", ".*", ".*").await;
    broker.kill9();
    let _again = start().await;
    let uri = format!("amqp://kept-user:pw@127.0.0.1:{port}/kept");
    try_connect(&uri)
        .await
        .expect("the user, the vhost and the permission are back after kill -9");
}

/// As RabbitMQ 3.10 (checked with pika against it): clearing a user's permissions closes
/// nothing; a channel keeps what it already used, anything else and any new channel see the
/// change, and a new grant is seen at once.
#[tokio::test]
async fn permission_changes_reach_live_connections_as_in_rabbitmq() {
    let b = TestBroker::start().await;
    let api = api(&b);
    add_user(&api, "pc", "p", "").await;
    grant(&api, "pc", "/", ".*", ".*", ".*").await;
    let conn = try_connect(&uri(&b, "pc", "p", "/"))
        .await
        .expect("connect");
    let a = conn.create_channel().await.expect("channel");
    a.confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let declare = |ch: &lapin::Channel, name: &str| {
        let ch = ch.clone();
        let name = name.to_owned();
        async move {
            ch.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
        }
    };
    declare(&a, "pcq").await.expect("declare");
    let publish = |ch: &lapin::Channel| {
        let ch = ch.clone();
        async move {
            ch.basic_publish(
                "".into(),
                "pcq".into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default(),
            )
            .await?
            .await
        }
    };
    publish(&a).await.expect("publish");
    api.clear_permissions("/", "pc", false)
        .await
        .expect("clear");
    declare(&a, "pcq")
        .await
        .expect("a resource this channel used stays allowed");
    publish(&a)
        .await
        .expect("so does the exchange it published to");
    let (code, text) = failure(declare(&a, "pcq2").await);
    assert_eq!(
        (code, text.as_str()),
        (
            403,
            "ACCESS_REFUSED - access to queue 'pcq2' in vhost '/' refused for user 'pc'"
        )
    );
    let b2 = conn
        .create_channel()
        .await
        .expect("the connection stays open");
    let (code, _) = failure(declare(&b2, "pcq").await);
    assert_eq!(code, 403, "a new channel sees the change");
    grant(&api, "pc", "/", ".*", ".*", ".*").await;
    let d = conn.create_channel().await.expect("channel");
    declare(&d, "pcq3")
        .await
        .expect("a new grant is seen at once");
}
