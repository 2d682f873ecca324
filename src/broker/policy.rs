//! Policies as RabbitMQ validates them: which definition keys a policy and an operator policy
//! may set, what values each takes, and the `apply-to` targets.

use std::sync::Arc;

use amq_protocol::types::FieldTable;
use serde_json::{Map, Value};

use super::admin::PolicyRecord;
use crate::queue::args::{Overflow, QueueArgs, QueueType};

/// The keys a policy may set that Warren acts on.
const APPLIED: [&str; 11] = [
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "message-ttl",
    "expires",
    "max-length",
    "max-length-bytes",
    "overflow",
    "alternate-exchange",
    "delivery-limit",
    "max-age",
    "stream-max-segment-size-bytes",
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
        "max-age"
            if v.as_str()
                .and_then(crate::queue::args::max_age_ms)
                .is_none() =>
        {
            "a valid max age"
        }
        "stream-max-segment-size-bytes" if !non_negative => "a valid segment size",
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

/// A vhost's policies and operator policies, with their patterns compiled.
#[derive(Debug, Default)]
pub struct PolicySet {
    policies: Vec<(PolicyRecord, regex::Regex)>,
    operator: Vec<(PolicyRecord, regex::Regex)>,
}

/// What a policy can apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A queue of this type.
    Queue(QueueType),
    /// An exchange.
    Exchange,
}

/// The policies in force on a queue or exchange, as the API shows them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// The policy's name.
    pub policy: Option<String>,
    /// The operator policy's name.
    pub operator_policy: Option<String>,
    /// What they set together, the stricter value where both set a key.
    pub definition: Map<String, Value>,
}

/// The keys where the lower of argument, policy and operator policy wins (the others: the
/// argument, else the policy).
const LOWEST_WINS: [&str; 5] = [
    "message-ttl",
    "expires",
    "max-length",
    "max-length-bytes",
    "delivery-limit",
];

impl PolicySet {
    /// Compiles a vhost's policies and operator policies (patterns were checked when set).
    pub fn new<'a>(
        policies: impl Iterator<Item = &'a PolicyRecord>,
        operator: impl Iterator<Item = &'a PolicyRecord>,
    ) -> Arc<Self> {
        let compile = |p: &PolicyRecord| Some((p.clone(), regex::Regex::new(&p.pattern).ok()?));
        Arc::new(Self {
            policies: policies.filter_map(compile).collect(),
            operator: operator.filter_map(compile).collect(),
        })
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.operator.is_empty()
    }

    /// The highest-priority policy of `set` for `name`; among equals, the first by name.
    fn pick<'a>(
        set: &'a [(PolicyRecord, regex::Regex)],
        name: &str,
        target: Target,
    ) -> Option<&'a PolicyRecord> {
        set.iter()
            .filter(|(p, re)| applies(&p.apply_to, target) && re.is_match(name))
            .map(|(p, _)| p)
            .fold(None, |best: Option<&PolicyRecord>, p| match best {
                Some(b) if b.priority >= p.priority => Some(b),
                _ => Some(p),
            })
    }

    /// What applies to `name`: the policy and operator policy, and their combined definition.
    pub fn applied(&self, name: &str, target: Target) -> Applied {
        let policy = Self::pick(&self.policies, name, target);
        let operator = match target {
            Target::Queue(_) => Self::pick(&self.operator, name, target),
            Target::Exchange => None,
        };
        let mut definition = policy.map(|p| p.definition.clone()).unwrap_or_default();
        for (k, v) in operator.map(|p| &p.definition).into_iter().flatten() {
            let stricter = match (definition.get(k).and_then(Value::as_i64), v.as_i64()) {
                (Some(a), Some(b)) => Value::from(a.min(b)),
                _ => v.clone(),
            };
            definition.insert(k.clone(), stricter);
        }
        Applied {
            policy: policy.map(|p| p.name.clone()),
            operator_policy: operator.map(|p| p.name.clone()),
            definition,
        }
    }
}

/// Whether a policy's `apply-to` covers `target`.
fn applies(apply_to: &str, target: Target) -> bool {
    match (apply_to, target) {
        ("all", _) | ("exchanges", Target::Exchange) | ("queues", Target::Queue(_)) => true,
        ("classic_queues", Target::Queue(t)) => t == QueueType::Classic,
        ("quorum_queues", Target::Queue(t)) => t == QueueType::Quorum,
        ("streams", Target::Queue(t)) => t == QueueType::Stream,
        _ => false,
    }
}

