//! Log output that client-supplied text cannot forge.
//!
//! User names, vhosts, queue and exchange names, client properties and reply texts all reach the
//! log as field values. A newline in one would start a line that looks like the broker's own, and
//! an ANSI escape would reach the operator's terminal, so every field value (and message) has its
//! control characters escaped as it is written, whatever the log site: no call site can forget.

use std::fmt::{self, Write};

use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{Writer, debug_fn};

/// The field formatter the broker's log uses: `name=value` pairs separated by spaces, the
/// message bare, every control character escaped.
pub fn fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    debug_fn(|w: &mut Writer<'_>, field, value| {
        if field.name() != "message" {
            write!(w, "{field}=")?;
        }
        write!(Escaping(w), "{value:?}")
    })
    .delimited(" ")
}

/// Passes text through, control characters escaped (`\n`, `\u{1b}`).
struct Escaping<'a, 'w>(&'a mut Writer<'w>);

impl Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(char::is_control) {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            write!(self.0, "{}", c.escape_default())?;
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::fields;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[test]
    fn client_text_cannot_start_a_line_or_reach_the_terminal() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(fields())
            .with_ansi(false)
            .with_writer(out.clone())
            .finish();
        let forged = "guest\n2026-01-01T00:00:00Z  INFO warren: login by admin\x1b[31m";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(user = %forged, vhost = forged, "login refused\r\n{forged}");
        });
        let text = String::from_utf8(out.0.lock().map(|b| b.clone()).unwrap_or_default())
            .unwrap_or_default();
        assert_eq!(text.lines().count(), 1, "one event, one line: {text:?}");
        assert!(!text.contains('\x1b') && !text.contains('\r'), "{text:?}");
        assert!(
            text.contains(
                r"user=guest\n2026-01-01T00:00:00Z  INFO warren: login by admin\u{1b}[31m"
            ),
            "{text:?}"
        );
        assert!(text.contains(r"login refused\r\nguest\n"), "{text:?}");
    }
}
