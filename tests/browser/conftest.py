"""Fixtures of the dashboard's browser tests: the real daemon binary (its
HTTP API and the page at /ui, docs/api.md) and headless Chromium driven by
selenium with Debian's chromium-driver.

Needs what scripts/test-env.sh provides: WS_TEST_REDIS_URL, a Docker engine
and the test image ws-test-busybox:latest; plus `apt-get install -y chromium
chromium-driver` and selenium from PyPI. A missing piece fails the tests;
nothing here skips.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    SELENIUM_ERROR = None
except ImportError as e:  # reported by the browser fixture as a failure
    SELENIUM_ERROR = e

REPO = Path(__file__).resolve().parents[2]
LABEL_PREFIX = "io.workers-spawner.stream-prefix"


def free_port(taken=()):
    """A random port in 20000..32000 (below the kernel's ephemeral range)
    that binds on 0.0.0.0."""
    rng = secrets.SystemRandom()
    for _ in range(1000):
        port = rng.randrange(20000, 32000)
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port in 20000..32000")


def rand_id(n=8):
    return secrets.token_hex(n // 2 + n % 2)[:n]


def http(method, url, token=None, body=None, timeout=10):
    """(status, parsed JSON body or raw text); status 0 when unreachable."""
    data = None
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, None
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


def wait_for(cond, timeout, what, explain=None, interval=0.2):
    """Polls cond() until it returns a truthy value (returned); on timeout
    fails with `what` and whatever explain() says."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_exc = e
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout}s waiting for {what}"
            if last_exc is not None:
                msg += f"\nlast error: {last_exc!r}"
            if explain is not None:
                try:
                    msg += "\n" + explain()
                except Exception as e:  # noqa: BLE001
                    msg += f"\n(explain failed: {e!r})"
            pytest.fail(msg)
        time.sleep(interval)


class Daemon:
    def __init__(self, proc, prefix, instance_id, http_addr, api_addr, admin_token, read_token, log_path):
        self.proc = proc
        self.prefix = prefix
        self.instance_id = instance_id
        self.http_addr = http_addr
        self.api_addr = api_addr
        self.admin_token = admin_token
        self.read_token = read_token
        self.log_path = log_path

    @property
    def api_url(self):
        return f"http://{self.api_addr}"

    @property
    def ui_url(self):
        return f"http://{self.api_addr}/ui"

    def get(self, path, token=None):
        return http("GET", self.api_url + path, token or self.admin_token)

    def post(self, path, body=None, token=None):
        return http("POST", self.api_url + path, token or self.admin_token, body)

    def log_tail(self, n=60):
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no daemon log)"
        return "daemon log (last lines):\n" + "\n".join(lines[-n:])

    def spawn(self, request_id, preset, prompt, user_id="ui-user"):
        body = {
            "request_id": request_id,
            "worker_config_id": preset,
            "task": {"prompt": prompt, "user_id": user_id},
        }
        status, answer = self.post("/v1/requests", body)
        assert status == 202, f"POST /v1/requests {request_id}: {status} {answer}\n{self.log_tail()}"
        return request_id

    def state(self, request_id):
        status, body = self.get(f"/v1/requests/{request_id}")
        if status == 200 and isinstance(body, dict):
            return body
        return None

    def wait_state(self, request_id, states, timeout):
        states = {states} if isinstance(states, str) else set(states)
        last = {}

        def cond():
            body = self.state(request_id)
            last["body"] = body
            return body if body and body.get("state") in states else None

        return wait_for(
            cond, timeout, f"request {request_id} in state {sorted(states)}",
            lambda: f"last answer: {last.get('body')}\n{self.log_tail()}",
        )

    def worker_ids(self):
        status, body = self.get("/v1/workers")
        if status != 200 or not isinstance(body, dict):
            return None
        return {w.get("request_id") for w in body.get("workers", [])}


def _docker_cleanup(prefix):
    if not shutil.which("docker"):
        return
    try:
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label={LABEL_PREFIX}={prefix}"],
            capture_output=True, text=True, timeout=60,
        ).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        pass


