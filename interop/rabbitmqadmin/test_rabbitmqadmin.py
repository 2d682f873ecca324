#!/usr/bin/env python3
"""rabbitmqadmin (v1 and v2) checks against a broker's management HTTP API.

Usage: test_rabbitmqadmin.py --api http://127.0.0.1:15672 --amqp AMQP_URL
                             [--v1 PATH_TO_rabbitmqadmin_v1] [--v2 PATH_TO_rabbitmqadmin_v2]

Each tool gets the same story in a vhost and with a user of its own (radmin-v1, radmin-v1-user;
radmin-v2, radmin-v2-user), so that a broker shared with others (the RabbitMQ reference) is only
touched there: list, declare (vhost, user, permission, queue, exchange, binding, policy, vhost
limit), what the new user may see and do, publish and get, an AMQP connection listed and
closed, definitions exported (whole broker and one vhost) and imported back after the objects
were deleted, a definitions file exported by RabbitMQ 3.10.8 imported (and exported again), and
the exit status and message of commands that fail. What a tool prints is what is checked (v1
with -f raw_json, v2's markdown tables), as a script driving the tool would read it. Only the
tools' commands that RabbitMQ 3.10 answers are used (v2 is made for 3.12 and later), and nothing
that depends on message rates, channels or consumers, or on policies being applied.

Every check prints "ok NAME" or "FAIL NAME: REASON"; the last line is "N passed, N failed".
The checks' own vhosts and users are deleted before and after the run (through the HTTP API).
Only the Python standard library is needed.
"""

import argparse
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

TOOL_TIMEOUT = 30  # seconds one tool command may take
HTTP_TIMEOUT = 10  # seconds per request of the checks' own HTTP calls (setup and cleanup)
# Definitions import and vhost creation can be asynchronous on RabbitMQ: reads that follow a
# write are retried for up to this long before the check fails.
SETTLE = 20

# The exchanges RabbitMQ 3.10 declares in every new vhost.
DEFAULT_EXCHANGES = {
    "",
    "amq.direct",
    "amq.fanout",
    "amq.headers",
    "amq.match",
    "amq.rabbitmq.trace",
    "amq.topic",
}


# A definitions file as RabbitMQ 3.10.8 exported it (`rabbitmqadmin export`, cut down to one
# vhost and its user): what a migration from RabbitMQ imports. The user's password is
# FIXTURE_PASSWORD (its hash is RabbitMQ's salted SHA-256). Each tool imports it under names of
# its own.
FIXTURE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "rabbitmq-3.10.8-definitions.json"
)
FIXTURE_VHOST = "radmin-fixture"
FIXTURE_USER = "radmin-fixture-user"
FIXTURE_PASSWORD = "fixture pw"


class CheckFailed(AssertionError):
    pass


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def expect_eq(got, want, what):
    if got != want:
        raise CheckFailed(f"{what}: expected {want!r}, got {got!r}")


def short(text, n=300):
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


class Result:
    def __init__(self, tool, args, rc, out, err):
        self.tool, self.args, self.rc, self.out, self.err = tool, args, rc, out, err

    def __str__(self):
        cmd = " ".join(self.args)
        said = short(self.out + " " + self.err)
        return f"`rabbitmqadmin {cmd}` ({self.tool}) exited {self.rc}: {said}"

    def ok(self):
        """Raises unless the command exited 0."""
        if self.rc != 0:
            raise CheckFailed(str(self))
        return self


# ---------------------------------------------------------------------------------------------
# The broker's HTTP API, used only to clean up before and after the checks.


class Api:
    def __init__(self, base):
        self.base = base.rstrip("/") + "/api"
        self.auth = "Basic " + base64.b64encode(b"guest:guest").decode()

    def request(self, method, path):
        req = urllib.request.Request(
            self.base + path, method=method, headers={"Authorization": self.auth}
        )
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as r:
                body = r.read()
                return r.status, json.loads(body) if body else None
        except urllib.error.HTTPError as e:
            return e.code, None

    def delete_quietly(self, path):
        status, _ = self.request("DELETE", path)
        return status


def q(s):
    return urllib.parse.quote(s, safe="")


# ---------------------------------------------------------------------------------------------
# A minimal AMQP 0-9-1 client: enough to open a named connection and see it closed by the
# broker (for `list connections` and `close connection`), without any client library.


def _shortstr(s):
    b = s.encode()
    return struct.pack("B", len(b)) + b


def _longstr(b):
    return struct.pack(">I", len(b)) + b


def _table(d):
    body = b"".join(_shortstr(k) + b"S" + _longstr(v.encode()) for k, v in d.items())
    return struct.pack(">I", len(body)) + body


