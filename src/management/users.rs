//! Users, vhosts, permissions, topic permissions and limits: `/api/whoami`, `/api/users`,
//! `/api/vhosts`, `/api/permissions`, `/api/topic-permissions`, `/api/vhost-limits` and
//! `/api/user-limits`.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::routing::{get, put};
use serde_json::{Map, Value, json};

use super::list::{ListQuery, respond};
use super::overview::node_name;
use super::stats::{Ages, add_aggregate};
use super::{
    Api, ApiError, ApiResult, Caller, Role, body_object, created_or_updated, json_ok, no_content,
};
use crate::broker::admin::{
    PermissionRecord, TopicPermissionRecord, USER_LIMITS, UserRecord, VHOST_LIMITS, VHostRecord,
};
use crate::broker::auth::HashingAlgorithm;

/// The routes of this module.
pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/whoami", get(whoami))
        .route("/users", get(list_users))
        .route("/users/without-permissions", get(users_without_permissions))
        .route(
            "/users/{user}",
            get(get_user).put(put_user).delete(delete_user),
        )
        .route("/users/{user}/permissions", get(user_permissions))
        .route(
            "/users/{user}/topic-permissions",
            get(user_topic_permissions),
        )
        .route("/vhosts", get(list_vhosts))
        .route(
            "/vhosts/{vhost}",
            get(get_vhost).put(put_vhost).delete(delete_vhost),
        )
        .route("/vhosts/{vhost}/permissions", get(vhost_permissions))
        .route(
            "/vhosts/{vhost}/topic-permissions",
            get(vhost_topic_permissions),
        )
        .route("/permissions", get(all_permissions))
        .route(
            "/permissions/{vhost}/{user}",
            get(get_permissions)
                .put(put_permissions)
                .delete(delete_permissions),
        )
        .route("/topic-permissions", get(all_topic_permissions))
        .route(
            "/topic-permissions/{vhost}/{user}",
            get(get_topic_permissions)
                .put(put_topic_permissions)
                .delete(delete_topic_permissions),
        )
        .route("/vhost-limits", get(all_vhost_limits))
        .route("/vhost-limits/{vhost}", get(vhost_limits))
        .route(
            "/vhost-limits/{vhost}/{limit}",
            put(put_vhost_limit).delete(delete_vhost_limit),
        )
        .route("/user-limits", get(all_user_limits))
        .route("/user-limits/{user}", get(user_limits))
        .route(
            "/user-limits/{user}/{limit}",
            put(put_user_limit).delete(delete_user_limit),
        )
}

async fn whoami(caller: Caller) -> ApiResult {
    Ok(json_ok(
        json!({"name": caller.user.name, "tags": caller.user.tags}),
    ))
}

/// A user as the API shows them.
pub(crate) fn user_json(u: &UserRecord) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing_algorithm.name(),
        "tags": u.tags,
        "limits": u.limits,
    })
}

async fn list_users(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    let users = api
        .broker
        .registry()
        .users
        .values()
        .map(user_json)
        .collect();
    respond(users, &q)
}

async fn users_without_permissions(State(api): State<Api>, caller: Caller) -> ApiResult {
    caller.require(Role::Administrator)?;
    let r = api.broker.registry();
    let lonely = r
        .users
        .values()
        .filter(|u| !r.permissions.values().any(|p| p.user == u.name))
        .map(user_json)
        .collect();
    Ok(json_ok(Value::Array(lonely)))
}

async fn get_user(State(api): State<Api>, caller: Caller, Path(user): Path<String>) -> ApiResult {
    caller.require(Role::Administrator)?;
    let r = api.broker.registry();
    let u = r.users.get(&user).ok_or(ApiError::NotFound)?;
    Ok(json_ok(user_json(u)))
}

