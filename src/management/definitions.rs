//! Definitions in RabbitMQ's format: `GET /api/definitions[/V]` exports users, vhosts,
//! permissions, parameters, policies, queues, exchanges and bindings; `POST` imports an export
//! (RabbitMQ 3.x's unchanged) after checking all of it, so that a bad file changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::info;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::convert::{json_to_table, table_to_json};
use super::overview::RABBITMQ_VERSION;
use super::policies::policy_json;
use super::users::{user_from_json, user_json};
use super::{Api, ApiError, ApiResult, Caller, Role, no_content};
use crate::broker::admin::{
    GlobalParameterRecord, ParameterRecord, PermissionRecord, PolicyRecord, Record,
    TopicPermissionRecord, VHOST_LIMITS, VHostRecord,
};
use crate::broker::exchange::{Binding, ExchangeKind};
use crate::broker::{Broker, ExchangeDeclare, QueueDeclare, VHost, delayed, policy};
use crate::queue::args::{Declared, QueueArgs};

/// The component RabbitMQ exports operator policies under.
const OPERATOR_POLICY: &str = "operator_policy";
/// The component RabbitMQ exports vhost limits under.
const VHOST_LIMITS_COMPONENT: &str = "vhost-limits";

/// The routes of this module.
pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/definitions", get(export_all).post(import_all))
        .route("/definitions/{vhost}", get(export_vhost).post(import_vhost))
}

/// `?download=NAME` asks for the export as an attachment.
#[derive(Debug, Default, Deserialize)]
struct Download {
    download: Option<String>,
}

