//! AMQP field tables to JSON and back, as the management plugin converts them: JSON integers
//! become signed 64-bit integers (`long`), strings long strings, and tables nest.

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use serde_json::{Map, Number, Value};

/// A field table as JSON.
pub(crate) fn table_to_json(table: &FieldTable) -> Value {
    Value::Object(
        table
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), value_to_json(v)))
            .collect(),
    )
}

fn value_to_json(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::ShortShortInt(n) => Value::from(*n),
        AMQPValue::ShortShortUInt(n) => Value::from(*n),
        AMQPValue::ShortInt(n) => Value::from(*n),
        AMQPValue::ShortUInt(n) => Value::from(*n),
        AMQPValue::LongInt(n) => Value::from(*n),
        AMQPValue::LongUInt(n) => Value::from(*n),
        AMQPValue::LongLongInt(n) => Value::from(*n),
        AMQPValue::Timestamp(n) => Value::from(*n),
        AMQPValue::Float(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        AMQPValue::Double(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        AMQPValue::DecimalValue(d) => {
            let v = f64::from(d.value) / 10f64.powi(i32::from(d.scale));
            Number::from_f64(v).map_or(Value::Null, Value::Number)
        }
        AMQPValue::ShortString(s) => Value::from(s.as_str()),
        AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ByteArray(b) => Value::from(String::from_utf8_lossy(b.as_slice())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_to_json).collect()),
        AMQPValue::FieldTable(t) => table_to_json(t),
        AMQPValue::Void => Value::Null,
    }
}

/// A JSON object as a field table; `None` if `value` is neither an object nor null.
pub(crate) fn json_to_table(value: &Value) -> Option<FieldTable> {
    match value {
        Value::Null => Some(FieldTable::default()),
        Value::Object(m) => Some(object_to_table(m)),
        _ => None,
    }
}

fn object_to_table(m: &Map<String, Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in m {
        table.insert(ShortString::from(k.as_str()), json_to_value(v));
    }
    table
}

fn json_to_value(value: &Value) -> AMQPValue {
    match value {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => AMQPValue::LongLongInt(i),
            (None, Some(f)) => AMQPValue::Double(f),
            (None, None) => AMQPValue::Void,
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(a) => AMQPValue::FieldArray(FieldArray::from(
            a.iter().map(json_to_value).collect::<Vec<_>>(),
        )),
        Value::Object(m) => AMQPValue::FieldTable(object_to_table(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip_through_json() {
        let json = serde_json::json!({
            "x-message-ttl": 1000,
            "x-dead-letter-exchange": "dlx",
            "flag": true,
            "ratio": 0.5,
            "list": [1, "a"],
            "nested": {"k": "v"},
            "none": null
        });
        let table = json_to_table(&json).expect("an object");
        assert_eq!(
            table.inner().get("x-message-ttl"),
            Some(&AMQPValue::LongLongInt(1000))
        );
        assert_eq!(table_to_json(&table), json);
        assert!(json_to_table(&serde_json::json!([1])).is_none());
    }
}