/// Tags as RabbitMQ takes them: a list, or one comma-separated string.
fn parse_tags(v: &Value) -> Result<Vec<String>, ApiError> {
    let raw: Vec<&str> = match v {
        Value::String(s) => s.split(',').collect(),
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        Value::Null => Vec::new(),
        _ => return Err(ApiError::bad("tags must be a string or a list of strings")),
    };
    Ok(raw
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect())
}

fn string_field<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    body.get(key).and_then(Value::as_str)
}

/// The user a PUT body describes.
pub(crate) fn user_from_json(
    name: &str,
    body: &Map<String, Value>,
) -> Result<UserRecord, ApiError> {
    let tags = parse_tags(body.get("tags").ok_or(ApiError::bad("tags_not_present"))?)?;
    let algorithm = match string_field(body, "hashing_algorithm") {
        None => HashingAlgorithm::default(),
        Some(a) => HashingAlgorithm::parse(a)
            .ok_or_else(|| ApiError::bad(format!("unsupported hashing_algorithm '{a}'")))?,
    };
    let password_hash = match (
        string_field(body, "password"),
        string_field(body, "password_hash"),
    ) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                "both_password_and_password_hash_are_provided",
            ));
        }
        (Some(p), None) => algorithm.hash(p),
        (None, Some(h)) => {
            use base64::Engine as _;
            if base64::engine::general_purpose::STANDARD.decode(h).is_err() {
                return Err(ApiError::BadRequest(json!(["not_base64", h])));
            }
            h.to_owned()
        }
        // Nobody can log in with an empty hash.
        (None, None) => String::new(),
    };
    Ok(UserRecord {
        name: name.to_owned(),
        password_hash,
        hashing_algorithm: algorithm,
        tags,
        limits: BTreeMap::new(),
    })
}

async fn put_user(
    State(api): State<Api>,
    caller: Caller,
    Path(user): Path<String>,
    body: Bytes,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    let record = user_from_json(&user, &body_object(&body)?)?;
    Ok(created_or_updated(api.broker.put_user(record).await?))
}

async fn delete_user(
    State(api): State<Api>,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    api.broker.delete_user(&user).await?;
    Ok(no_content())
}

fn permission_json(p: &PermissionRecord) -> Value {
    json!({"user": p.user, "vhost": p.vhost, "configure": p.configure, "write": p.write, "read": p.read})
}

fn topic_permission_json(t: &TopicPermissionRecord) -> Value {
    json!({"user": t.user, "vhost": t.vhost, "exchange": t.exchange, "write": t.write, "read": t.read})
}

/// Lists the permissions `keep` picks.
fn permissions_where(api: &Api, keep: impl Fn(&PermissionRecord) -> bool) -> Value {
    let r = api.broker.registry();
    let mut all: Vec<&PermissionRecord> = r.permissions.values().filter(|p| keep(p)).collect();
    all.sort_by(|a, b| (&a.user, &a.vhost).cmp(&(&b.user, &b.vhost)));
    Value::Array(all.into_iter().map(permission_json).collect())
}

/// Lists the topic permissions `keep` picks.
fn topic_permissions_where(api: &Api, keep: impl Fn(&TopicPermissionRecord) -> bool) -> Value {
    let r = api.broker.registry();
    let mut all: Vec<&TopicPermissionRecord> =
        r.topic_permissions.values().filter(|t| keep(t)).collect();
    all.sort_by(|a, b| (&a.user, &a.vhost, &a.exchange).cmp(&(&b.user, &b.vhost, &b.exchange)));
    Value::Array(all.into_iter().map(topic_permission_json).collect())
}

/// Whose permissions a listing is of.
enum Owner {
    User(String),
    VHost(String),
}

