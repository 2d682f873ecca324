//! The node and its clients: `/api/overview`, `/api/nodes`, `/api/extensions`,
//! `/api/cluster-name`, health checks, `/api/aliveness-test` and `/api/connections`.

use std::sync::OnceLock;
use std::time::UNIX_EPOCH;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};

use super::convert::table_to_json;
use super::list::{ListQuery, respond};
use super::stats::{Ages, CHANNEL_STATS, add_data_rates, add_lengths, message_stats};
use super::{Api, ApiError, ApiResult, Caller, Role, json_ok, no_content};
use crate::broker::connections::Registered;
use crate::broker::sampling::CHURN_NAMES;
use crate::protocol::code;
use crate::queue::alarms::Alarm;
use crate::stats::History;

/// The RabbitMQ version Warren's API answers as. Clients branch on it to pick endpoints and
/// fields; 3.10.8 is the version whose API this one reproduces, so every branch they take for
/// it leads somewhere that exists here.
pub const RABBITMQ_VERSION: &str = "3.10.8";

/// The routes of this module.
pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/overview", get(overview))
        .route("/cluster-name", get(cluster_name))
        .route("/nodes", get(nodes))
        .route("/nodes/{node}", get(node))
        .route("/extensions", get(extensions))
        .route("/health/checks/alarms", get(alarms))
        .route("/health/checks/local-alarms", get(alarms))
        .route("/health/checks/port-listener/{port}", get(port_listener))
        .route(
            "/health/checks/protocol-listener/{protocol}",
            get(protocol_listener),
        )
        .route("/health/checks/virtual-hosts", get(ok))
        .route("/health/checks/node-is-quorum-critical", get(single_node))
        .route(
            "/health/checks/node-is-mirror-sync-critical",
            get(single_node),
        )
        .route("/connections", get(list_connections))
        .route(
            "/connections/{name}",
            get(get_connection).delete(close_connection),
        )
        .route("/vhosts/{vhost}/connections", get(vhost_connections))
}

/// This node's name, as RabbitMQ's `rabbit@host`.
pub(crate) fn node_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("warren@{host}")
    })
}

fn exchange_types() -> Value {
    let t = |name: &str, what: &str| json!({"name": name, "description": format!("AMQP {what} exchange, as per the AMQP specification"), "enabled": true});
    json!([
        t("direct", "direct"),
        t("fanout", "fanout"),
        t("headers", "headers"),
        t("topic", "topic"),
        {"name": "x-delayed-message", "description": "Delayed Message Exchange", "enabled": true}
    ])
}

fn listeners_json(api: &Api) -> Value {
    Value::Array(
        api.broker
            .listeners()
            .into_iter()
            .map(|(protocol, addr)| {
                json!({
                    "node": node_name(),
                    "protocol": protocol,
                    "ip_address": addr.ip().to_string(),
                    "port": addr.port(),
                    "socket_opts": {},
                })
            })
            .collect(),
    )
}

async fn overview(State(api): State<Api>, caller: Caller, Query(q): Query<ListQuery>) -> ApiResult {
    let vhosts: Vec<_> = api
        .broker
        .vhosts()
        .into_iter()
        .filter(|v| caller.sees(&api.broker, &v.name))
        .collect();
    let (mut queues, mut exchanges, mut consumers) = (0u64, 0u64, 0u64);
    let mut levels = [0u64; 3];
    for v in &vhosts {
        for q in v.queues() {
            let s = q.stats();
            queues += 1;
            levels[0] += s.ready + s.unacked;
            levels[1] += s.ready;
            levels[2] += s.unacked;
            consumers += u64::from(s.consumers);
        }
        exchanges += v.exchanges().len() as u64 + 1;
    }
    let connections: Vec<_> = api
        .broker
        .connections
        .list()
        .into_iter()
        .filter(|c| caller.sees(&api.broker, &c.identity.vhost))
        .collect();
    let channels: u64 = connections.iter().map(|c| u64::from(c.channels())).sum();
    // Rates across the whole broker are for those who may see every vhost.
    let everything = caller.role >= Role::Monitoring;
    let ages = Ages::of(&q);
    let none = History::default();
    let history = if everything {
        &api.broker.history
    } else {
        &none
    };
    let mut queue_totals = json!({});
    add_lengths(&mut queue_totals, levels, history, ages);
    let json = json!({
        "management_version": RABBITMQ_VERSION,
        "rates_mode": "basic",
        "exchange_types": exchange_types(),
        "product_version": env!("CARGO_PKG_VERSION"),
        "product_name": "Warren",
        "rabbitmq_version": RABBITMQ_VERSION,
        "cluster_name": node_name(),
        "erlang_version": "none (Warren is written in Rust)",
        "erlang_full_version": "none (Warren is written in Rust)",
        "disable_stats": false,
        // How far back charts can go, in seconds: what the broker and vhosts keep (queues,
        // exchanges, connections and channels keep the last minute).
        "sample_retention_policies": {"global": [600], "basic": [60], "detailed": [60]},
        "enable_queue_totals": false,
        "message_stats": message_stats(&history.last().totals, history, CHANNEL_STATS, ages),
        "queue_totals": queue_totals,
        "object_totals": {
            "channels": channels,
            "connections": connections.len(),
            "consumers": consumers,
            "exchanges": exchanges,
            "queues": queues,
        },
        "churn_rates": churn_rates(&api),
        "statistics_db_event_queue": 0,
        "node": node_name(),
        "listeners": listeners_json(&api),
        "contexts": [],
    });
    Ok(json_ok(json))
}

