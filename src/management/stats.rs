//! Statistics as RabbitMQ's management API shows them: each total beside its `_details`, whose
//! `rate` comes from the last two samples and which, when the query asks with `msg_rates_age`
//! or `lengths_age` (in seconds), also carries the samples of that window with their averages.

use serde_json::{Map, Value, json};

use super::list::ListQuery;
use crate::stats::{GAUGE_NAMES, Gauge, History, NAMES, Sample, Stat, Totals, rate};

/// The windows of samples a query asks for.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ages {
    /// Message rates, in ms.
    msg_rates: Option<u64>,
    /// Queue lengths, in ms.
    lengths: Option<u64>,
    /// Data rates (bytes in and out), in ms.
    data_rates: Option<u64>,
}

impl Ages {
    /// What `q` asks for.
    pub(crate) fn of(q: &ListQuery) -> Self {
        let ms = |s: Option<u64>| s.map(|s| s.saturating_mul(1000));
        Self {
            msg_rates: ms(q.msg_rates_age),
            lengths: ms(q.lengths_age),
            data_rates: ms(q.data_rates_age),
        }
    }
}

/// The counters each kind of object shows in its `message_stats`.
pub(crate) const QUEUE_STATS: &[Stat] = &[
    Stat::Publish,
    Stat::Deliver,
    Stat::DeliverNoAck,
    Stat::Get,
    Stat::GetNoAck,
    Stat::GetEmpty,
    Stat::Ack,
    Stat::Redeliver,
];
/// An exchange's.
pub(crate) const EXCHANGE_STATS: &[Stat] = &[Stat::PublishIn, Stat::PublishOut];
/// A channel's, a vhost's and the broker's.
pub(crate) const CHANNEL_STATS: &[Stat] = &[
    Stat::Publish,
    Stat::Confirm,
    Stat::ReturnUnroutable,
    Stat::DropUnroutable,
    Stat::Deliver,
    Stat::DeliverNoAck,
    Stat::Get,
    Stat::GetNoAck,
    Stat::GetEmpty,
    Stat::Ack,
    Stat::Redeliver,
];

/// Deliveries and gets of every kind, RabbitMQ's `deliver_get`.
fn deliver_get(t: &Totals) -> u64 {
    [Stat::Deliver, Stat::DeliverNoAck, Stat::Get, Stat::GetNoAck]
        .iter()
        .map(|&s| t.get(s))
        .sum()
}

/// The `_details` of one series: its rate and, with an age, its samples, newest first.
fn details(window: &[Sample], pick: impl Fn(&Sample) -> u64, with_samples: bool) -> Value {
    let rate_between = |a: &Sample, b: &Sample| rate(pick(a), pick(b), b.at_ms - a.at_ms);
    let n = window.len();
    let last_rate = match window {
        [.., a, b] => rate_between(a, b),
        _ => 0.0,
    };
    let mut d = Map::new();
    d.insert("rate".into(), json!(last_rate));
    if with_samples {
        let samples: Vec<Value> = window
            .iter()
            .rev()
            .map(|s| json!({"sample": pick(s), "timestamp": s.at_ms}))
            .collect();
        let avg = if n == 0 {
            0.0
        } else {
            window.iter().map(|s| pick(s) as f64).sum::<f64>() / n as f64
        };
        let avg_rate = match window {
            [first, .., last] => rate_between(first, last),
            _ => 0.0,
        };
        d.insert("samples".into(), Value::Array(samples));
        d.insert("avg_rate".into(), json!(avg_rate));
        d.insert("avg".into(), json!(avg));
    }
    Value::Object(d)
}

/// An object's `message_stats`: each of `shown` ever counted (and `deliver_get` once anything
/// was delivered or got), with its details. `totals` are the live counts.
pub(crate) fn message_stats(
    totals: &Totals,
    history: &History,
    shown: &[Stat],
    ages: Ages,
) -> Value {
    let window = history.window(ages.msg_rates);
    let with_samples = ages.msg_rates.is_some();
    let mut m = Map::new();
    for &stat in shown {
        let total = totals.get(stat);
        if total == 0 {
            continue;
        }
        let name = NAMES[stat as usize];
        m.insert(name.into(), json!(total));
        let d = details(&window, |s| s.totals.get(stat), with_samples);
        m.insert(format!("{name}_details"), d);
    }
    let dg = deliver_get(totals);
    if dg > 0 && shown.contains(&Stat::Deliver) {
        m.insert("deliver_get".into(), json!(dg));
        let d = details(&window, |s| deliver_get(&s.totals), with_samples);
        m.insert("deliver_get_details".into(), d);
    }
    Value::Object(m)
}

