//! The disk alarm, as RabbitMQ 3.10 raises it: under the free-disk limit a connection that
//! publishes gets `connection.blocked` ("low on disk") and is read no more until space returns;
//! a connection that only consumes keeps going. The limit is changed at runtime, as
//! `rabbitmqctl set_disk_free_limit` does, to clear the alarm.

mod common;

use std::time::Duration;

use common::*;
use futures::{Stream, StreamExt};
use lapin::options::BasicAckOptions;
use lapin::{Connection, Event};
use warren::config::DiskFreeLimit;
use warren::queue::alarms::Alarm;

/// More free space than any filesystem has: the alarm is raised as soon as the broker looks.
async fn broker_low_on_disk() -> TestBroker {
    let broker =
        TestBroker::start_with(|c| c.disk_free_limit = DiskFreeLimit::Absolute(u64::MAX)).await;
    eventually("the disk alarm is raised", || async {
        broker.broker.alarms.raised().has(Alarm::Disk)
    })
    .await;
    broker
}

/// The next `connection.blocked` (with its reason) or `connection.unblocked` a client saw.
async fn next_block_event(events: &mut (impl Stream<Item = Event> + Unpin)) -> Option<String> {
    loop {
        let event = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("a block event within 5 s")
            .expect("the connection's events go on");
        match event {
            Event::ConnectionBlocked(reason) => return Some(reason),
            Event::ConnectionUnblocked => return None,
            _ => {}
        }
    }
}

/// Nothing arrives on `events` for a moment.
async fn quiet(events: &mut (impl Stream<Item = Event> + Unpin), what: &str) {
    if let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(300), events.next()).await {
        panic!("{what}: {event:?}");
    }
}

#[tokio::test]
async fn a_publisher_is_blocked_low_on_disk_while_a_consumer_keeps_receiving() {
    let broker = broker_low_on_disk().await;
    let consumer_conn = broker.connect().await;
    let cch = consumer_conn.create_channel().await.expect("channel");
    let queue = declare_queue(&cch, "disk-alarm").await;
    let mut consumer = consume_prefetched(&cch, &queue, "c", 10).await;

    let publisher = broker.connect().await;
    let mut events = publisher.events_listener();
    let pch = confirm_channel(&publisher).await;
    // Connections are blocked once they publish, so the first publish goes through.
    publish(&pch, "", &queue, b"first").await;
    assert_eq!(
        next_block_event(&mut events).await.as_deref(),
        Some("low on disk")
    );
    // lapin itself holds a publish while blocked: it is sent, and confirmed, once unblocked.
    let held = tokio::spawn({
        let (pch, queue) = (pch.clone(), queue.clone());
        async move { basic_publish(&pch, "", &queue, b"held").await.await }
    });

    // The consumer's connection is still read: it acks, and asks how many messages wait.
    let first = next_delivery(&mut consumer).await;
    assert_eq!(body(&first), "first");
    first.ack(BasicAckOptions::default()).await.expect("ack");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = cch
        .queue_declare(queue.as_str().into(), passive(), no_args())
        .await
        .expect("passive declare");
    assert_eq!(waiting.message_count(), 0, "a publish got past the alarm");

    broker.broker.alarms.set_disk_free_limit(0);
    assert_eq!(next_block_event(&mut events).await, None, "unblocked");
    let confirmed = tokio::time::timeout(WAIT, held)
        .await
        .expect("confirmed within 5 s");
    assert!(confirmed.expect("publisher").expect("confirm").is_ack());
    assert_eq!(body(&next_delivery(&mut consumer).await), "held");
    broker.stop().await;
}

/// The reason names every alarm raised when the connection is blocked; a second alarm while it
/// is blocked sends nothing more (RabbitMQ 3.10 neither), and it is unblocked only when both clear.
#[tokio::test]
async fn memory_and_disk_alarms_block_together_with_one_notice() {
    let broker = broker_low_on_disk().await;
    let alarms = &broker.broker.alarms;
    let (first, first_events) = publisher_blocked(&broker, "low on disk").await;
    let mut first_events = first_events;
    assert!(alarms.set(Alarm::Memory, true));
    quiet(&mut first_events, "a second notice while blocked").await;

    let (_second, mut second_events) = publisher_blocked(&broker, "low on memory & disk").await;
    broker.broker.alarms.set_disk_free_limit(0);
    eventually("the disk alarm clears", || async {
        !alarms.raised().has(Alarm::Disk)
    })
    .await;
    quiet(&mut first_events, "unblocked while memory is still low").await;
    assert!(first.status().blocked());
    assert!(alarms.set(Alarm::Memory, false));
    assert_eq!(next_block_event(&mut first_events).await, None);
    assert_eq!(next_block_event(&mut second_events).await, None);
    broker.stop().await;
}

/// A connection that publishes once and then waits for `connection.blocked` with `reason`.
async fn publisher_blocked(
    broker: &TestBroker,
    reason: &str,
) -> (Connection, impl Stream<Item = Event> + Unpin + use<>) {
    let conn = broker.connect().await;
    let mut events = conn.events_listener().boxed();
    let ch = confirm_channel(&conn).await;
    publish(&ch, "", "nowhere", b"once").await;
    assert_eq!(next_block_event(&mut events).await.as_deref(), Some(reason));
    (conn, events)
}
