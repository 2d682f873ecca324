//! Queues, exchanges and bindings: `/api/queues`, `/api/exchanges` and `/api/bindings`, with
//! publishing to an exchange and getting from a queue as the management UI does.

use std::sync::Arc;

use amq_protocol::protocol::basic::{AMQPProperties, gen_properties, parse_properties};
use amq_protocol::types::{FieldTable, ShortString};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::channels::consumers_json;
use super::convert::{json_to_table, table_to_json};
use super::list::{ListQuery, respond, respond_with};
use super::overview::{failed, node_name};
use super::stats::{Ages, EXCHANGE_STATS, QUEUE_STATS, add_lengths, add_message_stats};
use super::{
    Api, ApiError, ApiResult, Caller, body_object, created_or_updated, json_ok, no_content,
};
use crate::broker::access::{Perm, Resource};
use crate::broker::exchange::{Binding, Destination};
use crate::broker::{BindingView, ExchangeDeclare, ExchangeView, QueueDeclare, VHost};
use crate::protocol::content::PropertiesInfo;
use crate::protocol::{ChannelError, Message};
use crate::queue::args::QueueType;
use crate::queue::log::SharedRecord;
use crate::queue::{Published, Queue};

/// No connection has this id, so nothing the API declares is exclusive to anyone.
const API_CONNECTION: u64 = 0;

/// The routes of this module.
pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/queues", get(list_queues))
        .route("/queues/{vhost}", get(list_vhost_queues))
        .route(
            "/queues/{vhost}/{queue}",
            get(get_queue).put(put_queue).delete(delete_queue),
        )
        .route(
            "/queues/{vhost}/{queue}/contents",
            axum::routing::delete(purge_queue),
        )
        .route("/queues/{vhost}/{queue}/get", post(get_messages))
        .route("/aliveness-test/{vhost}", get(aliveness))
        .route("/queues/{vhost}/{queue}/bindings", get(queue_bindings))
        .route("/exchanges", get(list_exchanges))
        .route("/exchanges/{vhost}", get(list_vhost_exchanges))
        .route(
            "/exchanges/{vhost}/{exchange}",
            get(get_exchange).put(put_exchange).delete(delete_exchange),
        )
        .route("/exchanges/{vhost}/{exchange}/publish", post(publish))
        .route(
            "/exchanges/{vhost}/{exchange}/bindings/source",
            get(exchange_bindings_source),
        )
        .route(
            "/exchanges/{vhost}/{exchange}/bindings/destination",
            get(exchange_bindings_destination),
        )
        .route("/bindings", get(list_bindings))
        .route("/bindings/{vhost}", get(list_vhost_bindings))
        .route(
            "/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(bindings_between).post(add_binding),
        )
        .route(
            "/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(get_binding).delete(delete_binding),
        )
}

impl Caller {
    /// Checks the caller's permission on a resource, as an AMQP client's would be checked.
    fn permit(
        &self,
        api: &Api,
        vhost: &VHost,
        perm: Perm,
        resource: Resource,
        name: &str,
    ) -> Result<(), ApiError> {
        let permissions = api
            .broker
            .permissions(&self.user.name, &vhost.name)
            .ok_or(ApiError::VhostRefused)?;
        permissions
            .check(perm, resource, name, &vhost.name, &self.user.name)
            .map_err(|_| ApiError::AccessRefused)
    }
}

/// The vhosts a caller lists from: one named (which must exist and be visible), or all they see.
pub(super) fn listed_vhosts(
    api: &Api,
    caller: &Caller,
    vhost: Option<&str>,
) -> Result<Vec<Arc<VHost>>, ApiError> {
    match vhost {
        Some(name) => Ok(vec![caller.vhost(&api.broker, name)?]),
        None => Ok(api
            .broker
            .vhosts()
            .into_iter()
            .filter(|v| caller.sees(&api.broker, &v.name))
            .collect()),
    }
}

