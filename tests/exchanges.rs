//! Exchanges: the default and predeclared exchanges, declare/delete, every routing type,
//! exchange-to-exchange bindings, auto-delete and alternate exchanges.
//!
//! Setting `WARREN_REFERENCE_URI` (e.g. `amqp://guest:guest@127.0.0.1:5682/%2f`) runs the same
//! scripts against a reference RabbitMQ instead of an in-process Warren; names are unique per run
//! so a shared reference broker is fine.

mod common;

use std::collections::BTreeSet;

use common::{
    Env, auto_delete_exchange, basic_publish, bind, declare_exchange, declare_queue, drain,
    failure, no_args, publish, publish_props, publish_with, reply_code, s, table, unique,
};
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};

/// Deletes the exchanges a test declared, which a shared reference broker would keep.
async fn delete_exchanges(ch: &Channel, names: impl IntoIterator<Item = String>) {
    for x in names {
        ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .expect("delete");
    }
}

/// Binds exchange `destination` to `source` with `key`.
async fn bind_exchange(ch: &Channel, destination: &str, source: &str, key: &str) {
    ch.exchange_bind(
        destination.into(),
        source.into(),
        key.into(),
        ExchangeBindOptions::default(),
        no_args(),
    )
    .await
    .expect("exchange.bind");
}

/// Whether the exchange is there, asked with a passive declare on a connection of its own.
async fn exchange_exists(env: &Env, name: &str) -> bool {
    let conn = env.connect().await;
    let ch = conn.create_channel().await.expect("channel");
    let r = ch
        .exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        )
        .await;
    match r {
        Ok(()) => true,
        Err(e) => {
            assert_eq!(reply_code(&e), Some(404), "{e:?}");
            false
        }
    }
}

#[tokio::test]
async fn default_exchange_routes_by_queue_name_and_cannot_be_changed() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "default").await;
    publish(&ch, "", &q, "to the queue").await;
    publish(&ch, "", &unique("nobody"), "dropped").await;
    assert_eq!(drain(&ch, &q).await, ["to the queue"]);

    let refused = "ACCESS_REFUSED - operation not permitted on the default exchange";
    let r = ch
        .exchange_declare(
            "".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            no_args(),
        )
        .await;
    assert_eq!(failure(r), (403, refused.to_string()));

    let (_c, ch) = env.confirm_channel().await;
    let r = ch
        .exchange_delete("".into(), ExchangeDeleteOptions::default())
        .await;
    assert_eq!(failure(r), (403, refused.to_string()));

    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "default-bind").await;
    let r = ch
        .queue_bind(
            q.as_str().into(),
            "".into(),
            "k".into(),
            QueueBindOptions::default(),
            no_args(),
        )
        .await;
    assert_eq!(failure(r).0, 403);
}

#[tokio::test]
async fn predeclared_exchanges_exist_with_their_types() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        assert!(exchange_exists(&env, name).await, "{name}");
        // An equivalent redeclare (durable, same type) is fine.
        ch.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            no_args(),
        )
        .await
        .unwrap_or_else(|e| panic!("redeclare {name}: {e:?}"));
    }

    let q = declare_queue(&ch, "amq-direct").await;
    bind(&ch, &q, "amq.direct", "k", no_args()).await;
    publish(&ch, "amq.direct", "k", "via amq.direct").await;
    assert_eq!(drain(&ch, &q).await, ["via amq.direct"]);

    let r = ch
        .exchange_declare(
            unique("amq.mine").as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            no_args(),
        )
        .await;
    let (code, text) = failure(r);
    assert_eq!(code, 403);
    assert!(text.contains("contains reserved prefix 'amq.*'"), "{text}");

    let (_c, ch) = env.confirm_channel().await;
    let r = ch
        .exchange_delete("amq.fanout".into(), ExchangeDeleteOptions::default())
        .await;
    assert_eq!(
        failure(r),
        (
            403,
            "ACCESS_REFUSED - deletion of system exchange 'amq.fanout' in vhost '/' not allowed"
                .to_string()
        )
    );
}

#[tokio::test]
async fn passive_declare_of_a_missing_exchange_is_404() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let name = unique("missing");
    let r = ch
        .exchange_declare(
            name.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            no_args(),
        )
        .await;
    assert_eq!(
        failure(r),
        (
            404,
            format!("NOT_FOUND - no exchange '{name}' in vhost '/'")
        )
    );
}

#[tokio::test]
async fn passive_declare_ignores_type_and_flags() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let x = declare_exchange(
        &ch,
        "passive",
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        no_args(),
    )
    .await;
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            passive: true,
            durable: true,
            ..Default::default()
        },
        no_args(),
    )
    .await
    .expect("passive declare matches by name only");
    ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete");
}

