//! Statistics as RabbitMQ's management API shows them: each total beside its `_details`, whose
//! `rate` comes from the last two samples and which, when the query asks with `msg_rates_age`
//! or `lengths_age` (in seconds), also carries the samples of that window with their averages.

use serde_json::{Map, Value, json};

use super::list::ListQuery;
use crate::stats::{GAUGE_NAMES, Gauge, History, NAMES, Sample, Stat, Totals, rate};

/// A window of samples a query asks for: how far back, and how far apart, in ms.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    age: u64,
    incr: u64,
}

/// The most points one series shows, whatever the query asks.
const MAX_POINTS: u64 = 1000;

impl Window {
    /// The window `age` and `incr` (seconds) ask for; RabbitMQ's 5 s apart by default.
    fn of(age: Option<u64>, incr: Option<u64>) -> Option<Self> {
        let age = age?.saturating_mul(1000);
        let incr = incr.unwrap_or(5).max(1).saturating_mul(1000);
        Some(Self {
            age,
            incr: incr.max(age / MAX_POINTS),
        })
    }
}

/// The windows of samples a query asks for.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ages {
    /// Message rates.
    msg_rates: Option<Window>,
    /// Queue lengths.
    lengths: Option<Window>,
    /// Data rates (bytes in and out).
    data_rates: Option<Window>,
}

impl Ages {
    /// What `q` asks for.
    pub(crate) fn of(q: &ListQuery) -> Self {
        Self {
            msg_rates: Window::of(q.msg_rates_age, q.msg_rates_incr),
            lengths: Window::of(q.lengths_age, q.lengths_incr),
            data_rates: Window::of(q.data_rates_age, q.data_rates_incr),
        }
    }
}

/// The samples a series needs: all kept for a window, else the last two (for the rate).
fn samples_for(history: &History, window: Option<Window>) -> Vec<Sample> {
    history.window(window.map(|_| u64::MAX))
}

/// Counters RabbitMQ shows together: once one of a group counted anything, the whole group is
/// shown, zeros included.
const PUBLISHING: &[Stat] = &[
    Stat::Publish,
    Stat::Confirm,
    Stat::ReturnUnroutable,
    Stat::DropUnroutable,
];
const DELIVERIES: &[Stat] = &[
    Stat::Deliver,
    Stat::DeliverNoAck,
    Stat::Get,
    Stat::GetNoAck,
    Stat::GetEmpty,
    Stat::Redeliver,
];
const ACKS: &[Stat] = &[Stat::Ack];

/// The groups of counters each kind of object shows in its `message_stats`: a queue's.
pub(crate) const QUEUE_STATS: &[&[Stat]] = &[&[Stat::Publish], DELIVERIES, ACKS];
/// An exchange's.
pub(crate) const EXCHANGE_STATS: &[&[Stat]] = &[&[Stat::PublishIn], &[Stat::PublishOut]];
/// A channel's, a vhost's and the broker's.
pub(crate) const CHANNEL_STATS: &[&[Stat]] = &[PUBLISHING, DELIVERIES, ACKS];

/// Deliveries and gets of every kind, RabbitMQ's `deliver_get`.
fn deliver_get(t: &Totals) -> u64 {
    [Stat::Deliver, Stat::DeliverNoAck, Stat::Get, Stat::GetNoAck]
        .iter()
        .map(|&s| t.get(s))
        .sum()
}

/// The `_details` of one series: its rate between the last two samples and, for a window,
/// RabbitMQ's points every `incr` back to `age` (newest first, 0 before the object counted
/// anything), their average and the average rate across the window.
fn details(kept: &[Sample], pick: &dyn Fn(&Sample) -> u64, window: Option<Window>) -> Value {
    let last_rate = match kept {
        [.., a, b] => rate(pick(a), pick(b), b.at_ms - a.at_ms),
        _ => 0.0,
    };
    let mut d = Map::new();
    d.insert("rate".into(), json!(last_rate));
    let Some(w) = window else {
        return Value::Object(d);
    };
    let newest = kept.last().map_or_else(crate::stats::now_ms, |s| s.at_ms);
    let at = |t: u64| kept.iter().rev().find(|s| s.at_ms <= t).map_or(0, pick);
    let points: Vec<(u64, u64)> = (0..=w.age / w.incr)
        .map(|k| {
            let t = newest.saturating_sub(k * w.incr);
            (t, at(t))
        })
        .collect();
    let n = points.len() as f64;
    let avg = points.iter().map(|&(_, v)| v as f64).sum::<f64>() / n;
    let span = (points.len() as u64 - 1) * w.incr;
    let avg_rate = match (points.first(), points.last()) {
        (Some(&(_, newest)), Some(&(_, oldest))) => rate(oldest, newest, span),
        _ => 0.0,
    };
    let samples = points
        .iter()
        .map(|&(t, v)| json!({"sample": v, "timestamp": t}))
        .collect();
    d.insert("samples".into(), Value::Array(samples));
    d.insert("avg_rate".into(), json!(avg_rate));
    d.insert("avg".into(), json!(avg));
    Value::Object(d)
}