/// The permissions (or, with `topic`, the topic permissions) of one user or vhost, which must
/// exist.
fn permissions_of(api: &Api, caller: &Caller, owner: &Owner, topic: bool) -> ApiResult {
    caller.require(Role::Administrator)?;
    let exists = {
        let r = api.broker.registry();
        match owner {
            Owner::User(u) => r.users.contains_key(u),
            Owner::VHost(v) => r.vhosts.contains_key(v),
        }
    };
    if !exists {
        return Err(ApiError::NotFound);
    }
    let matches = |user: &str, vhost: &str| match owner {
        Owner::User(u) => u == user,
        Owner::VHost(v) => v == vhost,
    };
    Ok(json_ok(if topic {
        topic_permissions_where(api, |t| matches(&t.user, &t.vhost))
    } else {
        permissions_where(api, |p| matches(&p.user, &p.vhost))
    }))
}

async fn user_permissions(
    State(api): State<Api>,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult {
    permissions_of(&api, &caller, &Owner::User(user), false)
}

async fn user_topic_permissions(
    State(api): State<Api>,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult {
    permissions_of(&api, &caller, &Owner::User(user), true)
}

async fn vhost_permissions(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult {
    permissions_of(&api, &caller, &Owner::VHost(vhost), false)
}

async fn vhost_topic_permissions(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult {
    permissions_of(&api, &caller, &Owner::VHost(vhost), true)
}

async fn all_permissions(State(api): State<Api>, caller: Caller) -> ApiResult {
    caller.require(Role::Administrator)?;
    Ok(json_ok(permissions_where(&api, |_| true)))
}

async fn all_topic_permissions(State(api): State<Api>, caller: Caller) -> ApiResult {
    caller.require(Role::Administrator)?;
    Ok(json_ok(topic_permissions_where(&api, |_| true)))
}

async fn get_permissions(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    let r = api.broker.registry();
    let p = r
        .permissions
        .get(&(vhost, user))
        .ok_or(ApiError::NotFound)?;
    Ok(json_ok(permission_json(p)))
}

/// The string values of `keys` in a body, or RabbitMQ's `key_missing` list.
fn required<'a, const N: usize>(
    body: &'a Map<String, Value>,
    keys: [&str; N],
) -> Result<[&'a str; N], ApiError> {
    let missing: Vec<String> = keys
        .iter()
        .filter(|k| string_field(body, k).is_none())
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad(format!("[{}]", missing.join(","))));
    }
    Ok(keys.map(|k| string_field(body, k).unwrap_or_default()))
}

async fn put_permissions(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    let body = body_object(&body)?;
    let [configure, write, read] = required(&body, ["configure", "write", "read"])?;
    let record = PermissionRecord {
        user,
        vhost,
        configure: configure.into(),
        write: write.into(),
        read: read.into(),
    };
    Ok(created_or_updated(
        api.broker.set_permissions(record).await?,
    ))
}

async fn delete_permissions(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    api.broker.clear_permissions(&vhost, &user).await?;
    Ok(no_content())
}

async fn get_topic_permissions(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    let found = topic_permissions_where(&api, |t| t.vhost == vhost && t.user == user);
    if found.as_array().is_some_and(Vec::is_empty) {
        return Err(ApiError::NotFound);
    }
    Ok(json_ok(found))
}

async fn put_topic_permissions(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    let body = body_object(&body)?;
    let [exchange, write, read] = required(&body, ["exchange", "write", "read"])?;
    let record = TopicPermissionRecord {
        user,
        vhost,
        exchange: exchange.into(),
        write: write.into(),
        read: read.into(),
    };
    Ok(created_or_updated(
        api.broker.set_topic_permissions(record).await?,
    ))
}

async fn delete_topic_permissions(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, user)): Path<(String, String)>,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    api.broker
        .clear_topic_permissions(&vhost, &user, None)
        .await?;
    Ok(no_content())
}

/// A vhost as the API shows it.
pub(crate) fn vhost_json(v: &VHostRecord) -> Value {
    json!({
        "name": v.name,
        "description": v.description,
        "tags": v.tags,
        "default_queue_type": v.default_queue_type.as_deref().unwrap_or("undefined"),
        "metadata": {"description": v.description, "tags": v.tags},
        "tracing": false,
        "cluster_state": {node_name(): "running"},
    })
}

