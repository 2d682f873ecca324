//! Headers exchange routing: matching message headers against binding arguments, RabbitMQ-style.

use crate::protocol::erlang::{self, Binary, Print, Term, term};
use crate::protocol::table::type_name;
use amq_protocol::types::{AMQPValue, FieldTable};

/// The binding argument that selects the match mode.
const X_MATCH: &str = "x-match";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

impl Mode {
    fn parse(value: &[u8]) -> Option<Mode> {
        match value {
            b"all" => Some(Mode::All),
            b"any" => Some(Mode::Any),
            b"all-with-x" => Some(Mode::AllWithX),
            b"any-with-x" => Some(Mode::AnyWithX),
            _ => None,
        }
    }

    /// RabbitMQ falls back to `all` for a missing or unrecognised x-match (legacy
    /// bindings were never validated), so routing must never fail on it.
    fn of(binding_args: &FieldTable) -> Mode {
        binding_args
            .inner()
            .get(X_MATCH)
            .and_then(string_bytes)
            .and_then(Mode::parse)
            .unwrap_or(Mode::All)
    }
}

/// ShortString cannot arrive on the wire (amq-protocol reads 's' as a short int)
/// but may be built in-process, so it is accepted as a string alongside LongString.
fn string_bytes(value: &AMQPValue) -> Option<&[u8]> {
    match value {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

/// Returns true when a message with `headers` should be routed through a binding with `binding_args`.
pub fn headers_match(binding_args: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = Mode::of(binding_args);
    let with_x = matches!(mode, Mode::AllWithX | Mode::AnyWithX);
    let need_all = matches!(mode, Mode::All | Mode::AllWithX);
    for (key, wanted) in binding_args {
        let key = key.as_str();
        // x-match itself is never a condition, even in the *-with-x modes.
        if key == X_MATCH || (!with_x && key.starts_with("x-")) {
            continue;
        }
        let hit = match headers.and_then(|h| h.inner().get(key)) {
            None => false,
            Some(_) if matches!(wanted, AMQPValue::Void) => true,
            Some(found) => values_equal(wanted, found),
        };
        if need_all && !hit {
            return false;
        }
        if !need_all && hit {
            return true;
        }
    }
    need_all
}

/// Term equality as RabbitMQ (3.13+, `=:=`) applies it: an integer never equals a
/// float, while nested tables and arrays keep their per-element types.
fn values_equal(a: &AMQPValue, b: &AMQPValue) -> bool {
    match (term(a), term(b)) {
        (Term::Int(x), Term::Int(y)) => x == y,
        (Term::Float(x), Term::Float(y)) => x == y,
        (Term::Bytes(x), Term::Bytes(y)) => x == y,
        (Term::Other(x), Term::Other(y)) => x == y,
        _ => false,
    }
}

/// Checks x-match the way RabbitMQ validates a binding, returning its error text.
pub fn x_match_is_valid(binding_args: &FieldTable) -> Result<(), String> {
    let Some(value) = binding_args.inner().get(X_MATCH) else {
        return Ok(());
    };
    match string_bytes(value) {
        Some(s) if Mode::parse(s).is_some() => Ok(()),
        Some(s) => Err(format!(
            "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
            Binary(s, Print::Unicode)
        )),
        None => Err(format!(
            "Invalid x-match field type {} (value {}); expected longstr",
            type_name(value),
            erlang::value(value, Print::Unicode)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{DecimalValue, FieldArray, LongString, ShortString};

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v))
    }

    fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert(ShortString::from(*k), v.clone());
        }
        t
    }

    fn binding(mode: Option<&str>, entries: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = table(entries);
        if let Some(m) = mode {
            t.insert(ShortString::from(X_MATCH), s(m));
        }
        t
    }

    #[test]
    fn all_is_the_default_and_needs_every_key() {
        let b = binding(None, &[("format", s("pdf")), ("type", s("report"))]);
        let both = table(&[
            ("format", s("pdf")),
            ("type", s("report")),
            ("extra", s("1")),
        ]);
        let one = table(&[("format", s("pdf"))]);
        let wrong = table(&[("format", s("pdf")), ("type", s("log"))]);
        assert!(headers_match(&b, Some(&both)));
        assert!(!headers_match(&b, Some(&one)));
        assert!(!headers_match(&b, Some(&wrong)));
        assert!(!headers_match(&b, None));

        let explicit = binding(Some("all"), &[("format", s("pdf")), ("type", s("report"))]);
        assert!(headers_match(&explicit, Some(&both)));
        assert!(!headers_match(&explicit, Some(&one)));
    }

    #[test]
    fn any_needs_one_key() {
        let b = binding(Some("any"), &[("format", s("pdf")), ("type", s("report"))]);
        assert!(headers_match(&b, Some(&table(&[("type", s("report"))]))));
        assert!(headers_match(
            &b,
            Some(&table(&[("format", s("pdf")), ("type", s("x"))]))
        ));
        assert!(!headers_match(&b, Some(&table(&[("type", s("log"))]))));
        assert!(!headers_match(&b, Some(&FieldTable::default())));
        assert!(!headers_match(&b, None));
    }

    #[test]
    fn empty_bindings() {
        let msg = table(&[("a", s("1"))]);
        assert!(headers_match(&FieldTable::default(), Some(&msg)));
        assert!(headers_match(&FieldTable::default(), None));
        assert!(headers_match(&binding(Some("all"), &[]), None));
        assert!(!headers_match(&binding(Some("any"), &[]), Some(&msg)));
        assert!(headers_match(&binding(Some("all-with-x"), &[]), None));
        assert!(!headers_match(
            &binding(Some("any-with-x"), &[]),
            Some(&msg)
        ));
    }

    #[test]
    fn x_keys_ignored_by_all_and_any() {
        let all = binding(Some("all"), &[("x-tenant", s("a")), ("format", s("pdf"))]);
        let any_only_x = binding(Some("any"), &[("x-tenant", s("a"))]);
        let all_only_x = binding(Some("all"), &[("x-tenant", s("a"))]);
        let plain = table(&[("format", s("pdf"))]);
        let with_tenant = table(&[("format", s("pdf")), ("x-tenant", s("a"))]);

        assert!(headers_match(&all, Some(&plain)));
        assert!(headers_match(&all, Some(&with_tenant)));
        assert!(!headers_match(&any_only_x, Some(&with_tenant)));
        assert!(headers_match(&all_only_x, Some(&plain)));
    }

    #[test]
    fn with_x_modes_compare_x_keys() {
        let all_x = binding(
            Some("all-with-x"),
            &[("x-tenant", s("a")), ("format", s("pdf"))],
        );
        let any_x = binding(Some("any-with-x"), &[("x-tenant", s("a"))]);
        let plain = table(&[("format", s("pdf"))]);
        let with_tenant = table(&[("format", s("pdf")), ("x-tenant", s("a"))]);
        let other_tenant = table(&[("format", s("pdf")), ("x-tenant", s("b"))]);

        assert!(!headers_match(&all_x, Some(&plain)));
        assert!(headers_match(&all_x, Some(&with_tenant)));
        assert!(!headers_match(&all_x, Some(&other_tenant)));
        assert!(!headers_match(&any_x, Some(&plain)));
        assert!(headers_match(&any_x, Some(&with_tenant)));
    }

    #[test]
    fn x_match_never_matched_against_message() {
        let all_x = binding(Some("all-with-x"), &[("k", s("v"))]);
        let msg = table(&[("k", s("v")), ("x-match", s("any"))]);
        assert!(headers_match(&all_x, Some(&msg)));
        assert!(headers_match(&all_x, Some(&table(&[("k", s("v"))]))));
    }

    #[test]
    fn void_binding_value_means_presence() {
        let all = binding(None, &[("flag", AMQPValue::Void)]);
        assert!(headers_match(
            &all,
            Some(&table(&[("flag", s("anything"))]))
        ));
        assert!(headers_match(
            &all,
            Some(&table(&[("flag", AMQPValue::LongInt(3))]))
        ));
        assert!(headers_match(
            &all,
            Some(&table(&[("flag", AMQPValue::Void)]))
        ));
        assert!(!headers_match(&all, Some(&table(&[("other", s("x"))]))));
        assert!(!headers_match(&all, None));

        let any = binding(Some("any"), &[("flag", AMQPValue::Void), ("k", s("v"))]);
        assert!(headers_match(
            &any,
            Some(&table(&[("flag", AMQPValue::Boolean(false))]))
        ));
        assert!(!headers_match(&any, Some(&table(&[("k", s("w"))]))));
    }

    #[test]
    fn void_message_value_does_not_equal_a_concrete_binding_value() {
        let b = binding(None, &[("k", s(""))]);
        assert!(!headers_match(&b, Some(&table(&[("k", AMQPValue::Void)]))));
    }

    #[test]
    fn integers_compare_by_value_across_widths() {
        let b = binding(None, &[("n", AMQPValue::LongLongInt(1))]);
        for v in [
            AMQPValue::ShortShortInt(1),
            AMQPValue::ShortShortUInt(1),
            AMQPValue::ShortInt(1),
            AMQPValue::ShortUInt(1),
            AMQPValue::LongInt(1),
            AMQPValue::LongUInt(1),
            AMQPValue::LongLongInt(1),
            AMQPValue::Timestamp(1),
        ] {
            assert!(
                headers_match(&b, Some(&table(&[("n", v.clone())]))),
                "{v:?}"
            );
        }
        assert!(!headers_match(
            &b,
            Some(&table(&[("n", AMQPValue::LongInt(2))]))
        ));
        assert!(!headers_match(&b, Some(&table(&[("n", s("1"))]))));
        assert!(!headers_match(
            &b,
            Some(&table(&[("n", AMQPValue::Boolean(true))]))
        ));
        assert!(!headers_match(
            &b,
            Some(&table(&[("n", AMQPValue::Double(1.0))]))
        ));

        let neg = binding(None, &[("n", AMQPValue::ShortShortInt(-1))]);
        assert!(headers_match(
            &neg,
            Some(&table(&[("n", AMQPValue::LongLongInt(-1))]))
        ));
        assert!(!headers_match(
            &neg,
            Some(&table(&[("n", AMQPValue::LongUInt(u32::MAX))]))
        ));
    }

    #[test]
    fn strings_and_floats_compare_by_value() {
        let b = binding(None, &[("k", s("v"))]);
        let short = AMQPValue::ShortString(ShortString::from("v"));
        let bytes = AMQPValue::ByteArray(b"v".to_vec().into());
        assert!(headers_match(&b, Some(&table(&[("k", short)]))));
        assert!(headers_match(&b, Some(&table(&[("k", bytes)]))));

        let f = binding(None, &[("r", AMQPValue::Double(1.5))]);
        assert!(headers_match(
            &f,
            Some(&table(&[("r", AMQPValue::Float(1.5))]))
        ));
        assert!(!headers_match(
            &f,
            Some(&table(&[("r", AMQPValue::Double(1.25))]))
        ));
    }

    #[test]
    fn compound_values_compare_structurally() {
        let arr = AMQPValue::FieldArray(FieldArray::from(vec![s("a"), AMQPValue::LongInt(1)]));
        let b = binding(None, &[("a", arr.clone()), ("t", AMQPValue::Boolean(true))]);
        let msg = table(&[("a", arr), ("t", AMQPValue::Boolean(true))]);
        assert!(headers_match(&b, Some(&msg)));
        let other = AMQPValue::FieldArray(FieldArray::from(vec![s("a")]));
        let msg2 = table(&[("a", other), ("t", AMQPValue::Boolean(true))]);
        assert!(!headers_match(&b, Some(&msg2)));

        let dec = AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 150,
        });
        let bd = binding(None, &[("d", dec.clone())]);
        assert!(headers_match(&bd, Some(&table(&[("d", dec)]))));
    }

    #[test]
    fn unknown_x_match_routes_as_all() {
        let b = binding(Some("bogus"), &[("k", s("v")), ("j", s("w"))]);
        assert!(!headers_match(&b, Some(&table(&[("k", s("v"))]))));
        assert!(headers_match(
            &b,
            Some(&table(&[("k", s("v")), ("j", s("w"))]))
        ));
        let mut typed = table(&[("k", s("v"))]);
        typed.insert(ShortString::from(X_MATCH), AMQPValue::LongInt(1));
        assert!(headers_match(&typed, Some(&table(&[("k", s("v"))]))));
    }

    #[test]
    fn x_match_validation() {
        for mode in ["all", "any", "all-with-x", "any-with-x"] {
            assert_eq!(x_match_is_valid(&binding(Some(mode), &[])), Ok(()));
        }
        assert_eq!(x_match_is_valid(&FieldTable::default()), Ok(()));
        assert_eq!(
            x_match_is_valid(&binding(Some("bogus"), &[])),
            Err("Invalid x-match field value <<\"bogus\">>; expected all, any, all-with-x, or any-with-x".to_string())
        );
        assert_eq!(
            x_match_is_valid(&binding(Some("ALL"), &[])),
            Err("Invalid x-match field value <<\"ALL\">>; expected all, any, all-with-x, or any-with-x".to_string())
        );
        assert_eq!(
            x_match_is_valid(&binding(Some(""), &[])),
            Err(
                "Invalid x-match field value <<>>; expected all, any, all-with-x, or any-with-x"
                    .to_string()
            )
        );
        let mut byte = FieldTable::default();
        byte.insert(ShortString::from(X_MATCH), AMQPValue::ShortShortInt(1));
        assert_eq!(
            x_match_is_valid(&byte),
            Err("Invalid x-match field type byte (value 1); expected longstr".to_string())
        );
        let mut boolean = FieldTable::default();
        boolean.insert(ShortString::from(X_MATCH), AMQPValue::Boolean(true));
        assert_eq!(
            x_match_is_valid(&boolean),
            Err("Invalid x-match field type bool (value true); expected longstr".to_string())
        );
    }
}
