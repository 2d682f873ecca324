#!/usr/bin/env python3
"""Web UI checks: Warren's management UI, driven in headless Chromium with Selenium.

Usage: test_web_ui.py AMQP_URL MANAGEMENT_URL SCREENSHOT_DIR

Loads MANAGEMENT_URL/ in a fresh Chromium profile (1366x900, a laptop screen) and works the UI
through the DOM it promises: login (refused, then as guest), the Overview page, a queue pika
declared and filled (found in the filtered queue list, then its own page), publish and get from
that page, purge, a user added with permissions and logged in as, a definitions file imported,
a queue deleted. What the UI changed is checked from the other side too, with pika or the
management HTTP API. Then the UI's error states: a management-only user sees no Admin tab, is
told "Permission refused" on the admin pages and gets a note instead of node figures on the
Overview; and with a Warren of the check's own (WARREN_BIN, or target/release/warren, on free
loopback ports and a temp data dir) stopped under the open queue list, the UI says it cannot
reach the broker, keeps the page, and recovers once that Warren is started again. The UI
refreshes every 5 seconds, so every wait is an explicit one of up to 15 seconds. Names carry a
per-run id, and what the checks created is deleted at the end, so reruns against the same
broker do not collide. Screenshots: overview.png, queue.png, broker-down.png, and
fail-CHECK.png for a failed check. Every check prints "ok NAME" or "FAIL NAME: REASON"; the last
line is "N passed, N failed".
"""

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pika
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

AMQP_URL = ""
UI_URL = ""  # the management listener, no trailing slash
SHOTS = ""
RUN = uuid.uuid4().hex[:8]
CHECKS = []
WAIT = 15  # seconds anything in the UI may take to show (the UI refreshes every 5 s)
HTTP_TIMEOUT = 10

QUEUE = f"webui-{RUN}"
PAYLOAD = f"hello from the UI {RUN}"
USER = f"ui-user-{RUN}"
USER_PASSWORD = f"ui-pass-{RUN}"
IMPORTED_QUEUE = f"webui-imported-{RUN}"
IMPORTED_EXCHANGE = f"webui-ex-{RUN}"
MGMT_USER = f"ui-mgmt-{RUN}"
MGMT_PASSWORD = f"ui-mgmt-pass-{RUN}"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

driver = None


def check(fn):
    CHECKS.append(fn)
    return fn


# --- the browser -------------------------------------------------------------------------------


def start_browser():
    profile = tempfile.mkdtemp(prefix="warren-web-ui-chromium.")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1366,900",
    ):
        options.add_argument(arg)
    # The page's console, shown on stderr when a check fails.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    d.set_page_load_timeout(30)
    return d, profile


def wait_for(what, fn, timeout=WAIT):
    """fn() until it returns something true, for up to `timeout` seconds; fails with `what` and
    the last value fn returned. Elements not there yet or replaced by a refresh are waited out."""
    last = [None]

    def attempt(_):
        last[0] = fn()
        return last[0]

    try:
        return WebDriverWait(
            driver,
            timeout,
            poll_frequency=0.2,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        ).until(attempt)
    except TimeoutException:
        raise AssertionError(f"{what} within {timeout} s (last: {last[0]!r})") from None


def find(css, within=None):
    return (within or driver).find_element(By.CSS_SELECTOR, css)


def find_all(css, within=None):
    return (within or driver).find_elements(By.CSS_SELECTOR, css)


def present(css):
    """The element if it is in the DOM now, else None."""
    found = find_all(css)
    return found[0] if found else None


def displayed(css):
    e = present(css)
    try:
        return e is not None and e.is_displayed()
    except StaleElementReferenceException:
        return False


def text_of(css):
    """The element's text, or None while it is missing or being replaced."""
    e = present(css)
    try:
        return None if e is None else e.text.strip()
    except StaleElementReferenceException:
        return None


def page():
    """#main's data-page."""
    e = present("main#main")
    return None if e is None else e.get_attribute("data-page")


def wait_page(name):
    wait_for(f'<main id="main" data-page="{name}">', lambda: page() == name)


