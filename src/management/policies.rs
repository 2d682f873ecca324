//! Policies, operator policies, runtime parameters and global parameters: `/api/policies`,
//! `/api/operator-policies`, `/api/parameters` and `/api/global-parameters`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::get;
use serde_json::{Value, json};

use super::definitions::parameters_of;
use super::{
    Api, ApiError, ApiResult, Caller, Role, body_object, created_or_updated, json_ok, no_content,
};
use crate::broker::admin::{GlobalParameterRecord, ParameterRecord, PolicyRecord};
use crate::broker::policy;

/// The routes of this module.
pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/policies", get(|s, c| policies(s, c, None, false)))
        .route(
            "/policies/{vhost}",
            get(|s, c, Path(v): Path<String>| policies(s, c, Some(v), false)),
        )
        .route(
            "/policies/{vhost}/{name}",
            get(|s, c, p| get_policy(s, c, p, false))
                .put(|s, c, p, b| put_policy(s, c, p, b, false))
                .delete(|s, c, p| delete_policy(s, c, p, false)),
        )
        .route("/operator-policies", get(|s, c| policies(s, c, None, true)))
        .route(
            "/operator-policies/{vhost}",
            get(|s, c, Path(v): Path<String>| policies(s, c, Some(v), true)),
        )
        .route(
            "/operator-policies/{vhost}/{name}",
            get(|s, c, p| get_policy(s, c, p, true))
                .put(|s, c, p, b| put_policy(s, c, p, b, true))
                .delete(|s, c, p| delete_policy(s, c, p, true)),
        )
        .route("/parameters", get(parameters))
        .route("/parameters/{component}", get(component_parameters))
        .route(
            "/parameters/{component}/{vhost}",
            get(vhost_component_parameters),
        )
        .route(
            "/parameters/{component}/{vhost}/{name}",
            get(get_parameter)
                .put(put_parameter)
                .delete(delete_parameter),
        )
        .route("/global-parameters", get(global_parameters))
        .route(
            "/global-parameters/{name}",
            get(get_global_parameter)
                .put(put_global_parameter)
                .delete(delete_global_parameter),
        )
}

/// A policy as the API shows it.
pub(crate) fn policy_json(p: &PolicyRecord) -> Value {
    json!({
        "vhost": p.vhost,
        "name": p.name,
        "pattern": p.pattern,
        "apply-to": p.apply_to,
        "definition": p.definition,
        "priority": p.priority,
    })
}

/// Who may read or change a vhost's policies: a policymaker with permissions there, or an
/// administrator (operator policies: administrators only).
fn may_manage(api: &Api, caller: &Caller, vhost: &str, operator: bool) -> Result<(), ApiError> {
    if operator {
        return caller.require(Role::Administrator);
    }
    caller.require(Role::Policymaker)?;
    if caller.role == Role::Administrator || caller.permitted(&api.broker, vhost) {
        Ok(())
    } else {
        Err(ApiError::NotAuthorised(
            "User not authorised to access object",
        ))
    }
}

async fn policies(
    State(api): State<Api>,
    caller: Caller,
    vhost: Option<String>,
    operator: bool,
) -> ApiResult {
    if operator {
        caller.require(Role::Administrator)?;
    } else {
        caller.require(Role::Policymaker)?;
    }
    if let Some(v) = &vhost {
        caller.vhost(&api.broker, v)?;
    }
    let r = api.broker.registry();
    let all = if operator {
        &r.operator_policies
    } else {
        &r.policies
    };
    let listed = all
        .values()
        .filter(|p| vhost.as_ref().is_none_or(|v| *v == p.vhost))
        .filter(|p| caller.role >= Role::Monitoring || caller.permitted(&api.broker, &p.vhost))
        .map(policy_json)
        .collect();
    Ok(json_ok(Value::Array(listed)))
}

async fn get_policy(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    operator: bool,
) -> ApiResult {
    may_manage(&api, &caller, &vhost, operator)?;
    let r = api.broker.registry();
    let all = if operator {
        &r.operator_policies
    } else {
        &r.policies
    };
    let p = all.get(&(vhost, name)).ok_or(ApiError::NotFound)?;
    Ok(json_ok(policy_json(p)))
}

async fn put_policy(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
    operator: bool,
) -> ApiResult {
    may_manage(&api, &caller, &vhost, operator)?;
    if api.broker.vhost(&vhost).is_none() {
        return Err(ApiError::VhostNotFound);
    }
    let record =
        policy::parse(&vhost, &name, &body_object(&body)?, operator).map_err(ApiError::bad)?;
    Ok(created_or_updated(
        api.broker.put_policy(record, operator).await?,
    ))
}

