"""The dashboard at /ui in headless Chromium, against the real daemon
(tests/browser/conftest.py): live workers, a finished request's result and
events, cancel from the page, and the screenshot in docs/dashboard.png."""

import json
import re
import secrets
import urllib.request
from pathlib import Path

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"


def http_get_text(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read().decode("utf-8")


def rand_id(n=8):
    return secrets.token_hex(n)[:n]


def worker_row(page, rid):
    return page.one(f'#workers tbody tr[data-request-id="{rid}"]')


def test_page_is_self_contained(page, daemon):
    """HTML, CSS and JavaScript from the daemon itself: no external URL."""
    for path, kind in (("/ui", "text/html"), ("/ui/app.js", "javascript"), ("/ui/style.css", "text/css")):
        status, body = http_get_text(daemon.api_url + path)
        assert status == 200, (path, status)
        assert "http://" not in body and "https://" not in body, f"{path} names an external URL"
    origin = page.driver.execute_script("return location.origin")
    loaded = page.driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded, "no resources recorded"
    assert all(u.startswith(origin + "/") or u.startswith("data:") for u in loaded), loaded


def test_two_running_workers_are_listed(page, daemon, two_workers):
    for rid in two_workers:
        page.wait(lambda rid=rid: worker_row(page, rid) is not None, 15, f"worker {rid} in the workers table")
    for rid in two_workers:
        row = worker_row(page, rid)
        cell = lambda name: row.find_element("css selector", f"td.{name}").text  # noqa: E731
        assert rid in cell("request")
        assert cell("preset") == "shell_v1"
        assert cell("user") == "ui-user"
        assert cell("instance") == daemon.instance_id
        assert re.fullmatch(r"(\d+d \d+h|\d+h \d+m|\d+m \d+s|\d+s)", cell("age")), cell("age")
        assert cell("deadline").startswith("in "), cell("deadline")
        assert row.find_element("css selector", f'button.cancel[data-request-id="{rid}"]').is_enabled()
    count = int(page.text("#workers-count"))
    assert count >= 2


def test_finished_request_shows_result_and_events(page, daemon):
    rid = f"req_ui_echo_{rand_id(8)}"
    daemon.spawn(rid, "echo_v1", "hello-from-ui")
    done = daemon.wait_state(rid, ["succeeded", "failed", "error", "rejected", "timed_out", "cancelled"], 60)
    assert done["state"] == "succeeded", done

    status_sel = f'#requests tbody tr[data-request-id="{rid}"] .status'
    page.wait(lambda: page.text(status_sel) == "succeeded", 15, f"{rid} as succeeded in the latest requests")
    assert page.text(f'#requests tbody tr[data-request-id="{rid}"] td.preset') == "echo_v1"

    page.click(f'#requests tbody tr[data-request-id="{rid}"] .request-link')
    page.wait(lambda: page.one("#detail").get_attribute("data-request-id") == rid and page.one("#detail").is_displayed(),
              5, "the detail panel of the request")
    page.wait(lambda: page.text("#detail .result-status") == "succeeded", 15, "the result status in the detail panel")

    def output_with_prompt():
        return [e.text for e in page.css('#detail-events tr.event[data-type="output"] .text') if "prompt=" in e.text]

    outputs = page.wait(output_with_prompt, 15, "an output event with prompt= in the detail panel")
    assert "prompt=hello-from-ui" in outputs[0]

    # The stream ends after the result; every event arrived once, in order, without a gap.
    page.wait(lambda: page.one("#detail").get_attribute("data-stream") == "ended", 20, "the event stream to end")
    seqs = [int(e.get_attribute("data-seq")) for e in page.css("#detail-events tr.event")]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    types = [e.get_attribute("data-type") for e in page.css("#detail-events tr.event")]
    assert types[0] == "accepted" and "finished" in types, types

    result = json.loads(page.one("#detail pre.result-json").get_attribute("textContent"))
    assert result["request_id"] == rid
    assert result["status"] == "succeeded"


def test_cancel_from_the_page_ends_the_worker(page, daemon):
    rid = f"req_ui_cancel_{rand_id(8)}"
    daemon.spawn(rid, "shell_v1", "sleep 60")
    try:
        daemon.wait_state(rid, "running", 30)
        button = f'#workers tbody button.cancel[data-request-id="{rid}"]'
        page.wait(lambda: page.one(button) is not None, 15, f"the Cancel button of {rid}")

        # A read-only token: the page reports the 403, the worker keeps running.
        page.login(daemon.read_token)
        page.click(button, 15)
        page.wait(lambda: page.one("#notice").is_displayed() and "403" in page.text("#notice-text"),
                  10, "the 403 of the read-only token reported on the page")
        assert page.one("#notice").get_attribute("data-kind") == "error"
        assert "admin" in page.text("#notice-text")
        assert daemon.state(rid)["state"] == "running"

        # The admin token cancels it.
        page.login(daemon.admin_token)
        page.click(button, 15)
        page.wait(lambda: page.one("#notice").get_attribute("data-kind") == "ok", 10, "the cancel confirmed on the page")
        done = daemon.wait_state(rid, ["cancelled", "succeeded", "failed", "error", "timed_out"], 30)
        assert done["state"] == "cancelled", done
        assert done["result"]["status"] == "cancelled", done
        page.wait(lambda: worker_row(page, rid) is None, 15, f"{rid} to leave the workers table")
        status_sel = f'#requests tbody tr[data-request-id="{rid}"] .status'
        page.wait(lambda: page.text(status_sel) == "cancelled", 15, f"{rid} as cancelled in the latest requests")
    finally:
        daemon.post(f"/v1/requests/{rid}/cancel")


def test_screenshot_with_two_workers(page, daemon, two_workers):
    # A finished request open in the detail panel, for a fuller picture.
    rid = f"req_ui_shot_{rand_id(8)}"
    daemon.spawn(rid, "echo_v1", "screenshot")
    daemon.wait_state(rid, ["succeeded", "failed", "error", "rejected", "timed_out", "cancelled"], 60)

    for w in two_workers:
        page.wait(lambda w=w: worker_row(page, w) is not None, 15, f"worker {w} in the workers table")
    page.click(f'#requests tbody tr[data-request-id="{rid}"] .request-link', 15)
    page.wait(lambda: page.one("#detail").get_attribute("data-stream") == "ended", 20, "the detail's stream to end")

    drv = page.driver
    height = drv.execute_script("return Math.ceil(document.documentElement.scrollHeight)")
    drv.set_window_size(1400, max(900, min(int(height) + 120, 2400)))
    drv.execute_script("window.scrollTo(0, 0)")
    for w in two_workers:
        assert worker_row(page, w) is not None, f"worker {w} left the table before the screenshot"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    assert drv.save_screenshot(str(SCREENSHOT)), "the screenshot was not written"
    drv.set_window_size(1400, 1000)
    assert SCREENSHOT.stat().st_size > 10_000