#[tokio::test]
async fn redeclare_must_be_equivalent() {
    let env = Env::start().await;
    let conn = env.connect().await;
    let args = table(&[("alternate-exchange", s("ae"))]);
    let x = unique("equiv");
    let options = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let fresh = || async { conn.create_channel().await.expect("channel") };
    let ch = fresh().await;
    for _ in 0..2 {
        ch.exchange_declare(
            x.as_str().into(),
            ExchangeKind::Direct,
            options,
            args.clone(),
        )
        .await
        .expect("equivalent declare");
    }

    let cases: Vec<(ExchangeKind, ExchangeDeclareOptions, FieldTable, &str)> = vec![
        (
            ExchangeKind::Fanout,
            options,
            args.clone(),
            "inequivalent arg 'type' for exchange '{x}' in vhost '/': received 'fanout' but current is 'direct'",
        ),
        (
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            args.clone(),
            "inequivalent arg 'durable' for exchange '{x}' in vhost '/': received 'false' but current is 'true'",
        ),
        (
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..options
            },
            args.clone(),
            "inequivalent arg 'auto_delete' for exchange '{x}' in vhost '/': received 'true' but current is 'false'",
        ),
        (
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                internal: true,
                ..options
            },
            args.clone(),
            "inequivalent arg 'internal' for exchange '{x}' in vhost '/': received 'true' but current is 'false'",
        ),
        (
            ExchangeKind::Direct,
            options,
            table(&[("alternate-exchange", s("other"))]),
            "inequivalent arg 'alternate-exchange' for exchange '{x}' in vhost '/': received 'other' but current is 'ae'",
        ),
        (
            ExchangeKind::Direct,
            options,
            no_args(),
            "inequivalent arg 'alternate-exchange' for exchange '{x}' in vhost '/': received none but current is the value 'ae' of type 'longstr'",
        ),
    ];
    for (kind, opts, args, text) in cases {
        let ch = fresh().await;
        let r = ch
            .exchange_declare(x.as_str().into(), kind, opts, args)
            .await;
        let want = format!("PRECONDITION_FAILED - {}", text.replace("{x}", &x));
        assert_eq!(failure(r), (406, want));
    }
    // Only alternate-exchange takes part in equivalence; other arguments may differ.
    let ch = fresh().await;
    let mut other = args.clone();
    other.insert("x-whatever".into(), AMQPValue::LongInt(7));
    ch.exchange_declare(x.as_str().into(), ExchangeKind::Direct, options, other)
        .await
        .expect("extra arguments are not compared");
    ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete");
}

#[tokio::test]
async fn unknown_exchange_type_closes_the_connection() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let r = ch
        .exchange_declare(
            unique("odd").as_str().into(),
            ExchangeKind::Custom("x-no-such-type".into()),
            ExchangeDeclareOptions::default(),
            no_args(),
        )
        .await;
    let (code, text) = failure(r);
    assert_eq!(code, 503);
    assert_eq!(
        text,
        "COMMAND_INVALID - unknown exchange type 'x-no-such-type'"
    );
    assert!(conn.create_channel().await.is_err(), "connection closed");
}

#[tokio::test]
async fn internal_exchange_refuses_publishes_but_routes_from_other_exchanges() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let internal = declare_exchange(
        &ch,
        "internal",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        no_args(),
    )
    .await;
    let front = declare_exchange(
        &ch,
        "front",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        no_args(),
    )
    .await;
    let q = declare_queue(&ch, "internal").await;
    bind(&ch, &q, &internal, "", no_args()).await;
    ch.exchange_bind(
        internal.as_str().into(),
        front.as_str().into(),
        "".into(),
        ExchangeBindOptions::default(),
        no_args(),
    )
    .await
    .expect("exchange.bind");
    publish(&ch, &front, "", "through the front").await;
    assert_eq!(drain(&ch, &q).await, ["through the front"]);

    // The refusal comes with the confirm: publishing itself is asynchronous.
    let confirm = basic_publish(&ch, &internal, "", b"direct").await;
    let r = confirm.await;
    assert_eq!(
        failure(r),
        (
            403,
            format!(
                "ACCESS_REFUSED - cannot publish to internal exchange '{internal}' in vhost '/'"
            )
        )
    );
    let (_c, ch) = env.confirm_channel().await;
    delete_exchanges(&ch, [front, internal]).await;
}