/// A queue as listings show it.
fn queue_json(q: &Queue, ages: Ages) -> Value {
    let s = q.stats();
    let applied = q.applied();
    let kind = match q.args.queue_type {
        QueueType::Classic => "classic",
        QueueType::Quorum => "quorum",
        QueueType::Stream => "stream",
    };
    let mut json = json!({
        "name": *q.name,
        "vhost": *q.vhost,
        "durable": q.options.durable,
        "auto_delete": q.options.auto_delete,
        "exclusive": q.options.exclusive_owner.is_some(),
        "arguments": table_to_json(&q.options.arguments),
        "type": kind,
        "node": node_name(),
        "state": "running",
        "consumers": s.consumers,
        "consumer_capacity": if s.consumers > 0 { 1.0 } else { 0.0 },
        "consumer_utilisation": if s.consumers > 0 { 1.0 } else { 0.0 },
        "exclusive_consumer_tag": null,
        "single_active_consumer_tag": null,
        "policy": applied.policy,
        "operator_policy": applied.operator_policy,
        "effective_policy_definition": applied.definition,
        "message_bytes": s.ready_bytes + s.unacked_bytes,
        "message_bytes_ready": s.ready_bytes,
        "message_bytes_unacknowledged": s.unacked_bytes,
        "recoverable_slaves": null,
    });
    if let Some(i) = q.stream_info() {
        // RabbitMQ's members, online and readers; then what Warren adds: the offsets kept, the
        // files, and what retention removed.
        json["members"] = json!([node_name()]);
        json["online"] = json!([node_name()]);
        let mut readers = serde_json::Map::new();
        readers.insert(node_name().into(), json!(i.readers));
        json["readers"] = Value::Object(readers);
        json["first_offset"] = json!(i.first_offset);
        json["last_offset"] = json!(i.last_offset);
        json["segments"] = json!(i.segments);
        json["stream_bytes"] = json!(i.bytes);
        json["retention_removed_messages"] = json!(i.removed_messages);
        json["retention_removed_bytes"] = json!(i.removed_bytes);
    }
    add_lengths(
        &mut json,
        [s.ready + s.unacked, s.ready, s.unacked],
        &q.history,
        ages,
    );
    add_message_stats(
        &mut json,
        &q.counters.totals(),
        &q.history,
        QUEUE_STATS,
        ages,
    );
    json
}

async fn list_queues(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    queues_of(&api, &caller, None, &q)
}

async fn list_vhost_queues(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    queues_of(&api, &caller, Some(&vhost), &q)
}

fn queues_of(api: &Api, caller: &Caller, vhost: Option<&str>, q: &ListQuery) -> ApiResult {
    let mut all = Vec::new();
    for v in listed_vhosts(api, caller, vhost)? {
        all.extend(v.queues());
    }
    let ages = Ages::of(q);
    respond_with(all, |q| &q.name, |q| queue_json(&q, ages), q)
}

/// A queue the caller may see, or 404.
fn find_queue(
    api: &Api,
    caller: &Caller,
    vhost: &str,
    name: &str,
) -> Result<(Arc<VHost>, Arc<Queue>), ApiError> {
    let v = caller.vhost(&api.broker, vhost)?;
    let q = v
        .queues()
        .into_iter()
        .find(|q| *q.name == *name)
        .ok_or(ApiError::NotFound)?;
    Ok((v, q))
}

async fn get_queue(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, queue)): Path<(String, String)>,
    Query(query): Query<ListQuery>,
) -> ApiResult {
    let (_, q) = find_queue(&api, &caller, &vhost, &queue)?;
    let mut json = queue_json(&q, Ages::of(&query));
    let consumers = consumers_json(&api, &q);
    if let Value::Object(m) = &mut json {
        m.insert("consumer_details".into(), Value::Array(consumers));
        m.insert("deliveries".into(), json!([]));
        m.insert("incoming".into(), json!([]));
    }
    Ok(json_ok(json))
}

/// The queue RabbitMQ's aliveness test goes through, left in place afterwards as RabbitMQ does.
const ALIVENESS_QUEUE: &str = "aliveness-test";