def go(hash_, page_name, nav=True):
    """Goes to `hash_` (through the nav link with that href when `nav`, as a user would) and
    waits for #main to hold the page `page_name`."""
    if nav:
        link = present(f'nav a[href="{hash_}"]')
        assert link is not None, f'no nav a[href="{hash_}"]'
        wait_for(f'a click on nav a[href="{hash_}"]', lambda: find(f'nav a[href="{hash_}"]').click() or True)
    else:
        driver.execute_script("window.location.hash = arguments[0]", hash_)
    wait_page(page_name)


def click(css, what=None):
    """Clicks the element, finding it again if a refresh replaced it."""
    wait_for(f"a click on {what or css}", lambda: find(css).click() or True)


def accept_confirm(what):
    """Accepts the window.confirm() that `what` opened."""
    try:
        alert = WebDriverWait(driver, WAIT).until(EC.alert_is_present())
    except TimeoutException:
        raise AssertionError(f"{what}: no confirm() dialog within {WAIT} s") from None
    alert.accept()


def fill(form, name, value):
    """Sets the form's field [name=NAME]: types into an input, picks from a select (waiting for
    the option to be there, as a select filled from the API may lag)."""
    css = f"{form} [name={name}]"
    field = wait_for(f"the field {css}", lambda: find(css))
    if field.tag_name.lower() == "select":

        def pick():
            select = Select(find(css))
            for option in select.options:
                if option.get_attribute("value") == value:
                    select.select_by_value(value)
                    return True
                if option.text.strip() == value:
                    select.select_by_visible_text(option.text)
                    return True
            return False

        wait_for(f"an option {value!r} in the select {css}", pick)
    else:
        type_into(css, value)


def type_into(css, value):
    """Replaces what the input holds with `value`, finding it again if a refresh replaced it."""

    def typed():
        field = find(css)
        field.clear()
        field.send_keys(str(value))
        return True

    wait_for(f"typing into {css}", typed)


def submit(form):
    """Submits the form with its submit button."""
    buttons = find_all(f"{form} button[type=submit], {form} input[type=submit]")
    if not buttons:
        buttons = [b for b in find_all(f"{form} button") if (b.get_attribute("type") or "submit") == "submit"]
    assert buttons, f"{form} has no submit button"
    buttons[0].click()


def form_result(form, want=None):
    """The text of the form's .result once it shows one; fails if it is marked .error or, with
    `want`, does not contain it."""
    css = f"{form} .result"
    text = wait_for(f"an outcome in {css}", lambda: text_of(css))
    classes = (find(css).get_attribute("class") or "").split()
    assert "error" not in classes, f"{css} is an error: {text!r}"
    if want is not None:
        assert want in text, f"{css} says {text!r}, not {want!r}"
    return text


def screenshot(name):
    path = os.path.join(SHOTS, name)
    driver.save_screenshot(path)
    return path


def home():
    """Loads the UI afresh."""
    driver.get(UI_URL + "/")


def logged_in_as():
    """The name in #user while the app shows, else None."""
    if not displayed("#app"):
        return None
    return text_of("#user")


def log_in(user, password):
    """Logs in through the login form (logging out first if someone else is in) and waits for
    #user to show the name."""
    current = logged_in_as()
    if current == user:
        return
    if current is not None:
        log_out()
    wait_for("the login form (#login-username shown)", lambda: displayed("#login-username"))
    type_into("#login-username", user)
    type_into("#login-password", password)
    click("#login-submit")
    try:
        wait_for(f"#app shown with #user {user!r}", lambda: logged_in_as() == user)
    except AssertionError as e:
        error = text_of("#login-error") if displayed("#login-error") else None
        raise AssertionError(f"{e}; #login-error says {error!r}" if error else str(e)) from None


def log_out():
    click("#logout")
    wait_for("the login form after #logout", lambda: displayed("#login-username") and not displayed("#app"))


def as_guest():
    """Makes sure the UI is logged in as guest, saying why not if it cannot be."""
    try:
        if logged_in_as() != "guest":
            if present("#login-username") is None and present("#app") is None:
                home()
            log_in("guest", "guest")
    except AssertionError as e:
        raise AssertionError(f"not logged in: logging in as guest failed ({e})") from None