#[tokio::test]
async fn publish_to_a_missing_exchange_closes_the_channel_with_404() {
    let env = Env::start().await;
    let (conn, ch) = env.confirm_channel().await;
    let x = unique("nowhere");
    // The refusal comes with the confirm: publishing itself is asynchronous.
    let confirm = basic_publish(&ch, &x, "k", b"lost").await;
    let r = confirm.await;
    assert_eq!(
        failure(r),
        (404, format!("NOT_FOUND - no exchange '{x}' in vhost '/'"))
    );
    // Only the channel closed.
    assert!(conn.create_channel().await.is_ok());
}

#[tokio::test]
async fn delete_if_unused_refuses_while_bound() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let x = declare_exchange(
        &ch,
        "in-use",
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        no_args(),
    )
    .await;
    let q = declare_queue(&ch, "in-use").await;
    bind(&ch, &q, &x, "k", no_args()).await;
    let if_unused = ExchangeDeleteOptions {
        if_unused: true,
        ..Default::default()
    };
    let r = ch.exchange_delete(x.as_str().into(), if_unused).await;
    assert_eq!(
        failure(r),
        (
            406,
            format!("PRECONDITION_FAILED - exchange '{x}' in vhost '/' in use")
        )
    );

    let (_c, ch) = env.confirm_channel().await;
    ch.queue_unbind(q.as_str().into(), x.as_str().into(), "k".into(), no_args())
        .await
        .expect("unbind");
    // Being the destination of a binding does not count as use: only bindings from it do.
    bind_exchange(&ch, &x, "amq.fanout", "").await;
    ch.exchange_delete(x.as_str().into(), if_unused)
        .await
        .expect("unused now");
    assert!(!exchange_exists(&env, &x).await);
}

#[tokio::test]
async fn delete_removes_bindings_and_is_idempotent() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let x = declare_exchange(
        &ch,
        "doomed",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        no_args(),
    )
    .await;
    let q = declare_queue(&ch, "doomed").await;
    bind(&ch, &q, &x, "", no_args()).await;
    ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete while bound");
    assert!(!exchange_exists(&env, &x).await);
    // Deleting what is not there succeeds, as in RabbitMQ.
    ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete again");
    // A new exchange of the same name starts without the old bindings.
    ch.exchange_declare(
        x.as_str().into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        no_args(),
    )
    .await
    .expect("declare again");
    let c = publish_with(&ch, &x, "", "m", true, BasicProperties::default()).await;
    assert!(c.take_message().is_some(), "no binding survived the delete");
    ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete");
}

#[tokio::test]
async fn direct_routes_on_exact_keys() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let x = declare_exchange(
        &ch,
        "direct",
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        no_args(),
    )
    .await;
    let q1 = declare_queue(&ch, "direct1").await;
    let q2 = declare_queue(&ch, "direct2").await;
    bind(&ch, &q1, &x, "red", no_args()).await;
    bind(&ch, &q1, &x, "green", no_args()).await;
    bind(&ch, &q2, &x, "red", no_args()).await;
    // Binding twice is idempotent: still one copy.
    bind(&ch, &q2, &x, "red", no_args()).await;
    for key in ["red", "green", "blue", "Red", "red.x", ""] {
        publish(&ch, &x, key, key).await;
    }
    assert_eq!(drain(&ch, &q1).await, ["red", "green"]);
    assert_eq!(drain(&ch, &q2).await, ["red"]);
}

#[tokio::test]
async fn fanout_ignores_the_key_and_delivers_once_per_queue() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let x = declare_exchange(
        &ch,
        "fanout",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        no_args(),
    )
    .await;
    let q1 = declare_queue(&ch, "fan1").await;
    let q2 = declare_queue(&ch, "fan2").await;
    bind(&ch, &q1, &x, "a", no_args()).await;
    bind(&ch, &q1, &x, "b", no_args()).await;
    bind(&ch, &q2, &x, "", no_args()).await;
    publish(&ch, &x, "anything", "one").await;
    publish(&ch, &x, "", "two").await;
    assert_eq!(drain(&ch, &q1).await, ["one", "two"]);
    assert_eq!(drain(&ch, &q2).await, ["one", "two"]);
}

