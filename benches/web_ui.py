#!/usr/bin/env python3
"""Times the management UI's pages in headless Chromium with many queues, against Warren or RabbitMQ.

    python benches/web_ui.py --url http://127.0.0.1:15672 --kind warren [--queues 10000]
    python benches/web_ui.py --url http://127.0.0.1:15682 --kind rabbitmq

Needs selenium (the interop/web-ui suite installs it into the pika venv:
~/.cache/warren-interop/pika-venv/bin/python) and Debian's chromium and chromium-driver.

Imports N durable queues into a vhost of their own ("ui-bench") through the API, logs in through
the UI's own form, then times, from the navigation until the page shows what it is for (polled
every 20 ms), each page opened in full (the page reloaded, as a user who opens a link does):
  - overview_ms: the Overview with its totals,
  - queues_ms: the Queues list with its first page of 100 rows (for Warren also queues_drawn_ms,
    the same in the page's own clock, from its navigation to the list drawn, of the last round),
  - queue_ms: the page of the queue in the middle, with its figures,
  - filter_ms (Warren): typing a name into the Queues filter until the matching rows show (11
    of 10,000; includes the filter's 250 ms wait for the user to stop typing).
Each is repeated (--rounds) and the median reported. Prints one JSON line, then deletes the vhost.
"""

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

VHOST = "ui-bench"

# What each page shows once it is ready, as a JavaScript expression, per broker.
READY = {
    "warren": {
        "overview": "document.querySelector('#total-queues') && document.querySelector('#total-queues').textContent !== ''",
        "queues": "document.querySelectorAll('table[data-list=queues] tbody tr[data-name]').length >= 100",
        "queue": "document.querySelector('#queue-messages') && document.querySelector('#queue-messages').textContent !== ''",
    },
    "rabbitmq": {
        "overview": "document.querySelector('#main h1') && document.querySelector('#main h1').textContent.includes('Overview') && document.querySelectorAll('#main table').length > 0",
        "queues": "document.querySelectorAll('#main table.list tbody tr').length >= 100",
        "queue": "document.querySelector('#main h1') && document.querySelector('#main h1').textContent.includes('bench.q.MIDDLE') && document.querySelectorAll('#main table').length > 0",
    },
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:15672")
    ap.add_argument("--kind", choices=["warren", "rabbitmq"], default="warren")
    ap.add_argument("--user", default="guest")
    ap.add_argument("--password", default="guest")
    ap.add_argument("--queues", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    auth = "Basic " + base64.b64encode(f"{args.user}:{args.password}".encode()).decode()

    def call(method, path, body=None):
        req = urllib.request.Request(args.url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode())
        req.add_header("Authorization", auth)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=600) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    call("DELETE", f"/api/vhosts/{VHOST}")
    call("PUT", f"/api/vhosts/{VHOST}", {})
    call("PUT", f"/api/permissions/{VHOST}/{args.user}", {"configure": ".*", "write": ".*", "read": ".*"})
    defs = {"queues": [{"name": f"bench.q.{i}", "vhost": VHOST, "durable": True, "auto_delete": False,
                        "arguments": {}} for i in range(args.queues)]}
    print(f"importing {args.queues} queues...", file=sys.stderr)
    status, body = call("POST", "/api/definitions", defs)
    if status not in (201, 204):
        sys.exit(f"import failed: {status} {body[:200]!r}")
    deadline = time.time() + 600
    while True:
        status, body = call("GET", f"/api/queues/{VHOST}?page=1&page_size=1&columns=name")
        if status == 200 and json.loads(body).get("filtered_count", 0) >= args.queues:
            break
        if time.time() > deadline:
            sys.exit("the queues never all showed up")
        time.sleep(0.5)

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1366,900",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='web-ui-bench.')}"):
        options.add_argument(flag)
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    ready = READY[args.kind]
    try:
        driver.get(args.url + "/")
        wait = WebDriverWait(driver, 120, poll_frequency=0.02)
        if args.kind == "warren":
            wait.until(lambda d: d.find_element(By.ID, "login-username").is_displayed())
            driver.find_element(By.ID, "login-username").send_keys(args.user)
            driver.find_element(By.ID, "login-password").send_keys(args.password)
            driver.find_element(By.ID, "login-submit").click()
        else:
            wait.until(lambda d: d.find_elements(By.NAME, "username"))
            driver.find_element(By.NAME, "username").send_keys(args.user)
            driver.find_element(By.NAME, "password").send_keys(args.password)
            driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        wait.until(lambda d: d.execute_script("return !!(" + ready["overview"] + ")"))

        def timed(fragment, condition):
            times = []
            for _ in range(args.rounds):
                driver.get("about:blank")
                started = time.perf_counter()
                driver.get(args.url + "/#" + fragment)
                wait.until(lambda d: d.execute_script("return !!(" + condition + ")"))
                times.append(time.perf_counter() - started)
            return round(statistics.median(times) * 1000)

        results = {"broker": args.kind, "queues": args.queues}
        results["overview_ms"] = timed("/", ready["overview"])
        results["queues_ms"] = timed("/queues", ready["queues"])
        if args.kind == "warren":
            # The page's own clock: navigation start to the list drawn (no WebDriver polling).
            results["queues_drawn_ms"] = round(driver.execute_script(
                "return performance.getEntriesByName('warren:list:queues')[0].startTime"))
        middle = str(args.queues // 2)
        results["queue_ms"] = timed(f"/queues/{VHOST}/bench.q.{middle}", ready["queue"].replace("MIDDLE", middle))
        if args.kind == "warren":
            # A name that a handful of queues contain: bench.q.999 and bench.q.9990-9999 of 10,000.
            needle = f"bench.q.{args.queues // 10 - 1}"
            matches = sum(1 for i in range(args.queues) if needle in f"bench.q.{i}")
            times = []
            for _ in range(args.rounds):
                driver.get("about:blank")
                driver.get(args.url + "/#/queues")
                wait.until(lambda d: d.execute_script("return !!(" + ready["queues"] + ")"))
                box = driver.find_element(By.CSS_SELECTOR, "section[data-list-section=queues] input.filter")
                started = time.perf_counter()
                box.send_keys(needle)
                wait.until(lambda d: d.execute_script(
                    "const r = document.querySelectorAll('table[data-list=queues] tbody tr[data-name]');"
                    f"return r.length === {matches} && [...r].every((t) => t.dataset.name.includes('{needle}'));"))
                times.append(time.perf_counter() - started)
            results["filter_ms"] = round(statistics.median(times) * 1000)
        print(json.dumps(results))
    finally:
        driver.quit()
        call("DELETE", f"/api/vhosts/{VHOST}")


if __name__ == "__main__":
    main()
