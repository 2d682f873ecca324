#!/usr/bin/env python3
"""Celery interop checks for an AMQP 0-9-1 broker (Warren, or RabbitMQ as the reference).

Usage: test_celery.py amqp://guest:guest@127.0.0.1:5672/%2f

Starts a real Celery worker (`celery -A tasks worker --pool=solo`, tasks.py beside this file) as a
subprocess against the broker, then: tasks executed with their results back over the rpc://
result backend, a group, retries (self.retry and autoretry_for) that eventually succeed, a
failure that reaches the caller, acks_late (including a worker that dies before acking, whose
message must come back redelivered to a new worker), a kombu Producer/Consumer round trip, and a
clean warm shutdown that leaves the task queue empty. Every check prints "ok NAME" or
"FAIL NAME: REASON"; the last line is "N passed, N failed". Queue names carry a random suffix,
and the checks delete what they declare.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid

sys.dont_write_bytecode = True  # do not leave __pycache__ in the source tree

HERE = os.path.dirname(os.path.abspath(__file__))
CHECK_TIMEOUT = 45  # seconds one check may take before it counts as failed
READY_TIMEOUT = 30  # seconds for the worker to report "ready"
RESULT_TIMEOUT = 15  # seconds to wait for one task result

URL = ""
RUN = uuid.uuid4().hex[:8]
QUEUE = f"interop-celery-{RUN}"
STATE = ""
CHECKS = []
tasks = None  # the tasks module, imported once the environment is set


def name(what):
    return f"interop-celery-{what}-{RUN}"


def check(fn):
    CHECKS.append(fn)
    return fn


class CheckTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise CheckTimeout(f"no result within {CHECK_TIMEOUT} s")


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def expect_eq(got, want, what):
    if got != want:
        raise AssertionError(f"{what}: expected {want!r}, got {got!r}")


class Worker:
    """The celery worker subprocess; its output goes to a log file per start."""

    def __init__(self):
        self.proc = None
        self.starts = 0
        self.log_path = None

    def start(self):
        self.starts += 1
        self.log_path = os.path.join(STATE, f"worker-{self.starts}.log")
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool=solo",
                 "--loglevel=INFO", "-n", f"interop-celery-{RUN}@%h"],
                cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited with status {self.proc.returncode} before it was ready:\n{self.tail()}")
            time.sleep(0.1)
        raise AssertionError(f"worker not ready within {READY_TIMEOUT} s:\n{self.tail()}")

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def require(self):
        expect(self.running(), "the worker is not running")

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout=20):
        """Warm shutdown (SIGTERM); SIGKILL after `timeout`. Returns the exit status, or None
        when it had to be killed."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        status = self.wait_exit(timeout)
        if status is None:
            self.proc.kill()
            self.proc.wait()
        return status

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except (OSError, TypeError):
            return ""

    def tail(self, n=25):
        return "\n".join("    | " + line for line in self.log().splitlines()[-n:])


WORKER = Worker()


def kombu_connection():
    from kombu import Connection

    return Connection(URL, connect_timeout=10)


def queue_message_count(queue):
    from kombu import Queue

    with kombu_connection() as conn:
        ch = conn.channel()
        _, count, _ = Queue(queue, channel=ch, no_declare=True).queue_declare(passive=True)
        return count


# --- checks -----------------------------------------------------------------------------------


@check
def worker_starts(ctx):
    WORKER.start()
    log = WORKER.log()
    expect(f"Connected to {URL.split('@')[0].split('://')[0]}://" in log,
           f"no 'Connected to' line in the worker log:\n{WORKER.tail()}")


@check
def task_results_over_rpc_backend(ctx):
    WORKER.require()
    results = [tasks.add.delay(i, i * 10) for i in range(20)]
    got = [r.get(timeout=RESULT_TIMEOUT) for r in results]
    expect_eq(got, [i * 11 for i in range(20)], "results")
    expect(all(r.state == "SUCCESS" for r in results), "every task state SUCCESS")
    r = tasks.add.apply_async((2, 3), countdown=0.5)  # an ETA task, held by the worker until due
    started = time.monotonic()
    expect_eq(r.get(timeout=RESULT_TIMEOUT), 5, "countdown task result")
    expect(time.monotonic() - started >= 0.4, "countdown task ran early")


