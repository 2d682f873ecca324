//! Values as Erlang prints them in RabbitMQ's reply texts, one explicit print mode per text.
//!
//! Clients' test suites compare these texts byte for byte, so each caller keeps the mode its text
//! has always used, even where two texts print the same kind of term differently.

use std::fmt;

use amq_protocol::types::AMQPValue;

/// How a binary or a string is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Print {
    /// `~w`: always a list of integers, `<<97,98>>`.
    Raw,
    /// `~p` as frame errors print it: text when every octet is printable ASCII or one of the
    /// escaped controls (`\n`, `\r`, `\t`, `\v`, `\b`, `\f`, `\e`).
    Ascii,
    /// `~p` over a Latin-1 char list: as [`Print::Ascii`], and octets 160 to 255 as they are.
    Latin1,
    /// `~tp`: text when it is UTF-8 without controls other than `\n`, `\r`, `\t`; a binary
    /// holding more than ASCII is marked `/utf8`.
    Unicode,
    /// `~ts`: the text itself, unquoted (invalid UTF-8 replaced).
    Text,
}

/// The escape Erlang prints for an octet inside quotes, if it needs one.
fn escape(b: u8) -> Option<&'static [u8]> {
    Some(match b {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        b'\n' => b"\\n",
        b'\r' => b"\\r",
        b'\t' => b"\\t",
        0x0b => b"\\v",
        0x08 => b"\\b",
        0x0c => b"\\f",
        0x1b => b"\\e",
        _ => return None,
    })
}

/// Whether `print` shows `bytes` as quoted text rather than as integers.
fn as_text(bytes: &[u8], print: Print) -> bool {
    let escaped = |b: u8| escape(b).is_some();
    !bytes.is_empty()
        && match print {
            Print::Raw => false,
            Print::Ascii => bytes
                .iter()
                .all(|&b| matches!(b, b' '..=b'~') || escaped(b)),
            Print::Latin1 => bytes
                .iter()
                .all(|&b| matches!(b, b' '..=b'~' | 160..=255) || escaped(b)),
            Print::Unicode => std::str::from_utf8(bytes).is_ok_and(|s| {
                s.chars()
                    .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'))
            }),
            Print::Text => true,
        }
}

/// Which term `bytes` are printed as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `<<...>>`.
    Binary,
    /// A char list: `"..."` or `[...]`.
    List,
}

/// Appends `bytes` as `print` shows them as a `form` term.
fn write(out: &mut Vec<u8>, bytes: &[u8], form: Form, print: Print) {
    if print == Print::Text {
        out.extend_from_slice(bytes);
        return;
    }
    let (open, close): (&[u8], &[u8]) = match form {
        Form::Binary => (b"<<", b">>"),
        Form::List => (b"", b""),
    };
    out.extend_from_slice(open);
    if as_text(bytes, print) {
        out.push(b'"');
        for &b in bytes {
            match escape(b) {
                Some(e) => out.extend_from_slice(e),
                None => out.push(b),
            }
        }
        out.push(b'"');
        if form == Form::Binary && print == Print::Unicode && !bytes.is_ascii() {
            out.extend_from_slice(b"/utf8");
        }
    } else {
        if form == Form::List {
            out.push(b'[');
        }
        for (i, b) in bytes.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b.to_string().as_bytes());
        }
        if form == Form::List {
            out.push(b']');
        }
    }
    out.extend_from_slice(close);
}

/// Appends `bytes` as an Erlang char list (a string) in `print` mode: `"text"` or `[1,2,3]`.
pub fn write_string(out: &mut Vec<u8>, bytes: &[u8], print: Print) {
    write(out, bytes, Form::List, print);
}

/// A binary as Erlang prints it in `print` mode, for use in `format_args!`.
#[derive(Debug, Clone, Copy)]
pub struct Binary<'a>(pub &'a [u8], pub Print);

impl fmt::Display for Binary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::with_capacity(self.0.len() + 8);
        write(&mut out, self.0, Form::Binary, self.1);
        f.write_str(&String::from_utf8_lossy(&out))
    }
}