#[tokio::test]
async fn topic_star_matches_one_word_and_hash_any_number() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let x = declare_exchange(
        &ch,
        "topic",
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        no_args(),
    )
    .await;
    let patterns = [
        "*.orange.*",
        "*.*.rabbit",
        "lazy.#",
        "#",
        "#.end",
        "a.*.#.z",
        "exact.key",
        "*",
    ];
    let mut queues = Vec::new();
    for p in patterns {
        let q = declare_queue(&ch, "topic").await;
        bind(&ch, &q, &x, p, no_args()).await;
        queues.push(q);
    }
    let keys = [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "quick.orange.fox",
        "lazy.brown.fox",
        "lazy",
        "quick.brown.fox",
        "quick.orange.male.rabbit",
        "lazy.orange.male.rabbit",
        "end",
        "the.end",
        "a.b.z",
        "a.b.c.d.z",
        "a.z",
        "exact.key",
        "exact",
        "",
    ];
    for k in keys {
        publish(&ch, &x, k, k).await;
    }
    let want: [&[&str]; 8] = [
        &[
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "quick.orange.fox",
        ],
        &["quick.orange.rabbit"],
        &[
            "lazy.orange.elephant",
            "lazy.brown.fox",
            "lazy",
            "lazy.orange.male.rabbit",
        ],
        &keys,
        &["end", "the.end"],
        &["a.b.z", "a.b.c.d.z"],
        &["exact.key"],
        // An empty key has no words at all.
        &["lazy", "end", "exact"],
    ];
    for ((q, p), want) in queues.iter().zip(patterns).zip(want) {
        assert_eq!(drain(&ch, q).await, want, "pattern {p}");
    }
}

/// Reference topic matching, word by word, for checking the broker on many bindings.
fn topic_matches(pattern: &[&str], key: &[&str]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((&"#", rest)) => (0..=key.len()).any(|i| topic_matches(rest, &key[i..])),
        Some((&p, rest)) => match key.split_first() {
            Some((&k, krest)) => (p == "*" || p == k) && topic_matches(rest, krest),
            None => false,
        },
    }
}

#[tokio::test]
async fn topic_with_ten_thousand_bindings_routes_exactly() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let x = declare_exchange(
        &ch,
        "big-topic",
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        no_args(),
    )
    .await;
    const QUEUES: usize = 100;
    const PER_QUEUE: usize = 101;
    let words = ["a", "b", "c", "d"];
    let mut queues = Vec::new();
    let mut patterns: Vec<Vec<String>> = Vec::new();
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        usize::try_from(seed % u64::try_from(n).unwrap_or(1)).unwrap_or(0)
    };
    for qi in 0..QUEUES {
        let q = declare_queue(&ch, "big-topic").await;
        let mut mine = Vec::new();
        for pi in 0..PER_QUEUE {
            // Mostly unique literal prefixes, as tenants' bindings are, and some wildcards.
            let pattern = if pi % 10 == 0 {
                let len = 1 + next(4);
                (0..len)
                    .map(|_| match next(6) {
                        0 => "#".to_string(),
                        1 => "*".to_string(),
                        _ => words[next(words.len())].to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(".")
            } else {
                format!("t{qi}x{pi}.{}.*", words[next(words.len())])
            };
            ch.queue_bind(
                q.as_str().into(),
                x.as_str().into(),
                pattern.as_str().into(),
                QueueBindOptions { nowait: true },
                no_args(),
            )
            .await
            .expect("queue.bind nowait");
            mine.push(pattern);
        }
        queues.push(q);
        patterns.push(mine);
    }
    const { assert!(QUEUES * PER_QUEUE >= 10_000) };
    let mut keys: Vec<String> = Vec::new();
    for i in 0..40 {
        let len = next(5);
        keys.push(
            (0..len)
                .map(|_| words[next(words.len())])
                .collect::<Vec<_>>()
                .join("."),
        );
        let qi = next(QUEUES);
        keys.push(format!("t{qi}x{}.{}.w{i}", next(PER_QUEUE), words[next(4)]));
    }
    keys.push(format!("t7x1.{}.z", words[0]));
    for k in &keys {
        publish(&ch, &x, k, k).await;
    }
    for (q, mine) in queues.iter().zip(&patterns) {
        let want: Vec<&String> = keys
            .iter()
            .filter(|k| {
                let kw: Vec<&str> = if k.is_empty() {
                    Vec::new()
                } else {
                    k.split('.').collect()
                };
                mine.iter().any(|p| {
                    let pw: Vec<&str> = p.split('.').collect();
                    topic_matches(&pw, &kw)
                })
            })
            .collect();
        let got = drain(&ch, q).await;
        let got: Vec<&String> = got.iter().collect();
        assert_eq!(got, want, "queue {q}");
    }
}

#[tokio::test]
async fn headers_exchange_matches_all_any_and_with_x() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let x = declare_exchange(
        &ch,
        "headers",
        ExchangeKind::Headers,
        ExchangeDeclareOptions::default(),
        no_args(),
    )
    .await;
    let bindings = [
        (
            "all",
            table(&[
                ("x-match", s("all")),
                ("format", s("pdf")),
                ("type", s("report")),
            ]),
        ),
        (
            "any",
            table(&[
                ("x-match", s("any")),
                ("format", s("pdf")),
                ("type", s("log")),
            ]),
        ),
        (
            "default-all",
            table(&[("format", s("pdf")), ("n", AMQPValue::LongInt(5))]),
        ),
        (
            "all-ignores-x",
            table(&[
                ("x-match", s("all")),
                ("format", s("pdf")),
                ("x-tenant", s("t1")),
            ]),
        ),
        (
            "all-with-x",
            table(&[
                ("x-match", s("all-with-x")),
                ("format", s("pdf")),
                ("x-tenant", s("t1")),
            ]),
        ),
        (
            "any-with-x",
            table(&[("x-match", s("any-with-x")), ("x-tenant", s("t1"))]),
        ),
        (
            "void",
            table(&[("x-match", s("all")), ("flag", AMQPValue::Void)]),
        ),
    ];
    let mut queues = Vec::new();
    for (name, args) in &bindings {
        let q = declare_queue(&ch, name).await;
        bind(&ch, &q, &x, "", args.clone()).await;
        queues.push(q);
    }
    let messages = [
        (
            "pdf-report",
            table(&[("format", s("pdf")), ("type", s("report"))]),
        ),
        ("pdf", table(&[("format", s("pdf"))])),
        ("log", table(&[("type", s("log"))])),
        (
            "pdf-5",
            table(&[("format", s("pdf")), ("n", AMQPValue::LongLongInt(5))]),
        ),
        (
            "pdf-t1",
            table(&[("format", s("pdf")), ("x-tenant", s("t1"))]),
        ),
        (
            "pdf-t2",
            table(&[("format", s("pdf")), ("x-tenant", s("t2"))]),
        ),
        ("flag-int", table(&[("flag", AMQPValue::LongInt(0))])),
        ("flag-void", table(&[("flag", AMQPValue::Void)])),
        ("none", FieldTable::default()),
    ];
    for (body, headers) in &messages {
        let props = BasicProperties::default().with_headers(headers.clone());
        publish_props(&ch, &x, "", body, props).await;
    }
    let want: [&[&str]; 7] = [
        &["pdf-report"],
        &["pdf-report", "pdf", "log", "pdf-5", "pdf-t1", "pdf-t2"],
        &["pdf-5"],
        &["pdf-report", "pdf", "pdf-5", "pdf-t1", "pdf-t2"],
        &["pdf-t1"],
        &["pdf-t1"],
        &["flag-int", "flag-void"],
    ];
    for ((q, (name, _)), want) in queues.iter().zip(&bindings).zip(want) {
        assert_eq!(drain(&ch, q).await, want, "binding {name}");
    }
}

