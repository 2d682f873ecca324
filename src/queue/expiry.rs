//! Time in a queue: message TTLs (`x-message-ttl`, the `expiration` property), queue expiry
//! (`x-expires`), and the per-queue timer task that acts on them while nobody touches the queue.
//!
//! Deadlines are microseconds on one monotonic clock, so a queued message carries 8 bytes of
//! expiry rather than an `Instant`.

use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::args::MAX_EXPIRY_MS;
use super::dead_letter;
use super::{NEVER, Queue, State};
use crate::protocol::ChannelError;
use crate::protocol::erlang::{self, Print};

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Now, in microseconds on the broker's monotonic clock.
pub(super) fn now_us() -> u64 {
    u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// A deadline `ttl_ms` after `now`.
pub(super) fn after(now: u64, ttl_ms: u64) -> u64 {
    now.saturating_add(ttl_ms.saturating_mul(1000))
}

fn instant(us: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(epoch() + Duration::from_micros(us))
}

/// The TTL in milliseconds of a valid `expiration` property, without allocating (the publish
/// path checked it already; anything else reads as no TTL).
pub(super) fn ttl_ms(raw: &[u8]) -> Option<u64> {
    parse(raw).ok()
}

/// Checks a published message's `expiration` as RabbitMQ does (`rabbit_basic:parse_expiration`):
/// a decimal integer from 0 to ten years in milliseconds, else 406 with RabbitMQ's text.
pub fn check_expiration(raw: &[u8]) -> Result<(), ChannelError> {
    parse(raw).map(|_| ()).map_err(|why| {
        let mut text = b"invalid expiration '".to_vec();
        text.extend_from_slice(raw);
        text.extend_from_slice(b"': ");
        why.write(&mut text);
        ChannelError::precondition(String::from_utf8_lossy(&text))
    })
}

/// Why an `expiration` is refused, as the Erlang terms RabbitMQ prints.
enum Invalid<'a> {
    NoInteger,
    /// The digits (without sign or leading zeros) of a negative value.
    Negative(&'a [u8]),
    /// The digits of a value past ten years.
    TooLarge(&'a [u8]),
    Leftover(&'a [u8]),
}

/// Erlang's `string:to_integer` followed by `rabbit_misc:check_expiry`.
fn parse(raw: &[u8]) -> Result<u64, Invalid<'_>> {
    let (negative, rest) = match raw.first() {
        Some(b'-') => (true, &raw[1..]),
        Some(b'+') => (false, &raw[1..]),
        _ => (false, raw),
    };
    let len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 {
        return Err(Invalid::NoInteger);
    }
    let (digits, leftover) = rest.split_at(len);
    if !leftover.is_empty() {
        return Err(Invalid::Leftover(leftover));
    }
    let zeros = digits.iter().take_while(|&&b| b == b'0').count();
    let significant = &digits[zeros..];
    if significant.is_empty() {
        return Ok(0);
    }
    if negative {
        return Err(Invalid::Negative(significant));
    }
    let value = (significant.len() <= 19)
        .then(|| {
            significant.iter().try_fold(0u64, |n, d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
        })
        .flatten();
    match value {
        Some(ms) if ms <= MAX_EXPIRY_MS => Ok(ms),
        _ => Err(Invalid::TooLarge(significant)),
    }
}

impl Invalid<'_> {
    /// Appends the reason as Erlang's `~p` prints it after the text so far: a two-element tuple
    /// that would reach column 79 breaks after its first element, the second aligned under it.
    fn write(&self, text: &mut Vec<u8>) {
        let (tag, value): (&str, Vec<u8>) = match self {
            Self::NoInteger => {
                text.extend_from_slice(b"no_integer");
                return;
            }
            Self::Negative(d) => ("value_negative", [b"-", *d].concat()),
            Self::TooLarge(d) => ("value_too_large", d.to_vec()),
            Self::Leftover(s) => {
                let mut v = Vec::with_capacity(s.len() + 2);
                erlang::write_string(&mut v, s, Print::Latin1);
                ("leftover_string", v)
            }
        };
        let column = text.len();
        text.push(b'{');
        text.extend_from_slice(tag.as_bytes());
        text.push(b',');
        if column + tag.len() + value.len() + 3 > 78 {
            text.push(b'\n');
            text.extend(std::iter::repeat_n(b' ', column + 1));
        }
        text.extend_from_slice(&value);
        text.push(b'}');
    }
}

/// "Now" for expiry checks: read at most once per operation, and only if something can expire.
pub(super) struct Clock {
    pub(super) now: Option<u64>,
    /// Only deadlines before `now` have passed: a publish's own TTL of 0 still lets a waiting
    /// consumer have the message, as in RabbitMQ.
    pub(super) strict: bool,
}

impl Clock {
    pub(super) fn lazy() -> Self {
        Self {
            now: None,
            strict: false,
        }
    }

    pub(super) fn expired(&mut self, expires: u64) -> bool {
        if expires == NEVER {
            return false;
        }
        let now = *self.now.get_or_insert_with(now_us);
        if self.strict {
            expires < now
        } else {
            expires <= now
        }
    }
}

impl Queue {
    pub(super) fn ensure_timer(self: &Arc<Self>) {
        self.timer.get_or_init(|| start(self));
    }

    /// The next moment the timer has work: the head's expiry or the queue's own.
    fn next_deadline(&self, st: &State) -> Option<u64> {
        let head = st.ready.front().map(|e| e.expires).filter(|&e| e != NEVER);
        match (head, self.idle_deadline(st)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When an unused queue expires (`x-expires`); never while it has consumers.
    fn idle_deadline(&self, st: &State) -> Option<u64> {
        let ms = st.args.expires?;
        st.consumers.is_empty().then(|| after(st.last_used, ms))
    }

    /// Wakes the timer if it now has work sooner than it planned.
    pub(super) fn arm(&self, st: &mut State) {
        let Some(timer) = self.timer.get() else {
            return;
        };
        if let Some(next) = self.next_deadline(st)
            && st.timer_at.is_none_or(|t| next < t)
        {
            st.timer_at = Some(next);
            timer.notify_one();
        }
    }

    /// The timer's work: expire from the head, delete the queue if unused for its `x-expires`,
    /// and say when to come back.
    fn tick(self: &Arc<Self>) -> Tick {
        let now = now_us();
        let mut dead = Vec::new();
        let (idle, next) = {
            let mut st = self.state.lock();
            if st.deleted {
                return Tick::Stop;
            }
            let mut clock = Clock {
                now: Some(now),
                strict: false,
            };
            self.trim(&mut st, &mut clock, &mut dead);
            let idle = self.idle_deadline(&st).is_some_and(|d| d <= now);
            let next = if idle { None } else { self.next_deadline(&st) };
            st.timer_at = next;
            (idle, next)
        };
        dead_letter::process(dead);
        if idle && let Some(router) = self.router() {
            router.expire(self);
            return Tick::Stop;
        }
        Tick::Sleep(next)
    }

    /// Records a use of the queue for `x-expires` (a declare, or a `basic.get`).
    pub fn touch(&self) {
        let mut st = self.state.lock();
        if st.args.expires.is_some() {
            st.last_used = now_us();
        }
    }
}

/// What the timer does next.
enum Tick {
    /// The queue is gone.
    Stop,
    /// Wake at this deadline, or only when notified.
    Sleep(Option<u64>),
}

/// Starts a queue's timer task (once a tokio runtime is there to run it); returns what wakes it.
fn start(queue: &Arc<Queue>) -> Arc<Notify> {
    let wake = Arc::new(Notify::new());
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(run(Arc::downgrade(queue), wake.clone()));
    }
    wake
}

/// Expires a queue's messages from the head and the queue itself when unused, sleeping in
/// between; it holds only a weak reference, so a dropped queue ends it at its next wake-up
/// (which `Queue`'s drop brings forward).
async fn run(queue: Weak<Queue>, wake: Arc<Notify>) {
    loop {
        let tick = match queue.upgrade() {
            Some(q) => q.tick(),
            None => Tick::Stop,
        };
        match tick {
            Tick::Stop => return,
            Tick::Sleep(Some(at)) => {
                tokio::select! {
                    () = tokio::time::sleep_until(instant(at)) => {}
                    () = wake.notified() => {}
                }
            }
            Tick::Sleep(None) => wake.notified().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(raw: &str) -> String {
        check_expiration(raw.as_bytes())
            .err()
            .map(|e| e.0.reply_text)
            .unwrap_or_default()
    }

    #[test]
    fn expirations_read_as_rabbitmq_reads_them() {
        assert_eq!(parse(b"+5").ok(), Some(5));
        assert_eq!(parse(b"-00").ok(), Some(0));
        assert_eq!(parse(b"00012").ok(), Some(12));
        assert_eq!(parse(b"315360000000").ok(), Some(MAX_EXPIRY_MS));
        let p = "PRECONDITION_FAILED - invalid expiration";
        assert_eq!(text("abc"), format!("{p} 'abc': no_integer"));
        assert_eq!(text(" 5"), format!("{p} ' 5': no_integer"));
        assert_eq!(text("-1"), format!("{p} '-1': {{value_negative,-1}}"));
        assert_eq!(
            text("1.5"),
            format!("{p} '1.5': {{leftover_string,\".5\"}}")
        );
        assert_eq!(
            text("1\tq"),
            format!("{p} '1\tq': {{leftover_string,\"\\tq\"}}")
        );
        assert_eq!(
            text("1\u{1}"),
            format!("{p} '1\u{1}': {{leftover_string,[1]}}")
        );
        assert_eq!(
            text("315360000001"),
            format!("{p} '315360000001': {{value_too_large,315360000001}}")
        );
        // Erlang's pretty printer breaks a term that would reach column 79.
        assert_eq!(
            text("999999999999999999"),
            format!("{p} '999999999999999999': {{value_too_large,999999999999999999}}")
        );
        assert_eq!(
            text("9999999999999999999"),
            format!(
                "{p} '9999999999999999999': {{value_too_large,\n{}9999999999999999999}}",
                " ".repeat(43)
            )
        );
        assert_eq!(
            text("-9999999999999999999"),
            format!(
                "{p} '-9999999999999999999': {{value_negative,\n{}-9999999999999999999}}",
                " ".repeat(44)
            )
        );
    }
}