/// RabbitMQ's aliveness test: a message published to the vhost's `aliveness-test` queue and
/// got back; 503 if it does not come back.
async fn aliveness(State(api): State<Api>, caller: Caller, Path(vhost): Path<String>) -> ApiResult {
    let v = caller.vhost(&api.broker, &vhost)?;
    let declare = QueueDeclare {
        name: ALIVENESS_QUEUE.into(),
        ..QueueDeclare::default()
    };
    v.declare_queue(&declare, API_CONNECTION)?;
    let q = v.queue(ALIVENESS_QUEUE, API_CONNECTION)?;
    let properties = properties_from_json(None)?;
    let info = PropertiesInfo::scan(&properties).map_err(|_| ApiError::bad("bad properties"))?;
    let msg = Arc::new(Message::new(
        Bytes::new(),
        Bytes::from_static(ALIVENESS_QUEUE.as_bytes()),
        properties,
        info,
        Bytes::from_static(b"test_message"),
    ));
    let _: Published = q.publish(msg, &SharedRecord::default());
    let got = q.get();
    let back = got
        .as_ref()
        .is_some_and(|(e, _)| e.msg.body.as_ref() == b"test_message");
    if let Some((e, _)) = got {
        q.settle(&e.message);
    }
    if back {
        Ok(json_ok(json!({"status": "ok"})))
    } else {
        Ok(failed(
            json!({"status": "failed", "reason": "the test message did not come back"}),
        ))
    }
}

/// A boolean field, or RabbitMQ's `not_boolean` complaint.
fn bool_field(body: &Map<String, Value>, key: &str, default: bool) -> Result<bool, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(other) => Err(ApiError::BadRequest(json!([
            "not_boolean",
            other
                .as_str()
                .map_or_else(|| other.to_string(), String::from)
        ]))),
    }
}

/// The `arguments` of a body, as a field table.
fn arguments(body: &Map<String, Value>) -> Result<FieldTable, ApiError> {
    json_to_table(body.get("arguments").unwrap_or(&Value::Null))
        .ok_or_else(|| ApiError::bad("arguments must be an object"))
}

/// Refuses a name longer than AMQP allows, as RabbitMQ words it.
fn check_name(kind: &str, name: &str) -> Result<(), ApiError> {
    if name.len() > 255 {
        return Err(ApiError::bad(format!(
            "{kind} should be less than 255 bytes, actually was {}\n",
            name.len()
        )));
    }
    Ok(())
}

async fn put_queue(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, queue)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let body = body_object(&body)?;
    check_name("queue", &queue)?;
    let v = api.broker.vhost(&vhost).ok_or(ApiError::VhostNotFound)?;
    caller.permit(&api, &v, Perm::Configure, Resource::Queue, &queue)?;
    let declare = QueueDeclare {
        name: queue.clone(),
        durable: bool_field(&body, "durable", false)?,
        auto_delete: bool_field(&body, "auto_delete", false)?,
        arguments: arguments(&body)?,
        ..QueueDeclare::default()
    };
    let existed = v.queues().iter().any(|q| *q.name == *queue);
    v.declare_queue(&declare, API_CONNECTION)?;
    durable_done(&v).await?;
    Ok(created_or_updated(!existed))
}

/// Waits until the store has what a change wrote, so that a 2xx means it survives a crash.
async fn durable_done(v: &VHost) -> Result<(), ApiError> {
    if let Some(store) = v.store()
        && !store.flushed(store.failures()).await
    {
        return Err(ApiError::Internal(
            "the store could not write the change".into(),
        ));
    }
    Ok(())
}

/// `if-empty` and `if-unused` on a DELETE.
#[derive(Debug, Default, Deserialize)]
struct DeleteQuery {
    #[serde(rename = "if-empty")]
    if_empty: Option<String>,
    #[serde(rename = "if-unused")]
    if_unused: Option<String>,
}

async fn delete_queue(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, queue)): Path<(String, String)>,
    Query(d): Query<DeleteQuery>,
) -> ApiResult {
    let (v, _) = find_queue(&api, &caller, &vhost, &queue)?;
    caller.permit(&api, &v, Perm::Configure, Resource::Queue, &queue)?;
    v.delete_queue(
        &queue,
        API_CONNECTION,
        d.if_unused.as_deref() == Some("true"),
        d.if_empty.as_deref() == Some("true"),
    )?;
    durable_done(&v).await?;
    Ok(no_content())
}