/// A vhost with what it did, as the vhost endpoints show it.
fn vhost_json_with_stats(api: &Api, v: &VHostRecord, ages: Ages) -> Value {
    let mut json = vhost_json(v);
    if let Some(live) = api.broker.vhost(&v.name) {
        add_aggregate(&mut json, &live.history, ages);
    }
    json
}

async fn list_vhosts(
    State(api): State<Api>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    let visible: Vec<VHostRecord> = {
        let r = api.broker.registry();
        r.vhosts
            .values()
            .filter(|v| {
                caller.role >= Role::Monitoring
                    || r.permissions
                        .contains_key(&(v.name.clone(), caller.user.name.clone()))
            })
            .cloned()
            .collect()
    };
    let ages = Ages::of(&q);
    let all = visible
        .iter()
        .map(|v| vhost_json_with_stats(&api, v, ages))
        .collect();
    respond(all, &q)
}

async fn get_vhost(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    Query(q): Query<ListQuery>,
) -> ApiResult {
    if !caller.sees(&api.broker, &vhost) {
        caller.require(Role::Administrator)?;
    }
    let v = api
        .broker
        .registry()
        .vhosts
        .get(&vhost)
        .cloned()
        .ok_or(ApiError::NotFound)?;
    Ok(json_ok(vhost_json_with_stats(&api, &v, Ages::of(&q))))
}

/// The vhost a PUT body describes.
pub(crate) fn vhost_from_json(
    name: &str,
    body: &Map<String, Value>,
) -> Result<VHostRecord, ApiError> {
    let mut v = VHostRecord::named(name);
    v.description = string_field(body, "description")
        .unwrap_or_default()
        .to_owned();
    v.tags = parse_tags(body.get("tags").unwrap_or(&Value::Null))?;
    v.default_queue_type = string_field(body, "default_queue_type")
        .filter(|t| ["classic", "quorum", "stream"].contains(t))
        .map(String::from);
    Ok(v)
}

async fn put_vhost(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    let record = vhost_from_json(&vhost, &body_object(&body)?)?;
    let created = api.broker.put_vhost(record).await?;
    if created {
        // As RabbitMQ does, the user who creates a vhost gets every permission in it.
        api.broker
            .set_permissions(PermissionRecord {
                user: caller.user.name.clone(),
                vhost,
                configure: ".*".into(),
                write: ".*".into(),
                read: ".*".into(),
            })
            .await?;
    }
    Ok(created_or_updated(created))
}

async fn delete_vhost(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    api.broker.delete_vhost(&vhost).await?;
    Ok(no_content())
}

/// The limits of every vhost (`key` "vhost") or user (`key` "user") that has any; with `only`,
/// of that one, which must exist.
fn limits_listing<'a>(
    key: &str,
    all: impl Iterator<Item = (&'a String, &'a BTreeMap<String, i64>)>,
    only: Option<&str>,
    exists: bool,
) -> ApiResult {
    if only.is_some() && !exists {
        return Err(ApiError::NotFound);
    }
    let listed = all
        .filter(|(name, limits)| !limits.is_empty() && only.is_none_or(|o| o == name.as_str()))
        .map(|(name, limits)| json!({key: name, "value": limits}))
        .collect();
    Ok(json_ok(Value::Array(listed)))
}

async fn all_vhost_limits(State(api): State<Api>, caller: Caller) -> ApiResult {
    vhost_limits_of(&api, &caller, None)
}

async fn vhost_limits(
    State(api): State<Api>,
    caller: Caller,
    Path(vhost): Path<String>,
) -> ApiResult {
    vhost_limits_of(&api, &caller, Some(&vhost))
}

