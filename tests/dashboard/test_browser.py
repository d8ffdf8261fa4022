"""`quelea dashboard` in a real headless Chromium (driven by selenium): a map
of 2,000 calls with failures and stragglers runs on the local backend (real
runner processes) while the browser watches it.

Run by scripts/dashboard-tests.sh, which installs Chromium, chromedriver and
selenium. The screenshot goes to $DASHBOARD_TEST_OUTPUT (default
target/test-output)/dashboard/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

import quelea

CALLS = 2000
FAILING = {137, 1024, 1999}
STRAGGLERS = {50, 900, 1500}
PRINTING = 7


def work(i):
    import time

    if i == PRINTING:
        print(f"hello from call {i}")
    if i in STRAGGLERS:
        time.sleep(2.5)
    else:
        time.sleep(0.008)
    if i in FAILING:
        raise ValueError(f"bad input {i}")
    return i * i


def output_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / "target" / "test-output"
    root = Path(os.environ.get("DASHBOARD_TEST_OUTPUT", default))
    out = root / "dashboard"
    out.mkdir(parents=True, exist_ok=True)
    return out


def wait_for(what: str, predicate, timeout: float, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def storage_dir(tmp_path) -> Path:
    path = tmp_path / "storage"
    path.mkdir()
    return path


@pytest.fixture
def dashboard(storage_dir):
    """`quelea dashboard` (the console script next to this interpreter) on a
    free loopback port, stopped by its PID."""
    exe = Path(sys.executable).parent / "quelea"
    env = {**os.environ, "QUELEA_STORAGE_DIR": str(storage_dir)}
    env.pop("QUELEA_CONFIG_FILE", None)
    env.pop("QUELEA_DASHBOARD_TOKEN", None)
    proc = subprocess.Popen(
        [str(exe), "dashboard", "--bind", "127.0.0.1:0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        line = wait_for("its URL", lambda: next((ln for ln in lines if "http://" in ln), None), 30)
        url = next(w for w in line.split() if w.startswith("http://")).rstrip("/")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1100"):
        options.add_argument(arg)
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_a_running_map_of_2000_calls_in_a_real_browser(storage_dir, dashboard, browser):
    config = {"localdisk": {"root": str(storage_dir)}, "local": {"workers": 2}}
    with quelea.FunctionExecutor(config=config) as fexec:
        futures = fexec.map(work, range(CALLS), chunksize=1)
        key = f"{fexec.executor_id}-M000"

        # The jobs page lists the job while it runs.
        browser.get(dashboard + "/")
        row = wait_for(
            "the job's row",
            lambda: browser.find_elements(By.CSS_SELECTOR, f'tr.job[data-key="{key}"]'),
            20,
        )[0]
        assert "running" in row.text, row.text
        assert "work" in row.text

        browser.get(f"{dashboard}/job/{key}")
        progress = browser.find_element(By.ID, "progress")
        first = int(wait_for("a first progress figure", lambda: progress.get_attribute("data-done"), 20))
        assert first < CALLS, "the job must still be running when the page opens"
        assert browser.find_element(By.ID, "state").text == "running"
        # The progress advances without a reload: a mark left on the page
        # survives while the figure grows.
        browser.execute_script("window.__same_page = true;")
        wait_for(
            "the progress to advance",
            lambda: int(progress.get_attribute("data-done") or 0) > first,
            30,
        )
        assert browser.execute_script("return window.__same_page === true;")
        wait_for(
            "every call to finish",
            lambda: progress.get_attribute("data-done") == str(CALLS),
            120,
            0.25,
        )
        assert browser.execute_script("return window.__same_page === true;"), "the page reloaded"

        # Once finished: one bar per call, the failures with their
        # tracebacks, the stragglers marked.
        timeline = browser.find_element(By.ID, "timeline")
        wait_for("the last drawing", lambda: timeline.get_attribute("data-bars") == str(CALLS), 10)
        assert browser.find_element(By.ID, "histogram").get_attribute("data-calls") == str(CALLS)
        assert "finished, 3 failed" in browser.find_element(By.ID, "state").text
        failures = browser.find_elements(By.CSS_SELECTOR, "#failures .failure")
        assert sorted(int(f.get_attribute("data-call")) for f in failures) == sorted(FAILING)
        for failure in failures:
            call = int(failure.get_attribute("data-call"))
            assert f"ValueError (user error): bad input {call}" in failure.text, failure.text
            traceback = failure.find_element(By.CSS_SELECTOR, "pre.traceback").text
            assert "Traceback" in traceback and "in work" in traceback, traceback
            assert f"ValueError: bad input {call}" in traceback, traceback
        stragglers = browser.find_element(By.ID, "stragglers").text
        for call in STRAGGLERS:
            assert f"{call:05d}" in stragglers, stragglers

        # A call's printed output and stats.
        box = browser.find_element(By.ID, "call-input")
        box.clear()
        box.send_keys(str(PRINTING) + "\n")
        call = wait_for(
            "the call's panel",
            lambda: (
                "hello from call 7" in browser.find_element(By.ID, "call").text
                and browser.find_element(By.ID, "call").text
            ),
            10,
        )
        assert "Peak memory" in call and "success" in call, call

        browser.execute_script("window.scrollTo(0, 0);")
        shot = output_dir() / "job-page.png"
        assert browser.save_screenshot(str(shot)), shot
        assert shot.stat().st_size > 10_000

        results = fexec.get_result(futures, throw_except=False)
        assert results[2] == 4