#[tokio::test]
async fn headers_binding_with_a_bad_x_match_is_refused() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "bad-x-match").await;
    let r = ch
        .queue_bind(
            q.as_str().into(),
            "amq.headers".into(),
            "".into(),
            QueueBindOptions::default(),
            table(&[("x-match", s("some"))]),
        )
        .await;
    assert_eq!(
        failure(r),
        (
            406,
            "PRECONDITION_FAILED - Invalid x-match field value <<\"some\">>; expected all, any, all-with-x, or any-with-x".to_string()
        )
    );
}

#[tokio::test]
async fn exchange_to_exchange_bindings_route_through_and_unbind() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let fanout = ExchangeDeclareOptions::default();
    let top = declare_exchange(&ch, "e2e-top", ExchangeKind::Topic, fanout, no_args()).await;
    let mid = declare_exchange(&ch, "e2e-mid", ExchangeKind::Direct, fanout, no_args()).await;
    let leaf = declare_exchange(&ch, "e2e-leaf", ExchangeKind::Fanout, fanout, no_args()).await;
    let q_mid = declare_queue(&ch, "e2e-mid").await;
    let q_leaf = declare_queue(&ch, "e2e-leaf").await;
    bind_exchange(&ch, &mid, &top, "stock.#").await;
    bind_exchange(&ch, &leaf, &mid, "stock.eur").await;
    bind(&ch, &q_mid, &mid, "stock.usd", no_args()).await;
    bind(&ch, &q_leaf, &leaf, "", no_args()).await;
    // A second path to the same queue still delivers one copy.
    bind(&ch, &q_leaf, &top, "stock.eur", no_args()).await;

    publish(&ch, &top, "stock.usd", "usd").await;
    publish(&ch, &top, "stock.eur", "eur").await;
    publish(&ch, &top, "bond.eur", "bond").await;
    assert_eq!(drain(&ch, &q_mid).await, ["usd"]);
    assert_eq!(drain(&ch, &q_leaf).await, ["eur"]);

    ch.exchange_unbind(
        mid.as_str().into(),
        top.as_str().into(),
        "stock.#".into(),
        ExchangeUnbindOptions::default(),
        no_args(),
    )
    .await
    .expect("exchange.unbind");
    publish(&ch, &top, "stock.usd", "usd2").await;
    publish(&ch, &top, "stock.eur", "eur2").await;
    assert_eq!(drain(&ch, &q_mid).await, Vec::<String>::new());
    assert_eq!(drain(&ch, &q_leaf).await, ["eur2"]);

    // Deleting a destination exchange removes the bindings to it.
    bind_exchange(&ch, &mid, &top, "stock.#").await;
    ch.exchange_delete(mid.as_str().into(), ExchangeDeleteOptions::default())
        .await
        .expect("delete mid");
    let c = publish_with(
        &ch,
        &top,
        "stock.usd",
        "gone",
        true,
        BasicProperties::default(),
    )
    .await;
    assert!(c.take_message().is_some(), "unroutable once mid is gone");
    delete_exchanges(&ch, [top, leaf]).await;
}