class AmqpConnection:
    def __init__(self, url, vhost, connection_name):
        u = urllib.parse.urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port or 5672), timeout=10)
        self.local_port = self.sock.getsockname()[1]
        user = urllib.parse.unquote(u.username or "guest")
        password = urllib.parse.unquote(u.password or "guest")
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self._expect_method(10, 10)  # connection.start
        props = {"product": "rabbitmqadmin interop checks", "connection_name": connection_name}
        self._send_method(
            10,
            11,
            _table(props)
            + _shortstr("PLAIN")
            + _longstr(f"\0{user}\0{password}".encode())
            + _shortstr("en_US"),
        )
        args = self._expect_method(10, 30)  # connection.tune
        channel_max, frame_max, _heartbeat = struct.unpack(">HIH", args[:8])
        self._send_method(10, 31, struct.pack(">HIH", channel_max, frame_max, 0))
        self._send_method(10, 40, _shortstr(vhost) + _shortstr("") + b"\0")
        self._expect_method(10, 41)  # connection.open-ok

    def _send_method(self, cls, meth, args):
        payload = struct.pack(">HH", cls, meth) + args
        self.sock.sendall(struct.pack(">BHI", 1, 0, len(payload)) + payload + b"\xce")

    def _read_exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise CheckFailed("the broker closed the AMQP socket")
            buf += chunk
        return buf

    def read_method(self):
        """The next method frame on channel 0: (class, method, arguments)."""
        while True:
            kind, _channel, size = struct.unpack(">BHI", self._read_exact(7))
            payload = self._read_exact(size)
            self._read_exact(1)
            if kind == 1:
                cls, meth = struct.unpack(">HH", payload[:4])
                return cls, meth, payload[4:]

    def _expect_method(self, cls, meth):
        got = self.read_method()
        if got[:2] == (10, 50):
            code, text = self.close_reason(got[2])
            raise CheckFailed(f"the broker closed the AMQP connection: {code} {text}")
        expect_eq(got[:2], (cls, meth), "AMQP method")
        return got[2]

    @staticmethod
    def close_reason(args):
        code, length = struct.unpack(">HB", args[:3])
        return code, args[3 : 3 + length].decode(errors="replace")

    def wait_closed_by_broker(self, timeout):
        """The reply code and text of the broker's connection.close, answered with close-ok."""
        self.sock.settimeout(timeout)
        cls, meth, args = self.read_method()
        expect_eq((cls, meth), (10, 50), "AMQP method (connection.close expected)")
        self._send_method(10, 51, b"")
        return self.close_reason(args)

    def close(self):
        try:
            self._send_method(10, 50, struct.pack(">H", 200) + _shortstr("bye") + b"\0\0\0\0")
            self.sock.settimeout(5)
            self.read_method()
        except Exception:
            pass
        finally:
            self.sock.close()


# ---------------------------------------------------------------------------------------------
# The two tools behind one interface. Lists come back as lists of dicts: v1's raw JSON as is,
# v2's markdown table as strings (v2 has no JSON output), compared through cell().


class Tool:
    label = ""
    missing_rc = None  # exit status when the API answers 404 Not Found

    def __init__(self, path, api_url, workdir):
        self.path, self.api_url = path, api_url
        # A HOME of its own, so that no ~/.rabbitmqadmin.conf of the user's changes the target.
        self.env = dict(os.environ, HOME=workdir)
        for k in list(self.env):
            if k.startswith("RABBITMQADMIN_"):
                del self.env[k]
        # v2 prints a backtrace on errors when asked for one, and symbolizing it takes seconds
        self.env["RUST_BACKTRACE"] = "0"

    def base_cmd(self):
        raise NotImplementedError

    def run(self, *args, user="guest", password="guest", vhost=None):
        rest = (["-V", vhost] if vhost is not None else []) + [str(a) for a in args]
        cmd = self.base_cmd() + ["-u", user, "-p", password] + rest
        # what a failure message shows: the command without the target and guest's credentials
        shown = (["-u", user] if user != "guest" else []) + rest
        try:
            p = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=TOOL_TIMEOUT,
                env=self.env,
            )
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"`rabbitmqadmin {' '.join(shown)}` ({self.label}) did not "
                              f"finish within {TOOL_TIMEOUT} s")
        return Result(self.label, shown, p.returncode, p.stdout, p.stderr)