fn attach(value: Value, download: Option<String>) -> axum::response::Response {
    let mut response = axum::Json(value).into_response();
    if let Some(name) = download
        && let Ok(v) = HeaderValue::from_str(&format!("attachment; filename={name}"))
    {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

/// A vhost's queues, exchanges and bindings in export form; `with_vhost` adds each one's vhost.
fn topology(v: &VHost, with_vhost: bool) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let tag = |mut m: Map<String, Value>| {
        if with_vhost {
            m.insert("vhost".into(), Value::from(&*v.name));
        }
        Value::Object(m)
    };
    let object = |v: Value| match v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let queues = v
        .queues()
        .iter()
        .filter(|q| q.options.exclusive_owner.is_none())
        .map(|q| {
            tag(object(json!({
                "name": *q.name,
                "durable": q.options.durable,
                "auto_delete": q.options.auto_delete,
                "arguments": table_to_json(&q.options.arguments),
            })))
        })
        .collect();
    let exchanges = v
        .exchanges()
        .iter()
        .filter(|x| !x.name.starts_with("amq."))
        .map(|x| {
            tag(object(json!({
                "name": *x.name,
                "type": x.kind,
                "durable": x.durable,
                "auto_delete": x.auto_delete,
                "internal": x.internal,
                "arguments": table_to_json(&x.arguments),
            })))
        })
        .collect();
    let bindings = v
        .bindings()
        .iter()
        .map(|b| {
            tag(object(json!({
                "source": *b.source,
                "destination": *b.destination,
                "destination_type": if b.to_queue { "queue" } else { "exchange" },
                "routing_key": b.routing_key,
                "arguments": table_to_json(&b.arguments),
            })))
        })
        .collect();
    (queues, exchanges, bindings)
}

/// Runtime parameters, with operator policies and vhost limits among them as RabbitMQ keeps
/// them; of one vhost, or all.
pub(crate) fn parameters_of(broker: &Broker, vhost: Option<&str>) -> Vec<Value> {
    let r = broker.registry();
    let wanted = |v: &str| vhost.is_none_or(|w| w == v);
    let mut out: Vec<Value> = r
        .parameters
        .values()
        .filter(|p| wanted(&p.vhost))
        .map(|p| json!({"value": p.value, "vhost": p.vhost, "component": p.component, "name": p.name}))
        .collect();
    out.extend(r.operator_policies.values().filter(|p| wanted(&p.vhost)).map(|p| {
        json!({
            "value": {"pattern": p.pattern, "definition": p.definition, "priority": p.priority, "apply-to": p.apply_to},
            "vhost": p.vhost,
            "component": OPERATOR_POLICY,
            "name": p.name,
        })
    }));
    out.extend(
        r.vhosts
            .values()
            .filter(|v| wanted(&v.name) && !v.limits.is_empty())
            .map(|v| {
                json!({"value": v.limits, "vhost": v.name, "component": VHOST_LIMITS_COMPONENT, "name": "limits"})
            }),
    );
    out
}

/// The whole broker's definitions.
pub fn export(broker: &Broker) -> Value {
    let (mut queues, mut exchanges, mut bindings) = (Vec::new(), Vec::new(), Vec::new());
    for v in broker.vhosts() {
        let (q, x, b) = topology(&v, true);
        queues.extend(q);
        exchanges.extend(x);
        bindings.extend(b);
    }
    let parameters = parameters_of(broker, None);
    let r = broker.registry();
    json!({
        "rabbit_version": RABBITMQ_VERSION,
        "rabbitmq_version": RABBITMQ_VERSION,
        "product_name": "Warren",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": r.users.values().map(user_json).collect::<Vec<_>>(),
        "vhosts": r.vhosts.values().map(|v| json!({
            "name": v.name,
            "description": v.description,
            "tags": v.tags,
            "default_queue_type": v.default_queue_type,
            "metadata": {"description": v.description, "tags": v.tags},
        })).collect::<Vec<_>>(),
        "permissions": r.permissions.values().map(|p| json!({
            "user": p.user, "vhost": p.vhost, "configure": p.configure, "write": p.write, "read": p.read,
        })).collect::<Vec<_>>(),
        "topic_permissions": r.topic_permissions.values().map(|t| json!({
            "user": t.user, "vhost": t.vhost, "exchange": t.exchange, "write": t.write, "read": t.read,
        })).collect::<Vec<_>>(),
        "parameters": parameters,
        "global_parameters": r.global_parameters.values().map(|g| json!({
            "name": g.name, "value": g.value,
        })).collect::<Vec<_>>(),
        "policies": r.policies.values().map(policy_json).collect::<Vec<_>>(),
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    })
}

async fn export_all(
    State(api): State<Api>,
    caller: Caller,
    Query(d): Query<Download>,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    Ok(attach(export(&api.broker), d.download))
}

async fn export_vhost(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(d): Query<Download>,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    let v = api
        .broker
        .vhost(&vhost)
        .ok_or_else(|| ApiError::bad("vhost_not_found"))?;
    let (queues, exchanges, bindings) = topology(&v, false);
    let policies: Vec<Value> = api
        .broker
        .registry()
        .policies
        .values()
        .filter(|p| p.vhost == vhost)
        .map(policy_json)
        .collect();
    Ok(attach(
        json!({
            "rabbit_version": RABBITMQ_VERSION,
            "rabbitmq_version": RABBITMQ_VERSION,
            "parameters": parameters_of(&api.broker, Some(&vhost)),
            "policies": policies,
            "queues": queues,
            "exchanges": exchanges,
            "bindings": bindings,
        }),
        d.download,
    ))
}

/// Everything a definitions file asks for, checked and ready to apply.
#[derive(Default)]
struct Plan {
    records: Vec<Record>,
    vhost_limits: Vec<(String, BTreeMap<String, i64>)>,
    queues: Vec<(String, QueueDeclare)>,
    exchanges: Vec<(String, ExchangeDeclare)>,
    bindings: Vec<(
        String,
        String,
        String,
        bool,
        String,
        amq_protocol::types::FieldTable,
    )>,
}

fn list<'a>(defs: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], ApiError> {
    match defs.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(ApiError::bad(format!("{key} should be a list"))),
    }
}

fn obj(v: &Value) -> Result<&Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| ApiError::bad("every definition should be an object"))
}

