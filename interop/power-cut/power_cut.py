#!/usr/bin/env python3
"""Power-cut rounds: does every confirmed message and every acknowledged declare survive a power loss?

Usage: power_cut.py WARREN_BIN POWER_CUT_TOOL WORK_DIR

Each round starts Warren with its data dir on a LazyFS mount (see /work/shared/tools/power-cut or the
POWER_CUT_TOOL given), declares durable queues of each kind, runs concurrent confirm-mode publishers
(one process and connection each) that record a message only once the broker confirmed it, a consumer
that acks some messages and a process that keeps declaring queues and exchanges; then kill -9, power
cut (un-fsynced writes dropped), remount, restart, and check what survived. The last round cuts the
power again while Warren recovers a backlog. Every check prints "ok NAME: ..." or "FAIL NAME: ..."
with its numbers; the last line is "N passed, N failed".

The same file is also each child process: `power_cut.py publish|consume|declare URL OUT ...`.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict

import pika
from pika.exceptions import ChannelClosedByBroker

PERSISTENT = 2
PUBLISHERS = 3
PUBLISH_SECONDS = 3.0
BACKLOG_SECONDS = 4.0  # the recovery round publishes longer, so the restart has a backlog to load
DELAY_MS = 2000  # x-delay of the delayed messages: due a while after the restart
TTL_MS = "300"  # expiration of the messages that are dead-lettered in flight
SETTLE_SECONDS = 6.0  # how long a check waits for dead-lettered and delayed messages to arrive

CLASSIC, QUORUM, PRIORITY, TTL, DLQ, DELAYED_Q, STREAM = (
    "pc-classic", "pc-quorum", "pc-priority", "pc-ttl", "pc-dlq", "pc-delayed-q", "pc-stream")
DLX, DELAYED_X = "pc-dlx", "pc-delayed"
# Where publisher message number i goes: TARGETS[i % len(TARGETS)].
TARGETS = ["classic", "quorum", "priority", "ttl", "delayed", "stream"]

QUEUES = {
    CLASSIC: {},
    QUORUM: {"x-queue-type": "quorum"},
    PRIORITY: {"x-max-priority": 10},
    TTL: {"x-dead-letter-exchange": DLX, "x-dead-letter-routing-key": "dl"},
    DLQ: {},
    DELAYED_Q: {},
    # Small segments, so that a round rolls many of them.
    STREAM: {"x-queue-type": "stream", "x-stream-max-segment-size-bytes": 20000},
}


def connect(url):
    return pika.BlockingConnection(pika.URLParameters(url))


# ------------------------------------------------------------------------------ child processes


def publish(url, out, pub):
    """Publishes persistent messages round-robin over TARGETS in confirm mode; after each confirm,
    appends "TARGET SEQ" to OUT. Runs until killed."""
    ch = connect(url).channel()
    ch.confirm_delivery()
    with open(out, "a", buffering=1) as f:
        seq = 0
        while True:
            target = TARGETS[seq % len(TARGETS)]
            body = f"{pub}:{seq}:{target}".encode()
            props = pika.BasicProperties(delivery_mode=PERSISTENT)
            exchange, key = "", {"classic": CLASSIC, "quorum": QUORUM, "priority": PRIORITY,
                                 "ttl": TTL, "stream": STREAM}.get(target, "d")
            if target == "priority":
                props.priority = seq % 10
            elif target == "ttl":
                props.expiration = TTL_MS
            elif target == "delayed":
                exchange = DELAYED_X
                props.headers = {"x-delay": DELAY_MS}
            ch.basic_publish(exchange, key, body, props)
            f.write(f"{target} {seq}\n")
            seq += 1


def consume(url, out):
    """Consumes the classic queue; acks the even-numbered messages (appending "PUB SEQ" to OUT after
    each ack is sent) and leaves the odd ones unacked, so the restart must bring those back."""
    conn = connect(url)
    ch = conn.channel()
    with open(out, "a", buffering=1) as f:
        def on_message(ch, method, props, body):
            pub, seq, _ = body.decode().split(":")
            if int(seq) % 2 == 0:
                ch.basic_ack(method.delivery_tag)
                f.write(f"{pub} {seq}\n")
        ch.basic_consume(CLASSIC, on_message)
        ch.start_consuming()


def declare(url, out):
    """Declares durable queues and exchanges one after another, appending "queue|exchange NAME" to
    OUT once the declare-ok arrived. Runs until killed."""
    ch = connect(url).channel()
    with open(out, "a", buffering=1) as f:
        i = 0
        while True:
            if i % 3 == 2:
                ch.exchange_declare(f"pc-extra-x-{i}", "fanout", durable=True)
                f.write(f"exchange pc-extra-x-{i}\n")
            else:
                ch.queue_declare(f"pc-extra-q-{i}", durable=True)
                f.write(f"queue pc-extra-q-{i}\n")
            i += 1
            time.sleep(0.02)


# ------------------------------------------------------------------------------ the rounds


class Checks:
    def __init__(self):
        self.passed = self.failed = 0

    def report(self, name, good, detail):
        print(f"{'ok' if good else 'FAIL'} {name}: {detail}", flush=True)
        if good:
            self.passed += 1
        else:
            self.failed += 1


class Broker:
    """One Warren process on PORT with its data dir under the LazyFS mount."""

    def __init__(self, binary, port, data_dir, log):
        self.binary, self.port, self.data_dir, self.log = binary, port, data_dir, log
        self.proc = None

    def start(self, wait=True):
        log = open(self.log, "a")
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--management-listen", "127.0.0.1:0", "--prometheus-listen", "127.0.0.1:0",
             "--data-dir", self.data_dir,
             "--log-level", "warn"], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        self.started = time.monotonic()
        if wait:
            self.wait_up()

    def accepting(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def wait_up(self, timeout=60):
        deadline = time.monotonic() + timeout
        while not self.accepting():
            if self.proc.poll() is not None:
                raise RuntimeError(f"warren exited with status {self.proc.returncode} (log: {self.log})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"warren did not accept connections within {timeout} s")
            time.sleep(0.05)
        return time.monotonic() - self.started

    def wait_store_open(self, timeout=5):
        """Until Warren has a file open under its data dir (True), or has exited or TIMEOUT passed."""
        fds = f"/proc/{self.proc.pid}/fd"
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                for fd in os.listdir(fds):
                    if os.readlink(os.path.join(fds, fd)).startswith(self.data_dir + "/"):
                        return True
            except OSError:
                pass  # an fd closed between listdir and readlink
            time.sleep(0.001)
        return False

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
        if self.proc:
            self.proc.wait()


class Round:
    def __init__(self, n, args, port, checks):
        binary, self.tool, work = args
        self.n, self.checks = n, checks
        self.dir = os.path.join(work, f"round{n}")
        self.root, self.mnt = os.path.join(self.dir, "root"), os.path.join(self.dir, "mnt")
        os.makedirs(self.root)
        os.makedirs(self.mnt)
        self.url = f"amqp://guest:guest@127.0.0.1:{port}/%2f"
        self.broker = Broker(binary, port, os.path.join(self.mnt, "data"),
                             os.path.join(self.dir, "warren.log"))
        self.children = []
        self.mounted = False

    def pc(self, *cmd):
        subprocess.run([self.tool, *cmd], check=True, stdout=subprocess.DEVNULL)

    def mount(self):
        self.pc("mount", self.root, self.mnt)
        self.mounted = True

    def power_cut(self):
        """The ordering rule: every process using the mount dies first, then the cut, then the reboot."""
        self.broker.kill()
        for p in self.children:
            if p.poll() is None:
                p.kill()
            p.wait()
        self.children = []
        self.pc("cut", self.mnt)
        self.pc("umount", self.mnt)
        self.mounted = False
        self.mount()

    def spawn(self, *args):
        err = open(os.path.join(self.dir, "children.err"), "a")
        self.children.append(subprocess.Popen(
            [sys.executable, "-u", __file__, *args], stdout=subprocess.DEVNULL, stderr=err,
            stdin=subprocess.DEVNULL))
        err.close()

    def file(self, name):
        return os.path.join(self.dir, name)

    def declare_topology(self):
        conn = connect(self.url)
        ch = conn.channel()
        declared = []
        ch.exchange_declare(DLX, "direct", durable=True)
        declared.append(("exchange", DLX))
        ch.exchange_declare(DELAYED_X, "x-delayed-message", durable=True,
                            arguments={"x-delayed-type": "direct"})
        declared.append(("exchange", DELAYED_X))
        for q, qargs in QUEUES.items():
            ch.queue_declare(q, durable=True, arguments=qargs)
            declared.append(("queue", q))
        ch.queue_bind(DLQ, DLX, "dl")
        ch.queue_bind(DELAYED_Q, DELAYED_X, "d")
        conn.close()
        with open(self.file("declared"), "w") as f:
            f.writelines(f"{kind} {name}\n" for kind, name in declared)

    def run_load(self, seconds, consumer):
        for p in range(PUBLISHERS):
            self.spawn("publish", self.url, self.file(f"confirmed.{p}"), str(p))
        self.spawn("declare", self.url, self.file("declared"))
        if consumer:
            self.spawn("consume", self.url, self.file("acked"))
        time.sleep(seconds)

    def confirmed(self):
        """{target: {pub: [seq, ...]}} of the confirmed messages."""
        got = defaultdict(lambda: defaultdict(list))
        for p in range(PUBLISHERS):
            for line in read_lines(self.file(f"confirmed.{p}")):
                target, seq = line
                got[target][p].append(int(seq))
        return got

    def run(self, recovery_cut=False):
        started = time.monotonic()
        self.mount()
        try:
            self.broker.start()
            self.declare_topology()
            self.run_load(BACKLOG_SECONDS if recovery_cut else PUBLISH_SECONDS, not recovery_cut)
            self.power_cut()
            timing = ""
            if recovery_cut:
                # Two more cuts while Warren recovers the backlog, whatever that recovery wrote
                # without an fsync going with them: once the store has a file open (loading has
                # begun), then once it listens (expired messages dead-lettered, delayed ones
                # rescheduled, unacked ones requeued).
                self.broker.start(wait=False)
                opened = self.broker.wait_store_open()
                first = time.monotonic() - self.broker.started
                self.power_cut()
                self.broker.start(wait=False)
                second = self.broker.wait_up() + 0.2
                time.sleep(0.2)
                self.power_cut()
                timing = (f"cut {first:.3f} s into the first restart "
                          f"({'store open' if opened else 'store never opened'}), "
                          f"{second:.3f} s into the second (listening); ")
            self.broker.start(wait=False)
            recovery = self.broker.wait_up()
            self.verify()
            self.broker.kill()
            self.pc("umount", self.mnt)
            self.mounted = False
            print(f"   round {self.n}: {timing}recovery {recovery:.2f} s, "
                  f"round {time.monotonic() - started:.1f} s", flush=True)
        finally:
            self.broker.kill()
            for p in self.children:
                if p.poll() is None:
                    p.kill()
                p.wait()
            if self.mounted:
                subprocess.run([self.tool, "umount", self.mnt], stdout=subprocess.DEVNULL)

    # ------------------------------------------------------------------ checks

    def verify(self):
        tag = f"round{self.n}"
        conn = connect(self.url)
        declared = [tuple(line) for line in read_lines(self.file("declared"))]
        missing = [name for kind, name in declared if not exists(conn, kind, name)]
        self.checks.report(f"{tag} declares", not missing,
                           f"declare-ok received {len(declared)}, present {len(declared) - len(missing)}, "
                           f"lost {len(missing)}{sample(missing)}")
        confirmed = self.confirmed()
        acked = {(int(p), int(s)) for p, s in read_lines(self.file("acked"))}

        def present(queue):
            return exists(conn, "queue", queue)

        # Classic: every confirmed message not acked by the consumer is back, in publish order.
        got = drain(conn, CLASSIC) if present(CLASSIC) else []
        all_classic = ids(confirmed["classic"])
        want = all_classic - acked
        self.presence(f"{tag} classic", want, got, ordered=True,
                      confirmed=f"confirmed {len(all_classic)}, acked {len(all_classic & acked)}, "
                      f"confirmed and not acked {len(want)}")
        redelivered = acked & set(got)
        if os.path.exists(self.file("acked")):
            self.checks.report(f"{tag} classic acked", True,
                               f"acked {len(acked)}, redelivered after the cut {len(redelivered)} "
                               "(an ack has no confirm in AMQP 0-9-1; RabbitMQ may redeliver these too)")
        got = drain(conn, QUORUM) if present(QUORUM) else []
        self.presence(f"{tag} quorum", ids(confirmed["quorum"]), got, ordered=True)
        got = drain(conn, PRIORITY) if present(PRIORITY) else []
        self.presence(f"{tag} priority", ids(confirmed["priority"]), got, ordered=False)

        # Stream: read from the first offset, every confirmed message is there, in publish order,
        # at consecutive offsets from 0.
        got, offsets = drain_stream(conn, STREAM) if present(STREAM) else ([], [])
        self.presence(f"{tag} stream", ids(confirmed["stream"]), got, ordered=True)
        gaps = [o for i, o in enumerate(offsets) if o != i]
        self.checks.report(f"{tag} stream offsets", not gaps,
                           f"{len(offsets)} messages at offsets 0..{len(offsets) - 1}"
                           if not gaps else f"offset {gaps[0]} at position {offsets.index(gaps[0])}")

        # Dead-lettered in flight: each one in the DLQ, or (not yet expired) still in its queue.
        want = ids(confirmed["ttl"])
        got = []
        if present(DLQ):
            got = drain(conn, DLQ, until=lambda seen: want <= set(seen), settle=SETTLE_SECONDS)
        if present(TTL) and not want <= set(got):
            got += drain(conn, TTL)
        self.presence(f"{tag} dead-lettered", want, got, ordered=False)

        # Delayed: wait out the delay, then each one must have reached the bound queue.
        want = ids(confirmed["delayed"])
        got = []
        if present(DELAYED_Q):
            got = drain(conn, DELAYED_Q, until=lambda seen: want <= set(seen),
                        settle=DELAY_MS / 1000 + SETTLE_SECONDS)
        self.presence(f"{tag} delayed", want, got, ordered=False)
        conn.close()

    def presence(self, name, want, got, ordered, confirmed=""):
        seen = set(got)
        lost = sorted(want - seen)
        dups = len(got) - len(seen)
        bad_order = []
        if ordered:
            last = {}
            for p, s in got:
                if s <= last.get(p, -1):
                    bad_order.append((p, s))
                last[p] = s
        detail = f"{confirmed or f'confirmed {len(want)}'}, recovered {len(seen & want)}, lost {len(lost)}{sample(lost)}"
        if dups:
            detail += f", duplicates {dups}"
        if ordered:
            detail += f", out of publish order {len(bad_order)}{sample(bad_order)}"
        self.checks.report(name, not lost and not dups and not bad_order, detail)


def ids(by_pub):
    return {(p, s) for p, seqs in by_pub.items() for s in seqs}


def sample(items):
    items = list(items)
    if not items:
        return ""
    return " (e.g. " + ", ".join(f"{':'.join(map(str, i)) if isinstance(i, tuple) else i}"
                                 for i in items[:3]) + ")"


def read_lines(path):
    """Whole "A B" lines of PATH (a line cut short by a kill is skipped)."""
    try:
        with open(path) as f:
            return [line.split() for line in f if line.endswith("\n") and len(line.split()) == 2]
    except FileNotFoundError:
        return []


def exists(conn, kind, name):
    ch = conn.channel()
    try:
        if kind == "queue":
            ch.queue_declare(name, passive=True)
        else:
            ch.exchange_declare(name, passive=True)
    except ChannelClosedByBroker:
        return False
    ch.close()
    return True


def drain(conn, queue, until=None, settle=0.0):
    """(pub, seq) of every message QUEUE delivers, in delivery order, left unacked. Stops after 0.5 s
    without a delivery, but with UNTIL keeps waiting up to SETTLE seconds for UNTIL(seen) to hold."""
    ch = conn.channel()
    seen = []
    deadline = time.monotonic() + settle
    for method, _, body in ch.consume(queue, inactivity_timeout=0.5):
        if method is not None:
            pub, seq, _ = body.decode().split(":")
            seen.append((int(pub), int(seq)))
        elif until is None or until(seen) or time.monotonic() > deadline:
            break
    ch.close()
    return seen


def drain_stream(conn, queue):
    """(pub, seq) of every message of the stream QUEUE from its first offset, and their
    x-stream-offset headers, in delivery order; stops after 0.5 s without a delivery."""
    ch = conn.channel()
    ch.basic_qos(prefetch_count=500)
    seen, offsets = [], []
    for method, props, body in ch.consume(queue, arguments={"x-stream-offset": "first"},
                                          inactivity_timeout=0.5):
        if method is None:
            break
        pub, seq, _ = body.decode().split(":")
        seen.append((int(pub), int(seq)))
        offsets.append(props.headers["x-stream-offset"])
        ch.basic_ack(method.delivery_tag)
    ch.close()
    return seen, offsets


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main(argv):
    if len(argv) >= 3 and argv[0] == "publish":
        return publish(argv[1], argv[2], argv[3])
    if len(argv) >= 3 and argv[0] == "consume":
        return consume(argv[1], argv[2])
    if len(argv) >= 3 and argv[0] == "declare":
        return declare(argv[1], argv[2])
    if len(argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    with open(os.path.join(argv[2], "pid"), "w") as f:
        f.write(f"{os.getpid()}\n")  # run.sh's trap stops this process on SIGTERM, so it unmounts
    checks = Checks()
    port = free_port()
    plan = [False, False, False, True]  # True: the round that cuts the power during recovery
    for n, recovery_cut in enumerate(plan, 1):
        print(f"== round {n}: {'power cut during recovery of a backlog' if recovery_cut else 'power cut under load'}",
              flush=True)
        try:
            Round(n, argv, port, checks).run(recovery_cut)
        except Exception as e:  # a round that cannot finish is one failed check, the others still run
            checks.report(f"round{n}", False, repr(e))
    print(f"{checks.passed} passed, {checks.failed} failed", flush=True)
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main(sys.argv[1:]))
