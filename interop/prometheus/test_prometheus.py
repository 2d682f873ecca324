#!/usr/bin/env python3
"""Prometheus endpoint checks for a broker (Warren, or RabbitMQ 3.10 as the reference).

Usage: test_prometheus.py AMQP_URL METRICS_URL

Parses /metrics and /metrics/per-object with prometheus_client's own exposition-format parser,
after pika did known work: families and types as RabbitMQ's Grafana dashboards read them, the
build and identity labels, global counters that move by what was published, got and acked,
and per-object queue and channel series. RabbitMQ refreshes its per-object figures every few
seconds, so those checks wait for them. Every check prints "ok NAME" or "FAIL NAME: REASON";
the last line is "N passed, N failed".
"""

import sys
import time
import traceback
import urllib.request
import uuid

import pika
from prometheus_client.parser import text_string_to_metric_families

AMQP_URL = ""
METRICS_URL = ""
RUN = uuid.uuid4().hex[:8]
CHECKS = []
WAIT = 20  # seconds a figure may take to show

# Families the RabbitMQ-Overview dashboard and the issue name, with the type prometheus_client
# gives them (it drops the _total of a counter's family name and calls untyped "unknown").
FAMILIES = {
    "rabbitmq_identity_info": "unknown",
    "rabbitmq_build_info": "unknown",
    "rabbitmq_connections": "gauge",
    "rabbitmq_channels": "gauge",
    "rabbitmq_queues": "gauge",
    "rabbitmq_consumers": "gauge",
    "rabbitmq_global_consumers": "gauge",
    "rabbitmq_global_publishers": "gauge",
    "rabbitmq_queue_messages_ready": "gauge",
    "rabbitmq_queue_messages_unacked": "gauge",
    "rabbitmq_queue_messages": "gauge",
    "rabbitmq_channel_consumers": "gauge",
    "rabbitmq_process_open_fds": "gauge",
    "rabbitmq_process_max_fds": "gauge",
    "rabbitmq_process_open_tcp_sockets": "gauge",
    "rabbitmq_process_max_tcp_sockets": "gauge",
    "rabbitmq_process_resident_memory_bytes": "gauge",
    "rabbitmq_resident_memory_limit_bytes": "gauge",
    "rabbitmq_disk_space_available_bytes": "gauge",
    "rabbitmq_disk_space_available_limit_bytes": "gauge",
    "rabbitmq_alarms_memory_used_watermark": "unknown",
    "rabbitmq_alarms_free_disk_space_watermark": "unknown",
    "rabbitmq_connections_opened": "counter",
    "rabbitmq_connections_closed": "counter",
    "rabbitmq_channels_opened": "counter",
    "rabbitmq_channels_closed": "counter",
    "rabbitmq_queues_declared": "counter",
    "rabbitmq_queues_created": "counter",
    "rabbitmq_queues_deleted": "counter",
    "rabbitmq_global_messages_received": "counter",
    "rabbitmq_global_messages_received_confirm": "counter",
    "rabbitmq_global_messages_routed": "counter",
    "rabbitmq_global_messages_delivered": "counter",
    "rabbitmq_global_messages_delivered_consume_auto_ack": "counter",
    "rabbitmq_global_messages_delivered_consume_manual_ack": "counter",
    "rabbitmq_global_messages_delivered_get_auto_ack": "counter",
    "rabbitmq_global_messages_delivered_get_manual_ack": "counter",
    "rabbitmq_global_messages_acknowledged": "counter",
    "rabbitmq_global_messages_confirmed": "counter",
    "rabbitmq_global_messages_redelivered": "counter",
    "rabbitmq_global_messages_get_empty": "counter",
    "rabbitmq_global_messages_unroutable_dropped": "counter",
    "rabbitmq_global_messages_unroutable_returned": "counter",
    "rabbitmq_global_messages_dead_lettered_rejected": "counter",
    "rabbitmq_global_messages_dead_lettered_expired": "counter",
    "rabbitmq_global_messages_dead_lettered_maxlen": "counter",
    "rabbitmq_global_messages_dead_lettered_delivery_limit": "counter",
}


def check(fn):
    CHECKS.append(fn)
    return fn


def scrape(path="/metrics"):
    """The families of one scrape, by name."""
    with urllib.request.urlopen(METRICS_URL + path, timeout=10) as r:
        text = r.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families, family, name, **labels):
    """The value of the sample `name` of `family` whose labels include `labels`, else None."""
    f = families.get(family)
    if f is None:
        return None
    for s in f.samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def eventually(what, fn):
    """fn() until it returns something true, for up to WAIT seconds; fails with `what`."""
    deadline = time.monotonic() + WAIT
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} (last: {last!r})")


def connect():
    return pika.BlockingConnection(pika.URLParameters(AMQP_URL))