/// Connections, channels and queues that came and went, with their rates.
fn churn_rates(api: &Api) -> Value {
    let mut m = serde_json::Map::new();
    for (name, (total, rate)) in CHURN_NAMES.iter().zip(api.broker.churn()) {
        m.insert((*name).into(), json!(total));
        m.insert(format!("{name}_details"), json!({ "rate": rate }));
    }
    Value::Object(m)
}

async fn cluster_name(_caller: Caller) -> ApiResult {
    Ok(json_ok(json!({ "name": node_name() })))
}

/// The process's resident memory in bytes, from `/proc/self/statm`.
pub(super) fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn node_json(api: &Api) -> Value {
    let raised = api.broker.alarms.raised();
    let (fd_used, fd_total) = super::metrics::fds();
    let disk_free = api.broker.alarms.disk_free();
    let mut node = json!({
        "name": node_name(),
        "type": "disc",
        "running": true,
        "being_drained": false,
        "mem_used": resident_bytes(),
        "mem_limit": api.broker.config.memory_budget_bytes(),
        "mem_alarm": raised.has(Alarm::Memory),
        "disk_free_limit": api.broker.alarms.disk_free_limit(),
        "disk_free_alarm": raised.has(Alarm::Disk),
        "fd_used": fd_used,
        "fd_total": fd_total,
        "processors": std::thread::available_parallelism().map_or(1, usize::from),
        "os_pid": std::process::id().to_string(),
        "uptime": api.broker.started.elapsed().as_millis() as u64,
        "partitions": [],
        "applications": [],
        "enabled_plugins": ["rabbitmq_management"],
    });
    // Until the disk checker has looked once, the free space is unknown: left out, not 0.
    if disk_free > 0 {
        node["disk_free"] = json!(disk_free);
    }
    node
}

async fn nodes(State(api): State<Api>, caller: Caller) -> ApiResult {
    caller.require(Role::Monitoring)?;
    Ok(json_ok(json!([node_json(&api)])))
}

async fn node(State(api): State<Api>, caller: Caller, Path(node): Path<String>) -> ApiResult {
    caller.require(Role::Monitoring)?;
    if node != node_name() {
        return Err(ApiError::NotFound);
    }
    Ok(json_ok(node_json(&api)))
}

async fn extensions(_caller: Caller) -> ApiResult {
    Ok(json_ok(json!([])))
}

