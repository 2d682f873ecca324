#!/usr/bin/env python3
"""pika interop checks for an AMQP 0-9-1 broker (Warren, or RabbitMQ as the reference).

Usage: test_pika.py amqp://guest:guest@127.0.0.1:5672/%2f

RabbitMQ's tutorials 1-6 written with pika's BlockingConnection, plus publisher confirms,
mandatory returns, passive declares, a failed login, a reconnect and stream queues. Every check
prints "ok NAME" or "FAIL NAME: REASON"; the last line is "N passed, N failed". Names carry a
random suffix and the checks delete what they declare, so runs against a long-lived broker do
not see each other's leftovers. No pytest needed: only pika.

With WARREN_AMQPS_URL (amqps://...) and WARREN_TLS_CA (the CA that signed the broker's
certificate, PEM) set, every check runs a second time over TLS, named NAME[tls], followed by the
TLS-only checks: an EXTERNAL login with the client certificate WARREN_TLS_CERT / WARREN_TLS_KEY
(whose certificate must name the user the URL names), and EXTERNAL refused without one.
"""

import os
import signal
import ssl
import sys
import threading
import time
import traceback
import uuid

import pika
from pika.exceptions import (
    AuthenticationError,
    ChannelClosedByBroker,
    ConnectionClosedByBroker,
    ProbableAuthenticationError,
    UnroutableError,
)

CHECK_TIMEOUT = 30  # seconds one check may take before it counts as failed
PERSISTENT = 2  # delivery-mode of a persistent message

URL = ""
TLS_CA = None  # with it, URL is amqps:// and connections check the broker against this CA
RUN = uuid.uuid4().hex[:8]
CHECKS = []
TLS_CHECKS = []


def name(what):
    """A name unique to this run, so runs never see each other's queues or exchanges."""
    return f"interop-pika-{what}-{RUN}"


def check(fn):
    CHECKS.append(fn)
    return fn


def tls_check(fn):
    """A check that runs only over TLS."""
    TLS_CHECKS.append(fn)
    return fn


class CheckTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise CheckTimeout(f"no result within {CHECK_TIMEOUT} s")