class V1(Tool):
    label = "v1"
    missing_rc = 1
    queue_args_added = {}

    def base_cmd(self):
        return [sys.executable, self.path, "-U", self.api_url, "-t", "20"]

    def list(self, kind, *columns, vhost=None, user="guest", password="guest"):
        r = self.run("-f", "raw_json", "list", kind, *columns, vhost=vhost, user=user,
                     password=password).ok()
        try:
            return json.loads(r.out)
        except ValueError:
            raise CheckFailed(f"list {kind}: not JSON: {short(r.out)}")

    @staticmethod
    def cell(row, key):
        """A value as v2 would print it, so that one expectation serves both tools."""
        v = row.get(key)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return ",".join(str(x) for x in v)
        if v is None:
            return ""
        return v if isinstance(v, (str, dict)) else str(v)

    def declare_vhost(self, name):
        return self.run("declare", "vhost", f"name={name}")

    def declare_user(self, name, password, tags):
        return self.run("declare", "user", f"name={name}", f"password={password}", f"tags={tags}")

    def declare_permission(self, vhost, user, configure, write, read):
        return self.run("declare", "permission", f"vhost={vhost}", f"user={user}",
                        f"configure={configure}", f"write={write}", f"read={read}")

    def declare_queue(self, vhost, name, durable, arguments):
        return self.run("declare", "queue", f"name={name}", f"durable={str(durable).lower()}",
                        f"arguments={json.dumps(arguments)}", vhost=vhost)

    def declare_exchange(self, vhost, name, kind):
        return self.run("declare", "exchange", f"name={name}", f"type={kind}", vhost=vhost)

    def declare_binding(self, vhost, source, destination, routing_key):
        return self.run("declare", "binding", f"source={source}", f"destination={destination}",
                        "destination_type=queue", f"routing_key={routing_key}", vhost=vhost)

    def declare_policy(self, vhost, name, pattern, definition, priority, apply_to):
        return self.run("declare", "policy", f"name={name}", f"pattern={pattern}",
                        f"definition={json.dumps(definition)}", f"priority={priority}",
                        f"apply-to={apply_to}", vhost=vhost)

    def declare_vhost_limit(self, vhost, name, value):
        return self.run("declare", "vhost_limit", f"vhost={vhost}", f"name={name}",
                        f"value={value}")

    def publish(self, vhost, exchange, routing_key, payload, properties):
        """Whether the tool says the message was routed."""
        r = self.run("publish", f"exchange={exchange}", f"routing_key={routing_key}",
                     f"payload={payload}", f"properties={json.dumps(properties)}",
                     vhost=vhost).ok()
        expect("Message published" in r.out, f"publish printed {short(r.out)!r}")
        return "NOT routed" not in r.out

    def get(self, vhost, queue, ackmode, count):
        r = self.run("-f", "raw_json", "get", f"queue={queue}", f"ackmode={ackmode}",
                     f"count={count}", vhost=vhost).ok()
        try:
            return json.loads(r.out)
        except ValueError:
            raise CheckFailed(f"get: not JSON: {short(r.out)}")

    def delete_binding(self, vhost, source, destination, routing_key):
        # v1 deletes by properties_key, which a script reads from `list bindings`.
        rows = [b for b in self.list("bindings", vhost=vhost)
                if b.get("source") == source and b.get("destination") == destination
                and b.get("routing_key") == routing_key]
        expect(rows, f"no binding {source} -> {destination} ({routing_key}) to delete")
        return self.run("delete", "binding", f"source={source}", "destination_type=queue",
                        f"destination={destination}",
                        f"properties_key={rows[0]['properties_key']}", vhost=vhost)

    def delete(self, kind, name, vhost=None):
        return self.run("delete", kind, f"name={name}", vhost=vhost)

    def close_connection(self, name):
        return self.run("close", "connection", f"name={name}")

    def export(self, path, vhost=None):
        return self.run("export", path, vhost=vhost)

    def import_(self, path, vhost=None):
        return self.run("import", path, vhost=vhost)


class V2(Tool):
    label = "v2"
    missing_rc = 65  # EX_DATAERR
    # `declare queue --type classic` (the default) sends the type as an argument
    queue_args_added = {"x-queue-type": "classic"}

    def base_cmd(self):
        return [self.path, "-U", self.api_url, "--timeout", "20", "--table-style", "markdown"]

    @staticmethod
    def parse_table(text):
        """Rows of a markdown table as dicts. A value of several lines (a message's properties,
        one per line) goes on in the lines below its row, all of whose other cells are empty:
        such lines are joined to the row above, with newlines. Rows whose cell count does not
        match the header's (a value holding '|') are left out."""
        lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
        rows, header = [], None
        for ln in lines:
            cells = [c.strip() for c in ln.strip("|").split("|")]
            if header is None:
                header = cells
                continue
            if len(cells) != len(header) or all(set(c) <= set("-:") for c in cells):
                continue
            if rows and sum(1 for c in cells if c) <= 1:
                for k, c in zip(header, cells):
                    if c:
                        rows[-1][k] = f"{rows[-1][k]}\n{c}" if rows[-1][k] else c
                continue
            rows.append(dict(zip(header, cells)))
        return rows

    def list(self, kind, *columns, vhost=None, user="guest", password="guest"):
        r = self.run("list", kind, vhost=vhost, user=user, password=password).ok()
        return self.parse_table(r.out)

    # v1's (the API's) field names that v2's tables call otherwise
    COLUMNS = {"type": "exchange_type", "apply-to": "apply_to"}

    @classmethod
    def cell(cls, row, key):
        return row.get(cls.COLUMNS.get(key, key), "")

    def declare_vhost(self, name):
        return self.run("declare", "vhost", "--name", name, "--description", "radmin interop")

    def declare_user(self, name, password, tags):
        return self.run("declare", "user", "--name", name, "--password", password, "--tags", tags)

    def declare_permission(self, vhost, user, configure, write, read):
        return self.run("declare", "permissions", "--username", user, "--configure", configure,
                        "--write", write, "--read", read, vhost=vhost)

    def declare_queue(self, vhost, name, durable, arguments):
        return self.run("declare", "queue", "--name", name, "--type", "classic", "--durable",
                        str(durable).lower(), "--arguments", json.dumps(arguments), vhost=vhost)

    def declare_exchange(self, vhost, name, kind):
        return self.run("declare", "exchange", "--name", name, "--type", kind, vhost=vhost)

    def declare_binding(self, vhost, source, destination, routing_key):
        return self.run("declare", "binding", "--source", source, "--destination-type", "queue",
                        "--destination", destination, "--routing-key", routing_key, vhost=vhost)

    def declare_policy(self, vhost, name, pattern, definition, priority, apply_to):
        return self.run("declare", "policy", "--name", name, "--pattern", pattern,
                        "--definition", json.dumps(definition), "--priority", priority,
                        "--apply-to", apply_to, vhost=vhost)

    def declare_vhost_limit(self, vhost, name, value):
        return self.run("declare", "vhost_limit", "--name", name, "--value", value, vhost=vhost)

    def publish(self, vhost, exchange, routing_key, payload, properties):
        r = self.run("publish", "message", "--exchange", exchange, "--routing-key", routing_key,
                     "--payload", payload, "--properties", json.dumps(properties),
                     vhost=vhost).ok()
        expect("Message published" in r.out, f"publish printed {short(r.out)!r}")
        return "NOT routed" not in r.out

    def get(self, vhost, queue, ackmode, count):
        r = self.run("get", "messages", "--queue", queue, "--ack-mode", ackmode, "--count",
                     count, vhost=vhost).ok()
        return self.parse_table(r.out)

    def delete_binding(self, vhost, source, destination, routing_key):
        # v2 finds the binding by its routing key (and arguments) itself.
        return self.run("delete", "binding", "--source", source, "--destination-type", "queue",
                        "--destination", destination, "--routing-key", routing_key, vhost=vhost)

    def delete(self, kind, name, vhost=None):
        return self.run("delete", kind, "--name", name, vhost=vhost)

    def close_connection(self, name):
        return self.run("close", "connection", "--name", name)

    def export(self, path, vhost=None):
        if vhost is None:
            return self.run("definitions", "export", "--file", path)
        return self.run("definitions", "export_from_vhost", "--file", path, vhost=vhost)

    def import_(self, path, vhost=None):
        if vhost is None:
            return self.run("definitions", "import", "--file", path)
        return self.run("definitions", "import_into_vhost", "--file", path, vhost=vhost)


