//! Policies as RabbitMQ validates them: which definition keys a policy and an operator policy
//! may set, what values each takes, and the `apply-to` targets.

use serde_json::{Map, Value};

use super::admin::PolicyRecord;

/// The keys a policy may set that Warren acts on.
const APPLIED: [&str; 9] = [
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "message-ttl",
    "expires",
    "max-length",
    "max-length-bytes",
    "overflow",
    "alternate-exchange",
    "delivery-limit",
];

/// Keys RabbitMQ 3.x accepts for features Warren does not have: stored so that real exports
/// import, and otherwise ignored.
const IGNORED: [&str; 13] = [
    "ha-mode",
    "ha-params",
    "ha-sync-mode",
    "ha-sync-batch-size",
    "ha-promote-on-shutdown",
    "ha-promote-on-failure",
    "queue-mode",
    "queue-master-locator",
    "queue-leader-locator",
    "queue-version",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "consumer-timeout",
];

/// The keys an operator policy may set.
const OPERATOR: [&str; 7] = [
    "expires",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "delivery-limit",
    "max-in-memory-length",
    "max-in-memory-bytes",
];

/// What `apply-to` may say.
const TARGETS: [&str; 6] = [
    "queues",
    "exchanges",
    "all",
    "classic_queues",
    "quorum_queues",
    "streams",
];

/// Erlang's rendering of a JSON value, as RabbitMQ's validation messages quote them.
fn term(v: &Value) -> String {
    match v {
        Value::String(s) => format!("<<\"{s}\">>"),
        other => other.to_string(),
    }
}

/// Checks one definition value; the complaint, without the `Validation failed` frame, if bad.
fn check_value(key: &str, v: &Value) -> Result<(), String> {
    let non_negative = v.as_i64().is_some_and(|n| n >= 0);
    let what = match key {
        "max-length" | "max-length-bytes" if !non_negative => "a valid maximum length",
        "message-ttl" if !non_negative => "a valid message TTL",
        "expires" if v.as_i64().is_none_or(|n| n < 1) => "a valid queue expiry",
        "delivery-limit" if !non_negative => "a valid delivery limit",
        "overflow"
            if !matches!(
                v.as_str(),
                Some("drop-head" | "reject-publish" | "reject-publish-dlx")
            ) =>
        {
            "a valid overflow value"
        }
        "dead-letter-exchange" | "dead-letter-routing-key" | "alternate-exchange"
            if !v.is_string() =>
        {
            return Err(format!("{key} should be binary, actually was {}", term(v)));
        }
        _ => return Ok(()),
    };
    Err(format!("{} is not {what}", term(v)))
}

/// Validates a policy PUT body into a record; the error is RabbitMQ's reason text. An operator
/// policy takes only the operator keys; `escape` HTML-escapes the Erlang quoting as RabbitMQ's
/// `/api/policies` does.
pub fn parse(
    vhost: &str,
    name: &str,
    body: &Map<String, Value>,
    operator: bool,
) -> Result<PolicyRecord, String> {
    let missing: Vec<String> = ["pattern", "definition"]
        .iter()
        .filter(|k| !body.contains_key(**k))
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        return Err(format!("[{}]", missing.join(",")));
    }
    let failed = |why: String| {
        let text = format!("Validation failed\n\n{why}\n");
        if operator {
            text
        } else {
            text.replace('<', "&lt;").replace('>', "&gt;")
        }
    };
    let pattern = body
        .get("pattern")
        .and_then(Value::as_str)
        .ok_or_else(|| failed("pattern should be a string".into()))?;
    if let Err(e) = regex::Regex::new(pattern) {
        return Err(failed(format!(
            "pattern should be regular expression but is invalid: {e}"
        )));
    }
    let apply_to = match body.get("apply-to") {
        None => "all",
        Some(v) => v.as_str().unwrap_or_default(),
    };
    if !TARGETS.contains(&apply_to) {
        return Err(failed(format!(
            "apply-to '{apply_to}' unrecognised; should be 'queues', 'exchanges' or 'all'"
        )));
    }
    let priority = match body.get("priority") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| {
                failed(format!(
                    "priority should be a number, actually was {}",
                    term(v)
                ))
            })?,
    };
    let Some(Value::Object(definition)) = body.get("definition") else {
        return Err(failed("definition should be an object".into()));
    };
    if definition.is_empty() {
        return Err(failed("no policy provided".into()));
    }
    let unknown: Vec<String> = definition
        .iter()
        .filter(|(k, _)| {
            if operator {
                !OPERATOR.contains(&k.as_str())
            } else {
                !APPLIED.contains(&k.as_str()) && !IGNORED.contains(&k.as_str())
            }
        })
        .map(|(k, v)| format!("{{<<\"{k}\">>,{}}}", term(v)))
        .collect();
    if !unknown.is_empty() {
        return Err(failed(format!(
            "[{}] are not recognised policy settings",
            unknown.join(",")
        )));
    }
    for (k, v) in definition {
        check_value(k, v).map_err(failed)?;
    }
    Ok(PolicyRecord {
        vhost: vhost.to_owned(),
        name: name.to_owned(),
        pattern: pattern.to_owned(),
        apply_to: apply_to.to_owned(),
        priority,
        definition: definition.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn policies_are_checked_as_rabbitmq_checks_them() {
        let ok = parse(
            "/",
            "p",
            &body(json!({"pattern": "^q", "definition": {"max-length": 10, "ha-mode": "all"}, "priority": 1, "apply-to": "queues"})),
            false,
        )
        .expect("valid");
        assert_eq!((ok.priority, ok.apply_to.as_str()), (1, "queues"));
        let e = parse(
            "/",
            "p",
            &body(json!({"pattern": "^q", "definition": {"max-priority": 5}})),
            false,
        );
        assert_eq!(
            e.err().as_deref(),
            Some(
                "Validation failed\n\n[{&lt;&lt;\"max-priority\"&gt;&gt;,5}] are not recognised policy settings\n"
            )
        );
        let e = parse(
            "/",
            "op",
            &body(json!({"pattern": ".*", "definition": {"dead-letter-exchange": "x"}})),
            true,
        );
        assert_eq!(
            e.err().as_deref(),
            Some(
                "Validation failed\n\n[{<<\"dead-letter-exchange\">>,<<\"x\">>}] are not recognised policy settings\n"
            )
        );
        let e = parse(
            "/",
            "p",
            &body(json!({"pattern": "^q", "definition": {}})),
            false,
        );
        assert_eq!(
            e.err().as_deref(),
            Some("Validation failed\n\nno policy provided\n")
        );
        let e = parse(
            "/",
            "p",
            &body(json!({"definition": {"max-length": 1}})),
            false,
        );
        assert_eq!(e.err().as_deref(), Some("[{key_missing,pattern}]"));
        let e = parse(
            "/",
            "p",
            &body(json!({"pattern": "^q", "definition": {"max-length": -1}})),
            false,
        );
        assert_eq!(
            e.err().as_deref(),
            Some("Validation failed\n\n-1 is not a valid maximum length\n")
        );
        let e = parse(
            "/",
            "p",
            &body(json!({"pattern": "^q", "definition": {"expires": 0}})),
            false,
        );
        assert_eq!(
            e.err().as_deref(),
            Some("Validation failed\n\n0 is not a valid queue expiry\n")
        );
    }
}