fn vhost_limits_of(api: &Api, caller: &Caller, only: Option<&str>) -> ApiResult {
    caller.require(Role::Administrator)?;
    let r = api.broker.registry();
    let exists = only.is_some_and(|v| r.vhosts.contains_key(v));
    limits_listing(
        "vhost",
        r.vhosts.values().map(|v| (&v.name, &v.limits)),
        only,
        exists,
    )
}

async fn all_user_limits(State(api): State<Api>, caller: Caller) -> ApiResult {
    user_limits_of(&api, &caller, None)
}

async fn user_limits(
    State(api): State<Api>,
    caller: Caller,
    Path(user): Path<String>,
) -> ApiResult {
    user_limits_of(&api, &caller, Some(&user))
}

fn user_limits_of(api: &Api, caller: &Caller, only: Option<&str>) -> ApiResult {
    caller.require(Role::Administrator)?;
    let r = api.broker.registry();
    let exists = only.is_some_and(|u| r.users.contains_key(u));
    limits_listing(
        "user",
        r.users.values().map(|u| (&u.name, &u.limits)),
        only,
        exists,
    )
}

/// Erlang's rendering of a JSON value in RabbitMQ's validation messages.
fn erlang_term(v: &Value) -> String {
    match v {
        Value::String(s) => format!("<<\"{s}\">>"),
        other => other.to_string(),
    }
}

/// A limit's value from a PUT body, with RabbitMQ's complaint where it is not an integer or
/// not a limit `known` names; `vhost` picks the vhost wording.
fn limit_value(body: &[u8], limit: &str, known: &[&str], vhost: bool) -> Result<i64, ApiError> {
    let body = body_object(body)?;
    let value = body
        .get("value")
        .ok_or(ApiError::bad("[{key_missing,value}]"))?;
    let (prefix, suffix) = if vhost {
        ("Validation failed\n\n", "\n")
    } else {
        ("", "")
    };
    if !known.contains(&limit) {
        let scope = if vhost { "limits" } else { "user-limits" };
        return Err(ApiError::bad(format!(
            "{prefix}Unrecognised terms [{{<<\"{limit}\">>,{}}}] in {scope}{suffix}",
            erlang_term(value)
        )));
    }
    value.as_i64().ok_or_else(|| {
        ApiError::bad(format!(
            "{prefix}{limit} should be a number, actually was {}{suffix}",
            erlang_term(value)
        ))
    })
}

async fn put_vhost_limit(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, limit)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    if !api.broker.registry().vhosts.contains_key(&vhost) {
        return Err(ApiError::VhostNotFound);
    }
    let value = limit_value(&body, &limit, &VHOST_LIMITS, true)?;
    api.broker
        .set_vhost_limit(&vhost, &limit, Some(value))
        .await?;
    Ok(no_content())
}

async fn delete_vhost_limit(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, limit)): Path<(String, String)>,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    if !api.broker.registry().vhosts.contains_key(&vhost) {
        return Err(ApiError::VhostNotFound);
    }
    if VHOST_LIMITS.contains(&limit.as_str()) {
        api.broker.set_vhost_limit(&vhost, &limit, None).await?;
    }
    Ok(no_content())
}

async fn put_user_limit(
    State(api): State<Api>,
    caller: Caller,
    Path((user, limit)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    let value = limit_value(&body, &limit, &USER_LIMITS, false)?;
    if !api.broker.registry().users.contains_key(&user) {
        return Err(ApiError::BadRequest(json!(["no_such_user", user])));
    }
    api.broker
        .set_user_limit(&user, &limit, Some(value))
        .await?;
    Ok(no_content())
}

async fn delete_user_limit(
    State(api): State<Api>,
    caller: Caller,
    Path((user, limit)): Path<(String, String)>,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    if !api.broker.registry().users.contains_key(&user) {
        return Err(ApiError::BadRequest(json!(["no_such_user", user])));
    }
    if USER_LIMITS.contains(&limit.as_str()) {
        api.broker.set_user_limit(&user, &limit, None).await?;
    }
    Ok(no_content())
}