/// An AMQP value reduced to the Erlang term RabbitMQ decodes it to: the wire type tag is
/// dropped, so all integers are plain integers and all strings plain binaries.
#[derive(Debug, Clone, Copy)]
pub enum Term<'a> {
    /// Any integer type, or a timestamp.
    Int(i128),
    /// Either float type.
    Float(f64),
    /// A string of either length, or a byte array.
    Bytes(&'a [u8]),
    /// Anything else, kept as it is.
    Other(&'a AMQPValue),
}

/// The Erlang term RabbitMQ decodes `value` to.
pub fn term(value: &AMQPValue) -> Term<'_> {
    match value {
        AMQPValue::ShortShortInt(v) => Term::Int((*v).into()),
        AMQPValue::ShortShortUInt(v) => Term::Int((*v).into()),
        AMQPValue::ShortInt(v) => Term::Int((*v).into()),
        AMQPValue::ShortUInt(v) => Term::Int((*v).into()),
        AMQPValue::LongInt(v) => Term::Int((*v).into()),
        AMQPValue::LongUInt(v) => Term::Int((*v).into()),
        AMQPValue::LongLongInt(v) => Term::Int((*v).into()),
        AMQPValue::Timestamp(v) => Term::Int((*v).into()),
        AMQPValue::Float(v) => Term::Float((*v).into()),
        AMQPValue::Double(v) => Term::Float(*v),
        AMQPValue::LongString(s) => Term::Bytes(s.as_bytes()),
        AMQPValue::ShortString(s) => Term::Bytes(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => Term::Bytes(b.as_slice()),
        other => Term::Other(other),
    }
}

/// A value as Erlang prints its term in `print` mode: scalars exactly, strings and byte arrays
/// as binaries; tables and arrays approximately (Rust's debug form), as nobody reads those.
///
/// [`Print::Text`] (the redeclare-equivalence texts) prints a 32-bit float at its own precision,
/// where the other modes print the double RabbitMQ widens it to.
pub fn value(v: &AMQPValue, print: Print) -> String {
    match v {
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Void => "undefined".to_string(),
        AMQPValue::DecimalValue(d) => format!("{{{},{}}}", d.scale, d.value),
        AMQPValue::Float(f) if print == Print::Text => format!("{f:?}"),
        other => match term(other) {
            Term::Int(i) => i.to_string(),
            Term::Float(f) => format!("{f:?}"),
            Term::Bytes(b) => Binary(b, print).to_string(),
            Term::Other(v) => format!("{v:?}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::{DecimalValue, LongString};

    fn binary(bytes: &[u8], print: Print) -> String {
        Binary(bytes, print).to_string()
    }

    fn string(bytes: &[u8], print: Print) -> String {
        let mut out = Vec::new();
        write_string(&mut out, bytes, print);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn raw_binaries_are_always_integers() {
        assert_eq!(binary(b"ab", Print::Raw), "<<97,98>>");
        assert_eq!(binary(b"", Print::Raw), "<<>>");
    }

    #[test]
    fn ascii_binaries_print_as_frame_errors_show_them() {
        assert_eq!(binary(b"", Print::Ascii), "<<>>");
        assert_eq!(binary(b"a\"b\\", Print::Ascii), r#"<<"a\"b\\">>"#);
        assert_eq!(binary(b"ab\n", Print::Ascii), r#"<<"ab\n">>"#);
        assert_eq!(
            binary(b"\x0b\x08\x0c\x1b", Print::Ascii),
            r#"<<"\v\b\f\e">>"#
        );
        assert_eq!(binary(&[97, 0], Print::Ascii), "<<97,0>>");
        assert_eq!(binary(&[97, 0xe9], Print::Ascii), "<<97,233>>");
    }

    #[test]
    fn latin1_strings_print_as_char_lists() {
        assert_eq!(string(b".5", Print::Latin1), "\".5\"");
        assert_eq!(string(b"\tq", Print::Latin1), "\"\\tq\"");
        assert_eq!(string(&[1], Print::Latin1), "[1]");
        assert_eq!(string(&[b'a', 0x7f], Print::Latin1), "[97,127]");
        // Octets 160 to 255 stay as they are: the reply text is made valid UTF-8 afterwards.
        let mut out = Vec::new();
        write_string(&mut out, &[b'x', 0xe9], Print::Latin1);
        assert_eq!(out, b"\"x\xe9\"");
    }

    #[test]
    fn unicode_binaries_print_as_tp_does() {
        assert_eq!(binary(b"a\"b\\c", Print::Unicode), r#"<<"a\"b\\c">>"#);
        assert_eq!(
            binary("héllo".as_bytes(), Print::Unicode),
            "<<\"héllo\"/utf8>>"
        );
        assert_eq!(binary(&[0, 255, 7], Print::Unicode), "<<0,255,7>>");
        assert_eq!(binary(b"\x0b", Print::Unicode), "<<11>>");
        assert_eq!(binary(b"", Print::Unicode), "<<>>");
    }

    #[test]
    fn text_is_the_bytes_themselves() {
        assert_eq!(binary(b"a\"b", Print::Text), "a\"b");
        assert_eq!(binary(&[b'a', 0xff], Print::Text), "a\u{fffd}");
    }

    #[test]
    fn values_print_their_terms() {
        let s = AMQPValue::LongString(LongString::from("héllo"));
        assert_eq!(value(&s, Print::Unicode), "<<\"héllo\"/utf8>>");
        assert_eq!(value(&s, Print::Text), "héllo");
        for print in [Print::Unicode, Print::Text] {
            assert_eq!(value(&AMQPValue::LongInt(-7), print), "-7");
            assert_eq!(value(&AMQPValue::Timestamp(9), print), "9");
            assert_eq!(value(&AMQPValue::Boolean(true), print), "true");
            assert_eq!(value(&AMQPValue::Void, print), "undefined");
            assert_eq!(value(&AMQPValue::Double(1.5), print), "1.5");
            let d = AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 5 });
            assert_eq!(value(&d, print), "{2,5}");
        }
        assert_eq!(
            value(&AMQPValue::Float(1.1), Print::Unicode),
            "1.100000023841858"
        );
        assert_eq!(value(&AMQPValue::Float(1.1), Print::Text), "1.1");
    }
}