/// An object's `message_stats`: each group of `shown` that counted anything, with details,
/// and `deliver_get` with the deliveries. `totals` are the live counts.
pub(crate) fn message_stats(
    totals: &Totals,
    history: &History,
    shown: &[&[Stat]],
    ages: Ages,
) -> Value {
    let kept = samples_for(history, ages.msg_rates);
    let mut m = Map::new();
    let mut put = |name: &str, total: u64, pick: &dyn Fn(&Sample) -> u64| {
        m.insert(name.into(), json!(total));
        m.insert(
            format!("{name}_details"),
            details(&kept, pick, ages.msg_rates),
        );
    };
    for group in shown {
        if group.iter().all(|&s| totals.get(s) == 0) {
            continue;
        }
        for &stat in *group {
            put(NAMES[stat as usize], totals.get(stat), &|s| {
                s.totals.get(stat)
            });
        }
        if group.contains(&Stat::Deliver) {
            put("deliver_get", deliver_get(totals), &|s| {
                deliver_get(&s.totals)
            });
        }
    }
    Value::Object(m)
}

/// Adds `message_stats` to `obj` when anything was counted, as RabbitMQ leaves it out of an
/// object that has done nothing yet.
pub(crate) fn add_message_stats(
    obj: &mut Value,
    totals: &Totals,
    history: &History,
    shown: &[&[Stat]],
    ages: Ages,
) {
    if totals.is_zero() {
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
    let kept = samples_for(history, ages.lengths);
    let Value::Object(o) = obj else { return };
    for (g, level) in [Gauge::Messages, Gauge::Ready, Gauge::Unacked]
        .into_iter()
        .zip(levels)
    {
        let name = GAUGE_NAMES[g as usize];
        o.insert(name.into(), json!(level));
        o.insert(
            format!("{name}_details"),
            details(&kept, &|s| s.gauge(g), ages.lengths),
        );
    }
}

/// Adds what a sampled aggregate (a vhost) shows to `obj`: its `message_stats` (present even
/// when empty), its queue lengths and its bytes in and out, all as of the last sample.
pub(crate) fn add_aggregate(obj: &mut Value, history: &History, ages: Ages) {
    let last = history.last();
    let stats = message_stats(&last.totals, history, CHANNEL_STATS, ages);
    if let Value::Object(o) = obj {
        o.insert("message_stats".into(), stats);
    }
    add_lengths(obj, last.gauges, history, ages);
    add_data_rates(obj, &last.totals, history, ages, false);
}

/// Adds bytes in and out (`recv_oct`, `send_oct`) with their details to `obj`, and with
/// `calls` the reads and writes that moved them (a connection's `recv_cnt`, `send_cnt`).
pub(crate) fn add_data_rates(
    obj: &mut Value,
    totals: &Totals,
    history: &History,
    ages: Ages,
    calls: bool,
) {
    let kept = samples_for(history, ages.data_rates);
    let Value::Object(o) = obj else { return };
    for stat in [Stat::RecvOct, Stat::SendOct] {
        let name = NAMES[stat as usize];
        o.insert(name.into(), json!(totals.get(stat)));
        o.insert(
            format!("{name}_details"),
            details(&kept, &|s| s.totals.get(stat), ages.data_rates),
        );
    }
    if calls {
        for stat in [Stat::RecvCnt, Stat::SendCnt] {
            o.insert(NAMES[stat as usize].into(), json!(totals.get(stat)));
        }
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
        assert!(
            plain.get("deliver_get").is_none(),
            "nothing delivered: not shown"
        );
        let aged = message_stats(
            &totals,
            &h,
            QUEUE_STATS,
            Ages {
                msg_rates: Window::of(Some(60), Some(5)),
                ..Ages::default()
            },
        );
        let d = &aged["publish_details"];
        let samples = d["samples"].as_array().expect("samples");
        assert_eq!(samples.len(), 13, "a point every 5 s over a minute");
        assert_eq!(samples[0], json!({"sample": 150, "timestamp": 11_000}));
        assert_eq!(samples[1], json!({"sample": 50, "timestamp": 6_000}));
        assert_eq!(samples[3]["sample"], 0, "before the first sample");
        assert_eq!(d["avg_rate"], 2.5);
        assert_eq!(d["avg"], 200.0 / 13.0);
    }

    #[test]
    fn a_group_shows_whole_once_one_of_it_counted() {
        let mut totals = Totals::default();
        totals.0[Stat::Get as usize] = 1;
        let m = message_stats(&totals, &History::default(), CHANNEL_STATS, Ages::default());
        assert_eq!(m["get"], 1);
        assert_eq!(m["deliver_no_ack"], 0);
        assert_eq!(m["deliver_get"], 1);
        assert!(m.get("publish").is_none());
    }
}