#[tokio::test]
async fn exchange_binding_cycle_delivers_once_and_terminates() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let o = ExchangeDeclareOptions::default();
    let a = declare_exchange(&ch, "cycle-a", ExchangeKind::Fanout, o, no_args()).await;
    let b = declare_exchange(&ch, "cycle-b", ExchangeKind::Fanout, o, no_args()).await;
    let c = declare_exchange(&ch, "cycle-c", ExchangeKind::Topic, o, no_args()).await;
    bind_exchange(&ch, &b, &a, "").await;
    bind_exchange(&ch, &c, &b, "").await;
    bind_exchange(&ch, &a, &c, "#").await;
    bind_exchange(&ch, &a, &a, "").await;
    let qa = declare_queue(&ch, "cycle-a").await;
    let qc = declare_queue(&ch, "cycle-c").await;
    bind(&ch, &qa, &a, "", no_args()).await;
    bind(&ch, &qc, &c, "k", no_args()).await;
    for start in [&a, &b, &c] {
        publish(&ch, start, "k", start).await;
    }
    assert_eq!(drain(&ch, &qa).await, [a.as_str(), b.as_str(), c.as_str()]);
    assert_eq!(drain(&ch, &qc).await, [a.as_str(), b.as_str(), c.as_str()]);
    delete_exchanges(&ch, [a, b, c]).await;
}

#[tokio::test]
async fn queue_unbind_stops_routing_and_missing_bindings_are_fine() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let q = declare_queue(&ch, "unbind").await;
    bind(&ch, &q, "amq.direct", &q, no_args()).await;
    publish(&ch, "amq.direct", &q, "before").await;
    for _ in 0..2 {
        ch.queue_unbind(
            q.as_str().into(),
            "amq.direct".into(),
            q.as_str().into(),
            no_args(),
        )
        .await
        .expect("unbind (twice is fine)");
    }
    publish(&ch, "amq.direct", &q, "after").await;
    assert_eq!(drain(&ch, &q).await, ["before"]);

    // RabbitMQ treats unbinding from or to something absent as done.
    let missing = unique("no-such-exchange");
    ch.queue_unbind(
        q.as_str().into(),
        missing.as_str().into(),
        "k".into(),
        no_args(),
    )
    .await
    .expect("unbind from a missing exchange");
    ch.queue_unbind(
        missing.as_str().into(),
        "amq.direct".into(),
        "k".into(),
        no_args(),
    )
    .await
    .expect("unbind of a missing queue");
    ch.exchange_unbind(
        missing.as_str().into(),
        "amq.direct".into(),
        "k".into(),
        ExchangeUnbindOptions::default(),
        no_args(),
    )
    .await
    .expect("exchange.unbind of a missing destination");
    let r = ch
        .queue_bind(
            q.as_str().into(),
            missing.as_str().into(),
            "k".into(),
            QueueBindOptions::default(),
            no_args(),
        )
        .await;
    assert_eq!(
        failure(r),
        (
            404,
            format!("NOT_FOUND - no exchange '{missing}' in vhost '/'")
        )
    );
}

#[tokio::test]
async fn auto_delete_exchange_goes_with_its_last_binding() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let auto = auto_delete_exchange();
    let x = declare_exchange(&ch, "auto", ExchangeKind::Direct, auto, no_args()).await;
    // Not before it ever had a binding.
    assert!(exchange_exists(&env, &x).await);
    let q1 = declare_queue(&ch, "auto1").await;
    let q2 = declare_queue(&ch, "auto2").await;
    bind(&ch, &q1, &x, "k", no_args()).await;
    bind(&ch, &q2, &x, "k", no_args()).await;
    ch.queue_unbind(q1.as_str().into(), x.as_str().into(), "k".into(), no_args())
        .await
        .expect("unbind");
    assert!(exchange_exists(&env, &x).await, "one binding left");
    ch.queue_delete(q2.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
    assert!(
        !exchange_exists(&env, &x).await,
        "last binding went with q2"
    );

    // The same for an exchange-to-exchange binding.
    let y = declare_exchange(&ch, "auto-src", ExchangeKind::Fanout, auto, no_args()).await;
    bind_exchange(&ch, "amq.fanout", &y, "").await;
    ch.exchange_unbind(
        "amq.fanout".into(),
        y.as_str().into(),
        "".into(),
        ExchangeUnbindOptions::default(),
        no_args(),
    )
    .await
    .expect("exchange.unbind");
    assert!(!exchange_exists(&env, &y).await);
}

