//! The Prometheus endpoint, on its own listener as RabbitMQ's `rabbitmq_prometheus` plugin:
//! `GET /metrics` (aggregated) and `GET /metrics/per-object` (a series per queue, channel and
//! connection), in the text exposition format, with RabbitMQ's metric names, types and labels so
//! that its Grafana dashboards read Warren unchanged. Per-object series that RabbitMQ labels
//! with an Erlang pid carry Warren's channel or connection name instead.
//!
//! A scrape reads the relaxed counters the work keeps and each queue's levels under its lock
//! for a moment, as the API's listings do: it never holds up the message path.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::overview::{RABBITMQ_VERSION, node_name, resident_bytes};
use crate::broker::Broker;
use crate::broker::sampling::live_channels;
use crate::queue::alarms::Alarm;
use crate::queue::args::QueueType;
use crate::queue::dead_letter::Reason;
use crate::stats::{SIZE_BOUNDS, Stat, Totals};

/// The exposition format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves the metrics on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/metrics", get(aggregated))
        .route("/metrics/per-object", get(per_object))
        .with_state(broker);
    super::serve_until(listener, tls, app, shutdown, "prometheus metrics").await;
}

async fn aggregated(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        render(&broker, false),
    )
}

async fn per_object(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        render(&broker, true),
    )
}

/// Metric text being written: families, each with its samples.
struct Out(String);

impl Out {
    /// Starts a family, as RabbitMQ writes one: its type, then its help.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = write!(self.0, "# TYPE {name} {kind}\n# HELP {name} {help}\n");
    }

    /// One sample of the family just started.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.raw(name, &label_text(labels), value);
    }

    /// One sample whose labels were written already (`k="v",...`, or empty for none).
    fn raw(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            self.0.push_str(labels);
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family of one sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Labels as the format writes them: `k="v"`, comma-separated.
fn label_text(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_into(&mut out, v);
        out.push('"');
    }
    out
}

/// One family's samples: one per object, labelled, or with `per_object` false their sum
/// (objects then carry no labels).
fn series<R>(
    out: &mut Out,
    name: &str,
    rows: &[(String, R)],
    per_object: bool,
    value: impl Fn(&R) -> u64,
) {
    if per_object {
        for (labels, r) in rows {
            out.raw(name, labels, value(r));
        }
    } else {
        out.raw(name, "", rows.iter().map(|(_, r)| value(r)).sum::<u64>());
    }
}

/// The labels of one object: written only when the scrape is per object.
fn object_labels(per_object: bool, labels: &[(&str, &str)]) -> String {
    if per_object {
        label_text(labels)
    } else {
        String::new()
    }
}

/// A label value as the format wants it: backslash, double quote and newline escaped.
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The levels and counts of one queue, or of all of them summed.
struct QueueFigures {
    ready: u64,
    unacked: u64,
    ready_bytes: u64,
    unacked_bytes: u64,
    consumers: u64,
    published: u64,
}