async fn purge_queue(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, queue)): Path<(String, String)>,
) -> ApiResult {
    let (v, q) = find_queue(&api, &caller, &vhost, &queue)?;
    caller.permit(&api, &v, Perm::Read, Resource::Queue, &queue)?;
    q.purge();
    durable_done(&v).await?;
    Ok(no_content())
}

/// A number field given as a number or as a string of one (rabbitmqadmin v1 sends strings).
fn number_field(body: &Map<String, Value>, key: &str) -> Option<u64> {
    match body.get(key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Message properties as JSON (an empty list when there are none, as RabbitMQ renders it).
fn properties_json(props: &[u8]) -> Value {
    let Ok((_, p)) = parse_properties(props) else {
        return json!([]);
    };
    let mut m = Map::new();
    let mut put_str = |k: &str, v: &Option<ShortString>| {
        if let Some(s) = v {
            m.insert(k.into(), Value::from(s.as_str()));
        }
    };
    put_str("content_type", p.content_type());
    put_str("content_encoding", p.content_encoding());
    put_str("correlation_id", p.correlation_id());
    put_str("reply_to", p.reply_to());
    put_str("expiration", p.expiration());
    put_str("message_id", p.message_id());
    put_str("type", p.kind());
    put_str("user_id", p.user_id());
    put_str("app_id", p.app_id());
    put_str("cluster_id", p.cluster_id());
    if let Some(n) = p.delivery_mode() {
        m.insert("delivery_mode".into(), Value::from(*n));
    }
    if let Some(n) = p.priority() {
        m.insert("priority".into(), Value::from(*n));
    }
    if let Some(t) = p.timestamp() {
        m.insert("timestamp".into(), Value::from(*t));
    }
    if let Some(h) = p.headers() {
        m.insert("headers".into(), table_to_json(h));
    }
    if m.is_empty() {
        json!([])
    } else {
        Value::Object(m)
    }
}

/// Message properties from JSON, encoded as a publisher would send them.
fn properties_from_json(v: Option<&Value>) -> Result<Bytes, ApiError> {
    let empty = Map::new();
    let m = match v {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(Value::Array(a)) if a.is_empty() => &empty,
        Some(_) => return Err(ApiError::bad("properties must be an object")),
    };
    type Setter<T> = fn(AMQPProperties, T) -> AMQPProperties;
    let strings: [(&str, Setter<ShortString>); 10] = [
        ("content_type", AMQPProperties::with_content_type),
        ("content_encoding", AMQPProperties::with_content_encoding),
        ("correlation_id", AMQPProperties::with_correlation_id),
        ("reply_to", AMQPProperties::with_reply_to),
        ("expiration", AMQPProperties::with_expiration),
        ("message_id", AMQPProperties::with_message_id),
        ("type", AMQPProperties::with_type),
        ("user_id", AMQPProperties::with_user_id),
        ("app_id", AMQPProperties::with_app_id),
        ("cluster_id", AMQPProperties::with_cluster_id),
    ];
    let bytes: [(&str, Setter<u8>); 2] = [
        ("delivery_mode", AMQPProperties::with_delivery_mode),
        ("priority", AMQPProperties::with_priority),
    ];
    let mut p = AMQPProperties::default();
    for (key, set) in strings {
        if let Some(v) = m.get(key).and_then(Value::as_str) {
            p = set(p, ShortString::from(v));
        }
    }
    for (key, set) in bytes {
        if let Some(v) = m.get(key).and_then(Value::as_u64) {
            p = set(p, u8::try_from(v).unwrap_or(u8::MAX));
        }
    }
    if let Some(v) = m.get("timestamp").and_then(Value::as_u64) {
        p = p.with_timestamp(v);
    }
    if let Some(v) = m.get("headers") {
        p = p.with_headers(
            json_to_table(v).ok_or_else(|| ApiError::bad("headers must be an object"))?,
        );
    }
    let (encoded, _) = cookie_factory::r#gen(gen_properties(&p), Vec::new())
        .map_err(|_| ApiError::bad("properties cannot be encoded"))?;
    Ok(Bytes::from(encoded))
}

/// A message body as the API shows it: text where it is UTF-8 and `auto` allows, else base64.
fn payload_json(body: &[u8], encoding: &str, truncate: Option<usize>) -> (Value, &'static str) {
    let cut = &body[..truncate.map_or(body.len(), |t| t.min(body.len()))];
    match std::str::from_utf8(cut) {
        Ok(text) if encoding == "auto" => (Value::from(text), "string"),
        _ => (
            Value::from(base64::engine::general_purpose::STANDARD.encode(cut)),
            "base64",
        ),
    }
}

async fn get_messages(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, queue)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let (v, q) = find_queue(&api, &caller, &vhost, &queue)?;
    caller.permit(&api, &v, Perm::Read, Resource::Queue, &queue)?;
    let body = body_object(&body)?;
    let count = number_field(&body, "count").ok_or(ApiError::bad("[{key_missing,count}]"))?;
    let truncate =
        number_field(&body, "truncate").map(|t| usize::try_from(t).unwrap_or(usize::MAX));
    let encoding = body
        .get("encoding")
        .and_then(Value::as_str)
        .unwrap_or("auto");
    let ackmode = body
        .get("ackmode")
        .and_then(Value::as_str)
        .ok_or(ApiError::bad("[{key_missing,ackmode}]"))?;
    if !["auto", "base64"].contains(&encoding) {
        return Err(ApiError::bad(format!("Unsupported encoding {encoding}")));
    }
    let (requeue, ack) = match ackmode {
        "ack_requeue_true" | "reject_requeue_true" => (true, false),
        "ack_requeue_false" => (false, true),
        "reject_requeue_false" => (false, false),
        other => return Err(ApiError::bad(format!("Unsupported ackmode {other}"))),
    };
    let mut got = Vec::new();
    let mut out = Vec::new();
    for _ in 0..count {
        let Some((entry, left)) = q.get() else {
            break;
        };
        let msg = &entry.msg;
        let (payload, encoding) = payload_json(&msg.body, encoding, truncate);
        out.push(json!({
            "payload_bytes": msg.body.len(),
            "redelivered": entry.redelivered,
            "exchange": String::from_utf8_lossy(&msg.exchange),
            "routing_key": msg.routing_key_str(),
            "message_count": left,
            "properties": properties_json(&msg.properties),
            "payload": payload,
            "payload_encoding": encoding,
        }));
        got.push(entry);
    }
    if requeue {
        q.requeue(got);
    } else if ack {
        for m in &got {
            q.settle(m);
        }
    } else {
        q.reject(got);
    }
    Ok(json_ok(Value::Array(out)))
}

/// The default exchange, as listings show it.
fn default_exchange(v: &VHost) -> ExchangeView {
    ExchangeView {
        name: "".into(),
        kind: "direct",
        durable: true,
        auto_delete: false,
        internal: false,
        arguments: FieldTable::default(),
        stats: v.default_exchange_stats(),
    }
}

fn exchange_json(vhost: &str, x: &ExchangeView, ages: Ages) -> Value {
    let mut json = json!({
        "name": *x.name,
        "vhost": vhost,
        "type": x.kind,
        "durable": x.durable,
        "auto_delete": x.auto_delete,
        "internal": x.internal,
        "arguments": table_to_json(&x.arguments),
        "user_who_performed_action": "rmq-internal",
    });
    add_message_stats(
        &mut json,
        &x.stats.counters.totals(),
        &x.stats.history,
        EXCHANGE_STATS,
        ages,
    );
    json
}

/// The exchange's name in the API (`amq.default` is the default exchange).
fn exchange_name(name: &str) -> &str {
    if name == "amq.default" { "" } else { name }
}

fn exchanges_of(v: &VHost) -> Vec<ExchangeView> {
    let mut all = vec![default_exchange(v)];
    all.extend(v.exchanges());
    all
}

async fn list_exchanges(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let mut all = Vec::new();
    for v in listed_vhosts(&api, &caller, None)? {
        let ages = Ages::of(&q);
        all.extend(
            exchanges_of(&v)
                .iter()
                .map(|x| exchange_json(&v.name, x, ages)),
        );
    }
    respond(all, &q)
}

async fn list_vhost_exchanges(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let v = caller.vhost(&api.broker, &vhost)?;
    let ages = Ages::of(&q);
    let all = exchanges_of(&v)
        .iter()
        .map(|x| exchange_json(&v.name, x, ages))
        .collect();
    respond(all, &q)
}

fn find_exchange(v: &VHost, name: &str) -> Result<ExchangeView, ApiError> {
    let name = exchange_name(name);
    exchanges_of(v)
        .into_iter()
        .find(|x| *x.name == *name)
        .ok_or(ApiError::NotFound)
}

async fn get_exchange(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, exchange)): Path<(String, String)>,
    Query(query): Query<ListQuery>,
) -> ApiResult {
    let v = caller.vhost(&api.broker, &vhost)?;
    let x = find_exchange(&v, &exchange)?;
    let mut json = exchange_json(&v.name, &x, Ages::of(&query));
    if let Value::Object(m) = &mut json {
        m.insert("incoming".into(), json!([]));
        m.insert("outgoing".into(), json!([]));
    }
    Ok(json_ok(json))
}