async fn delete_policy(
    State(api): State<Api>,
    caller: Caller,
    Path((vhost, name)): Path<(String, String)>,
    operator: bool,
) -> ApiResult {
    may_manage(&api, &caller, &vhost, operator)?;
    api.broker.delete_policy(&vhost, &name, operator).await?;
    Ok(no_content())
}

/// The parameters `keep` picks (by component and vhost), in the API's shape: operator policies
/// and vhost limits among them, as RabbitMQ lists them.
fn parameters_where(api: &Api, keep: impl Fn(&str, &str) -> bool) -> Value {
    let field = |p: &Value, k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    Value::Array(
        parameters_of(&api.broker, None)
            .into_iter()
            .filter(|p| keep(&field(p, "component"), &field(p, "vhost")))
            .collect(),
    )
}

async fn parameters(State(api): State<Api>, caller: Caller) -> ApiResult {
    caller.require(Role::Policymaker)?;
    Ok(json_ok(parameters_where(&api, |_, vhost| {
        caller.sees(&api.broker, vhost)
    })))
}

async fn component_parameters(
    State(api): State<Api>,
    caller: Caller,
    Path(component): Path<String>,
) -> ApiResult {
    caller.require(Role::Policymaker)?;
    Ok(json_ok(parameters_where(&api, |c, vhost| {
        c == component && caller.sees(&api.broker, vhost)
    })))
}

async fn vhost_component_parameters(
    State(api): State<Api>,
    caller: Caller,
    Path((component, vhost)): Path<(String, String)>,
) -> ApiResult {
    may_manage(&api, &caller, &vhost, false)?;
    caller.vhost(&api.broker, &vhost)?;
    Ok(json_ok(parameters_where(&api, |c, v| {
        c == component && v == vhost
    })))
}

async fn get_parameter(
    State(api): State<Api>,
    caller: Caller,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult {
    may_manage(&api, &caller, &vhost, false)?;
    let found = parameters_of(&api.broker, Some(&vhost))
        .into_iter()
        .find(|p| p["component"] == component.as_str() && p["name"] == name.as_str())
        .ok_or(ApiError::NotFound)?;
    Ok(json_ok(found))
}

async fn put_parameter(
    State(api): State<Api>,
    caller: Caller,
    Path((component, vhost, name)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    may_manage(&api, &caller, &vhost, false)?;
    if api.broker.vhost(&vhost).is_none() {
        return Err(ApiError::VhostNotFound);
    }
    let mut body = body_object(&body)?;
    let value = body
        .remove("value")
        .ok_or(ApiError::bad("[{key_missing,value}]"))?;
    let record = ParameterRecord {
        component,
        vhost,
        name,
        value,
    };
    Ok(created_or_updated(api.broker.put_parameter(record).await?))
}

async fn delete_parameter(
    State(api): State<Api>,
    caller: Caller,
    Path((component, vhost, name)): Path<(String, String, String)>,
) -> ApiResult {
    may_manage(&api, &caller, &vhost, false)?;
    api.broker
        .delete_parameter(&component, &vhost, &name)
        .await?;
    Ok(no_content())
}

fn global_json(g: &GlobalParameterRecord) -> Value {
    json!({"name": g.name, "value": g.value})
}

async fn global_parameters(State(api): State<Api>, caller: Caller) -> ApiResult {
    caller.require(Role::Policymaker)?;
    let all = api
        .broker
        .registry()
        .global_parameters
        .values()
        .map(global_json)
        .collect();
    Ok(json_ok(Value::Array(all)))
}

async fn get_global_parameter(
    State(api): State<Api>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult {
    caller.require(Role::Policymaker)?;
    let r = api.broker.registry();
    let g = r.global_parameters.get(&name).ok_or(ApiError::NotFound)?;
    Ok(json_ok(global_json(g)))
}

async fn put_global_parameter(
    State(api): State<Api>,
    caller: Caller,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    let mut body = body_object(&body)?;
    let value = body
        .remove("value")
        .ok_or(ApiError::bad("[{key_missing,value}]"))?;
    let created = api
        .broker
        .put_global_parameter(GlobalParameterRecord { name, value })
        .await?;
    Ok(created_or_updated(created))
}

async fn delete_global_parameter(
    State(api): State<Api>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult {
    caller.require(Role::Administrator)?;
    api.broker.delete_global_parameter(&name).await?;
    Ok(no_content())
}
