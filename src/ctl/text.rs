//! Text for the terminal: aligned tables, JSON values as cells, and names made safe to print
//! (queue names and client properties are chosen by clients, and must not drive the terminal).

use std::fmt::Write as _;

use serde_json::Value;

/// `s` with control characters escaped, so that it prints on one line and cannot send the
/// terminal escape sequences.
pub(crate) fn shown(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A name in single quotes, as messages quote names.
pub(crate) fn quoted(s: &str) -> String {
    format!("'{}'", shown(s))
}

/// `s` as one shell word, for a command line in a hint.
pub(crate) fn shell(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", shown(s).replace('\'', r"'\''"))
    }
}

/// A JSON value as a table cell: text as is, nothing for null, a list of texts as
/// `[a, b]` (as rabbitmqctl shows tags), anything else as compact JSON.
pub(crate) fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => shown(s),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            let texts: Vec<String> = items.iter().filter_map(Value::as_str).map(shown).collect();
            format!("[{}]", texts.join(", "))
        }
        Some(other) => shown(&other.to_string()),
    }
}

/// Rows under a header row, each column as wide as its widest cell; no header with `bare`.
pub(crate) fn table(header: &[String], rows: &[Vec<String>], bare: bool) -> String {
    let header_row = (!bare).then_some(header);
    let all = || header_row.into_iter().chain(rows.iter().map(Vec::as_slice));
    let mut widths = vec![0; all().map(<[String]>::len).max().unwrap_or(0)];
    for row in all() {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in all() {
        let mut line = String::new();
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{c:w$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_align_on_the_widest_cell() {
        let header = vec!["name".to_owned(), "messages".to_owned()];
        let rows = vec![
            vec!["orders.dead-letter".to_owned(), "12".to_owned()],
            vec!["é".to_owned(), "0".to_owned()],
        ];
        assert_eq!(
            table(&header, &rows, false),
            "name                messages\norders.dead-letter  12\né                   0\n"
        );
        assert_eq!(table(&header, &rows[1..], true), "é  0\n");
    }

    #[test]
    fn cells() {
        assert_eq!(
            cell(Some(&json!(["administrator", "x"]))),
            "[administrator, x]"
        );
        assert_eq!(
            cell(Some(&json!({"x-max-length": 10}))),
            r#"{"x-max-length":10}"#
        );
        assert_eq!(cell(Some(&json!(null))), "");
        assert_eq!(cell(None), "");
        assert_eq!(cell(Some(&json!("a\nb\u{1b}[2J"))), r"a\nb\u{1b}[2J");
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell("apps"), "apps");
        assert_eq!(shell("/"), "/");
        assert_eq!(shell("my vhost"), "'my vhost'");
        assert_eq!(shell("it's"), r"'it'\''s'");
        assert_eq!(shell(""), "''");
    }
}