# ---------------------------------------------------------------------------------------------
# The checks. One Story per tool: the names of its objects and what earlier checks left.


def settled(fn, timeout=SETTLE):
    """fn() until it passes (returns without CheckFailed) or the time is up."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except CheckFailed:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.25)


class Story:
    def __init__(self, tool, api, amqp_url, workdir):
        self.t, self.api, self.amqp_url = tool, api, amqp_url
        lbl = tool.label
        self.vhost = f"radmin-{lbl}"
        self.user = f"radmin-{lbl}-user"
        self.password = f"pw {lbl} s3cret"
        self.queue = "radmin-q"
        self.exchange = "radmin-x"
        self.binding_key = "orders.#"
        self.policy = "radmin-p"
        self.export_file = os.path.join(workdir, f"{lbl}-export.json")
        self.vhost_export_file = os.path.join(workdir, f"{lbl}-export-vhost.json")
        self.import_file = os.path.join(workdir, f"{lbl}-import.json")
        self.fx_vhost = f"radmin-{lbl}-fx"
        self.fx_user = f"radmin-{lbl}-fx-user"
        self.fx_file = os.path.join(workdir, f"{lbl}-rabbitmq-export.json")
        self.fx_export_file = os.path.join(workdir, f"{lbl}-rabbitmq-reexport.json")

    def clean(self):
        for vhost in (self.vhost, self.fx_vhost, "radmin-denied"):
            self.api.delete_quietly(f"/vhosts/{q(vhost)}")
        for user in (self.user, self.fx_user):
            self.api.delete_quietly(f"/users/{q(user)}")

    def fixture(self):
        """The RabbitMQ export, with this tool's names for its vhost and user."""
        with open(FIXTURE) as f:
            text = f.read()
        # user first: the vhost's name is a prefix of the user's
        text = text.replace(f'"{FIXTURE_USER}"', json.dumps(self.fx_user))
        text = text.replace(f'"{FIXTURE_VHOST}"', json.dumps(self.fx_vhost))
        return json.loads(text)

    # -- what the lists show

    def matching(self, kind, match):
        """The rows of `list KIND` with the given column values. A vhost among them is also the
        tool's -V for the objects that live in one (v1 ignores it for permissions and
        parameters, listing all)."""
        scope = match.get("vhost") if kind != "vhosts" else None
        rows = self.t.list(kind, vhost=scope)
        return rows, [r for r in rows if all(self.t.cell(r, k) == v for k, v in match.items())]

    def row(self, kind, **match):
        rows, found = self.matching(kind, match)
        expect(found, f"list {kind} shows no row with {match}: {short(rows)}")
        return found[0]

    def absent(self, kind, **match):
        _, found = self.matching(kind, match)
        expect(not found, f"list {kind} still shows {short(found)}")

    def expect_kv(self, value, key, want, what):
        """A dict-valued column (arguments, definition) holds key: want."""
        if isinstance(value, dict):
            expect_eq(value.get(key), want, f"{what}[{key}]")
        else:
            expect(f"{key}: {json.dumps(want)}" in value, f"{what} is {value!r}, no {key}: {want}")

    def expect_objects(self):
        """The queue, exchange, binding and policy that the declare checks made are listed."""
        qrow = self.row("queues", vhost=self.vhost, name=self.queue)
        expect_eq(self.t.cell(qrow, "durable"), "true", "queue durable")
        self.expect_kv(self.t.cell(qrow, "arguments"), "x-max-length", 100, "queue arguments")
        xrow = self.row("exchanges", vhost=self.vhost, name=self.exchange)
        expect_eq(self.t.cell(xrow, "type"), "topic", "exchange type")
        self.row("bindings", vhost=self.vhost, source=self.exchange, destination=self.queue,
                 routing_key=self.binding_key)
        prow = self.row("policies", vhost=self.vhost, name=self.policy)
        expect_eq(self.t.cell(prow, "pattern"), "^radmin-q$", "policy pattern")
        expect_eq(self.t.cell(prow, "priority"), "3", "policy priority")
        expect_eq(self.t.cell(prow, "apply-to"), "queues", "policy apply-to")
        self.expect_kv(self.t.cell(prow, "definition"), "max-length", 100, "policy definition")

    def expect_missing(self, r, *words):
        """A command that must fail: the tool's exit status for it and its message."""
        expect(r.rc != 0, f"expected a failure, got exit 0: {short(r.out)}")
        text = r.out + r.err
        for w in words:
            expect(w in text, f"message has no {w!r}: {r}")

    # -- the checks, in order

    def checks(self):
        t = self.t
        vh = self.vhost

        def show_overview():
            r = t.run("show", "overview").ok()
            expect("3." in r.out, f"no RabbitMQ version in {short(r.out)}")

        def list_vhosts():
            self.row("vhosts", name="/")

        def list_users():
            row = self.row("users", name="guest")
            expect_eq(t.cell(row, "tags"), "administrator", "guest's tags")

        def list_permissions():
            row = self.row("permissions", user="guest", vhost="/")
            for k in ("configure", "write", "read"):
                expect_eq(t.cell(row, k), ".*", f"guest's {k} permission on /")

        def list_queues_exchanges_bindings_policies():
            for kind in ("queues", "exchanges", "bindings", "policies"):
                t.list(kind, vhost="/")

        def declare_vhost():
            t.declare_vhost(vh).ok()
            settled(lambda: self.row("vhosts", name=vh))

        def declare_user():
            t.declare_user(self.user, self.password, "management").ok()
            row = self.row("users", name=self.user)
            expect_eq(t.cell(row, "tags"), "management", "tags")

        def declare_permission():
            t.declare_permission(vh, self.user, "^radmin-", ".*", ".*").ok()
            row = self.row("permissions", user=self.user, vhost=vh)
            got = [t.cell(row, k) for k in ("configure", "write", "read")]
            expect_eq(got, ["^radmin-", ".*", ".*"], "configure, write, read")

        def new_user_logs_in():
            # a management user sees the vhosts it has permissions in, and not the users
            rows = t.list("vhosts", user=self.user, password=self.password)
            expect_eq(sorted(t.cell(r, "name") for r in rows), [vh], "vhosts the user sees")
            r = t.run("list", "users", user=self.user, password=self.password)
            expect(r.rc != 0, f"a management user listed the users: {r}")

        def new_user_configures_within_its_pattern():
            def declare(name):
                return t.run("declare", *(["queue", f"name={name}"] if t.label == "v1"
                                          else ["queue", "--name", name]),
                             user=self.user, password=self.password, vhost=vh)

            declare("radmin-own-q").ok()
            t.delete("queue", "radmin-own-q", vhost=vh).ok()
            r = declare("other-q")
            expect_eq(r.rc, t.missing_rc, f"exit status outside ^radmin- ({r})")
            self.absent("queues", vhost=vh, name="other-q")

        def declare_queue():
            t.declare_queue(vh, self.queue, True, {"x-max-length": 100}).ok()
            row = self.row("queues", vhost=vh, name=self.queue)
            expect_eq(t.cell(row, "durable"), "true", "durable")
            self.expect_kv(t.cell(row, "arguments"), "x-max-length", 100, "arguments")

        def declare_exchange():
            t.declare_exchange(vh, self.exchange, "topic").ok()
            row = self.row("exchanges", vhost=vh, name=self.exchange)
            expect_eq(t.cell(row, "type"), "topic", "type")

        def list_exchanges_of_new_vhost():
            names = {t.cell(r, "name") for r in t.list("exchanges", vhost=vh)}
            expect_eq(sorted(names - {self.exchange}), sorted(DEFAULT_EXCHANGES),
                      "a new vhost's exchanges")

        def declare_binding():
            t.declare_binding(vh, self.exchange, self.queue, self.binding_key).ok()
            self.row("bindings", vhost=vh, source=self.exchange, destination=self.queue,
                     routing_key=self.binding_key, destination_type="queue")
            # every queue is bound to the default exchange with its name
            self.row("bindings", vhost=vh, source="", destination=self.queue,
                     routing_key=self.queue)

        def binding_properties_key():
            # RabbitMQ's properties_key is the routing key percent-encoded ("~" when empty):
            # the name a script hands back to `delete binding properties_key=...`
            row = self.row("bindings", vhost=vh, source=self.exchange, destination=self.queue)
            expect_eq(t.cell(row, "properties_key"), "orders.%23", "properties_key of orders.#")

        def declare_policy():
            t.declare_policy(vh, self.policy, "^radmin-q$", {"max-length": 100}, 3, "queues").ok()
            prow = self.row("policies", vhost=vh, name=self.policy)
            expect_eq(t.cell(prow, "pattern"), "^radmin-q$", "pattern")
            expect_eq(t.cell(prow, "priority"), "3", "priority")
            expect_eq(t.cell(prow, "apply-to"), "queues", "apply-to")
            self.expect_kv(t.cell(prow, "definition"), "max-length", 100, "definition")

        def declare_vhost_limit():
            t.declare_vhost_limit(vh, "max-queues", 100).ok()
            row = self.row("vhost_limits", vhost=vh)
            self.expect_kv(t.cell(row, "value" if t.label == "v1" else "limits"), "max-queues",
                           100, "limits")

        def list_parameters():
            # a vhost's limits are the runtime parameter vhost-limits/limits (as in exports)
            row = self.row("parameters", vhost=vh, component="vhost-limits", name="limits")
            self.expect_kv(t.cell(row, "value"), "max-queues", 100, "value")

        payload = f"hello from rabbitmqadmin {t.label}"
        props = {"content_type": "text/plain", "headers": {"origin": t.label}}

        def publish_routed():
            routed = t.publish(vh, self.exchange, "orders.new", payload, props)
            expect(routed, "the tool says the message was not routed")

        def publish_unroutable():
            routed = t.publish(vh, self.exchange, "invoices.new", "lost", {})
            expect(not routed, "the tool says an unroutable message was routed")

        def get_message():
            msgs = t.get(vh, self.queue, "ack_requeue_false", 5)
            expect_eq(len(msgs), 1, f"messages got ({short(msgs)})")
            m = msgs[0]
            expect_eq(t.cell(m, "payload"), payload, "payload")
            expect_eq(t.cell(m, "routing_key"), "orders.new", "routing_key")
            expect_eq(t.cell(m, "exchange"), self.exchange, "exchange")
            expect_eq(t.cell(m, "message_count"), "0", "message_count")
            expect_eq(t.cell(m, "redelivered"), "false", "redelivered")
            p = t.cell(m, "properties")
            if isinstance(p, dict):
                expect_eq(p.get("content_type"), "text/plain", "content_type")
                expect_eq(p.get("headers"), {"origin": t.label}, "headers")
            else:
                expect('content_type: "text/plain"' in p, f"properties {p!r}")
                expect(f'"origin":"{t.label}"' in p, f"properties {p!r} lack the header")

        def get_from_empty_queue():
            msgs = t.get(vh, self.queue, "ack_requeue_false", 1)
            expect_eq(msgs, [], "messages got from the emptied queue")

        def list_and_close_connection():
            conn_name = f"radmin-{t.label}-probe"
            conn = AmqpConnection(self.amqp_url, vh, conn_name)
            try:
                prefix = f"127.0.0.1:{conn.local_port} -> "

                def listed():
                    rows = [r for r in t.list("connections")
                            if t.cell(r, "name").startswith(prefix)]
                    expect(rows, f"list connections shows no connection named {prefix}...")
                    return rows[0]

                row = settled(listed)
                if t.label == "v1":
                    expect_eq(row.get("user"), "guest", "user")
                    expect_eq(row.get("vhost"), vh, "vhost")
                    expect_eq((row.get("client_properties") or {}).get("connection_name"),
                              conn_name, "client_properties.connection_name")
                else:
                    expect_eq(t.cell(row, "username"), "guest", "username")
                    expect_eq(t.cell(row, "client_port"), str(conn.local_port), "client_port")
                t.close_connection(t.cell(row, "name")).ok()
                code, _text = conn.wait_closed_by_broker(10)
                expect_eq(code, 320, "reply code of the broker's connection.close")
                settled(lambda: expect(
                    not [r for r in t.list("connections")
                         if t.cell(r, "name").startswith(prefix)],
                    "the closed connection is still listed"))
            finally:
                conn.sock.close()

        def export_definitions():
            t.export(self.export_file).ok()
            with open(self.export_file) as f:
                d = json.load(f)
            # What the import check puts back, written first so that it can run even if a
            # check below fails: this vhost and user only, never anyone else's.
            users = [u for u in d.get("users", []) if u.get("name") == self.user]
            mine = {k: v for k, v in d.items() if not isinstance(v, list)}
            mine["vhosts"] = [v for v in d.get("vhosts", []) if v.get("name") == vh]
            mine["users"] = users
            mine["permissions"] = [p for p in d.get("permissions", []) if p.get("vhost") == vh]
            for k in ("topic_permissions", "queues", "exchanges", "bindings", "policies",
                      "parameters"):
                mine[k] = [x for x in d.get(k, []) if x.get("vhost") == vh]
            with open(self.import_file, "w") as f:
                json.dump(mine, f)
            expect(mine["vhosts"], "vhost not exported")
            expect(users and users[0].get("password_hash"), "user (with hash) not exported")
            expect_eq(users[0].get("tags"), ["management"], "exported user's tags")
            perms = [p for p in mine["permissions"] if p.get("user") == self.user]
            expect(perms and perms[0].get("configure") == "^radmin-", "permission not exported")
            self.expect_exported(d, vh)

        def export_vhost_definitions():
            t.export(self.vhost_export_file, vhost=vh).ok()
            with open(self.vhost_export_file) as f:
                d = json.load(f)
            self.expect_exported(d, None)
            expect("users" not in d or d["users"] == [], "a vhost's export lists users")

        def delete_binding():
            t.delete_binding(vh, self.exchange, self.queue, self.binding_key).ok()
            self.absent("bindings", vhost=vh, source=self.exchange, destination=self.queue)

        def delete_queue():
            t.delete("queue", self.queue, vhost=vh).ok()
            self.absent("queues", vhost=vh, name=self.queue)

        def delete_exchange():
            t.delete("exchange", self.exchange, vhost=vh).ok()
            self.absent("exchanges", vhost=vh, name=self.exchange)

        def import_vhost_definitions():
            t.delete("policy", self.policy, vhost=vh).ok()
            self.absent("policies", vhost=vh, name=self.policy)
            t.import_(self.vhost_export_file, vhost=vh).ok()
            settled(self.expect_objects)

        def delete_user():
            t.delete("user", self.user).ok()
            self.absent("users", name=self.user)
            self.absent("permissions", user=self.user)

        def delete_vhost():
            t.delete("vhost", vh).ok()
            self.absent("vhosts", name=vh)

        def import_definitions():
            t.import_(self.import_file).ok()
            settled(lambda: self.row("vhosts", name=vh))
            settled(self.expect_objects)
            row = self.row("users", name=self.user)
            expect_eq(t.cell(row, "tags"), "management", "imported user's tags")
            prow = self.row("permissions", user=self.user, vhost=vh)
            expect_eq(t.cell(prow, "configure"), "^radmin-", "imported configure permission")
            # the exported hash still verifies the password
            rows = t.list("vhosts", user=self.user, password=self.password)
            expect_eq([t.cell(r, "name") for r in rows], [vh], "vhosts the imported user sees")

        # -- failing commands: the exit status and what the tool says

        def fails_delete_missing_queue():
            r = t.delete("queue", "radmin-no-such-queue", vhost=vh)
            expect_eq(r.rc, t.missing_rc, f"exit status ({r})")
            self.expect_missing(r, "Not found" if t.label == "v1" else "404 Not Found")
            if t.label == "v2":
                r = t.run("delete", "queue", "--name", "radmin-no-such-queue", "--idempotently",
                          vhost=vh)
                expect_eq(r.rc, 0, f"exit status with --idempotently ({r})")

        def fails_delete_missing_vhost_user_exchange():
            for r in (t.delete("vhost", "radmin-no-such-vhost"),
                      t.delete("user", "radmin-no-such-user"),
                      t.delete("exchange", "radmin-no-such-exchange", vhost=vh)):
                expect_eq(r.rc, t.missing_rc, f"exit status ({r})")

        def fails_get_from_missing_queue():
            r = t.run(*(["get", "queue=radmin-no-such-queue"] if t.label == "v1"
                        else ["get", "messages", "--queue", "radmin-no-such-queue"]), vhost=vh)
            expect_eq(r.rc, t.missing_rc, f"exit status ({r})")

        def fails_list_in_missing_vhost():
            r = t.run("list", "queues", vhost="radmin-no-such-vhost")
            expect_eq(r.rc, t.missing_rc, f"exit status ({r})")

        def fails_wrong_password():
            r = t.run("list", "vhosts", password="not-the-password")
            expect_eq(r.rc, t.missing_rc, f"exit status ({r})")
            self.expect_missing(r, "Access refused" if t.label == "v1" else "Login failed")

        def fails_inequivalent_queue():
            r = t.declare_queue(vh, self.queue, False, {"x-max-length": 100})
            expect_eq(r.rc, t.missing_rc, f"exit status ({r})")
            self.expect_missing(r, "inequivalent arg 'durable'")

        def fails_inequivalent_exchange():
            r = t.declare_exchange(vh, self.exchange, "direct")
            expect_eq(r.rc, t.missing_rc, f"exit status ({r})")
            self.expect_missing(r, "inequivalent arg 'type'")

        def fails_permission_for_missing_user():
            r = t.declare_permission(vh, "radmin-no-such-user", ".*", ".*", ".*")
            expect_eq(r.rc, t.missing_rc, f"exit status ({r})")
            self.expect_missing(r, "vhost_or_user_not_found")

        def fails_non_admin_declares_vhost():
            args = (["declare", "vhost", "name=radmin-denied"] if t.label == "v1"
                    else ["declare", "vhost", "--name", "radmin-denied"])
            r = t.run(*args, user=self.user, password=self.password)
            expect_eq(r.rc, t.missing_rc, f"exit status ({r})")
            self.absent("vhosts", name="radmin-denied")

        def import_rabbitmq_export():
            fx = self.fixture()
            with open(self.fx_file, "w") as f:
                json.dump(fx, f)
            t.import_(self.fx_file).ok()
            fvh = self.fx_vhost
            settled(lambda: self.row("vhosts", name=fvh))
            row = self.row("users", name=self.fx_user)
            expect_eq(t.cell(row, "tags"), "monitoring", "imported user's tags")
            prow = self.row("permissions", user=self.fx_user, vhost=fvh)
            got = [t.cell(prow, k) for k in ("configure", "write", "read")]
            expect_eq(got, ["^fx\\.", "^fx\\.", ".*"], "configure, write, read")
            qrow = settled(lambda: self.row("queues", vhost=fvh, name="fx.orders"))
            self.expect_kv(t.cell(qrow, "arguments"), "x-message-ttl", 60000, "queue arguments")
            for name, kind in (("fx.events", "topic"), ("fx.fanout", "fanout")):
                expect_eq(t.cell(self.row("exchanges", vhost=fvh, name=name), "type"), kind,
                          f"type of {name}")
            self.row("bindings", vhost=fvh, source="fx.events", destination="fx.orders",
                     routing_key="order.*", destination_type="queue")
            self.row("bindings", vhost=fvh, source="fx.events", destination="fx.fanout",
                     routing_key="#", destination_type="exchange")
            self.row("policies", vhost=fvh, name="fx-limit")
            # RabbitMQ's password hash verifies the password
            r = t.run("show", "overview", user=self.fx_user, password=FIXTURE_PASSWORD)
            expect_eq(r.rc, 0, f"the imported user's login ({r})")

        def reexport_matches_rabbitmq_export():
            # everything the RabbitMQ export holds for the vhost comes back out of an export
            t.export(self.fx_export_file).ok()
            with open(self.fx_export_file) as f:
                d = json.load(f)
            fx = self.fixture()
            for k in ("users", "vhosts", "permissions", "topic_permissions", "parameters",
                      "policies", "queues", "exchanges", "bindings"):
                got = d.get(k, [])
                # the user's password hash included: it is kept as it was imported
                for want in fx[k]:
                    if not any(all(g.get(x) == v for x, v in want.items()) for g in got):
                        ours = [g for g in got
                                if self.fx_vhost in json.dumps(g) or self.fx_user in json.dumps(g)]
                        raise CheckFailed(f"{k}: no {json.dumps(want)} in the export, which has "
                                          f"{short(json.dumps(ours))}")
            t.delete("vhost", self.fx_vhost).ok()
            t.delete("user", self.fx_user).ok()

        def cleanup():
            t.delete("vhost", vh).ok()
            t.delete("user", self.user).ok()
            self.absent("vhosts", name=vh)
            self.absent("users", name=self.user)

        steps = [
            show_overview,
            list_vhosts,
            list_users,
            list_permissions,
            list_queues_exchanges_bindings_policies,
            declare_vhost,
            declare_user,
            declare_permission,
            new_user_logs_in,
            new_user_configures_within_its_pattern,
            declare_queue,
            declare_exchange,
            declare_binding,
            declare_policy,
            declare_vhost_limit,
            list_parameters,
            publish_routed,
            publish_unroutable,
            get_message,
            get_from_empty_queue,
            list_and_close_connection,
            export_definitions,
            export_vhost_definitions,
            delete_binding,
            delete_queue,
            delete_exchange,
            import_vhost_definitions,
            fails_delete_missing_queue,
            fails_delete_missing_vhost_user_exchange,
            fails_get_from_missing_queue,
            fails_list_in_missing_vhost,
            fails_wrong_password,
            fails_inequivalent_queue,
            fails_inequivalent_exchange,
            fails_permission_for_missing_user,
            fails_non_admin_declares_vhost,
            delete_user,
            delete_vhost,
            import_definitions,
            import_rabbitmq_export,
            reexport_matches_rabbitmq_export,
            cleanup,
        ]
        # What only one tool needs to show, the broker's answer being the same for both.
        if t.label == "v1":
            steps.insert(steps.index(declare_binding), list_exchanges_of_new_vhost)
            steps.insert(steps.index(declare_binding) + 1, binding_properties_key)
        return steps

    def expect_exported(self, d, vhost):
        """The queue, exchange, binding and policy in an export (whole broker: of vhost)."""
        def mine(k):
            return [x for x in d.get(k, []) if vhost is None or x.get("vhost") == vhost]

        qs = [x for x in mine("queues") if x.get("name") == self.queue]
        expect(qs, "queue not exported")
        expect_eq(qs[0].get("durable"), True, "exported queue's durable")
        expect_eq(qs[0].get("arguments"), {"x-max-length": 100, **self.t.queue_args_added},
                  "exported queue's arguments")
        xs = [x for x in mine("exchanges") if x.get("name") == self.exchange]
        expect(xs and xs[0].get("type") == "topic", "topic exchange not exported")
        bs = [b for b in mine("bindings")
              if (b.get("source"), b.get("destination"), b.get("routing_key"))
              == (self.exchange, self.queue, self.binding_key)]
        expect(bs and bs[0].get("destination_type") == "queue", "binding not exported")
        ps = [p for p in mine("policies") if p.get("name") == self.policy]
        expect(ps, "policy not exported")
        expect_eq(ps[0].get("definition"), {"max-length": 100}, "exported policy's definition")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True, help="management base URL, e.g. http://127.0.0.1:15672")
    ap.add_argument("--amqp", required=True, help="AMQP URL of the same broker")
    ap.add_argument("--v1", help="rabbitmqadmin v1 (the python script)")
    ap.add_argument("--v2", help="rabbitmqadmin v2 (the binary)")
    ap.add_argument("--setup-failure", action="append", default=[], metavar="NAME:REASON",
                    help="a tool that could not be set up: counted as a failed check")
    args = ap.parse_args()

    api = Api(args.api)
    passed = failed = 0
    for f in args.setup_failure:
        print(f"FAIL {f}", flush=True)
        failed += 1
    # The management listener may come up a moment after the AMQP port that run-all.sh waits for.
    deadline = time.monotonic() + 15
    while True:
        try:
            status, _ = api.request("GET", "/overview")
        except OSError as e:
            status = repr(e)
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    if status != 200:
        print(f"FAIL management_api: GET {api.base}/overview as guest: {status}", flush=True)
        print(f"{passed} passed, {failed + 1} failed", flush=True)
        return 1
    workdir = tempfile.mkdtemp(prefix="radmin-checks.")
    tools = []
    if args.v1:
        tools.append(V1(args.v1, args.api, workdir))
    if args.v2:
        tools.append(V2(args.v2, args.api, workdir))

    for tool in tools:
        story = Story(tool, api, args.amqp, workdir)
        story.clean()
        try:
            for fn in story.checks():
                name = f"{tool.label}_{fn.__name__}"
                started = time.monotonic()
                try:
                    fn()
                    print(f"ok {name}", flush=True)
                    passed += 1
                except Exception as e:  # a check's failure must not stop the run
                    reason = str(e) if isinstance(e, AssertionError) else repr(e)
                    print(f"FAIL {name}: {short(reason, 600)}", flush=True)
                    if not isinstance(e, AssertionError):
                        traceback.print_exc(file=sys.stderr)
                    failed += 1
                elapsed = time.monotonic() - started
                if elapsed > 5:
                    print(f"   ({name} took {elapsed:.1f} s)", flush=True)
        finally:
            story.clean()
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