@check
def families_have_the_names_and_types_dashboards_read():
    families = scrape()
    wrong = {
        name: (families[name].type if name in families else "missing")
        for name, kind in FAMILIES.items()
        if name not in families or families[name].type != kind
    }
    assert not wrong, f"not as RabbitMQ's: {wrong}"


@check
def build_and_identity_info_carry_the_labels_dashboards_use():
    families = scrape()
    build = families["rabbitmq_build_info"].samples[0]
    assert build.labels.get("rabbitmq_version"), build.labels
    assert "erlang_version" in build.labels, build.labels
    ident = families["rabbitmq_identity_info"].samples[0]
    assert ident.labels.get("rabbitmq_node") and ident.labels.get("rabbitmq_cluster"), ident.labels


@check
def global_counters_move_by_what_clients_did():
    proto = {"protocol": "amqp091"}
    classic = {"protocol": "amqp091", "queue_type": "rabbit_classic_queue"}
    families = scrape()

    def figures(fam):
        return (
            value(fam, "rabbitmq_global_messages_received", "rabbitmq_global_messages_received_total", **proto),
            value(fam, "rabbitmq_global_messages_confirmed", "rabbitmq_global_messages_confirmed_total", **proto),
            value(fam, "rabbitmq_global_messages_acknowledged", "rabbitmq_global_messages_acknowledged_total", **classic),
            value(fam, "rabbitmq_global_messages_delivered_get_manual_ack",
                  "rabbitmq_global_messages_delivered_get_manual_ack_total", **classic),
        )

    before = figures(families)
    assert None not in before, f"a global counter is missing: {before}"
    conn = connect()
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        q = f"interop-prometheus-counts-{RUN}"
        ch.queue_declare(q, auto_delete=False)
        for _ in range(5):
            ch.basic_publish("", q, b"counted")
        method, _, _ = ch.basic_get(q, auto_ack=False)
        assert method is not None, "no message to get"
        ch.basic_ack(method.delivery_tag)
        ch.queue_delete(q)
    finally:
        conn.close()
    want = (5, 5, 1, 1)
    eventually(
        f"deltas {want} of received, confirmed, acknowledged, got",
        lambda: tuple(a - b for a, b in zip(figures(scrape()), before)) == want,
    )


@check
def per_object_series_name_the_queue_and_the_channel():
    conn = connect()
    try:
        ch = conn.channel()
        q = f"interop-prometheus-queue-{RUN}"
        ch.queue_declare(q)
        for _ in range(4):
            ch.basic_publish("", q, b"waiting")
        consumer_ch = conn.channel()
        consumer_ch.basic_qos(prefetch_count=1)
        consumer_ch.basic_consume(q, lambda *a: None)
        conn.process_data_events(0.5)

        def figures():
            fam = scrape("/metrics/per-object")
            labels = {"vhost": "/", "queue": q}
            consumers = fam.get("rabbitmq_channel_consumers")
            on_channels = [s.value for s in consumers.samples] if consumers else []
            return (
                value(fam, "rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_ready", **labels),
                value(fam, "rabbitmq_queue_messages_unacked", "rabbitmq_queue_messages_unacked", **labels),
                value(fam, "rabbitmq_queue_consumers", "rabbitmq_queue_consumers", **labels),
                1.0 in on_channels,
            )

        eventually(
            "ready 3, unacked 1, 1 consumer, and a channel with a consumer",
            lambda: figures() == (3.0, 1.0, 1.0, True),
        )
        ch.queue_delete(q)
    finally:
        conn.close()


@check
def open_connections_are_counted():
    conn = connect()
    try:
        conn.channel()
        eventually(
            "rabbitmq_connections >= 1 and rabbitmq_channels >= 1",
            lambda: (value(scrape(), "rabbitmq_connections", "rabbitmq_connections") or 0) >= 1
            and (value(scrape(), "rabbitmq_channels", "rabbitmq_channels") or 0) >= 1,
        )
    finally:
        conn.close()


def main():
    global AMQP_URL, METRICS_URL
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    AMQP_URL, METRICS_URL = sys.argv[1], sys.argv[2].rstrip("/")
    passed = failed = 0
    for fn in CHECKS:
        started = time.monotonic()
        try:
            fn()
            print(f"ok {fn.__name__}", flush=True)
            passed += 1
        except BaseException as e:  # noqa: BLE001 - a check's failure is reported, not raised
            reason = str(e) or type(e).__name__
            print(f"FAIL {fn.__name__}: {reason}", flush=True)
            if not isinstance(e, AssertionError):
                traceback.print_exc(file=sys.stderr)
            failed += 1
        elapsed = time.monotonic() - started
        if elapsed > 5:
            print(f"   ({fn.__name__} took {elapsed:.1f} s)", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