class Ctx:
    """Per-check state: opens connections and closes whatever is left open afterwards."""

    def __init__(self):
        self.connections = []
        self.cleanups = []

    def connect(self, params=None):
        conn = pika.BlockingConnection(params or parameters())
        self.connections.append(conn)
        return conn

    def channel(self):
        return self.connect().channel()

    def on_exit(self, fn):
        self.cleanups.append(fn)

    def close(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception:
                pass
        for conn in self.connections:
            try:
                if conn.is_open:
                    conn.close()
            except Exception:
                pass


def parameters(password=None, client_cert=None):
    """Connection parameters for URL; over TLS the broker's certificate is checked against TLS_CA
    (and its name against the URL's host), and `client_cert` (certfile, keyfile) is shown."""
    params = pika.URLParameters(URL)
    params.connection_attempts = 1
    params.socket_timeout = 10
    params.blocked_connection_timeout = 20
    if password is not None:
        params.credentials = pika.PlainCredentials(params.credentials.username, password)
    if TLS_CA is not None:
        context = ssl.create_default_context(cafile=TLS_CA)
        if client_cert is not None:
            context.load_cert_chain(*client_cert)
        params.ssl_options = pika.SSLOptions(context, server_hostname=params.host)
    return params


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: expected {want!r}, got {got!r}")


def pump(conns, until, timeout=5.0, settle=0.0):
    """Runs the I/O loops of `conns` until `until()` holds, then `settle` seconds more (to catch
    deliveries that should not come). Fails if `until()` does not hold within `timeout`."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        for c in conns:
            c.process_data_events(time_limit=0.02)
    end = time.monotonic() + settle
    while time.monotonic() < end:
        for c in conns:
            c.process_data_events(time_limit=0.02)


def collect(conn, ch, queue, count, settle=0.3, timeout=5.0):
    """Consumes `queue` with auto-ack until `count` messages arrived (plus `settle` seconds for
    extras that should not come); returns the bodies in arrival order."""
    got = []
    tag = ch.basic_consume(
        queue=queue,
        on_message_callback=lambda _c, m, p, body: got.append(body),
        auto_ack=True,
    )
    pump([conn], lambda: len(got) >= count, timeout=timeout, settle=settle)
    ch.basic_cancel(tag)
    return got


def message_count(ch, queue):
    return ch.queue_declare(queue=queue, passive=True).method.message_count


# --- RabbitMQ tutorials 1-6 -------------------------------------------------------------------


@check
def tutorial_1_hello_world(ctx):
    conn = ctx.connect()
    ch = conn.channel()
    queue = name("hello")
    ch.queue_declare(queue=queue)
    ctx.on_exit(lambda: ch.queue_delete(queue=queue))
    ch.basic_publish(exchange="", routing_key=queue, body=b"Hello World!")

    received = []

    def callback(channel, method, properties, body):
        received.append((method, body))
        channel.stop_consuming()

    ch.basic_consume(queue=queue, on_message_callback=callback, auto_ack=True)
    ch.start_consuming()
    method, body = received[0]
    expect_eq(body, b"Hello World!", "body")
    expect_eq(method.exchange, "", "exchange")
    expect_eq(method.routing_key, queue, "routing key")
    expect(not method.redelivered, "first delivery must not be redelivered")


@check
def tutorial_2_work_queues(ctx):
    queue = name("task_queue")
    producer = ctx.channel()
    producer.queue_declare(queue=queue, durable=True)
    ctx.on_exit(lambda: producer.queue_delete(queue=queue))

    workers = []
    for _ in range(2):
        conn = ctx.connect()
        ch = conn.channel()
        ch.queue_declare(queue=queue, durable=True)
        ch.basic_qos(prefetch_count=1)
        worker = {"conn": conn, "ch": ch, "unacked": [], "done": []}

        def callback(channel, method, properties, body, worker=worker):
            expect_eq(properties.delivery_mode, PERSISTENT, "delivery mode")
            worker["unacked"].append((method.delivery_tag, body))

        ch.basic_consume(queue=queue, on_message_callback=callback)
        workers.append(worker)

    props = pika.BasicProperties(delivery_mode=PERSISTENT)
    for i in range(4):
        producer.basic_publish(exchange="", routing_key=queue, body=f"task {i}".encode(), properties=props)

    conns = [w["conn"] for w in workers]
    # prefetch 1: each worker holds exactly one message until it acks
    pump(conns, lambda: all(len(w["unacked"]) >= 1 for w in workers), settle=0.3)
    for w in workers:
        expect_eq(len(w["unacked"]), 1, "unacked messages per worker with prefetch 1")
    first = sorted(w["unacked"][0][1] for w in workers)
    expect_eq(first, [b"task 0", b"task 1"], "first two tasks, one per worker")
    # each ack lets exactly one more message through, to the worker that acked
    for w in workers:
        tag, body = w["unacked"].pop()
        w["ch"].basic_ack(delivery_tag=tag)
        w["done"].append(body)
        pump(conns, lambda w=w: len(w["unacked"]) >= 1, settle=0.2)
    for w in workers:
        expect_eq(len(w["unacked"]), 1, "unacked messages per worker after one ack")
        tag, body = w["unacked"].pop()
        w["ch"].basic_ack(delivery_tag=tag)
        w["done"].append(body)
    pump(conns, lambda: True, settle=0.2)
    for w in workers:
        expect_eq(len(w["done"]), 2, "tasks per worker (round robin)")
        expect_eq(w["unacked"], [], "no further deliveries")
    every = sorted(b for w in workers for b in w["done"])
    expect_eq(every, [f"task {i}".encode() for i in range(4)], "all tasks, each once")
    expect_eq(message_count(producer, queue), 0, "messages left in the queue")


@check
def tutorial_3_publish_subscribe(ctx):
    exchange = name("logs")
    pub = ctx.channel()
    pub.exchange_declare(exchange=exchange, exchange_type="fanout")
    ctx.on_exit(lambda: pub.exchange_delete(exchange=exchange))
    subscribers = []
    for _ in range(2):
        conn = ctx.connect()
        ch = conn.channel()
        result = ch.queue_declare(queue="", exclusive=True)
        queue = result.method.queue
        expect(queue.startswith("amq.gen-"), f"server-named queue should start with amq.gen-, got {queue!r}")
        ch.queue_bind(exchange=exchange, queue=queue)
        subscribers.append((conn, ch, queue))
    expect(subscribers[0][2] != subscribers[1][2], "server-named queues must differ")
    pub.basic_publish(exchange=exchange, routing_key="", body=b"info: Hello World!")
    for conn, ch, queue in subscribers:
        expect_eq(collect(conn, ch, queue, 1), [b"info: Hello World!"], f"messages in {queue}")


@check
def tutorial_4_routing(ctx):
    exchange = name("direct_logs")
    pub = ctx.channel()
    pub.exchange_declare(exchange=exchange, exchange_type="direct")
    ctx.on_exit(lambda: pub.exchange_delete(exchange=exchange))
    conn = ctx.connect()
    ch = conn.channel()
    errors = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(exchange=exchange, queue=errors, routing_key="error")
    everything = ch.queue_declare(queue="", exclusive=True).method.queue
    for severity in ("info", "warning", "error"):
        ch.queue_bind(exchange=exchange, queue=everything, routing_key=severity)
    for severity in ("info", "warning", "error", "debug"):
        pub.basic_publish(exchange=exchange, routing_key=severity, body=f"{severity}: Hello".encode())
    expect_eq(collect(conn, ch, errors, 1), [b"error: Hello"], "error queue")
    expect_eq(
        collect(conn, ch, everything, 3),
        [b"info: Hello", b"warning: Hello", b"error: Hello"],
        "queue bound to info, warning and error",
    )


@check
def tutorial_5_topics(ctx):
    exchange = name("topic_logs")
    pub = ctx.channel()
    pub.exchange_declare(exchange=exchange, exchange_type="topic")
    ctx.on_exit(lambda: pub.exchange_delete(exchange=exchange))
    conn = ctx.connect()
    ch = conn.channel()
    q1 = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(exchange=exchange, queue=q1, routing_key="*.orange.*")
    q2 = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(exchange=exchange, queue=q2, routing_key="*.*.rabbit")
    ch.queue_bind(exchange=exchange, queue=q2, routing_key="lazy.#")
    keys = [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "quick.orange.fox",
        "lazy.brown.fox",
        "lazy.pink.rabbit",  # matches both of q2's bindings: delivered once
        "quick.brown.fox",
        "orange",
        "quick.orange.new.rabbit",
        "lazy.orange.new.rabbit",
        "lazy",
    ]
    for key in keys:
        pub.basic_publish(exchange=exchange, routing_key=key, body=key.encode())
    expect_eq(
        collect(conn, ch, q1, 3),
        [b"quick.orange.rabbit", b"lazy.orange.elephant", b"quick.orange.fox"],
        "*.orange.*",
    )
    got = collect(conn, ch, q2, 6)
    expect_eq(
        got,
        [
            b"quick.orange.rabbit",
            b"lazy.orange.elephant",
            b"lazy.brown.fox",
            b"lazy.pink.rabbit",
            b"lazy.orange.new.rabbit",
            b"lazy",
        ],
        "*.*.rabbit + lazy.#",
    )


def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


@check
def tutorial_6_rpc(ctx):
    rpc_queue = name("rpc_queue")
    ready = threading.Event()
    stop = threading.Event()
    server_errors = []

    def server():
        conn = None
        try:
            conn = pika.BlockingConnection(parameters())
            ch = conn.channel()
            ch.queue_declare(queue=rpc_queue)
            ch.basic_qos(prefetch_count=1)

            def on_request(channel, method, props, body):
                response = fib(int(body))
                channel.basic_publish(
                    exchange="",
                    routing_key=props.reply_to,
                    properties=pika.BasicProperties(correlation_id=props.correlation_id),
                    body=str(response).encode(),
                )
                channel.basic_ack(delivery_tag=method.delivery_tag)

            ch.basic_consume(queue=rpc_queue, on_message_callback=on_request)
            ready.set()
            while not stop.is_set():
                conn.process_data_events(time_limit=0.05)
        except Exception as e:  # reported by the client side
            server_errors.append(f"RPC server: {e!r}")
            ready.set()
        finally:
            try:
                if conn is not None and conn.is_open:
                    conn.close()
            except Exception:
                pass

    thread = threading.Thread(target=server, daemon=True)
    thread.start()

    def stop_server():
        stop.set()
        thread.join(5)

    ctx.on_exit(stop_server)
    expect(ready.wait(10), "RPC server did not start")
    expect(not server_errors, "; ".join(server_errors))

    conn = ctx.connect()
    ch = conn.channel()
    ctx.on_exit(lambda: ch.queue_delete(queue=rpc_queue))
    callback_queue = ch.queue_declare(queue="", exclusive=True).method.queue
    responses = {}

    def on_response(channel, method, props, body):
        responses[props.correlation_id] = body

    ch.basic_consume(queue=callback_queue, on_message_callback=on_response, auto_ack=True)
    for n in (0, 1, 10, 30):
        corr_id = str(uuid.uuid4())
        ch.basic_publish(
            exchange="",
            routing_key=rpc_queue,
            properties=pika.BasicProperties(reply_to=callback_queue, correlation_id=corr_id),
            body=str(n).encode(),
        )
        pump([conn], lambda: corr_id in responses or bool(server_errors))
        expect(not server_errors, "; ".join(server_errors))
        expect_eq(responses[corr_id], str(fib(n)).encode(), f"fib({n})")
    expect_eq(len(responses), 4, "one response per request")


# --- beyond the tutorials ---------------------------------------------------------------------


@check
def publisher_confirms(ctx):
    conn = ctx.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    queue = name("confirms")
    ch.queue_declare(queue=queue)
    cleanup = conn.channel()
    ctx.on_exit(lambda: cleanup.queue_delete(queue=queue))
    for i in range(3):
        ch.basic_publish(exchange="", routing_key=queue, body=f"confirmed {i}".encode())
    expect_eq(message_count(ch, queue), 3, "messages after three confirmed publishes")
    missing = name("no-such-exchange")
    try:
        ch.basic_publish(exchange=missing, routing_key="anything", body=b"lost")
    except ChannelClosedByBroker as e:
        expect_eq(e.reply_code, 404, "reply code")
        expect_eq(e.reply_text, f"NOT_FOUND - no exchange '{missing}' in vhost '/'", "reply text")
    else:
        raise AssertionError("publish to a missing exchange did not close the channel")
    expect(ch.is_closed, "channel should be closed")
    expect(conn.is_open, "connection should stay open")
    expect_eq(message_count(conn.channel(), queue), 3, "messages on a new channel")


@check
def mandatory_unroutable_returns(ctx):
    conn = ctx.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    for exchange, key in (("", name("nowhere")), ("amq.direct", name("unbound-key"))):
        try:
            ch.basic_publish(exchange=exchange, routing_key=key, body=b"unroutable", mandatory=True)
        except UnroutableError as e:
            expect_eq(len(e.messages), 1, "returned messages")
            returned = e.messages[0]
            expect_eq(returned.method.reply_code, 312, "basic.return reply code")
            expect_eq(returned.method.reply_text, "NO_ROUTE", "basic.return reply text")
            expect_eq(returned.method.exchange, exchange, "basic.return exchange")
            expect_eq(returned.method.routing_key, key, "basic.return routing key")
            expect_eq(returned.body, b"unroutable", "returned body")
        else:
            raise AssertionError(f"mandatory publish to {exchange!r}/{key!r} was not returned")
    expect(ch.is_open, "channel stays open after a return")
    # without mandatory, an unroutable message is confirmed and dropped
    ch.basic_publish(exchange="", routing_key=name("nowhere"), body=b"dropped")


@check
def passive_declare_missing_queue(ctx):
    conn = ctx.connect()
    ch = conn.channel()
    missing = name("missing")
    try:
        ch.queue_declare(queue=missing, passive=True)
    except ChannelClosedByBroker as e:
        expect_eq(e.reply_code, 404, "reply code")
        expect_eq(e.reply_text, f"NOT_FOUND - no queue '{missing}' in vhost '/'", "reply text")
    else:
        raise AssertionError("passive declare of a missing queue succeeded")
    expect(ch.is_closed, "channel should be closed")
    expect(conn.is_open, "connection should stay open")
    ch2 = conn.channel()
    ch2.queue_declare(queue="", exclusive=True)


@check
def wrong_password_refused(ctx):
    try:
        ctx.connect(parameters(password="not-the-password"))
    except (ProbableAuthenticationError, AuthenticationError) as e:
        # RabbitMQ answers connection.close 403 ACCESS_REFUSED (pika asks for
        # authentication_failure_close) rather than dropping the socket
        expect("(403) 'ACCESS_REFUSED - " in str(e), f"expected a 403 ACCESS_REFUSED close, got {e!r}")
    else:
        raise AssertionError("connection with a wrong password was accepted")
    # and the broker still serves everyone else
    ctx.channel().queue_declare(queue="", exclusive=True)


@check
def reconnect_finds_durable_messages(ctx):
    queue = name("durable")
    conn = ctx.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(queue=queue, durable=True)
    props = pika.BasicProperties(delivery_mode=PERSISTENT, content_type="text/plain")
    for i in range(3):
        ch.basic_publish(exchange="", routing_key=queue, body=f"kept {i}".encode(), properties=props)
    conn.close()

    conn = ctx.connect()
    ch = conn.channel()
    ctx.on_exit(lambda: ch.queue_delete(queue=queue))
    expect_eq(message_count(ch, queue), 3, "messages after reconnecting")
    for i in range(3):
        method, got_props, body = ch.basic_get(queue=queue)
        expect(method is not None, f"basic.get {i} returned nothing")
        expect_eq(body, f"kept {i}".encode(), "body")
        expect_eq(got_props.delivery_mode, PERSISTENT, "delivery mode")
        expect_eq(got_props.content_type, "text/plain", "content type")
        ch.basic_ack(delivery_tag=method.delivery_tag)
    method, _, _ = ch.basic_get(queue=queue)
    expect(method is None, "queue should be empty after acking")


# --- stream queues ----------------------------------------------------------------------------

STREAM = {"x-queue-type": "stream"}


def declare_stream(ctx, what, arguments=None):
    """Declares a stream named for `what`, deleted after the check from a connection of its own
    (a refusal may close the check's)."""
    queue = name(what)
    ctx.channel().queue_declare(queue=queue, durable=True, arguments={**STREAM, **(arguments or {})})
    cleanup = ctx.channel()
    ctx.on_exit(lambda: cleanup.queue_delete(queue=queue))
    return queue


@check
def stream_consume_from_first_with_offsets(ctx):
    queue = declare_stream(ctx, "stream")
    conn = ctx.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish(exchange="", routing_key=queue, body=f"m{i}".encode())
    ch.basic_qos(prefetch_count=10)
    got = []

    def on_message(channel, method, properties, body):
        got.append((body, (properties.headers or {}).get("x-stream-offset")))
        channel.basic_ack(delivery_tag=method.delivery_tag)

    ch.basic_consume(queue=queue, on_message_callback=on_message, arguments={"x-stream-offset": "first"})
    pump([conn], lambda: len(got) >= 5, settle=0.5)
    expect_eq(got, [(f"m{i}".encode(), i) for i in range(5)], "bodies and x-stream-offset headers")


@check
def stream_consume_without_prefetch_refused(ctx):
    queue = declare_stream(ctx, "stream-no-qos")
    ch = ctx.channel()
    try:
        ch.basic_consume(queue=queue, on_message_callback=lambda *a: None)
    except ChannelClosedByBroker as e:
        expect_eq(e.reply_code, 406, "reply code")
        expect_eq(
            e.reply_text,
            f"PRECONDITION_FAILED - consumer prefetch count is not set for 'queue '{queue}' in vhost '/''",
            "reply text",
        )
    else:
        raise AssertionError("a stream consumer without basic.qos was accepted")


@check
def stream_basic_get_not_implemented(ctx):
    queue = declare_stream(ctx, "stream-get")
    conn = ctx.connect()
    try:
        conn.channel().basic_get(queue=queue)
    except ConnectionClosedByBroker as e:
        expect_eq(e.reply_code, 540, "reply code")
        expect_eq(
            e.reply_text,
            f"NOT_IMPLEMENTED - basic.get not supported by stream queues queue '{queue}' in vhost '/'",
            "reply text",
        )
    else:
        raise AssertionError("basic.get of a stream succeeded")
    expect(conn.is_closed, "connection should be closed")


@check
def stream_invalid_max_age_refused(ctx):
    queue = name("stream-age")
    ch = ctx.channel()
    try:
        ch.queue_declare(queue=queue, durable=True, arguments={**STREAM, "x-max-age": "1d"})
    except ChannelClosedByBroker as e:
        expect_eq(e.reply_code, 406, "reply code")
        expect_eq(
            e.reply_text,
            f"PRECONDITION_FAILED - invalid arg 'x-max-age' for queue '{queue}' in vhost '/': invalid_max_age",
            "reply text",
        )
    else:
        cleanup = ctx.channel()
        ctx.on_exit(lambda: cleanup.queue_delete(queue=queue))
        raise AssertionError("x-max-age '1d' (the unit is D) was accepted")


# --- over TLS only ----------------------------------------------------------------------------


@tls_check
def external_login_with_client_certificate(ctx):
    cert, key = os.environ.get("WARREN_TLS_CERT"), os.environ.get("WARREN_TLS_KEY")
    expect(cert and key, "WARREN_TLS_CERT and WARREN_TLS_KEY must name the client certificate and key")
    params = parameters(client_cert=(cert, key))
    params.credentials = pika.credentials.ExternalCredentials()
    conn = ctx.connect(params)
    ch = conn.channel()
    ch.confirm_delivery()
    queue = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.basic_publish(exchange="", routing_key=queue, body=b"as the certificate's user")
    method, _, body = ch.basic_get(queue=queue, auto_ack=True)
    expect(method is not None, "basic.get returned nothing")
    expect_eq(body, b"as the certificate's user", "body")


@tls_check
def external_login_without_client_certificate_refused(ctx):
    params = parameters()
    params.credentials = pika.credentials.ExternalCredentials()
    try:
        ctx.connect(params)
    except (ProbableAuthenticationError, AuthenticationError) as e:
        # RabbitMQ 3.10 offers EXTERNAL on a listener that verifies peers whether or not this
        # client showed a certificate, and refuses the login: connection.close 403 ACCESS_REFUSED
        expect("(403) 'ACCESS_REFUSED - " in str(e), f"expected a 403 ACCESS_REFUSED close, got {e!r}")
    else:
        raise AssertionError("EXTERNAL login without a client certificate was accepted")
    # password logins over TLS go on
    ctx.channel().queue_declare(queue="", exclusive=True)


def run(checks, suffix=""):
    """Runs `checks`, printing one line each; returns (passed, failed)."""
    passed = failed = 0
    for fn in checks:
        label = fn.__name__ + suffix
        ctx = Ctx()
        started = time.monotonic()
        try:
            signal.alarm(CHECK_TIMEOUT)
            fn(ctx)
            signal.alarm(0)
            print(f"ok {label}", flush=True)
            passed += 1
        except BaseException as e:  # noqa: B036 - a check's failure must not stop the run
            signal.alarm(0)
            if isinstance(e, KeyboardInterrupt):
                raise
            reason = str(e) if isinstance(e, (AssertionError, CheckTimeout)) else repr(e)
            print(f"FAIL {label}: {reason}", flush=True)
            if not isinstance(e, AssertionError):
                traceback.print_exc(file=sys.stderr)
            failed += 1
        finally:
            signal.alarm(10)
            try:
                ctx.close()
            except BaseException:
                pass
            signal.alarm(0)
        elapsed = time.monotonic() - started
        if elapsed > 5:
            print(f"   ({label} took {elapsed:.1f} s)", flush=True)
    return passed, failed


def main():
    global URL, TLS_CA
    if len(sys.argv) != 2:
        print("usage: test_pika.py AMQP_URL", file=sys.stderr)
        return 2
    URL = sys.argv[1]
    signal.signal(signal.SIGALRM, _on_alarm)
    passed, failed = run(CHECKS)
    tls_url, TLS_CA = os.environ.get("WARREN_AMQPS_URL"), os.environ.get("WARREN_TLS_CA")
    if tls_url and TLS_CA:
        print(f"-- again over TLS: {tls_url}", flush=True)
        URL = tls_url
        for p, f in (run(CHECKS, "[tls]"), run(TLS_CHECKS)):
            passed, failed = passed + p, failed + f
    else:
        print("-- no TLS checks: WARREN_AMQPS_URL and WARREN_TLS_CA are not both set", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