/// A family's name, type and help, and the figure it shows of `T`.
type Family<T> = (&'static str, &'static str, &'static str, fn(&T) -> u64);

/// The per-queue families.
const QUEUE_FAMILIES: &[Family<QueueFigures>] = &[
    (
        "rabbitmq_queue_messages_ready",
        "gauge",
        "Messages ready to be delivered to consumers",
        |f| f.ready,
    ),
    (
        "rabbitmq_queue_messages_unacked",
        "gauge",
        "Messages delivered to consumers but not yet acknowledged",
        |f| f.unacked,
    ),
    (
        "rabbitmq_queue_messages",
        "gauge",
        "Sum of ready and unacknowledged messages - total queue depth",
        |f| f.ready + f.unacked,
    ),
    (
        "rabbitmq_queue_consumers",
        "gauge",
        "Consumers on a queue",
        |f| f.consumers,
    ),
    (
        "rabbitmq_queue_messages_bytes",
        "gauge",
        "Size in bytes of ready and unacknowledged messages",
        |f| f.ready_bytes + f.unacked_bytes,
    ),
    (
        "rabbitmq_queue_messages_ready_bytes",
        "gauge",
        "Size in bytes of ready messages",
        |f| f.ready_bytes,
    ),
    (
        "rabbitmq_queue_messages_unacked_bytes",
        "gauge",
        "Size in bytes of all unacknowledged messages",
        |f| f.unacked_bytes,
    ),
    (
        "rabbitmq_queue_messages_published_total",
        "counter",
        "Total number of messages published to queues",
        |f| f.published,
    ),
];

/// A channel's figures: its levels, then its counters.
struct ChannelFigures {
    consumers: u64,
    unacked: u64,
    unconfirmed: u64,
    uncommitted: u64,
    acks_uncommitted: u64,
    prefetch: u64,
    global_prefetch: u64,
    totals: Totals,
}

/// The per-channel gauges.
const CHANNEL_GAUGES: &[Family<ChannelFigures>] = &[
    (
        "rabbitmq_channel_consumers",
        "gauge",
        "Consumers on a channel",
        |f| f.consumers,
    ),
    (
        "rabbitmq_channel_messages_unacked",
        "gauge",
        "Delivered but not yet acknowledged messages",
        |f| f.unacked,
    ),
    (
        "rabbitmq_channel_messages_unconfirmed",
        "gauge",
        "Published but not yet confirmed messages",
        |f| f.unconfirmed,
    ),
    (
        "rabbitmq_channel_messages_uncommitted",
        "gauge",
        "Messages received in a transaction but not yet committed",
        |f| f.uncommitted,
    ),
    (
        "rabbitmq_channel_acks_uncommitted",
        "gauge",
        "Message acknowledgements in a transaction not yet committed",
        |f| f.acks_uncommitted,
    ),
    (
        "rabbitmq_consumer_prefetch",
        "gauge",
        "Limit of unacknowledged messages for each consumer",
        |f| f.prefetch,
    ),
    (
        "rabbitmq_channel_prefetch",
        "gauge",
        "Total limit of unacknowledged messages for all consumers on a channel",
        |f| f.global_prefetch,
    ),
];

/// The per-channel counters, by the counter each shows.
const CHANNEL_COUNTERS: &[(&str, &str, Stat)] = &[
    (
        "rabbitmq_channel_messages_published_total",
        "Total number of messages published into an exchange on a channel",
        Stat::Publish,
    ),
    (
        "rabbitmq_channel_messages_confirmed_total",
        "Total number of messages published into an exchange and confirmed on the channel",
        Stat::Confirm,
    ),
    (
        "rabbitmq_channel_messages_unroutable_returned_total",
        "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
        Stat::ReturnUnroutable,
    ),
    (
        "rabbitmq_channel_messages_unroutable_dropped_total",
        "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
        Stat::DropUnroutable,
    ),
    (
        "rabbitmq_channel_get_ack_total",
        "Total number of messages fetched with basic.get in manual acknowledgement mode",
        Stat::Get,
    ),
    (
        "rabbitmq_channel_get_total",
        "Total number of messages fetched with basic.get in automatic acknowledgement mode",
        Stat::GetNoAck,
    ),
    (
        "rabbitmq_channel_messages_delivered_ack_total",
        "Total number of messages delivered to consumers in manual acknowledgement mode",
        Stat::Deliver,
    ),
    (
        "rabbitmq_channel_messages_delivered_total",
        "Total number of messages delivered to consumers in automatic acknowledgement mode",
        Stat::DeliverNoAck,
    ),
    (
        "rabbitmq_channel_messages_redelivered_total",
        "Total number of messages redelivered to consumers",
        Stat::Redeliver,
    ),
    (
        "rabbitmq_channel_messages_acked_total",
        "Total number of messages acknowledged by consumers",
        Stat::Ack,
    ),
    (
        "rabbitmq_channel_get_empty_total",
        "Total number of times basic.get operations fetched no message",
        Stat::GetEmpty,
    ),
];

/// The per-connection counters.
const CONNECTION_COUNTERS: &[(&str, &str, Stat)] = &[
    (
        "rabbitmq_connection_incoming_bytes_total",
        "Total number of bytes received on a connection",
        Stat::RecvOct,
    ),
    (
        "rabbitmq_connection_outgoing_bytes_total",
        "Total number of bytes sent on a connection",
        Stat::SendOct,
    ),
    (
        "rabbitmq_connection_incoming_packets_total",
        "Total number of packets received on a connection",
        Stat::RecvCnt,
    ),
    (
        "rabbitmq_connection_outgoing_packets_total",
        "Total number of packets sent on a connection",
        Stat::SendCnt,
    ),
];

/// RabbitMQ's name of a queue type, as its metrics label it.
fn queue_type_label(t: QueueType) -> &'static str {
    match t {
        QueueType::Classic => "rabbit_classic_queue",
        QueueType::Quorum => "rabbit_quorum_queue",
        QueueType::Stream => "rabbit_stream_queue",
    }
}

