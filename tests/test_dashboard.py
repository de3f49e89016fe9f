"""The dashboard in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``, which
``.ci/run`` installs) driven by Selenium against ``aistudio serve`` on 127.0.0.1 (a free port).

The page saves a tiny experiment through its own form, starts a run with its Run button, and must show
what the service does: the Run button off and naming the run while the project's lock is held, the loss
chart gaining a point per finished epoch from the SSE stream (no reload), the run completed, its plots,
and Run back on. Without the browser the test skips, saying what is missing, except in CI (``CI`` set),
where it fails: CI must run it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.helpers import FAST_TRAIN, ROOT, is_png, make_color_project, subprocess_env

HOST = "127.0.0.1"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
EPOCHS = 3
# what the page reads in one call: the Run button, the selected run and its loss chart
PAGE_STATE = """
const button = document.querySelector('button[data-run-experiment="tiny"]');
const chart = document.getElementById('chart-loss');
const row = document.querySelector('#runs-table tbody tr.selected');
return {enabled: button ? !button.disabled : null, text: button ? button.textContent : null,
        active_run: button ? (button.dataset.activeRun || null) : null,
        points: chart.querySelectorAll('circle[data-series="train_loss"]').length,
        data_points: Number(chart.dataset.points || 0),
        status: document.getElementById('detail-status').dataset.status || null,
        run_id: document.getElementById('detail-run-id').textContent || null,
        row_status: row ? row.dataset.status : null};
"""


def browser_or_skip() -> None:
    missing = [f"{name} ({path})" for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER))
               if not os.access(path, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e .[dev])")
    if missing:
        reason = (f"the dashboard test needs headless Chromium: missing {', '.join(missing)}; "
                  "apt-get install chromium chromium-driver (.ci/run does)")
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@pytest.fixture()
def served(tmp_path):
    """``aistudio serve`` on a free port, runs and locks in tmp, datasets from tmp/projects only."""
    browser_or_skip()
    port = free_port()
    (tmp_path / "projects").mkdir()
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen([sys.executable, "-m", "aistudio.cli.main", "serve", "--host", HOST, "--port", str(port),
                                "--runs-root", str(tmp_path / "runs"), "--data-root", str(tmp_path / "projects"),
                                "--heartbeat-s", "2", "--stale-check-s", "0.5"],
                               cwd=ROOT, env=subprocess_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if http_get(f"{url}/api/health")[0] == 200:
                break
        except OSError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
        time.sleep(0.1)
    yield url, tmp_path
    process.terminate()
    process.wait(timeout=30)
    log.close()
    for run_json in (tmp_path / "runs").rglob("run.json"):  # nothing a failed test started outlives it
        try:
            pid = int(json.loads(run_json.read_text()).get("pid") or 0)
            if pid:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture()
def browser(served):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1700", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # the Debian driver by path: Selenium Manager never looks for (or downloads) a driver
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def http_get(address: str) -> tuple[int, Any]:
    """(status, JSON or bytes) of a GET, error statuses included."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(address, timeout=10) as answer:
            status, body, kind = answer.status, answer.read(), answer.headers.get("content-type", "")
    except urllib.error.HTTPError as err:
        status, body, kind = err.code, err.read(), err.headers.get("content-type", "")
    return status, json.loads(body) if kind.startswith("application/json") else body


