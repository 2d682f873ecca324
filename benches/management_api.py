#!/usr/bin/env python3
"""Times the management API with many queues and bindings, against Warren or RabbitMQ.

    python3 benches/management_api.py --url http://127.0.0.1:15672 [--queues 10000]

Imports a definitions file of N durable queues, each bound to one topic exchange, into a vhost
of its own ("api-bench"), then times, as a client on loopback sees them (to the last byte):
  - the import itself (POST /api/definitions),
  - GET /api/queues with columns=name,messages, in full, and one page of 100,
  - GET /api/bindings and GET /api/definitions,
  - with --metrics-url, a Prometheus scrape of /metrics and of /metrics/per-object.
Each GET is repeated (--rounds) and the median is reported. Prints one JSON line, then deletes
the vhost. Standard library only, so it runs wherever python3 does.
"""

import argparse
import base64
import json
import statistics
import sys
import time
import urllib.error
import urllib.request

VHOST = "api-bench"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:15672")
    ap.add_argument("--user", default="guest")
    ap.add_argument("--password", default="guest")
    ap.add_argument("--queues", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--metrics-url", help="the Prometheus endpoint, e.g. http://127.0.0.1:15692")
    args = ap.parse_args()
    auth = "Basic " + base64.b64encode(f"{args.user}:{args.password}".encode()).decode()

    def call(method, path, body=None, timeout=600, base=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request((base or args.url) + path, data=data, method=method)
        req.add_header("Authorization", auth)
        req.add_header("Content-Type", "application/json")
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                payload = r.read()
                status = r.status
        except urllib.error.HTTPError as e:
            payload = e.read()
            status = e.code
        return status, payload, time.perf_counter() - started

    call("DELETE", f"/api/vhosts/{VHOST}")
    status, _, _ = call("PUT", f"/api/vhosts/{VHOST}", {})
    if status not in (201, 204):
        sys.exit(f"cannot create vhost {VHOST}: {status}")
    n = args.queues
    defs = {
        "exchanges": [{"name": "bench.x", "vhost": VHOST, "type": "topic", "durable": True,
                       "auto_delete": False, "internal": False, "arguments": {}}],
        "queues": [{"name": f"bench.q.{i}", "vhost": VHOST, "durable": True, "auto_delete": False,
                    "arguments": {"x-message-ttl": 60000}} for i in range(n)],
        "bindings": [{"source": "bench.x", "vhost": VHOST, "destination": f"bench.q.{i}",
                      "destination_type": "queue", "routing_key": f"k.{i}.#", "arguments": {}}
                     for i in range(n)],
    }
    print(f"importing {n} queues and {n} bindings...", file=sys.stderr)
    status, body, import_s = call("POST", "/api/definitions", defs)
    if status not in (201, 204):
        sys.exit(f"import failed: {status} {body[:200]!r}")
    # RabbitMQ answers the import before every queue is listed: wait until all are.
    deadline = time.time() + 600
    while True:
        status, body, _ = call("GET", f"/api/queues/{VHOST}?page=1&page_size=1&columns=name")
        if status == 200 and json.loads(body).get("filtered_count", 0) >= n:
            break
        if time.time() > deadline:
            sys.exit("the queues never all showed up")
        time.sleep(0.5)

    def median(path, base=None):
        times, size = [], 0
        for _ in range(args.rounds):
            status, body, took = call("GET", path, base=base)
            if status != 200:
                sys.exit(f"GET {path}: {status}")
            times.append(took)
            size = len(body)
        return round(statistics.median(times) * 1000, 1), size

    results = {"queues": n, "import_s": round(import_s, 2)}
    for label, path in [
        ("queues_columns_ms", "/api/queues?columns=name,messages"),
        ("queues_full_ms", "/api/queues"),
        ("queues_page_100_ms", "/api/queues?page=1&page_size=100"),
        ("bindings_ms", "/api/bindings"),
        ("definitions_ms", "/api/definitions"),
    ]:
        ms, size = median(path)
        results[label] = ms
        results[label.replace("_ms", "_bytes")] = size
    if args.metrics_url:
        for label, path in [("metrics_ms", "/metrics"), ("metrics_per_object_ms", "/metrics/per-object")]:
            ms, size = median(path, base=args.metrics_url)
            results[label] = ms
            results[label.replace("_ms", "_bytes")] = size
    print(json.dumps(results))
    call("DELETE", f"/api/vhosts/{VHOST}")


if __name__ == "__main__":
    main()