def row_css(list_name, name, vhost="/"):
    return f'table[data-list="{list_name}"] tr[data-name="{name}"][data-vhost="{vhost}"]'


def queue_hash(name, vhost="/"):
    return f"#/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(name, safe='')}"


def open_queue_page(name):
    """The queue's page, by its hash, once #queue-messages shows a figure."""
    here = driver.execute_script("return window.location.hash")
    if page() != "queue" or here != queue_hash(name):
        go(queue_hash(name), "queue", nav=False)
    wait_for("#queue-messages showing a figure", lambda: re.fullmatch(r"[\d,]+", text_of("#queue-messages") or ""))


def figure(css):
    """An integer shown in the element, or None."""
    t = (text_of(css) or "").replace(",", "")
    return int(t) if t.isdigit() else None


# --- the other side: pika and the HTTP API -----------------------------------------------------


def amqp():
    return pika.BlockingConnection(pika.URLParameters(AMQP_URL))


def queue_depth(name):
    """message_count of a passive declare, or None if the queue is not there."""
    conn = amqp()
    try:
        ch = conn.channel()
        try:
            return ch.queue_declare(name, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code == 404:
                return None
            raise
    finally:
        if conn.is_open:
            conn.close()


queue_filled = False


def fill_queue():
    """Declares QUEUE (durable) and publishes 3 persistent messages to it, once."""
    global queue_filled
    if queue_filled:
        return
    conn = amqp()
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(QUEUE, durable=True)
        for i in range(3):
            ch.basic_publish(
                "", QUEUE, f"from pika {i} {RUN}".encode(), pika.BasicProperties(delivery_mode=2)
            )
    finally:
        conn.close()
    queue_filled = True


def http(method, path, body=None, base=None):
    """(status, decoded JSON or text) of a request to the management API as guest (the shared
    broker's, or the one at `base`)."""
    req = urllib.request.Request((base or UI_URL) + path, method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, data=data, timeout=HTTP_TIMEOUT) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def q(s):
    return urllib.parse.quote(s, safe="")


# --- a Warren of our own, to stop under the UI ---------------------------------------------------


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class OwnWarren:
    """A Warren on free loopback ports and a temp data dir, started and stopped by the check
    (the shared broker is not ours to stop). Its log is kept in the temp dir and quoted when it
    fails to start or stop."""

    def __init__(self):
        self.binary = os.environ.get("WARREN_BIN") or os.path.join(ROOT, "target", "release", "warren")
        self.dir = tempfile.mkdtemp(prefix=f"warren-web-ui-down-{RUN}.")
        self.data_dir = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "warren.log")
        self.port, self.management_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.management_port}"
        self.proc = None

    def log_tail(self):
        try:
            with open(self.log, errors="replace") as f:
                return " | ".join(line.strip() for line in f.readlines()[-5:])
        except OSError:
            return ""

    def accepting(self):
        try:
            socket.create_connection(("127.0.0.1", self.management_port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def start(self, timeout=30):
        assert os.access(self.binary, os.X_OK), f"no Warren binary at {self.binary} (WARREN_BIN)"
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary, "serve",
                    "--listen", f"127.0.0.1:{self.port}",
                    "--management-listen", f"127.0.0.1:{self.management_port}",
                    "--prometheus-listen", "127.0.0.1:0",
                    "--data-dir", self.data_dir,
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while not self.accepting():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"our Warren exited with status {self.proc.returncode} before "
                    f"127.0.0.1:{self.management_port} accepted (log: {self.log_tail()})"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"our Warren's 127.0.0.1:{self.management_port} did not accept within {timeout} s "
                    f"(log: {self.log_tail()})"
                )
            time.sleep(0.1)

    def stop(self, timeout=15):
        """SIGTERM and the exit status (None if it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def remove(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- the checks --------------------------------------------------------------------------------


def back_to_guest():
    """Logs out whoever a check logged in as and logs in as guest again, for the checks after it;
    if that fails, they say so."""
    try:
        if logged_in_as() not in (None, "guest"):
            log_out()
        as_guest()
    except AssertionError:
        pass


@check
def login_refused():
    home()
    wait_for("the login form (#login-username shown)", lambda: displayed("#login-username"))
    type_into("#login-username", "guest")
    type_into("#login-password", f"not-the-password-{RUN}")
    click("#login-submit")
    error = wait_for("text in #login-error", lambda: displayed("#login-error") and text_of("#login-error"))
    assert displayed("form#login"), "form#login is no longer shown after a refused login"
    assert not displayed("#app"), f"#app is shown after a refused login ({error!r})"


@check
def login():
    if present("#login-username") is None and present("#app") is None:
        home()
    log_in("guest", "guest")
    assert not displayed("form#login"), "form#login is still shown once logged in"
    assert text_of("#user") == "guest", f"#user shows {text_of('#user')!r}"


@check
def overview():
    as_guest()
    go("#/", "overview")
    wait_for("#totals", lambda: present("#totals"))
    wait_for("a chart in #chart-queued svg", lambda: present("#chart-queued svg"))
    wait_for("a chart in #chart-rates svg", lambda: present("#chart-rates svg"))
    memory = re.compile(r"\d[\d.,]*\s?(B|bytes|[kKMGT]i?B)\b")
    wait_for("a memory figure (like '58 MiB') in #node", lambda: memory.search(text_of("#node") or ""))
    port = str(urllib.parse.urlparse(AMQP_URL).port or 5672)
    wait_for(
        f"the AMQP port {port} in #listeners",
        lambda: re.search(rf"\b{port}\b", text_of("#listeners") or "") and text_of("#listeners"),
    )
    screenshot("overview.png")


@check
def queue_appears():
    as_guest()
    fill_queue()
    go("#/queues", "queues")
    filter_css = 'section[data-list-section="queues"] input.filter'
    type_into(filter_css, QUEUE)
    cell = row_css("queues", QUEUE) + ' td[data-col="messages"]'
    wait_for(f"{cell} to say 3", lambda: text_of(cell) == "3")


@check
def queue_page():
    as_guest()
    fill_queue()
    want = queue_depth(QUEUE)
    if page() != "queues":
        go("#/queues", "queues")
    row = row_css("queues", QUEUE)
    filter_css = 'section[data-list-section="queues"] input.filter'
    if (wait_for(f"the filter {filter_css}", lambda: find(filter_css)).get_attribute("value") or "") != QUEUE:
        type_into(filter_css, QUEUE)
    wait_for(f"a link in {row}", lambda: find(f"{row} a"))
    click(f"{row} a", f"the queue's link in {row}")
    wait_page("queue")
    hash_ = driver.execute_script("return window.location.hash")
    assert hash_ == queue_hash(QUEUE), f"the queue's link went to {hash_!r}, not {queue_hash(QUEUE)!r}"
    wait_for(f"#queue-messages to say {want}", lambda: figure("#queue-messages") == want)
    wait_for("a chart in #chart-queued svg", lambda: present("#chart-queued svg"))
    screenshot("queue.png")


@check
def publish_and_get():
    as_guest()
    fill_queue()
    open_queue_page(QUEUE)
    before = queue_depth(QUEUE)
    fill("form#publish", "payload", PAYLOAD)
    submit("form#publish")
    form_result("form#publish", "Message published.")
    fill("form#get", "count", 10)
    fill("form#get", "ackmode", "ack_requeue_true")
    submit("form#get")
    try:
        wait_for("messages in form#get .messages .message", lambda: find_all("form#get .messages .message"))
    except AssertionError as e:
        elsewhere = find_all("form#get .message")
        if elsewhere:
            parent = driver.execute_script(
                "const p = arguments[0].parentElement; return p.tagName.toLowerCase() + (p.className ? '.' + p.className.split(' ').join('.') : '')",
                elsewhere[0],
            )
            raise AssertionError(
                f"{e}; form#get has {len(elsewhere)} .message elements, but in {parent}, not in .result "
                f"(.result says {text_of('form#get .result')!r})"
            ) from None
        raise
    payloads = wait_for(
        "payloads in form#get .messages .message .payload",
        lambda: [p.text.strip() for p in find_all("form#get .messages .message .payload")],
    )
    assert PAYLOAD in payloads, f"no .message .payload equal to {PAYLOAD!r} among {payloads!r}"
    wait_for(f"the queue to hold {before + 1} (pika, passive declare)", lambda: queue_depth(QUEUE) == before + 1)
    wait_for(f"#queue-messages to say {before + 1}", lambda: figure("#queue-messages") == before + 1)


@check
def purge():
    as_guest()
    fill_queue()
    open_queue_page(QUEUE)
    click("#purge")
    accept_confirm("#purge")
    text = wait_for("an outcome in #purge-result", lambda: text_of("#purge-result"))
    assert "error" not in (find("#purge-result").get_attribute("class") or "").split(), f"#purge-result: {text!r}"
    assert "Queue purged." in text, f"#purge-result says {text!r}, not 'Queue purged.'"
    depth = queue_depth(QUEUE)
    assert depth == 0, f"pika's passive declare says {depth} messages after the purge"


@check
def add_user_and_permissions():
    as_guest()
    go("#/admin/users", "users")
    fill("form#add-user", "username", USER)
    fill("form#add-user", "password", USER_PASSWORD)
    fill("form#add-user", "tags", "management")
    submit("form#add-user")
    form_result("form#add-user")
    wait_for(f'table[data-list="users"] tr[data-name="{USER}"]', lambda: present(f'table[data-list="users"] tr[data-name="{USER}"]'))
    fill("form#set-permission", "user", USER)
    fill("form#set-permission", "vhost", "/")
    fill("form#set-permission", "configure", ".*")
    fill("form#set-permission", "write", ".*")
    fill("form#set-permission", "read", "^webui-.*")
    submit("form#set-permission")
    form_result("form#set-permission")
    wait_for(
        f'table[data-list="permissions"] tr[data-name="{USER}"]',
        lambda: present(f'table[data-list="permissions"] tr[data-name="{USER}"]'),
    )
    status, body = http("GET", f"/api/permissions/{q('/')}/{q(USER)}")
    assert status == 200, f"GET /api/permissions/%2F/{USER}: {status} {body!r}"
    assert body.get("read") == "^webui-.*", f"the API has read {body.get('read')!r}: {body!r}"
    assert (body.get("configure"), body.get("write")) == (".*", ".*"), f"the API has {body!r}"
    try:
        log_out()
        log_in(USER, USER_PASSWORD)
        assert text_of("#user") == USER, f"#user shows {text_of('#user')!r}"
    finally:
        back_to_guest()


@check
def import_definitions():
    as_guest()
    definitions = {
        "queues": [
            {"name": IMPORTED_QUEUE, "vhost": "/", "durable": True, "auto_delete": False, "arguments": {}}
        ],
        "exchanges": [
            {
                "name": IMPORTED_EXCHANGE,
                "vhost": "/",
                "type": "fanout",
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
        ],
        "bindings": [],
    }
    fd, path = tempfile.mkstemp(prefix=f"webui-definitions-{RUN}-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(definitions, f)
        go("#/", "overview")
        file_css = "form#import-definitions input[type=file]"
        wait_for(f"the file input {file_css}", lambda: find(file_css)).send_keys(path)
        submit("form#import-definitions")
        form_result("form#import-definitions", "Your definitions were imported successfully.")
    finally:
        os.unlink(path)
    status, body = http("GET", f"/api/queues/{q('/')}/{q(IMPORTED_QUEUE)}")
    assert status == 200, f"GET /api/queues/%2F/{IMPORTED_QUEUE}: {status} {body!r}"
    status, body = http("GET", f"/api/exchanges/{q('/')}/{q(IMPORTED_EXCHANGE)}")
    assert status == 200, f"GET /api/exchanges/%2F/{IMPORTED_EXCHANGE}: {status} {body!r}"
    assert body.get("type") == "fanout", f"the imported exchange is {body!r}"


@check
def delete_queue():
    as_guest()
    if http("GET", f"/api/queues/{q('/')}/{q(IMPORTED_QUEUE)}")[0] == 404:
        # import_definitions did not make it: make the queue to delete here.
        conn = amqp()
        try:
            conn.channel().queue_declare(IMPORTED_QUEUE, durable=True)
        finally:
            conn.close()
    open_queue_page(IMPORTED_QUEUE)
    click("#delete-queue")
    accept_confirm("#delete-queue")
    wait_for(
        "the UI back on #/queues",
        lambda: driver.execute_script("return window.location.hash") == "#/queues" and page() == "queues",
    )
    status, body = http("GET", f"/api/queues/{q('/')}/{q(IMPORTED_QUEUE)}")
    assert status == 404, f"GET /api/queues/%2F/{IMPORTED_QUEUE} after the delete: {status} {body!r}"


@check
def permission_refused():
    as_guest()
    status, body = http("PUT", f"/api/users/{q(MGMT_USER)}", {"password": MGMT_PASSWORD, "tags": "management"})
    assert status in (201, 204), f"PUT /api/users/{MGMT_USER}: {status} {body!r}"
    status, body = http(
        "PUT", f"/api/permissions/{q('/')}/{q(MGMT_USER)}", {"configure": ".*", "write": ".*", "read": ".*"}
    )
    assert status in (201, 204), f"PUT /api/permissions/%2F/{MGMT_USER}: {status} {body!r}"
    try:
        log_in(MGMT_USER, MGMT_PASSWORD)
        assert present("#admin-tab") is not None, "no #admin-tab in the page"
        assert not displayed("#admin-tab"), "#admin-tab is shown to a user tagged only management"
        # Where the tab would have gone: the API refuses, and the UI says so.
        go("#/admin/users", "users", nav=False)
        banner = wait_for("text in #status (shown)", lambda: displayed("#status") and text_of("#status"))
        assert banner.startswith("Permission refused"), f"#status says {banner!r}, not 'Permission refused…'"
        assert "Not administrator user" in banner, f"#status says {banner!r}, without the API's 'Not administrator user'"
        go("#/", "overview")
        note = "Node figures need the monitoring or administrator tag."
        wait_for(f"#node to say {note!r}", lambda: text_of("#node") == note)
        wait_for("#totals with figures", lambda: present("#totals .figure"))
        assert not displayed("#status"), f"#status shown on the Overview: {text_of('#status')!r}"
    finally:
        back_to_guest()


@check
def broker_down():
    as_guest()
    own = OwnWarren()
    rows = 'table[data-list="queues"] tbody tr'

    def table_loaded():
        """The first row's text once the queue list has loaded (a row, or its empty state)."""
        first = text_of(rows)
        return first if first and first != "Loading…" else None

    ok = False
    try:
        own.start()
        driver.get(own.url + "/")
        log_in("guest", "guest")
        go("#/queues", "queues")
        wait_for(f"{rows} loaded", table_loaded)
        status = own.stop()
        assert status == 0, f"our Warren exited with status {status} on SIGTERM (log: {own.log_tail()})"
        banner = wait_for(
            "#status shown, saying 'Cannot reach the broker'",
            lambda: displayed("#status") and "Cannot reach the broker" in (text_of("#status") or "") and text_of("#status"),
        )
        screenshot("broker-down.png")
        assert page() == "queues", f'#main has data-page {page()!r} with the broker down, not "queues" ({banner!r})'
        assert displayed("#app"), f"#app is no longer shown with the broker down ({banner!r})"
        own.start()
        wait_for("#status hidden again once the broker is back", lambda: not displayed("#status"))
        assert page() == "queues", f'#main has data-page {page()!r} once the broker is back, not "queues"'
        wait_for(f"{rows} loaded", table_loaded)
        # The list refreshes from the restarted broker: a queue made now shows up.
        fresh = f"webui-back-{RUN}"
        status, body = http("PUT", f"/api/queues/{q('/')}/{q(fresh)}", {"durable": False}, base=own.url)
        assert status in (201, 204), f"PUT /api/queues/%2F/{fresh} on our Warren: {status} {body!r}"
        wait_for(f"{row_css('queues', fresh)} in the list", lambda: present(row_css("queues", fresh)))
        ok = True
    except BaseException:
        # The page is about to be left for the shared UI: show it (and our Warren's log) now.
        tell_failure("broker_down-own")
        print(f"   [broker_down-own] warren log: {own.log_tail()}", file=sys.stderr)
        raise
    finally:
        try:
            # Back to the shared broker's UI, where sessionStorage (per origin) kept guest's login.
            home()
            wait_for(
                f"the UI at {UI_URL}/ showing #app or the login form",
                lambda: displayed("#app") or displayed("#login-username"),
            )
            if not displayed("#app"):
                log_in("guest", "guest")
            wait_for("#user 'guest' in the shared UI", lambda: logged_in_as() == "guest")
        except AssertionError as e:
            if ok:
                raise AssertionError(f"back at {UI_URL}/: {e}") from None
            print(f"   [broker_down] back at {UI_URL}/: {e}", file=sys.stderr)
        finally:
            own.remove()


# --- running -----------------------------------------------------------------------------------


def tell_failure(name):
    """What the page showed when a check failed: a screenshot, the URL, #status, the console."""
    try:
        try:
            driver.switch_to.alert.dismiss()  # a confirm() left open blocks everything else
        except WebDriverException:
            pass
        shot = screenshot(f"fail-{name}.png")
        print(f"   [{name}] at {driver.current_url}; screenshot {shot}", file=sys.stderr)
        status = text_of("#status")
        if status:
            print(f"   [{name}] #status: {status}", file=sys.stderr)
        for entry in driver.get_log("browser")[-20:]:
            print(f"   [{name}] console {entry.get('level')}: {entry.get('message')}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - reporting must not hide the failure itself
        print(f"   [{name}] could not report the page: {e}", file=sys.stderr)


def clean_up():
    """Deletes over HTTP whatever the checks created, so the other suites see none of it."""
    for path in (
        f"/api/users/{q(USER)}",
        f"/api/users/{q(MGMT_USER)}",
        f"/api/exchanges/{q('/')}/{q(IMPORTED_EXCHANGE)}",
        f"/api/queues/{q('/')}/{q(IMPORTED_QUEUE)}",
        f"/api/queues/{q('/')}/{q(QUEUE)}",
    ):
        try:
            status, body = http("DELETE", path)
            if status not in (204, 404):
                print(f"   cleanup: DELETE {path}: {status} {body!r}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001
            print(f"   cleanup: DELETE {path}: {e}", file=sys.stderr)


def main():
    global AMQP_URL, UI_URL, SHOTS, driver
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    AMQP_URL, UI_URL, SHOTS = sys.argv[1], sys.argv[2].rstrip("/"), sys.argv[3]
    os.makedirs(SHOTS, exist_ok=True)
    passed = failed = 0
    profile = None
    try:
        try:
            driver, profile = start_browser()
        except Exception as e:  # noqa: BLE001
            print(f"FAIL browser: could not start chromium under chromedriver: {e}", flush=True)
            traceback.print_exc(file=sys.stderr)
            print(f"0 passed, {len(CHECKS) + 1} failed", flush=True)
            return 1
        for fn in CHECKS:
            started = time.monotonic()
            try:
                fn()
                print(f"ok {fn.__name__}", flush=True)
                passed += 1
            except BaseException as e:  # noqa: BLE001 - a check's failure is reported, not raised
                reason = " ".join((str(e) or type(e).__name__).split())
                print(f"FAIL {fn.__name__}: {reason}", flush=True)
                if not isinstance(e, AssertionError):
                    traceback.print_exc(file=sys.stderr)
                tell_failure(fn.__name__)
                failed += 1
            elapsed = time.monotonic() - started
            if elapsed > 10:
                print(f"   ({fn.__name__} took {elapsed:.1f} s)", flush=True)
    finally:
        if driver is not None:
            try:
                driver.quit()
            except Exception:  # noqa: BLE001
                pass
        if profile:
            shutil.rmtree(profile, ignore_errors=True)
        clean_up()
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
