//! Criterion benchmarks for binding churn on a big exchange: binding and unbinding 1,000 bindings
//! beside 1,000,000 others, direct (distinct keys, one queue), topic (distinct patterns) and
//! many queues under one routing key, plus routing one message at that size.
// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use amq_protocol::types::FieldTable;
use criterion::{Criterion, criterion_group, criterion_main};
use warren::broker::exchange::{Binding, Destination, Exchange, ExchangeKind};
use warren::queue::{Queue, QueueOptions};

const BOUND: usize = 1_000_000;
const CHURN: usize = 1_000;

fn queue(name: &str) -> Destination {
    Destination::Queue(Queue::new(name.into(), "/".into(), QueueOptions::default()))
}

fn binding(destination: &Destination, routing_key: String) -> Binding {
    Binding {
        destination: destination.clone(),
        routing_key,
        arguments: FieldTable::default(),
    }
}

/// An exchange of `kind` holding `BOUND` bindings made by `make`, and `CHURN` more to add.
fn loaded(kind: ExchangeKind, make: impl Fn(usize) -> Binding) -> (Exchange, Vec<Binding>) {
    let mut x = Exchange::new("x", kind, false, false, false, FieldTable::default());
    for i in 0..BOUND {
        x.bind(make(i));
    }
    let churn = (BOUND..BOUND + CHURN).map(make).collect();
    (x, churn)
}

fn churn(c: &mut Criterion, name: &str, kind: ExchangeKind, make: impl Fn(usize) -> Binding) {
    let (mut x, extra) = loaded(kind, make);
    // Each timed step is undone untimed, so every sample sees 1,000,000 bindings.
    c.bench_function(&format!("{name}: bind 1000 beside 1M"), |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let batch = extra.clone();
                let started = Instant::now();
                for binding in batch {
                    black_box(x.bind(binding));
                }
                spent += started.elapsed();
                for binding in &extra {
                    x.unbind(binding);
                }
            }
            spent
        })
    });
    c.bench_function(&format!("{name}: unbind 1000 beside 1M"), |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                for binding in &extra {
                    x.bind(binding.clone());
                }
                let started = Instant::now();
                for binding in &extra {
                    black_box(x.unbind(binding));
                }
                spent += started.elapsed();
            }
            spent
        })
    });
    c.bench_function(&format!("{name}: route 1 message at 1M"), |b| {
        let key = extra[0].routing_key.replace(&BOUND.to_string(), "12345");
        b.iter(|| {
            let mut hits = 0usize;
            x.route(black_box(&key), &mut || None, &mut |_| hits += 1);
            black_box(hits)
        })
    });
}

fn bindings(c: &mut Criterion) {
    let q = queue("q");
    churn(c, "direct keys", ExchangeKind::Direct, |i| {
        binding(&q, format!("key.{i}"))
    });
    churn(c, "topic patterns", ExchangeKind::Topic, |i| {
        binding(&q, format!("stock.{i}.*"))
    });
    let queues: Vec<Destination> = (0..BOUND + CHURN)
        .map(|i| queue(&format!("q{i}")))
        .collect();
    churn(c, "queues under one key", ExchangeKind::Direct, |i| {
        binding(&queues[i], "all".into())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bindings
}
criterion_main!(benches);