async fn put_exchange(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, exchange)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let body = body_object(&body)?;
    check_name("exchange", &exchange)?;
    let v = api.broker.vhost(&vhost).ok_or(ApiError::VhostNotFound)?;
    caller.permit(&api, &v, Perm::Configure, Resource::Exchange, &exchange)?;
    let kind = body
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("direct")
        .to_owned();
    let declare = ExchangeDeclare {
        name: exchange.clone(),
        kind,
        durable: bool_field(&body, "durable", false)?,
        auto_delete: bool_field(&body, "auto_delete", false)?,
        internal: bool_field(&body, "internal", false)?,
        arguments: arguments(&body)?,
        ..ExchangeDeclare::default()
    };
    let existed = find_exchange(&v, &exchange).is_ok();
    v.declare_exchange(&declare).map_err(|e| match e {
        crate::protocol::AmqpError::Channel(c) => ApiError::from(c),
        crate::protocol::AmqpError::Connection(c) => {
            let text = &c.0.reply_text;
            ApiError::bad(text.split_once(" - ").map_or(text.as_str(), |(_, r)| r))
        }
    })?;
    durable_done(&v).await?;
    Ok(created_or_updated(!existed))
}

async fn delete_exchange(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, exchange)): Path<(String, String)>,
    Query(d): Query<DeleteQuery>,
) -> ApiResult {
    let v = caller.vhost(&api.broker, &vhost)?;
    find_exchange(&v, &exchange)?;
    caller.permit(&api, &v, Perm::Configure, Resource::Exchange, &exchange)?;
    v.delete_exchange(
        exchange_name(&exchange),
        d.if_unused.as_deref() == Some("true"),
    )?;
    durable_done(&v).await?;
    Ok(no_content())
}