@check
def group_results(ctx):
    from celery import group

    WORKER.require()
    job = group(tasks.add.s(i, i) for i in range(10))()
    expect_eq(job.get(timeout=RESULT_TIMEOUT), [2 * i for i in range(10)], "group results")


@check
def task_self_retry_then_success(ctx):
    WORKER.require()
    key = name("self-retry")
    r = tasks.retry_until.delay(key, 2)
    expect_eq(r.get(timeout=RESULT_TIMEOUT), {"attempts": 3, "retries": 2}, "result after two retries")


@check
def task_autoretry_then_success(ctx):
    WORKER.require()
    key = name("autoretry")
    r = tasks.autoretry_until.delay(key, 3)
    expect_eq(r.get(timeout=RESULT_TIMEOUT), {"attempts": 4, "retries": 3}, "result after three retries")


@check
def task_failure_reaches_caller(ctx):
    WORKER.require()
    key = name("always-fails")
    r = tasks.always_fails.delay(key)
    try:
        r.get(timeout=RESULT_TIMEOUT)
    except ValueError as e:
        expect_eq(str(e), "attempt 2 failed", "exception from the last attempt")
    else:
        raise AssertionError("a failing task returned a result")
    expect_eq(r.state, "FAILURE", "state")


@check
def acks_late_task(ctx):
    WORKER.require()
    results = [tasks.late_ack.delay(i) for i in range(5)]
    got = [r.get(timeout=RESULT_TIMEOUT) for r in results]
    expect_eq(got, [{"x": i, "redelivered": False} for i in range(5)], "results")


@check
def acks_late_redelivered_after_worker_dies(ctx):
    WORKER.require()
    key = name("crash-once")
    r = tasks.crash_once.delay(key)
    status = WORKER.wait_exit(RESULT_TIMEOUT)
    expect_eq(status, 3, "exit status of the worker that ran the first attempt")
    WORKER.start()
    expect_eq(r.get(timeout=RESULT_TIMEOUT), {"attempts": 2, "redelivered": True},
              "result from the second worker")


@check
def kombu_producer_consumer_round_trip(ctx):
    from kombu import Consumer, Exchange, Producer, Queue

    exchange = Exchange(name("kombu-exchange"), type="direct", durable=False)
    queue = Queue(name("kombu-queue"), exchange=exchange, routing_key="round-trip", durable=False)
    with kombu_connection() as conn:
        ch = conn.channel()
        queue(ch).declare()
        try:
            producer = Producer(ch, exchange=exchange, routing_key="round-trip")
            producer.publish({"hello": "world", "n": [1, 2, 3]}, serializer="json",
                             headers={"x-check": "kombu", "count": 7}, correlation_id="corr-1",
                             delivery_mode=2, retry=False)
            producer.publish(b"\x00\x01raw bytes\xff", content_type="application/octet-stream",
                             content_encoding="binary", retry=False)
            producer.publish("compressed " * 100, serializer="json", compression="zlib", retry=False)
            got = []

            def on_message(body, message):
                got.append((body, message))
                message.ack()

            with Consumer(ch, queues=[queue], callbacks=[on_message],
                          accept=["json", "application/octet-stream"]):
                deadline = time.monotonic() + 10
                while len(got) < 3 and time.monotonic() < deadline:
                    try:
                        conn.drain_events(timeout=1)
                    except TimeoutError:
                        pass
            expect_eq(len(got), 3, "messages consumed")
            (b1, m1), (b2, m2), (b3, m3) = got
            expect_eq(b1, {"hello": "world", "n": [1, 2, 3]}, "json body")
            expect_eq(m1.content_type, "application/json", "content type")
            expect_eq(m1.headers, {"x-check": "kombu", "count": 7}, "headers")
            expect_eq(m1.properties.get("correlation_id"), "corr-1", "correlation id")
            expect_eq(m1.properties.get("delivery_mode"), 2, "delivery mode")
            expect_eq(m1.delivery_info.get("exchange"), exchange.name, "delivery exchange")
            expect_eq(m1.delivery_info.get("routing_key"), "round-trip", "delivery routing key")
            expect(not m1.delivery_info.get("redelivered"), "first delivery is not redelivered")
            expect_eq(b2, b"\x00\x01raw bytes\xff", "raw body")
            expect_eq(b3, "compressed " * 100, "decompressed body")
            expect_eq(m3.headers.get("compression"), "application/x-gzip", "compression header")
            _, count, _ = queue(ch).queue_declare(passive=True)
            expect_eq(count, 0, "messages left after acking")
        finally:
            queue(ch).delete()
            exchange(ch).delete()