/// A queue's arguments in force: its declared ones with `applied` combined as RabbitMQ combines
/// them. TTLs, expiry, length limits and the delivery limit take the lowest of argument, policy
/// and operator policy; the dead-letter keys and `overflow` take the argument, else the policy.
pub fn effective(declared: &QueueArgs, arguments: &FieldTable, applied: &Applied) -> QueueArgs {
    let mut out = declared.clone();
    let def = &applied.definition;
    let number = |k: &str| def.get(k).and_then(Value::as_u64);
    let lowest = |arg: Option<u64>, k: &str| match (arg, number(k)) {
        (Some(a), Some(p)) => Some(a.min(p)),
        (a, p) => a.or(p),
    };
    out.message_ttl = lowest(declared.message_ttl, LOWEST_WINS[0]);
    out.expires = lowest(declared.expires, LOWEST_WINS[1]);
    out.max_length = lowest(declared.max_length, LOWEST_WINS[2]);
    out.max_length_bytes = lowest(declared.max_length_bytes, LOWEST_WINS[3]);
    out.delivery_limit = lowest(declared.delivery_limit, LOWEST_WINS[4]);
    // A stream's own arguments win over these two, as in RabbitMQ.
    out.max_age_ms = declared.max_age_ms.or_else(|| {
        def.get("max-age")
            .and_then(Value::as_str)
            .and_then(crate::queue::args::max_age_ms)
    });
    out.segment_bytes = declared
        .segment_bytes
        .or_else(|| number("stream-max-segment-size-bytes"));
    let text = |k: &str| def.get(k).and_then(Value::as_str).map(String::from);
    if out.dead_letter_exchange.is_none() {
        out.dead_letter_exchange = text("dead-letter-exchange");
    }
    if out.dead_letter_routing_key.is_none() {
        out.dead_letter_routing_key = text("dead-letter-routing-key");
    }
    if !arguments.inner().contains_key("x-overflow") {
        out.overflow = match text("overflow").as_deref() {
            Some("reject-publish") => Overflow::RejectPublish,
            Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
            _ => declared.overflow,
        };
    }
    out
}

/// An exchange's alternate exchange from its policy, where its arguments name none.
pub fn alternate_exchange(applied: &Applied) -> Option<String> {
    applied
        .definition
        .get("alternate-exchange")
        .and_then(Value::as_str)
        .map(String::from)
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

    fn record(name: &str, pattern: &str, priority: i64, definition: Value) -> PolicyRecord {
        parse(
            "/",
            name,
            &body(json!({"pattern": pattern, "priority": priority, "definition": definition})),
            false,
        )
        .expect("valid")
    }

    #[test]
    fn the_highest_priority_wins_and_the_lower_value_of_argument_and_policy() {
        let low = record(
            "low",
            "^q",
            1,
            json!({"max-length": 5, "dead-letter-exchange": "dlx"}),
        );
        let high = record(
            "high",
            "^q",
            2,
            json!({"max-length": 50, "message-ttl": 1000}),
        );
        let mut op = record("op", ".*", 0, json!({"max-length": 20}));
        op.apply_to = "queues".into();
        let set = PolicySet::new([low, high].iter(), [op].iter());
        let classic = Target::Queue(QueueType::Classic);
        let applied = set.applied("q1", classic);
        assert_eq!(applied.policy.as_deref(), Some("high"));
        assert_eq!(applied.operator_policy.as_deref(), Some("op"));
        assert_eq!(applied.definition["max-length"], json!(20));
        let declared = QueueArgs {
            message_ttl: Some(500),
            dead_letter_exchange: Some("mine".into()),
            ..QueueArgs::default()
        };
        let eff = effective(&declared, &FieldTable::default(), &applied);
        assert_eq!(eff.max_length, Some(20));
        assert_eq!(eff.message_ttl, Some(500), "the argument is lower");
        assert_eq!(eff.dead_letter_exchange.as_deref(), Some("mine"));
        assert!(set.applied("other", classic).policy.is_none());
        assert!(
            set.applied("q1", Target::Exchange)
                .operator_policy
                .is_none()
        );
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