async fn publish(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, exchange)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let v = caller.vhost(&api.broker, &vhost)?;
    let name = exchange_name(&exchange).to_owned();
    find_exchange(&v, &name)?;
    let shown = if name.is_empty() {
        "amq.default"
    } else {
        &name
    };
    caller.permit(&api, &v, Perm::Write, Resource::Exchange, shown)?;
    let body = body_object(&body)?;
    let routing_key = body
        .get("routing_key")
        .and_then(Value::as_str)
        .ok_or(ApiError::bad("[{key_missing,routing_key}]"))?;
    let payload = body
        .get("payload")
        .and_then(Value::as_str)
        .ok_or(ApiError::bad("[{key_missing,payload}]"))?;
    let payload = match body.get("payload_encoding").and_then(Value::as_str) {
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map_err(|_| ApiError::bad("payload_not_base64"))?,
        _ => payload.as_bytes().to_vec(),
    };
    let properties = properties_from_json(body.get("properties"))?;
    let info = PropertiesInfo::scan(&properties).map_err(|_| ApiError::bad("bad properties"))?;
    let msg = Arc::new(Message::new(
        Bytes::from(name.clone().into_bytes()),
        Bytes::from(routing_key.as_bytes().to_vec()),
        properties,
        info,
        Bytes::from(payload),
    ));
    let shared = SharedRecord::default();
    let mut queues = Vec::new();
    v.route(
        &name,
        &msg,
        &shared,
        &mut queues,
        &mut crate::stats::Tally::default(),
    )?;
    let routed = !queues.is_empty();
    for q in queues {
        // A full queue's refusal is not the publisher's to see here: RabbitMQ answers the same.
        let _: Published = q.publish(msg.clone(), &shared);
    }
    durable_done(&v).await?;
    Ok(json_ok(json!({ "routed": routed })))
}