#[tokio::test]
async fn alternate_exchange_takes_unroutable_messages() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let o = ExchangeDeclareOptions::default();
    let ae = declare_exchange(&ch, "ae", ExchangeKind::Fanout, o, no_args()).await;
    let x = declare_exchange(
        &ch,
        "with-ae",
        ExchangeKind::Direct,
        o,
        table(&[("alternate-exchange", s(&ae))]),
    )
    .await;
    let routed = declare_queue(&ch, "ae-routed").await;
    let unrouted = declare_queue(&ch, "ae-unrouted").await;
    bind(&ch, &routed, &x, "known", no_args()).await;
    bind(&ch, &unrouted, &ae, "", no_args()).await;

    let c = publish_with(&ch, &x, "known", "routed", true, BasicProperties::default()).await;
    assert_eq!(c, Confirmation::Ack(None));
    let c = publish_with(
        &ch,
        &x,
        "unknown",
        "to the ae",
        true,
        BasicProperties::default(),
    )
    .await;
    // Routed via the AE, so a mandatory message is not returned.
    assert_eq!(c, Confirmation::Ack(None));
    assert_eq!(drain(&ch, &routed).await, ["routed"]);
    assert_eq!(drain(&ch, &unrouted).await, ["to the ae"]);

    // When the AE routes nowhere either, a mandatory message comes back.
    ch.queue_unbind(
        unrouted.as_str().into(),
        ae.as_str().into(),
        "".into(),
        no_args(),
    )
    .await
    .expect("unbind");
    let c = publish_with(&ch, &x, "unknown", "lost", true, BasicProperties::default()).await;
    let returned = c.take_message().expect("returned");
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.data, b"lost");

    // An AE that does not exist just means unroutable.
    let y = declare_exchange(
        &ch,
        "dangling-ae",
        ExchangeKind::Direct,
        o,
        table(&[("alternate-exchange", s(&unique("absent")))]),
    )
    .await;
    let c = publish_with(&ch, &y, "k", "nowhere", true, BasicProperties::default()).await;
    assert!(c.take_message().is_some());
    delete_exchanges(&ch, [x, y, ae]).await;
}

#[tokio::test]
async fn alternate_exchanges_chain_and_cycles_end() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let o = ExchangeDeclareOptions::default();
    let a = unique("ae-cycle-a");
    let b = unique("ae-cycle-b");
    for (name, ae) in [(&a, &b), (&b, &a)] {
        ch.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Direct,
            o,
            table(&[("alternate-exchange", s(ae))]),
        )
        .await
        .expect("declare");
    }
    let q = declare_queue(&ch, "ae-chain").await;
    bind(&ch, &q, &b, "only-b", no_args()).await;
    let c = publish_with(&ch, &a, "only-b", "via b", true, BasicProperties::default()).await;
    assert_eq!(c, Confirmation::Ack(None));
    let c = publish_with(&ch, &a, "nothing", "loop", true, BasicProperties::default()).await;
    assert!(c.take_message().is_some(), "a cycle of AEs routes nowhere");
    assert_eq!(drain(&ch, &q).await, ["via b"]);
    let names: BTreeSet<String> = [a, b].into_iter().collect();
    delete_exchanges(&ch, names).await;
}