/// Open file descriptors, and the most the process may have.
pub(super) fn fds() -> (u64, u64) {
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let max = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))?
                .split_whitespace()
                .nth(3)?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    (open, max)
}

/// The whole scrape.
fn render(broker: &Broker, per_object: bool) -> String {
    let mut out = Out(String::with_capacity(64 * 1024));
    node(&mut out, broker);
    queues_and_globals(&mut out, broker, per_object);
    channels_and_connections(&mut out, broker, per_object);
    out.0
}

/// Who the node is, what it has and what came and went.
fn node(out: &mut Out, broker: &Broker) {
    let cluster = node_name();
    out.family(
        "rabbitmq_identity_info",
        "untyped",
        "RabbitMQ node & cluster identity info",
    );
    out.sample(
        "rabbitmq_identity_info",
        &[
            ("rabbitmq_node", cluster),
            ("rabbitmq_cluster", cluster),
            ("rabbitmq_cluster_permanent_id", cluster),
        ],
        1,
    );
    out.family(
        "rabbitmq_build_info",
        "untyped",
        "RabbitMQ & Erlang/OTP version info",
    );
    out.sample(
        "rabbitmq_build_info",
        &[
            ("rabbitmq_version", RABBITMQ_VERSION),
            ("prometheus_plugin_version", RABBITMQ_VERSION),
            ("prometheus_client_version", "warren"),
            ("erlang_version", "none"),
            ("product", "Warren"),
            ("product_version", env!("CARGO_PKG_VERSION")),
        ],
        1,
    );
    let churn = broker.churn();
    for (i, (name, help)) in [
        (
            "rabbitmq_connections_opened_total",
            "Total number of connections opened",
        ),
        (
            "rabbitmq_connections_closed_total",
            "Total number of connections closed or terminated",
        ),
        (
            "rabbitmq_channels_opened_total",
            "Total number of channels opened",
        ),
        (
            "rabbitmq_channels_closed_total",
            "Total number of channels closed",
        ),
        (
            "rabbitmq_queues_declared_total",
            "Total number of queues declared",
        ),
        (
            "rabbitmq_queues_created_total",
            "Total number of queues created",
        ),
        (
            "rabbitmq_queues_deleted_total",
            "Total number of queues deleted",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        out.single(name, "counter", help, churn[i].0);
    }
    let (open_fds, max_fds) = fds();
    let raised = broker.alarms.raised();
    let connections = broker.connections.len();
    let gauges: [(&str, &str, u64); 8] = [
        (
            "rabbitmq_process_open_fds",
            "Open file descriptors",
            open_fds,
        ),
        (
            "rabbitmq_process_open_tcp_sockets",
            "Open TCP sockets",
            connections as u64,
        ),
        (
            "rabbitmq_process_resident_memory_bytes",
            "Memory used in bytes",
            resident_bytes(),
        ),
        (
            "rabbitmq_disk_space_available_bytes",
            "Disk space available in bytes",
            broker.alarms.disk_free(),
        ),
        (
            "rabbitmq_process_max_fds",
            "Open file descriptors limit",
            max_fds,
        ),
        (
            "rabbitmq_process_max_tcp_sockets",
            "Open TCP sockets limit",
            max_fds,
        ),
        (
            "rabbitmq_resident_memory_limit_bytes",
            "Memory high watermark in bytes",
            broker.config.memory_budget_bytes(),
        ),
        (
            "rabbitmq_disk_space_available_limit_bytes",
            "Free disk space low watermark in bytes",
            broker.alarms.disk_free_limit(),
        ),
    ];
    for (name, help, v) in gauges {
        out.single(name, "gauge", help, v);
    }
    let proto = [("protocol", "amqp091")];
    let tried = broker.auth_attempts[0].load(Relaxed);
    let passed = broker.auth_attempts[1].load(Relaxed);
    for (name, help, v) in [
        (
            "rabbitmq_auth_attempts_total",
            "Total number of authentication attempts",
            tried,
        ),
        (
            "rabbitmq_auth_attempts_succeeded_total",
            "Total number of successful authentication attempts",
            passed,
        ),
        (
            "rabbitmq_auth_attempts_failed_total",
            "Total number of failed authentication attempts",
            tried.saturating_sub(passed),
        ),
    ] {
        out.family(name, "counter", help);
        out.sample(name, &proto, v);
    }
    warren_own(out, broker);
    for (name, help, on) in [
        (
            "rabbitmq_alarms_file_descriptor_limit",
            "is 1 if file descriptor limit alarm is in effect",
            false,
        ),
        (
            "rabbitmq_alarms_free_disk_space_watermark",
            "is 1 if free disk space watermark alarm is in effect",
            raised.has(Alarm::Disk),
        ),
        (
            "rabbitmq_alarms_memory_used_watermark",
            "is 1 if VM memory watermark alarm is in effect",
            raised.has(Alarm::Memory),
        ),
    ] {
        out.single(name, "untyped", help, u8::from(on));
    }
}

/// Warren's own figures, where RabbitMQ has none that say the same: the store's group commits
/// and paging.
fn warren_own(out: &mut Out, broker: &Broker) {
    if let Some(store) = broker.store() {
        let st = &store.stats;
        out.single(
            "warren_store_batches_total",
            "counter",
            "Batches the store wrote and synced to disk (group commits)",
            st.batches.load(Relaxed),
        );
        out.single(
            "warren_store_write_seconds_total",
            "counter",
            "Time spent writing and syncing batches; divided by warren_store_batches_total, the mean commit latency",
            st.write_micros.load(Relaxed) as f64 / 1e6,
        );
        out.single(
            "warren_store_messages_written_total",
            "counter",
            "Queued messages written to the store; divided by warren_store_batches_total, the mean batch size",
            st.enqueued.load(Relaxed),
        );
        out.single(
            "warren_store_write_failures_total",
            "counter",
            "Batches the store could not write",
            st.failed.load(Relaxed),
        );
    }
    if let Some(pager) = broker.pager() {
        out.single(
            "warren_messages_paged_out_total",
            "counter",
            "Queued messages written out to page files past the memory budget",
            pager.paged_out(),
        );
    }
    out.single(
        "warren_queued_message_bytes",
        "gauge",
        "Bytes of queued messages held in memory",
        broker.memory.ready_bytes(),
    );
    let name = "warren_limit_refusals_total";
    out.family(
        name,
        "counter",
        "Refusals that enforced a limit, by the setting that sets it",
    );
    for limit in crate::protocol::Limit::ALL {
        out.sample(name, &[("limit", limit.name())], broker.limits.get(limit));
    }
    out.single(
        "warren_auth_attempts_delayed_total",
        "counter",
        "Login attempts that waited because earlier ones from their address failed",
        broker.logins.delayed(),
    );
}

/// Queue levels (per queue or summed), the object counts, and the global message counters.
fn queues_and_globals(out: &mut Out, broker: &Broker, per_object: bool) {
    let vhosts = broker.vhosts();
    // Queue-side counts by queue type (classic, quorum, stream), deleted queues' included.
    let mut by_type = [Totals::default(); 3];
    let mut dead = [([0u64; 4], [0u64; 4]); 3];
    let mut rows: Vec<(String, QueueFigures)> = Vec::new();
    for v in &vhosts {
        for (t, retired) in by_type.iter_mut().zip(v.retired_queue_totals()) {
            *t += &retired;
        }
        for q in v.queues() {
            let s = q.stats();
            let totals = q.counters.totals();
            let kind = q.args.queue_type as usize;
            by_type[kind] += &totals;
            let (sent, dropped) = q.dead_lettered.counts();
            for i in 0..4 {
                dead[kind].0[i] += sent[i];
                dead[kind].1[i] += dropped[i];
            }
            let labels = object_labels(per_object, &[("vhost", &q.vhost), ("queue", &q.name)]);
            rows.push((
                labels,
                QueueFigures {
                    ready: s.ready,
                    unacked: s.unacked,
                    ready_bytes: s.ready_bytes,
                    unacked_bytes: s.unacked_bytes,
                    consumers: u64::from(s.consumers),
                    published: totals.get(Stat::Publish),
                },
            ));
        }
    }
    for &(name, kind, help, pick) in QUEUE_FAMILIES {
        out.family(name, kind, help);
        series(out, name, &rows, per_object, pick);
    }
    let consumers: u64 = rows.iter().map(|(_, f)| f.consumers).sum();
    let channels: u64 = broker
        .connections
        .list()
        .iter()
        .map(|c| u64::from(c.channels()))
        .sum();
    out.single(
        "rabbitmq_connections",
        "gauge",
        "Connections currently open",
        broker.connections.len(),
    );
    out.single(
        "rabbitmq_channels",
        "gauge",
        "Channels currently open",
        channels,
    );
    out.single(
        "rabbitmq_consumers",
        "gauge",
        "Consumers currently connected",
        consumers,
    );
    out.single("rabbitmq_queues", "gauge", "Queues available", rows.len());
    globals(out, broker, consumers, &by_type, &dead);
    message_sizes(out, broker);
}

/// The sizes of the messages publishers sent, as the histogram later RabbitMQ versions serve.
fn message_sizes(out: &mut Out, broker: &Broker) {
    let mut buckets = [0u64; 13];
    let mut sum = 0u64;
    let mut add = |h: &crate::stats::SizeHistogram| {
        let (b, s) = h.read();
        for (x, n) in buckets.iter_mut().zip(b) {
            *x += n;
        }
        sum += s;
    };
    for v in broker.vhosts() {
        add(&v.retired_sizes);
    }
    for c in broker.connections.list() {
        for ch in live_channels(&c) {
            add(&ch.sizes);
        }
    }
    let name = "rabbitmq_message_size_bytes";
    out.family(
        name,
        "histogram",
        "Size of messages received from publishers",
    );
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for (i, n) in buckets.iter().enumerate() {
        cumulative += n;
        let le = SIZE_BOUNDS
            .get(i)
            .map_or_else(|| "+Inf".to_owned(), u64::to_string);
        out.sample(&bucket, &[("protocol", "amqp091"), ("le", &le)], cumulative);
    }
    out.sample(&format!("{name}_sum"), &[("protocol", "amqp091")], sum);
    out.sample(
        &format!("{name}_count"),
        &[("protocol", "amqp091")],
        cumulative,
    );
}

/// RabbitMQ's `rabbitmq_global_*` counters: what publishers did (from the channels) and what
/// queues did, by queue type.
fn globals(
    out: &mut Out,
    broker: &Broker,
    consumers: u64,
    by_type: &[Totals; 3],
    dead: &[([u64; 4], [u64; 4]); 3],
) {
    let proto = ("protocol", "amqp091");
    out.family(
        "rabbitmq_global_consumers",
        "gauge",
        "Current number of consumers",
    );
    out.sample("rabbitmq_global_consumers", &[proto], consumers);
    let channels = broker.totals_now();
    let publishers = broker
        .connections
        .list()
        .iter()
        .flat_map(|c| live_channels(c))
        .filter(|ch| ch.counters.get(Stat::Publish) > 0)
        .count();
    out.family(
        "rabbitmq_global_publishers",
        "gauge",
        "Current number of publishers",
    );
    out.sample("rabbitmq_global_publishers", &[proto], publishers);
    let routed = channels
        .get(Stat::Publish)
        .saturating_sub(channels.get(Stat::ReturnUnroutable))
        .saturating_sub(channels.get(Stat::DropUnroutable));
    for (name, help, v) in [
        (
            "rabbitmq_global_messages_received_total",
            "Total number of messages received from publishers",
            channels.get(Stat::Publish),
        ),
        (
            "rabbitmq_global_messages_received_confirm_total",
            "Total number of messages received from publishers expecting confirmations",
            channels.get(Stat::ReceivedConfirm),
        ),
        (
            "rabbitmq_global_messages_routed_total",
            "Total number of messages routed to queues or streams",
            routed,
        ),
        (
            "rabbitmq_global_messages_confirmed_total",
            "Total number of messages confirmed to publishers",
            channels.get(Stat::Confirm),
        ),
        (
            "rabbitmq_global_messages_unroutable_dropped_total",
            "Total number of messages published as non-mandatory into an exchange and dropped as unroutable",
            channels.get(Stat::DropUnroutable),
        ),
        (
            "rabbitmq_global_messages_unroutable_returned_total",
            "Total number of messages published as mandatory into an exchange and returned to the publisher as unroutable",
            channels.get(Stat::ReturnUnroutable),
        ),
    ] {
        out.family(name, "counter", help);
        out.sample(name, &[proto], v);
    }
    fn delivered(t: &Totals) -> u64 {
        t.get(Stat::Deliver) + t.get(Stat::DeliverNoAck) + t.get(Stat::Get) + t.get(Stat::GetNoAck)
    }
    let per_queue: [Family<Totals>; 8] = [
        (
            "rabbitmq_global_messages_acknowledged_total",
            "counter",
            "Total number of messages acknowledged by consumers",
            |t| t.get(Stat::Ack),
        ),
        (
            "rabbitmq_global_messages_delivered_total",
            "counter",
            "Total number of messages delivered to consumers",
            delivered,
        ),
        (
            "rabbitmq_global_messages_delivered_consume_auto_ack_total",
            "counter",
            "Total number of messages delivered to consumers using basic.consume with automatic acknowledgment",
            |t| t.get(Stat::DeliverNoAck),
        ),
        (
            "rabbitmq_global_messages_delivered_consume_manual_ack_total",
            "counter",
            "Total number of messages delivered to consumers using basic.consume with manual acknowledgment",
            |t| t.get(Stat::Deliver),
        ),
        (
            "rabbitmq_global_messages_delivered_get_auto_ack_total",
            "counter",
            "Total number of messages delivered to consumers using basic.get with automatic acknowledgment",
            |t| t.get(Stat::GetNoAck),
        ),
        (
            "rabbitmq_global_messages_delivered_get_manual_ack_total",
            "counter",
            "Total number of messages delivered to consumers using basic.get with manual acknowledgment",
            |t| t.get(Stat::Get),
        ),
        (
            "rabbitmq_global_messages_get_empty_total",
            "counter",
            "Total number of times basic.get operations fetched no message",
            |t| t.get(Stat::GetEmpty),
        ),
        (
            "rabbitmq_global_messages_redelivered_total",
            "counter",
            "Total number of messages redelivered to consumers",
            |t| t.get(Stat::Redeliver),
        ),
    ];
    for (name, kind, help, pick) in per_queue {
        out.family(name, kind, help);
        for kind in [QueueType::Classic, QueueType::Quorum, QueueType::Stream] {
            out.sample(
                name,
                &[proto, ("queue_type", queue_type_label(kind))],
                pick(&by_type[kind as usize]),
            );
        }
    }
    for (i, reason) in Reason::ALL.into_iter().enumerate() {
        let (name, help) = match reason {
            Reason::Rejected => (
                "rabbitmq_global_messages_dead_lettered_rejected_total",
                "Total number of messages dead-lettered due to basic.reject or basic.nack",
            ),
            Reason::Expired => (
                "rabbitmq_global_messages_dead_lettered_expired_total",
                "Total number of messages dead-lettered due to message TTL exceeded",
            ),
            Reason::Maxlen => (
                "rabbitmq_global_messages_dead_lettered_maxlen_total",
                "Total number of messages dead-lettered due to overflow drop-head or reject-publish-dlx",
            ),
            Reason::DeliveryLimit => (
                "rabbitmq_global_messages_dead_lettered_delivery_limit_total",
                "Total number of messages dead-lettered due to delivery-limit exceeded",
            ),
        };
        out.family(name, "counter", help);
        for kind in [QueueType::Classic, QueueType::Quorum, QueueType::Stream] {
            let (sent, dropped) = dead[kind as usize];
            let t = ("queue_type", queue_type_label(kind));
            out.sample(
                name,
                &[t, ("dead_letter_strategy", "at_most_once")],
                sent[i],
            );
            out.sample(name, &[t, ("dead_letter_strategy", "disabled")], dropped[i]);
        }
    }
}

/// Channel and connection series: per object with `channel` labels (RabbitMQ's pid label
/// carries Warren's names), or summed.
fn channels_and_connections(out: &mut Out, broker: &Broker, per_object: bool) {
    let connections = broker.connections.list();
    let mut channels = Vec::new();
    for c in &connections {
        for ch in live_channels(c) {
            let name = format!("{} ({})", c.display_name(), ch.number);
            channels.push((
                object_labels(per_object, &[("channel", &name)]),
                ChannelFigures {
                    consumers: u64::from(ch.consumers.load(Relaxed)),
                    unacked: ch.unacked.load(Relaxed),
                    unconfirmed: ch.unconfirmed.load(Relaxed),
                    uncommitted: ch.uncommitted.load(Relaxed),
                    acks_uncommitted: ch.acks_uncommitted.load(Relaxed),
                    prefetch: u64::from(ch.prefetch.load(Relaxed)),
                    global_prefetch: u64::from(ch.global_prefetch.load(Relaxed)),
                    totals: ch.counters.totals(),
                },
            ));
        }
    }
    for &(name, kind, help, pick) in CHANNEL_GAUGES {
        out.family(name, kind, help);
        series(out, name, &channels, per_object, pick);
    }
    for &(name, help, stat) in CHANNEL_COUNTERS {
        out.family(name, "counter", help);
        series(out, name, &channels, per_object, |f| f.totals.get(stat));
    }
    let conns: Vec<(String, (Totals, u64))> = connections
        .iter()
        .map(|c| {
            (
                object_labels(per_object, &[("channel", &c.display_name())]),
                (c.counters.totals(), u64::from(c.channels())),
            )
        })
        .collect();
    for &(name, help, stat) in CONNECTION_COUNTERS {
        out.family(name, "counter", help);
        series(out, name, &conns, per_object, |(t, _)| t.get(stat));
    }
    let name = "rabbitmq_connection_channels";
    out.family(name, "gauge", "Channels on a connection");
    series(out, name, &conns, per_object, |&(_, n)| n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Out(String::new());
        out.sample("m", &[("channel", "a\"b\\c\nd")], 1);
        assert_eq!(out.0, "m{channel=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}