/// Percent-encodes as RabbitMQ's `quote_plus`: letters, digits and `-_.` stay, a space is `+`.
fn quote_plus(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(char::from(b)),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A binding's `properties_key`: its routing key quoted as RabbitMQ quotes it, with a short
/// hash of its arguments if any (`~` alone for neither).
fn properties_key(routing_key: &str, arguments: &FieldTable) -> String {
    if arguments.inner().is_empty() {
        return if routing_key.is_empty() {
            "~".into()
        } else {
            quote_plus(routing_key)
        };
    }
    let encoded = cookie_factory::r#gen(
        amq_protocol::types::generation::gen_field_table(arguments),
        Vec::new(),
    )
    .map(|(v, _)| v)
    .unwrap_or_default();
    let hash = crc32fast::hash(&encoded).to_be_bytes();
    format!(
        "{}~{}",
        quote_plus(routing_key),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash)
    )
}

fn binding_json(vhost: &str, b: &BindingView) -> Value {
    json!({
        "source": *b.source,
        "vhost": vhost,
        "destination": *b.destination,
        "destination_type": if b.to_queue { "queue" } else { "exchange" },
        "routing_key": b.routing_key,
        "arguments": table_to_json(&b.arguments),
        "properties_key": properties_key(&b.routing_key, &b.arguments),
    })
}

/// Every binding of a vhost, the default exchange's (one per queue) first.
fn bindings_of(v: &VHost) -> Vec<BindingView> {
    let mut all: Vec<BindingView> = v
        .queues()
        .iter()
        .map(|q| BindingView {
            source: "".into(),
            destination: q.name.clone(),
            to_queue: true,
            routing_key: q.name.to_string(),
            arguments: FieldTable::default(),
        })
        .collect();
    let mut rest = v.bindings();
    rest.sort_by(|a, b| {
        (&a.source, &a.destination, &a.routing_key).cmp(&(
            &b.source,
            &b.destination,
            &b.routing_key,
        ))
    });
    all.extend(rest);
    all
}

fn bindings_json(v: &VHost, keep: impl Fn(&BindingView) -> bool) -> Vec<Value> {
    bindings_of(v)
        .iter()
        .filter(|b| keep(b))
        .map(|b| binding_json(&v.name, b))
        .collect()
}

async fn list_bindings(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let mut all = Vec::new();
    for v in listed_vhosts(&api, &caller, None)? {
        all.extend(bindings_json(&v, |_| true));
    }
    respond(all, &q)
}

async fn list_vhost_bindings(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let v = caller.vhost(&api.broker, &vhost)?;
    respond(bindings_json(&v, |_| true), &q)
}

async fn queue_bindings(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, queue)): Path<(String, String)>,
) -> ApiResult {
    let (v, _) = find_queue(&api, &caller, &vhost, &queue)?;
    Ok(json_ok(Value::Array(bindings_json(&v, |b| {
        b.to_queue && *b.destination == *queue
    }))))
}

async fn exchange_bindings_source(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, exchange)): Path<(String, String)>,
) -> ApiResult {
    let v = caller.vhost(&api.broker, &vhost)?;
    let x = find_exchange(&v, &exchange)?;
    Ok(json_ok(Value::Array(bindings_json(&v, |b| {
        b.source == x.name
    }))))
}

async fn exchange_bindings_destination(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, exchange)): Path<(String, String)>,
) -> ApiResult {
    let v = caller.vhost(&api.broker, &vhost)?;
    let x = find_exchange(&v, &exchange)?;
    Ok(json_ok(Value::Array(bindings_json(&v, |b| {
        !b.to_queue && b.destination == x.name
    }))))
}