fn text<'a>(m: &'a Map<String, Value>, key: &str) -> Result<&'a str, ApiError> {
    m.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad(format!("[{{key_missing,{key}}}]")))
}

fn flag(m: &Map<String, Value>, key: &str, default: bool) -> bool {
    match m.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => default,
    }
}

/// Checks a definitions file (or, with `only`, one vhost's) against the broker as it is, and
/// plans what to apply.
fn plan(broker: &Broker, defs: &Map<String, Value>, only: Option<&str>) -> Result<Plan, ApiError> {
    let mut p = Plan::default();
    let mut vhosts: Vec<String> = broker.registry().vhosts.keys().cloned().collect();
    let mut users: Vec<String> = broker.registry().users.keys().cloned().collect();
    if only.is_none() {
        for u in list(defs, "users")? {
            let u = obj(u)?;
            let name = text(u, "name")?;
            let mut record = user_from_json(name, u)?;
            if let Some(Value::Object(limits)) = u.get("limits") {
                record.limits = limits
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_i64()?)))
                    .collect();
            }
            users.push(name.to_owned());
            p.records.push(Record::User(record));
        }
        for v in list(defs, "vhosts")? {
            let v = obj(v)?;
            let name = text(v, "name")?;
            let mut record = VHostRecord::named(name);
            let meta = v.get("metadata").and_then(Value::as_object);
            record.description = v
                .get("description")
                .or_else(|| meta.and_then(|m| m.get("description")))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            record.tags = v
                .get("tags")
                .or_else(|| meta.and_then(|m| m.get("tags")))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|t| t.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            record.default_queue_type = v
                .get("default_queue_type")
                .and_then(Value::as_str)
                .filter(|t| ["classic", "quorum", "stream"].contains(t))
                .map(String::from);
            if let Some(old) = broker.registry().vhosts.get(name) {
                record.limits = old.limits.clone();
            }
            vhosts.push(name.to_owned());
            p.records.push(Record::VHost(record));
        }
    }
    let vhost_of = |m: &Map<String, Value>| -> Result<String, ApiError> {
        let v = match only {
            Some(v) => v.to_owned(),
            None => text(m, "vhost")?.to_owned(),
        };
        if !vhosts.contains(&v) {
            return Err(ApiError::BadRequest(json!(["no_such_vhost", v])));
        }
        Ok(v)
    };
    if only.is_none() {
        for perm in list(defs, "permissions")? {
            let m = obj(perm)?;
            let vhost = vhost_of(m)?;
            let user = text(m, "user")?;
            if !users.iter().any(|u| u == user) {
                return Err(ApiError::BadRequest(json!(["no_such_user", user])));
            }
            let record = PermissionRecord {
                user: user.to_owned(),
                vhost,
                configure: text(m, "configure")?.to_owned(),
                write: text(m, "write")?.to_owned(),
                read: text(m, "read")?.to_owned(),
            };
            crate::broker::admin::check_patterns(
                &record.user,
                &record.vhost,
                &[&record.configure, &record.write, &record.read],
            )
            .map_err(ApiError::bad)?;
            p.records.push(Record::Permission(record));
        }
        for t in list(defs, "topic_permissions")? {
            let m = obj(t)?;
            let vhost = vhost_of(m)?;
            let user = text(m, "user")?;
            if !users.iter().any(|u| u == user) {
                return Err(ApiError::BadRequest(json!(["no_such_user", user])));
            }
            let record = TopicPermissionRecord {
                user: user.to_owned(),
                vhost,
                exchange: text(m, "exchange")?.to_owned(),
                write: text(m, "write")?.to_owned(),
                read: text(m, "read")?.to_owned(),
            };
            crate::broker::admin::check_patterns(
                &record.user,
                &record.vhost,
                &[&record.write, &record.read],
            )
            .map_err(ApiError::bad)?;
            p.records.push(Record::TopicPermission(record));
        }
        for g in list(defs, "global_parameters")? {
            let m = obj(g)?;
            let name = text(m, "name")?;
            // RabbitMQ's own cluster id names the cluster it came from, not this broker.
            if name == "internal_cluster_id" {
                continue;
            }
            p.records
                .push(Record::GlobalParameter(GlobalParameterRecord {
                    name: name.to_owned(),
                    value: m.get("value").cloned().unwrap_or(Value::Null),
                }));
        }
    }
    for param in list(defs, "parameters")? {
        let m = obj(param)?;
        let vhost = vhost_of(m)?;
        let component = text(m, "component")?;
        let name = text(m, "name")?;
        let value = m.get("value").cloned().unwrap_or(Value::Null);
        match component {
            OPERATOR_POLICY => {
                let body = value.as_object().cloned().unwrap_or_default();
                let record = policy::parse(&vhost, name, &body, true)
                    .map_err(|e| ApiError::bad(format!("{e} ({vhost}/{name})")))?;
                p.records.push(Record::OperatorPolicy(record));
            }
            VHOST_LIMITS_COMPONENT => {
                let limits = value
                    .as_object()
                    .map(|l| {
                        l.iter()
                            .filter(|(k, _)| VHOST_LIMITS.contains(&k.as_str()))
                            .filter_map(|(k, v)| Some((k.clone(), v.as_i64()?)))
                            .collect()
                    })
                    .unwrap_or_default();
                p.vhost_limits.push((vhost, limits));
            }
            _ => p.records.push(Record::Parameter(ParameterRecord {
                component: component.to_owned(),
                vhost,
                name: name.to_owned(),
                value,
            })),
        }
    }
    for pol in list(defs, "policies")? {
        let m = obj(pol)?;
        let vhost = vhost_of(m)?;
        let name = text(m, "name")?;
        let record: PolicyRecord = policy::parse(&vhost, name, m, false)
            .map_err(|e| ApiError::bad(format!("{e} ({vhost}/{name})")))?;
        p.records.push(Record::Policy(record));
    }
    for q in list(defs, "queues")? {
        let m = obj(q)?;
        let vhost = vhost_of(m)?;
        let name = text(m, "name")?;
        let arguments = json_to_table(m.get("arguments").unwrap_or(&Value::Null))
            .ok_or_else(|| ApiError::bad("arguments should be an object"))?;
        let declare = QueueDeclare {
            name: name.to_owned(),
            durable: flag(m, "durable", true),
            auto_delete: flag(m, "auto_delete", false),
            arguments,
            ..QueueDeclare::default()
        };
        QueueArgs::parse(
            &declare.arguments,
            Declared {
                name,
                vhost: &vhost,
                durable: declare.durable,
                exclusive: false,
                auto_delete: declare.auto_delete,
            },
        )
        .map_err(ApiError::from)?;
        p.queues.push((vhost, declare));
    }
    for x in list(defs, "exchanges")? {
        let m = obj(x)?;
        let vhost = vhost_of(m)?;
        let kind = text(m, "type")?;
        if ExchangeKind::parse(kind).is_none() && kind != delayed::EXCHANGE_TYPE {
            return Err(ApiError::bad(format!("invalid exchange type '{kind}'")));
        }
        let arguments = json_to_table(m.get("arguments").unwrap_or(&Value::Null))
            .ok_or_else(|| ApiError::bad("arguments should be an object"))?;
        p.exchanges.push((
            vhost,
            ExchangeDeclare {
                name: text(m, "name")?.to_owned(),
                kind: kind.to_owned(),
                durable: flag(m, "durable", true),
                auto_delete: flag(m, "auto_delete", false),
                internal: flag(m, "internal", false),
                arguments,
                ..ExchangeDeclare::default()
            },
        ));
    }
    for b in list(defs, "bindings")? {
        let m = obj(b)?;
        let vhost = vhost_of(m)?;
        let arguments = json_to_table(m.get("arguments").unwrap_or(&Value::Null))
            .ok_or_else(|| ApiError::bad("arguments should be an object"))?;
        let routing_key = match m.get("routing_key") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        p.bindings.push((
            vhost,
            text(m, "source")?.to_owned(),
            text(m, "destination")?.to_owned(),
            text(m, "destination_type")? == "queue",
            routing_key,
            arguments,
        ));
    }
    Ok(p)
}