/// Adds `message_stats` to `obj` when anything was counted, as RabbitMQ leaves it out of an
/// object that has done nothing yet.
pub(crate) fn add_message_stats(
    obj: &mut Value,
    totals: &Totals,
    history: &History,
    shown: &[Stat],
    ages: Ages,
) {
    if shown.iter().all(|&s| totals.get(s) == 0) {
        return;
    }
    if let Value::Object(o) = obj {
        o.insert(
            "message_stats".into(),
            message_stats(totals, history, shown, ages),
        );
    }
}

/// Adds each queue length of `levels` with its details to `obj`.
pub(crate) fn add_lengths(obj: &mut Value, levels: [u64; 3], history: &History, ages: Ages) {
    let window = history.window(ages.lengths);
    let Value::Object(o) = obj else { return };
    for (g, level) in [Gauge::Messages, Gauge::Ready, Gauge::Unacked]
        .into_iter()
        .zip(levels)
    {
        let name = GAUGE_NAMES[g as usize];
        o.insert(name.into(), json!(level));
        o.insert(
            format!("{name}_details"),
            details(&window, |s| s.gauge(g), ages.lengths.is_some()),
        );
    }
}

/// Adds what a sampled aggregate (a vhost, the broker) shows to `obj`: its `message_stats`
/// (present even when empty), its queue lengths and its bytes in and out, all as of the last
/// sample.
pub(crate) fn add_aggregate(obj: &mut Value, history: &History, ages: Ages) {
    let last = history.last();
    let stats = message_stats(&last.totals, history, CHANNEL_STATS, ages);
    if let Value::Object(o) = obj {
        o.insert("message_stats".into(), stats);
    }
    add_lengths(obj, last.gauges, history, ages);
    add_data_rates(obj, &last.totals, history, ages);
}

/// Adds a connection's byte counts (`recv_oct`, `send_oct`, ...) with their details to `obj`.
pub(crate) fn add_data_rates(obj: &mut Value, totals: &Totals, history: &History, ages: Ages) {
    let window = history.window(ages.data_rates);
    let Value::Object(o) = obj else { return };
    for stat in [Stat::RecvOct, Stat::SendOct] {
        let name = NAMES[stat as usize];
        o.insert(name.into(), json!(totals.get(stat)));
        o.insert(
            format!("{name}_details"),
            details(&window, |s| s.totals.get(stat), ages.data_rates.is_some()),
        );
    }
    for stat in [Stat::RecvCnt, Stat::SendCnt] {
        o.insert(NAMES[stat as usize].into(), json!(totals.get(stat)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_ms: u64, published: u64) -> Sample {
        let mut s = Sample {
            at_ms,
            ..Sample::default()
        };
        s.totals.0[Stat::Publish as usize] = published;
        s
    }

    #[test]
    fn rates_come_from_the_last_two_samples_and_ages_add_the_window() {
        let h = History::default();
        h.push(sample(1000, 0));
        h.push(sample(6000, 50));
        h.push(sample(11_000, 150));
        let totals = h.last().totals;
        let plain = message_stats(&totals, &h, QUEUE_STATS, Ages::default());
        assert_eq!(plain["publish"], 150);
        assert_eq!(plain["publish_details"]["rate"], 20.0);
        assert!(plain["publish_details"].get("samples").is_none());
        assert!(plain.get("ack").is_none(), "nothing acked: not shown");
        let aged = message_stats(
            &totals,
            &h,
            QUEUE_STATS,
            Ages {
                msg_rates: Some(60_000),
                ..Ages::default()
            },
        );
        let d = &aged["publish_details"];
        assert_eq!(d["samples"][0], json!({"sample": 150, "timestamp": 11_000}));
        assert_eq!(d["samples"].as_array().map(Vec::len), Some(3));
        assert_eq!(d["avg_rate"], 15.0);
        assert_eq!(d["avg"], 200.0 / 3.0);
    }
}
