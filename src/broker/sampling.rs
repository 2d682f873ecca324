//! The statistics ticker: every `collect_statistics_interval` it samples each queue, exchange,
//! connection and channel, and sums them per vhost and for the whole broker.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Broker;
use super::connections::{ChannelStats, Registered};
use crate::stats::{GAUGES, Sample, Totals, now_ms};

/// How many churn counts there are.
pub const CHURN: usize = 7;

/// The churn counts' names in RabbitMQ's `churn_rates`, in [`Broker::churn`] order.
pub const CHURN_NAMES: [&str; CHURN] = [
    "connection_created",
    "connection_closed",
    "channel_created",
    "channel_closed",
    "queue_declared",
    "queue_created",
    "queue_deleted",
];

impl Broker {
    /// Connections, channels and queues that came and went since the start, each with its rate
    /// between the last two samples.
    pub fn churn(&self) -> [(u64, f64); CHURN] {
        let now = self.churn_totals();
        let [(t0, before), (t1, after)] = *self.churn_samples.lock();
        std::array::from_fn(|i| {
            let r = if t0 == 0 {
                0.0
            } else {
                crate::stats::rate(before[i], after[i], t1 - t0)
            };
            (now[i], r)
        })
    }

    fn churn_totals(&self) -> [u64; CHURN] {
        let mut t = [0; CHURN];
        t[..4].copy_from_slice(&self.connections.churn_totals());
        for v in self.vhosts() {
            for (x, n) in t[4..].iter_mut().zip(v.queue_churn()) {
                *x += n;
            }
        }
        t
    }

    /// What every channel and connection counted since the start, closed ones included, as of
    /// now (not as of the last sample).
    pub fn totals_now(&self) -> Totals {
        let mut sum = Totals::default();
        for v in self.vhosts() {
            sum += &v.retired.totals();
        }
        for c in self.connections.list() {
            sum += &c.counters.totals();
            for ch in live_channels(&c) {
                sum += &ch.counters.totals();
            }
        }
        sum
    }

    /// Samples every object's counters and levels now.
    pub fn sample_stats(&self) {
        let at_ms = now_ms();
        let connections = self.connections.list();
        let mut overall = Sample {
            at_ms,
            ..Sample::default()
        };
        for v in self.vhosts() {
            let mut sum = Sample {
                at_ms,
                totals: v.retired.totals(),
                gauges: [0; GAUGES],
            };
            for q in v.queues() {
                let s = q.sample(at_ms);
                for (g, x) in sum.gauges.iter_mut().zip(s.gauges) {
                    *g += x;
                }
            }
            for x in v.exchange_stats() {
                x.sample(at_ms);
            }
            for c in connections.iter().filter(|c| c.identity.vhost == v.name) {
                sum.totals += &c.sample(at_ms).totals;
                for ch in live_channels(c) {
                    sum.totals += &ch.sample(at_ms).totals;
                }
            }
            v.history.push_monotonic(sum);
            overall.totals += &sum.totals;
            for (g, x) in overall.gauges.iter_mut().zip(sum.gauges) {
                *g += x;
            }
        }
        self.history.push_monotonic(overall);
        let churn = self.churn_totals();
        let mut last = self.churn_samples.lock();
        last[0] = last[1];
        last[1] = (at_ms, churn);
    }
}

/// A connection's channels that have not closed yet (a closed one's counts are its vhost's).
pub fn live_channels(c: &Registered) -> impl Iterator<Item = Arc<ChannelStats>> {
    c.channel_stats().into_iter().filter(|ch| !ch.is_closed())
}

/// Samples `broker` every `interval` until `stop`.
pub async fn run(broker: Arc<Broker>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => broker.sample_stats(),
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
}
