//! The statistics ticker: every `collect_statistics_interval` it samples each queue, exchange,
//! connection and channel, and sums them per vhost and for the whole broker.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Broker;
use crate::stats::{GAUGES, Sample, now_ms};

impl Broker {
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
                for ch in c.channel_stats() {
                    if !ch.is_closed() {
                        sum.totals += &ch.sample(at_ms).totals;
                    }
                }
            }
            v.history.push_monotonic(sum);
            overall.totals += &sum.totals;
            for (g, x) in overall.gauges.iter_mut().zip(sum.gauges) {
                *g += x;
            }
        }
        self.history.push_monotonic(overall);
    }
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