def wait_for(predicate, timeout: float, what: str, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(step)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_dashboard_runs_an_experiment_and_charts_it_live(served, browser, tmp_path):
    from selenium.webdriver.common.by import By

    url, tmp = served
    project = make_color_project(tmp / "projects" / "colors")
    overrides = ["data=project", f"data.project={project}",
                 *[o for o in FAST_TRAIN if not o.startswith("plots=")], f"trainer.max_epochs={EPOCHS}"]

    browser.get(url)
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "button[data-run-experiment]"), 30, "the experiments")
    # a tiny experiment, saved with the page's own form
    browser.find_element(By.CSS_SELECTOR, "#new-experiment summary").click()
    browser.find_element(By.ID, "experiment-name").send_keys("tiny")
    browser.find_element(By.ID, "experiment-overrides").send_keys("\n".join(overrides))
    browser.find_element(By.ID, "experiment-description").send_keys("three quick epochs of colours")
    browser.find_element(By.ID, "experiment-save").click()
    run_button = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, 'button[data-run-experiment="tiny"]'), 30,
                          f"the saved experiment ({browser.find_element(By.ID, 'experiment-message').text})")[0]
    assert run_button.is_enabled() and run_button.text == "Run"

    run_button.click()
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 150
    while True:
        page = browser.execute_script(PAGE_STATE)
        if not seen or page != seen[-1]:
            seen.append(page)
        if page["status"] == "completed" and page["enabled"]:
            break
        assert page["status"] not in ("failed", "interrupted"), (seen, (tmp / "server.log").read_text()[-3000:])
        assert time.monotonic() < deadline, seen
        time.sleep(0.1)
    run_id = seen[-1]["run_id"]
    history = "\n".join(map(str, seen))

    # Run was off while the run held the project's lock, naming it
    assert run_id and any(not p["enabled"] and run_id in p["text"] and p["active_run"] == run_id for p in seen), history
    # the loss chart gained its points epoch by epoch from the stream, without a reload
    counts = [p["points"] for p in seen]
    assert len({c for c in counts if c}) >= 2 and counts[-1] == EPOCHS == seen[-1]["data_points"], history
    assert counts == sorted(counts), history
    # ... and it ended completed, with Run back on
    final = seen[-1]
    assert final["status"] == final["row_status"] == "completed" and final["text"] == "Run", history
    # read in one script: the runs table is re-rendered as the list refreshes, so a found cell can go stale
    epochs_cell = browser.execute_script("const cell = document.querySelector(arguments[0]); return cell && cell.innerText",
                                         f'#runs-table tr[data-run-id="{run_id}"] td.epochs')
    assert epochs_cell == str(EPOCHS)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chart-metrics circle[data-series='val_acc']")) == EPOCHS

    record = json.loads(next((tmp / "runs").rglob("run.json")).read_text())
    assert record["id"] == run_id and record["status"] == "completed" and record["epochs_completed"] == EPOCHS

    # the run's plots, served by the service, shown and decoded by the browser
    plots = wait_for(lambda: [img for img in browser.find_elements(By.CSS_SELECTOR, "#plots img")
                              if browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img)],
                     30, "the run's plots")
    assert "training_curves.png" in {img.get_attribute("alt") for img in plots}
    assert "\n" in browser.find_element(By.ID, "log-tail").get_attribute("textContent")

    # the endpoints the page uses beside the run API
    run_dir = next((tmp / "runs").rglob("run.json")).parent
    (run_dir / "plots" / "outside.png").symlink_to(run_dir / "run.json")  # never listed nor served
    listing = http_get(f"{url}/api/runs/{run_id}/plots")[1]
    assert {p["name"] for p in listing["plots"]} >= {"training_curves.png"} and "outside.png" not in str(listing)
    status, png = http_get(f"{url}/api/runs/{run_id}/plots/training_curves.png")
    assert status == 200 and png.startswith(b"\x89PNG")
    assert http_get(f"{url}/api/runs/{run_id}/plots/outside.png")[0] == 404
    assert http_get(f"{url}/api/runs/{run_id}/plots/run.json")[0] == 422
    assert http_get(f"{url}/api/runs/{run_id}/plots/..%2Frun.json")[0] == 404
    availability = {e["experiment"]: e for e in http_get(f"{url}/api/dashboard/availability")[1]}
    assert availability["tiny"] == {"experiment": "tiny", "available": True, "active_run": None, "reason": None}

    problems = [entry for entry in browser.get_log("browser") if entry.get("level") == "SEVERE"]
    assert not problems, problems
    browser.execute_script("document.getElementById('run-detail').scrollIntoView()")
    screenshot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(screenshot)) and is_png(screenshot)


def test_only_plain_pngs_directly_in_plots_are_served(tmp_path):
    """The plots endpoint's file rule, without a server: names by pattern, no symlinks, nothing outside."""
    from aistudio.server.dashboard_api import PLOT_NAME, _plot_files

    run_dir = tmp_path / "run"
    plots = run_dir / "plots"
    (plots / "nested").mkdir(parents=True)
    for name in ("training_curves.png", "test_examples.png", ".hidden.png", "notes.txt", "nested/inner.png"):
        (plots / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "secret.png").write_bytes(b"x")
    (plots / "link.png").symlink_to(tmp_path / "secret.png")
    assert [p.name for p in _plot_files(run_dir)] == ["test_examples.png", "training_curves.png"]
    assert not any(PLOT_NAME.fullmatch(n) for n in ("../run.png", ".png", "a/b.png", "run.json", "x.PNG\n"))
    (tmp_path / "elsewhere").mkdir()
    other = tmp_path / "other-run"
    other.mkdir()
    (other / "plots").symlink_to(tmp_path / "elsewhere")  # a plots/ folder that is a link: nothing
    assert _plot_files(other) == [] and _plot_files(tmp_path / "missing") == []