#[tokio::test]
async fn alternate_exchange_is_used_only_when_the_exchange_itself_matches_nothing() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let o = ExchangeDeclareOptions::default();
    let ae = declare_exchange(&ch, "ae-only-own", ExchangeKind::Fanout, o, no_args()).await;
    let x = declare_exchange(
        &ch,
        "ae-owner",
        ExchangeKind::Direct,
        o,
        table(&[("alternate-exchange", s(&ae))]),
    )
    .await;
    // x routes "k" to y, which routes nowhere: x matched something, so its AE stays out.
    let y = declare_exchange(&ch, "ae-empty-dest", ExchangeKind::Fanout, o, no_args()).await;
    bind_exchange(&ch, &y, &x, "k").await;
    let q = declare_queue(&ch, "ae-only-own").await;
    bind(&ch, &q, &ae, "", no_args()).await;
    let c = publish_with(&ch, &x, "k", "to y", true, BasicProperties::default()).await;
    assert!(c.take_message().is_some(), "unroutable: y had no bindings");
    let c = publish_with(
        &ch,
        &x,
        "other",
        "to the ae",
        true,
        BasicProperties::default(),
    )
    .await;
    assert_eq!(c, Confirmation::Ack(None));
    assert_eq!(drain(&ch, &q).await, ["to the ae"]);

    // A queue reached on two paths gets one copy.
    bind(&ch, &q, &x, "both", no_args()).await;
    bind(&ch, &q, &y, "", no_args()).await;
    ch.queue_unbind(q.as_str().into(), ae.as_str().into(), "".into(), no_args())
        .await
        .expect("unbind from the ae");
    bind_exchange(&ch, &y, &x, "both").await;
    let c = publish_with(&ch, &x, "both", "once", true, BasicProperties::default()).await;
    assert_eq!(c, Confirmation::Ack(None));
    assert_eq!(drain(&ch, &q).await, ["once"]);
    delete_exchanges(&ch, [x, y, ae]).await;
}

#[tokio::test]
async fn layered_exchange_graph_visits_each_exchange_once() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let o = ExchangeDeclareOptions::default();
    // 40 layers of two fanouts, each bound to both of the next layer: 2^40 paths, 80 exchanges.
    let mut layers: Vec<[String; 2]> = Vec::new();
    for i in 0..40 {
        let pair = [
            declare_exchange(
                &ch,
                &format!("layer{i}a"),
                ExchangeKind::Fanout,
                o,
                no_args(),
            )
            .await,
            declare_exchange(
                &ch,
                &format!("layer{i}b"),
                ExchangeKind::Fanout,
                o,
                no_args(),
            )
            .await,
        ];
        if let Some(prev) = layers.last() {
            for src in prev {
                for dst in &pair {
                    bind_exchange(&ch, dst, src, "").await;
                }
            }
        }
        layers.push(pair);
    }
    let q = declare_queue(&ch, "layered").await;
    for x in layers.last().expect("layers") {
        bind(&ch, &q, x, "", no_args()).await;
    }
    let top = layers[0][0].clone();
    let published = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        publish(&ch, &top, "", "through 80 exchanges"),
    )
    .await;
    assert!(published.is_ok(), "routing did not finish");
    assert_eq!(drain(&ch, &q).await, ["through 80 exchanges"]);
    delete_exchanges(&ch, layers.into_iter().flatten()).await;
}

#[tokio::test]
async fn topic_words_may_be_empty() {
    let env = Env::start().await;
    let (_c, ch) = env.confirm_channel().await;
    let x = declare_exchange(
        &ch,
        "topic-empty-words",
        ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        no_args(),
    )
    .await;
    let patterns = ["*.*", "a.*.b", "a.#", "", "#.", "*"];
    let mut queues = Vec::new();
    for p in patterns {
        let q = declare_queue(&ch, "topic-empty-words").await;
        bind(&ch, &q, &x, p, no_args()).await;
        queues.push(q);
    }
    for k in ["a..b", ".", "a.", "", "a", "..", "a.b"] {
        publish(&ch, &x, k, k).await;
    }
    let want: [&[&str]; 6] = [
        &[".", "a.", "a.b"],
        &["a..b"],
        &["a..b", "a.", "a", "a.b"],
        &[""],
        &[".", "a.", ".."],
        &["a"],
    ];
    for ((q, p), want) in queues.iter().zip(patterns).zip(want) {
        assert_eq!(drain(&ch, q).await, want, "pattern {p:?}");
    }
}

#[tokio::test]
async fn exchange_bind_needs_both_exchanges() {
    let env = Env::start().await;
    let conn = env.connect().await;
    let missing = unique("missing");
    for (destination, source) in [
        (missing.as_str(), "amq.direct"),
        ("amq.direct", missing.as_str()),
    ] {
        let ch = conn.create_channel().await.expect("channel");
        let r = ch
            .exchange_bind(
                destination.into(),
                source.into(),
                "k".into(),
                ExchangeBindOptions::default(),
                no_args(),
            )
            .await;
        assert_eq!(
            failure(r),
            (
                404,
                format!("NOT_FOUND - no exchange '{missing}' in vhost '/'")
            )
        );
    }
    let ch = conn.create_channel().await.expect("channel");
    let r = ch
        .exchange_bind(
            "".into(),
            "amq.direct".into(),
            "k".into(),
            ExchangeBindOptions::default(),
            no_args(),
        )
        .await;
    assert_eq!(failure(r).0, 403);
}