@pytest.fixture(scope="session")
def daemon(tmp_path_factory):
    binary = os.environ.get("WS_DAEMON_BIN") or str(REPO / "target" / "debug" / "workers-spawner")
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        pytest.fail(f"daemon binary {binary} not found: build it (cargo build) or set WS_DAEMON_BIN")
    redis_url = os.environ.get("WS_TEST_REDIS_URL")
    if not redis_url:
        pytest.fail("WS_TEST_REDIS_URL is not set: run under scripts/test-env.sh (it starts a private Redis)")
    if not shutil.which("docker"):
        pytest.fail("the docker CLI is missing (the daemon's workers and this test's cleanup need a Docker engine)")

    tmp = tmp_path_factory.mktemp("ws-ui")
    suffix = rand_id(10)
    prefix = f"wstest-ui-{suffix}"
    instance_id = f"ui-{suffix}"
    ports = []
    for _ in range(3):
        ports.append(free_port(ports))
    http_port, gateway_port, api_port = ports
    http_addr = f"127.0.0.1:{http_port}"
    api_addr = f"127.0.0.1:{api_port}"
    admin_token = "adm-" + secrets.token_hex(16)
    read_token = "read-" + secrets.token_hex(16)

    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKERS_SPAWNER_")}
    env.update({
        "WORKERS_SPAWNER_BLOCK": "1s",
        "WORKERS_SPAWNER_GATEWAY_PORT": str(gateway_port),
        "WORKERS_SPAWNER_API_ADDR": api_addr,
        "WORKERS_SPAWNER_ARTIFACTS_DIR": str(tmp / "a"),
        "WORKERS_SPAWNER_REPO_CACHE_DIR": str(tmp / "r"),
        "WS_TEST_SECRET": "s-" + rand_id(12),
        "WORKERS_SPAWNER_API_TOKENS": (
            '[{name="admin",role="admin",token={from_env="WS_API_ADMIN"}},'
            '{name="viewer",role="read",token={from_env="WS_API_READ"}}]'
        ),
        "WS_API_ADMIN": admin_token,
        "WS_API_READ": read_token,
    })
    env.setdefault("RUST_LOG", "info")
    cmd = [
        binary,
        "--redis-url", redis_url,
        "--stream-prefix", prefix,
        "--presets-dir", "tests/fixtures/presets",
        "--skills-dir", "skills",
        "--templates-dir", "templates",
        "--http-addr", http_addr,
        "--instance-id", instance_id,
        "--max-concurrent", "4",
        "serve",
    ]
    log_path = tmp / "daemon.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    d = Daemon(proc, prefix, instance_id, http_addr, api_addr, admin_token, read_token, log_path)
    try:
        def healthy():
            if proc.poll() is not None:
                pytest.fail(f"the daemon exited during start-up with {proc.returncode}\n{d.log_tail()}")
            return http("GET", f"http://{http_addr}/healthz", timeout=2)[0] == 200

        wait_for(healthy, 60, f"GET http://{http_addr}/healthz = 200", d.log_tail, interval=0.1)

        def api_up():
            if proc.poll() is not None:
                pytest.fail(f"the daemon exited with {proc.returncode}\n{d.log_tail()}")
            return d.get("/v1/workers")[0] == 200

        wait_for(api_up, 30, f"GET {d.api_url}/v1/workers = 200 (the /v1 API of docs/api.md)", d.log_tail)
        yield d
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()
        _docker_cleanup(prefix)


def _find(path_env, names, fallback):
    explicit = os.environ.get(path_env)
    if explicit:
        return explicit
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    return fallback


@pytest.fixture(scope="session")
def browser():
    if SELENIUM_ERROR is not None:
        pytest.fail(f"selenium is not importable ({SELENIUM_ERROR}): pip install selenium")
    chromium = _find("WS_CHROMIUM", ["chromium"], "/usr/bin/chromium")
    driver_bin = _find("WS_CHROMEDRIVER", ["chromedriver"], "/usr/bin/chromedriver")
    for what, path in (("chromium", chromium), ("chromedriver", driver_bin)):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            pytest.fail(f"{what} not found at {path}: apt-get install -y chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1400,1000",
        "--lang=en-US",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: Selenium Manager (which would download) is not used.
    drv = webdriver.Chrome(service=Service(executable_path=driver_bin), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


class Page:
    """The dashboard in the browser, logged in with a token."""

    def __init__(self, driver, daemon):
        self.driver = driver
        self.daemon = daemon

    def css(self, selector):
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def one(self, selector):
        found = self.css(selector)
        return found[0] if found else None

    def text(self, selector):
        e = self.one(selector)
        return e.text if e is not None else None

    def explain(self):
        parts = []
        for sel in ("#conn-text", "#notice-text", "#workers-error", "#requests-error", "#detail-error", "#detail-stream"):
            try:
                t = self.text(sel)
            except Exception:  # noqa: BLE001
                t = None
            if t:
                parts.append(f"{sel}: {t}")
        try:
            rows = [r.get_attribute("data-request-id") for r in self.css("#workers tbody tr")]
            parts.append(f"workers rows: {rows}")
        except Exception:  # noqa: BLE001
            pass
        return "page: " + "; ".join(parts) + "\n" + self.daemon.log_tail()

    def wait(self, cond, timeout, what):
        return wait_for(cond, timeout, what, self.explain)

    def click(self, selector, timeout=10):
        """Clicks the element (found afresh until the click lands: a row
        the page re-renders meanwhile is not an error)."""
        def attempt():
            e = self.one(selector)
            if e is None or not e.is_enabled():
                return False
            e.click()
            return True

        self.wait(attempt, timeout, f"a click on {selector}")

    def login(self, token):
        field = self.one("#token")
        field.clear()
        if token:
            field.send_keys(token)
        self.one("#token-save").click()
        self.wait(lambda: self.one("#conn").get_attribute("data-state") == "ok", 15, "the page to connect with the token")

    def js_errors(self):
        return [
            e for e in self.driver.get_log("browser")
            if e.get("source") == "javascript" and e.get("level") == "SEVERE"
        ]


@pytest.fixture
def page(browser, daemon):
    status, _ = http("GET", daemon.ui_url)
    assert status == 200, f"GET {daemon.ui_url}: {status}\n{daemon.log_tail()}"
    browser.get(daemon.ui_url)
    browser.execute_script("window.sessionStorage.clear()")
    browser.get(daemon.ui_url)
    browser.get_log("browser")  # drop what the previous test left
    p = Page(browser, daemon)
    p.login(daemon.admin_token)
    yield p
    errors = p.js_errors()
    assert not errors, f"JavaScript errors in the page: {errors}"


@pytest.fixture
def two_workers(daemon):
    """Two running `sleep 60` shell_v1 workers; cancelled afterwards."""
    ids = [f"req_ui_{name}_{rand_id(8)}" for name in ("w1", "w2")]
    try:
        for rid in ids:
            daemon.spawn(rid, "shell_v1", "sleep 60")
        for rid in ids:
            daemon.wait_state(rid, "running", 30)
        yield ids
    finally:
        for rid in ids:
            daemon.post(f"/v1/requests/{rid}/cancel")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            present = daemon.worker_ids()
            if present is not None and not (set(ids) & present):
                break
            time.sleep(0.5)