@check
def worker_warm_shutdown_leaves_queue_empty(ctx):
    WORKER.require()
    status = WORKER.stop()
    expect(status is not None, f"worker did not exit within 20 s of SIGTERM:\n{WORKER.tail()}")
    expect_eq(status, 0, "worker exit status after SIGTERM")
    expect(" ready." in WORKER.log(), "worker log")
    # every task message was acked (acks_late ones after running): nothing went back to the queue
    expect_eq(queue_message_count(QUEUE), 0, f"messages left in {QUEUE}")


def _on_term(signum, frame):
    """Killed from outside (the suite timed out): take the worker down too."""
    if WORKER.running():
        WORKER.proc.kill()
    print(f"FAIL runner: stopped by signal {signum}", flush=True)
    os._exit(1)


def cleanup():
    WORKER.stop(timeout=10)
    try:
        from kombu import Exchange, Queue

        with kombu_connection() as conn:
            ch = conn.channel()
            Queue(QUEUE, channel=ch, no_declare=True).delete()
            Exchange(QUEUE, channel=ch).delete()
    except Exception:
        pass
    try:
        tasks.app.close()
    except Exception:
        pass


def main():
    global URL, STATE, tasks
    if len(sys.argv) != 2:
        print("usage: test_celery.py AMQP_URL", file=sys.stderr)
        return 2
    URL = sys.argv[1]
    STATE = tempfile.mkdtemp(prefix="interop-celery-")
    os.environ.update(INTEROP_CELERY_BROKER=URL, INTEROP_CELERY_QUEUE=QUEUE, INTEROP_CELERY_STATE=STATE)
    sys.path.insert(0, HERE)
    import tasks as tasks_module

    tasks = tasks_module
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_term)
    passed = failed = 0
    try:
        for fn in CHECKS:
            started = time.monotonic()
            try:
                signal.alarm(CHECK_TIMEOUT)
                fn(None)
                signal.alarm(0)
                print(f"ok {fn.__name__}", flush=True)
                passed += 1
            except BaseException as e:  # noqa: B036 - a check's failure must not stop the run
                signal.alarm(0)
                if isinstance(e, KeyboardInterrupt):
                    raise
                reason = str(e) if isinstance(e, (AssertionError, CheckTimeout)) else repr(e)
                print(f"FAIL {fn.__name__}: {reason}", flush=True)
                if not isinstance(e, AssertionError):
                    traceback.print_exc(file=sys.stderr)
                if WORKER.proc is not None:
                    print(f"   worker log ({WORKER.log_path}):\n{WORKER.tail()}", flush=True)
                failed += 1
            elapsed = time.monotonic() - started
            if elapsed > 5:
                print(f"   ({fn.__name__} took {elapsed:.1f} s)", flush=True)
    finally:
        signal.alarm(30)
        try:
            cleanup()
        except BaseException:
            pass
        signal.alarm(0)
        shutil.rmtree(STATE, ignore_errors=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
