//! What keeps one client from hurting the others: the count of each limit's refusals, and the
//! growing delay that makes guessing passwords slow.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::protocol::Limit;

/// Refusals counted by limit, for the metrics.
#[derive(Debug, Default)]
pub struct LimitCounters([AtomicU64; Limit::ALL.len()]);

impl LimitCounters {
    /// Counts one refusal under `limit`.
    pub fn hit(&self, limit: Limit) {
        self.0[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals under `limit` so far.
    pub fn get(&self, limit: Limit) -> u64 {
        self.0[limit as usize].load(Ordering::Relaxed)
    }
}

/// A peer with no failed login for this long starts afresh.
const FORGET: Duration = Duration::from_secs(600);

/// Peers remembered at most: past it, the quiet ones are forgotten first, and a new one is not
/// slowed until there is room (memory stays bounded whatever the number of addresses).
const MAX_PEERS: usize = 65_536;

/// Recent failures of one address.
#[derive(Debug)]
struct Strikes {
    failures: u32,
    /// When the next attempt may be checked; attempts waiting their turn push it on.
    next: Instant,
    last_failure: Instant,
}

/// Why a login attempt is not checked at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyAttempts;

/// Slows down logins from addresses whose attempts fail: each attempt from such an address waits
/// its turn, the turns spaced by a delay that doubles with every failure, so neither retrying
/// nor trying in parallel guesses faster. Other addresses never wait.
#[derive(Debug)]
pub struct LoginThrottle {
    base: Duration,
    max: Duration,
    peers: parking_lot::Mutex<HashMap<IpAddr, Strikes>>,
    delayed: AtomicU64,
}

impl LoginThrottle {
    /// A throttle whose first delay is `base` (zero: none) and whose delays grow to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            peers: parking_lot::Mutex::default(),
            delayed: AtomicU64::new(0),
        }
    }

    /// Attempts that had to wait so far.
    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }

    fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// How long an attempt from `ip` must wait before its credentials are checked, its turn
    /// reserved; refused outright when the queue of attempts from `ip` is longer than the
    /// longest delay.
    pub fn turn(&self, ip: IpAddr) -> Result<Duration, TooManyAttempts> {
        if self.base.is_zero() {
            return Ok(Duration::ZERO);
        }
        let now = Instant::now();
        let mut peers = self.peers.lock();
        let key = address(ip);
        let Some(s) = peers.get_mut(&key) else {
            return Ok(Duration::ZERO);
        };
        if now.duration_since(s.last_failure) > FORGET {
            peers.remove(&key);
            return Ok(Duration::ZERO);
        }
        let at = s.next.max(now);
        let wait = at - now;
        if wait > self.max {
            return Err(TooManyAttempts);
        }
        s.next = at + self.delay(s.failures);
        if !wait.is_zero() {
            self.delayed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(wait)
    }

    /// Records a failed attempt from `ip`; returns the delay its next attempt will wait.
    pub fn failed(&self, ip: IpAddr) -> Duration {
        if self.base.is_zero() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut peers = self.peers.lock();
        if peers.len() >= MAX_PEERS {
            peers.retain(|_, s| now.duration_since(s.last_failure) <= FORGET);
        }
        let key = address(ip);
        if peers.len() >= MAX_PEERS && !peers.contains_key(&key) {
            return Duration::ZERO;
        }
        let s = peers.entry(key).or_insert(Strikes {
            failures: 0,
            next: now,
            last_failure: now,
        });
        s.failures = s.failures.saturating_add(1);
        s.last_failure = now;
        let delay = self.delay(s.failures);
        s.next = s.next.max(now + delay);
        delay
    }

    /// Records a successful login from `ip`: its past failures are forgiven.
    pub fn succeeded(&self, ip: IpAddr) {
        if !self.base.is_zero() {
            self.peers.lock().remove(&address(ip));
        }
    }
}

/// The address failures are counted against: an IPv4 address, or an IPv6 /64, since one host
/// commonly has a whole /64 to pick addresses from.
fn address(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_space_the_attempts_of_one_address_only() {
        let t = LoginThrottle::new(Duration::from_millis(100), Duration::from_millis(400));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(t.turn(a), Ok(Duration::ZERO), "no failure yet, no wait");
        assert_eq!(t.failed(a), Duration::from_millis(100));
        assert_eq!(t.failed(a), Duration::from_millis(200));
        assert_eq!(t.failed(a), Duration::from_millis(400));
        assert_eq!(t.failed(a), Duration::from_millis(400), "capped");
        assert_eq!(
            t.turn(b),
            Ok(Duration::ZERO),
            "another address is not slowed"
        );
        // Attempts made at once queue up one delay apart; past the cap they are refused.
        let first = t.turn(a).unwrap();
        assert!(first > Duration::from_millis(300), "{first:?}");
        assert_eq!(t.turn(a), Err(TooManyAttempts));
        t.succeeded(a);
        assert_eq!(t.turn(a), Ok(Duration::ZERO), "a success forgives");
    }

    #[test]
    fn ipv6_failures_count_against_the_slash_64() {
        let t = LoginThrottle::new(Duration::from_millis(100), Duration::from_secs(1));
        t.failed("2001:db8::1".parse().unwrap());
        let same = t.turn("2001:db8::ffff:1".parse().unwrap()).unwrap();
        assert!(!same.is_zero(), "same /64 waits");
        let other = t.turn("2001:db8:0:1::1".parse().unwrap()).unwrap();
        assert!(other.is_zero(), "another /64 does not");
    }

    #[test]
    fn every_limit_has_its_own_counter() {
        let counters = LimitCounters::default();
        for (i, limit) in Limit::ALL.into_iter().enumerate() {
            assert_eq!(
                limit as usize,
                i,
                "{} is listed in declaration order",
                limit.name()
            );
            counters.hit(limit);
            assert_eq!(counters.get(limit), 1);
        }
    }

    #[test]
    fn a_zero_delay_turns_it_off() {
        let t = LoginThrottle::new(Duration::ZERO, Duration::from_secs(5));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(t.failed(a), Duration::ZERO);
        assert_eq!(t.turn(a), Ok(Duration::ZERO));
    }
}