/// Imports a definitions file (with `only`, into that one vhost): everything is checked first,
/// then applied; what already exists is left as it is, as RabbitMQ does.
pub(crate) async fn import(
    broker: &Arc<Broker>,
    defs: &Value,
    only: Option<&str>,
) -> Result<(), ApiError> {
    let Some(defs) = defs.as_object() else {
        return Err(ApiError::bad("failed_to_parse_json"));
    };
    let plan = plan(broker, defs, only)?;
    let counts = (
        plan.records.len(),
        plan.exchanges.len(),
        plan.queues.len(),
        plan.bindings.len(),
    );
    broker.import_records(plan.records).await?;
    for (vhost, limits) in plan.vhost_limits {
        for limit in VHOST_LIMITS {
            broker
                .set_vhost_limit(&vhost, limit, limits.get(limit).copied())
                .await?;
        }
    }
    let mut touched: Vec<Arc<VHost>> = Vec::new();
    for (vhost, declare) in &plan.exchanges {
        if let Some(v) = broker.vhost(vhost) {
            // An exchange that exists stays as it is, whatever the file says.
            let _ = v.declare_exchange(declare);
            touched.push(v);
        }
    }
    for (vhost, declare) in &plan.queues {
        if let Some(v) = broker.vhost(vhost) {
            let _ = v.declare_queue(declare, 0);
            touched.push(v);
        }
    }
    for (vhost, source, destination, to_queue, routing_key, arguments) in plan.bindings {
        let Some(v) = broker.vhost(&vhost) else {
            continue;
        };
        let dest = if to_queue {
            v.destination(Some(&destination), None, 0)
        } else {
            v.destination(None, Some(&destination), 0)
        };
        // A binding whose source or destination is missing is skipped, as RabbitMQ skips it.
        if let Ok(destination) = dest {
            let _ = v.bind(
                &source,
                Binding {
                    destination,
                    routing_key,
                    arguments,
                },
            );
        }
        touched.push(v);
    }
    if let Some(store) = touched.first().and_then(|v| v.store())
        && !store.flushed(store.failures()).await
    {
        return Err(ApiError::Internal(
            "the store could not write the definitions".into(),
        ));
    }
    info!(
        vhost = only.unwrap_or("(all)"),
        records = counts.0,
        exchanges = counts.1,
        queues = counts.2,
        bindings = counts.3,
        "definitions imported"
    );
    Ok(())
}