/// A failed check: 503 with `body`.
pub(super) fn failed(body: Value) -> axum::response::Response {
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

async fn alarms(State(api): State<Api>, caller: Caller) -> ApiResult {
    caller.require(Role::Monitoring)?;
    let raised = api.broker.alarms.raised();
    let mut resources = Vec::new();
    if raised.has(Alarm::Memory) {
        resources.push(json!({"node": node_name(), "resource": "memory"}));
    }
    if raised.has(Alarm::Disk) {
        resources.push(json!({"node": node_name(), "resource": "disk"}));
    }
    if resources.is_empty() {
        return Ok(json_ok(json!({"status": "ok"})));
    }
    Ok(failed(json!({
        "status": "failed",
        "reason": "There are alarms in effect in the cluster",
        "alarms": resources,
    })))
}

async fn port_listener(
    State(api): State<Api>,
    caller: Caller,
    Path(port): Path<String>,
) -> ApiResult {
    caller.require(Role::Monitoring)?;
    let port: u16 = port.parse().map_err(|_| ApiError::bad("Invalid port"))?;
    let mut ports: Vec<u16> = api
        .broker
        .listeners()
        .iter()
        .map(|(_, a)| a.port())
        .collect();
    ports.sort_unstable();
    if ports.contains(&port) {
        return Ok(json_ok(json!({"status": "ok", "port": port})));
    }
    Ok(failed(json!({
        "status": "failed",
        "reason": "No active listener",
        "missing": port,
        "ports": ports,
    })))
}

async fn protocol_listener(
    State(api): State<Api>,
    caller: Caller,
    Path(protocol): Path<String>,
) -> ApiResult {
    caller.require(Role::Monitoring)?;
    let wanted = match protocol.as_str() {
        "amqp0-9-1" | "amqp091" | "amqp0.9.1" => "amqp",
        other => other,
    };
    let protocols: Vec<&str> = api.broker.listeners().iter().map(|(p, _)| *p).collect();
    if protocols.contains(&wanted) {
        return Ok(json_ok(json!({"status": "ok", "protocol": wanted})));
    }
    Ok(failed(json!({
        "status": "failed",
        "reason": "No active listener",
        "missing": protocol,
        "protocols": protocols,
    })))
}

async fn ok(caller: Caller) -> ApiResult {
    caller.require(Role::Monitoring)?;
    Ok(json_ok(json!({"status": "ok"})))
}

async fn single_node(caller: Caller) -> ApiResult {
    caller.require(Role::Monitoring)?;
    Ok(json_ok(
        json!({"status": "ok", "reason": "single node cluster"}),
    ))
}

/// A connection as the API shows it.
fn connection_json(api: &Api, c: &Registered, ages: Ages) -> Value {
    let id = &c.identity;
    let connected_at = c
        .connected_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let config = &api.broker.config;
    let mut json = json!({
        "name": c.display_name(),
        "user_provided_name": c.name(),
        "node": node_name(),
        "type": "network",
        "protocol": "AMQP 0-9-1",
        "state": "running",
        "user": id.user,
        "user_who_performed_action": id.user,
        "vhost": *id.vhost,
        "peer_host": id.peer.ip().to_canonical().to_string(),
        "peer_port": id.peer.port(),
        "host": id.local.map(|l| l.ip().to_canonical().to_string()),
        "port": id.local.map(|l| l.port()),
        "channels": c.channels(),
        "channel_max": config.channel_max,
        "frame_max": config.frame_max,
        "timeout": config.heartbeat,
        "auth_mechanism": id.auth_mechanism,
        "ssl": id.tls.is_some(),
        "ssl_protocol": id.tls.as_ref().map(|t| t.protocol),
        "ssl_cipher": id.tls.as_ref().map(|t| &t.cipher),
        "ssl_hash": null,
        "ssl_key_exchange": null,
        "peer_cert_issuer": id.tls.as_ref().and_then(|t| t.peer_issuer.as_ref()),
        "peer_cert_subject": id.tls.as_ref().and_then(|t| t.peer_subject.as_ref()),
        "peer_cert_validity": null,
        "client_properties": table_to_json(&id.client_properties),
        "connected_at": connected_at,
    });
    add_data_rates(&mut json, &c.counters.totals(), &c.history, ages, true);
    json
}

/// The live connections the caller may see: a monitor's or administrator's all, anyone else's
/// their own.
pub(super) fn visible_connections(api: &Api, caller: &Caller) -> Vec<std::sync::Arc<Registered>> {
    api.broker
        .connections
        .list()
        .into_iter()
        .filter(|c| caller.role >= Role::Monitoring || c.identity.user == caller.user.name)
        .collect()
}

async fn list_connections(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let ages = Ages::of(&q);
    let all = visible_connections(&api, &caller)
        .iter()
        .map(|c| connection_json(&api, c, ages))
        .collect();
    respond(all, &q)
}

async fn vhost_connections(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let all = vhost_connections_of(&api, &caller, &vhost)?
        .iter()
        .map(|c| connection_json(&api, c, Ages::of(&q)))
        .collect();
    respond(all, &q)
}

/// The live connections to `vhost` the caller may see (404 for an unknown vhost).
pub(super) fn vhost_connections_of(
    api: &Api,
    caller: &Caller,
    vhost: &str,
) -> Result<Vec<std::sync::Arc<Registered>>, ApiError> {
    caller.vhost(&api.broker, vhost)?;
    Ok(visible_connections(api, caller)
        .into_iter()
        .filter(|c| *c.identity.vhost == *vhost)
        .collect())
}

pub(super) fn find_connection(
    api: &Api,
    caller: &Caller,
    name: &str,
) -> Result<std::sync::Arc<Registered>, ApiError> {
    visible_connections(api, caller)
        .into_iter()
        .find(|c| c.display_name() == name)
        .ok_or(ApiError::NotFound)
}

async fn get_connection(
    State(api): State<Api>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let c = find_connection(&api, &caller, &name)?;
    Ok(json_ok(connection_json(&api, &c, Ages::of(&q))))
}

async fn close_connection(
    State(api): State<Api>,
    caller: Caller,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let c = find_connection(&api, &caller, &name)?;
    if caller.role < Role::Administrator && c.identity.user != caller.user.name {
        caller.require(Role::Administrator)?;
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin");
    api.broker.close_connection(
        c.id,
        code::CONNECTION_FORCED,
        &format!("CONNECTION_FORCED - {reason}"),
    );
    Ok(no_content())
}