/// The vhost, source and destination a binding path names.
struct Between {
    vhost: Arc<VHost>,
    source: String,
    destination: String,
    to_queue: bool,
}

fn between(
    api: &Api,
    caller: &Caller,
    (vhost, source, kind, destination): (String, String, String, String),
) -> Result<Between, ApiError> {
    let to_queue = match kind.as_str() {
        "q" => true,
        "e" => false,
        _ => return Err(ApiError::NotFound),
    };
    let v = caller.vhost(&api.broker, &vhost)?;
    let source = exchange_name(&source).to_owned();
    find_exchange(&v, &source)?;
    if to_queue {
        if !v.queues().iter().any(|q| *q.name == *destination) {
            return Err(ApiError::NotFound);
        }
    } else {
        find_exchange(&v, &destination)?;
    }
    Ok(Between {
        vhost: v,
        source,
        destination,
        to_queue,
    })
}

impl Between {
    fn matching(&self) -> Vec<BindingView> {
        bindings_of(&self.vhost)
            .into_iter()
            .filter(|b| {
                *b.source == *self.source
                    && b.to_queue == self.to_queue
                    && *b.destination == *self.destination
            })
            .collect()
    }

    /// The binding whose `properties_key` is `props`.
    fn find(&self, props: &str) -> Result<BindingView, ApiError> {
        self.matching()
            .into_iter()
            .find(|x| properties_key(&x.routing_key, &x.arguments) == props)
            .ok_or(ApiError::NotFound)
    }

    fn destination(&self) -> Result<Destination, ChannelError> {
        if self.to_queue {
            self.vhost
                .destination(Some(&self.destination), None, API_CONNECTION)
        } else {
            self.vhost
                .destination(None, Some(&self.destination), API_CONNECTION)
        }
    }

    fn resource(&self) -> Resource {
        if self.to_queue {
            Resource::Queue
        } else {
            Resource::Exchange
        }
    }
}

async fn bindings_between(
    State(api): State<Api>,
    caller: Caller,
    Path(p): Path<(String, String, String, String)>,
) -> ApiResult {
    let b = between(&api, &caller, p)?;
    Ok(json_ok(Value::Array(
        b.matching()
            .iter()
            .map(|x| binding_json(&b.vhost.name, x))
            .collect(),
    )))
}

async fn add_binding(
    State(api): State<Api>,
    caller: Caller,
    Path(p): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult {
    let b = between(&api, &caller, p)?;
    let body = body_object(&body)?;
    let routing_key = body
        .get("routing_key")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let args = arguments(&body)?;
    caller.permit(&api, &b.vhost, Perm::Write, b.resource(), &b.destination)?;
    caller.permit(&api, &b.vhost, Perm::Read, Resource::Exchange, &b.source)?;
    let key = properties_key(&routing_key, &args);
    b.vhost.bind(
        &b.source,
        Binding {
            destination: b.destination()?,
            routing_key,
            arguments: args,
        },
    )?;
    durable_done(&b.vhost).await?;
    let mut response = StatusCode::CREATED.into_response();
    // As RabbitMQ's: the key quoted once more for the path, `~` (the hash separator) kept.
    let location = format!(
        "{}/{}",
        quote_plus(&b.destination),
        quote_plus(&key).replace("%7E", "~")
    );
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

async fn get_binding(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let b = between(&api, &caller, (vhost, source, kind, destination))?;
    let found = b.find(&props)?;
    Ok(json_ok(binding_json(&b.vhost.name, &found)))
}

async fn delete_binding(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let b = between(&api, &caller, (vhost, source, kind, destination))?;
    let found = b.find(&props)?;
    caller.permit(&api, &b.vhost, Perm::Write, b.resource(), &b.destination)?;
    caller.permit(&api, &b.vhost, Perm::Read, Resource::Exchange, &b.source)?;
    b.vhost.unbind(
        &b.source,
        &Binding {
            destination: b.destination()?,
            routing_key: found.routing_key,
            arguments: found.arguments,
        },
    )?;
    durable_done(&b.vhost).await?;
    Ok(no_content())
}