/// Imports a definitions file from disk, as RabbitMQ's `load_definitions` does at boot; the
/// error says what is wrong with it.
pub async fn load(broker: &Arc<Broker>, path: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read(path)
        .map_err(|e| format!("cannot read definitions file {}: {e}", path.display()))?;
    let defs: Value = serde_json::from_slice(&text)
        .map_err(|e| format!("definitions file {}: not JSON: {e}", path.display()))?;
    import(broker, &defs, None)
        .await
        .map_err(|e| format!("definitions file {}: {}", path.display(), e.reason()))
}

/// Parses a POSTed definitions body: empty is nothing to do, malformed is RabbitMQ's 400.
fn parse_body(body: &[u8]) -> Result<Option<Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|_| ApiError::bad("failed_to_parse_json"))
}

async fn import_all(State(api): State<Api>, caller: Caller, body: Bytes) -> ApiResult {
    caller.require(Role::Administrator)?;
    if let Some(defs) = parse_body(&body)? {
        import(&api.broker, &defs, None).await?;
    }
    Ok(no_content())
}

async fn import_vhost(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    if api.broker.vhost(&vhost).is_none() {
        return Err(ApiError::VhostNotFound);
    }
    if let Some(defs) = parse_body(&body)? {
        import(&api.broker, &defs, Some(&vhost)).await?;
    }
    Ok(no_content())
}
