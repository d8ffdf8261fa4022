"""How long the dashboard's job page takes to show a 100,000-call job in
headless Chromium: from navigation start to the first complete drawing
(progress, timeline of one bar per call, histogram, failures), as the page
itself marks it (`performance.mark("quelea-first-draw")`).

    .venv/bin/python bench/dashboard_render.py [--calls 100000] [--quelea target/release/quelea]

The job is a real one: `quelea hello --calls N` on the local backend leaves
its map job in a scratch storage directory. Needs chromium, chromium-driver
and selenium (scripts/dashboard-tests.sh installs them).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quelea", default=str(Path(sys.executable).parent / "quelea"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "QUELEA_STORAGE_DIR": scratch}
        env.pop("QUELEA_CONFIG_FILE", None)
        started = time.perf_counter()
        out = subprocess.run(
            [args.quelea, "hello", "--calls", str(args.calls)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr
        print(f"ran a {args.calls}-call job in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        prefix = next(ln for ln in out.stdout.splitlines() if ln.startswith("job objects: ")).split()[2]
        key = prefix.rstrip("/").split("/")[-1] + "-M000"
        dashboard = subprocess.Popen(
            [args.quelea, "dashboard", "--bind", "127.0.0.1:0"], env=env, stdout=subprocess.PIPE, text=True
        )
        lines: list[str] = []
        reader = threading.Thread(
            target=lambda: lines.extend(iter(dashboard.stdout.readline, "")), daemon=True
        )
        reader.start()
        deadline = time.monotonic() + 30
        while not any("http://" in ln for ln in lines):
            assert time.monotonic() < deadline, "the dashboard did not start"
            time.sleep(0.05)
        url = next(w for ln in lines for w in ln.split() if w.startswith("http://")).rstrip("/")
        options = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1100"):
            options.add_argument(arg)
        options.binary_location = "/usr/bin/chromium"
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            times = []
            for run in range(args.runs + 1):
                driver.get(f"{url}/job/{key}")
                deadline = time.monotonic() + 60
                while True:
                    drawn = driver.execute_script(
                        "const m = performance.getEntriesByName('quelea-first-draw');"
                        "return m.length ? [m[0].startTime,"
                        " document.getElementById('timeline').dataset.bars] : null;"
                    )
                    if drawn:
                        break
                    assert time.monotonic() < deadline, "the page did not draw"
                    time.sleep(0.02)
                ms, bars = drawn
                assert bars == str(args.calls), bars
                if run:  # the first load also reads the job into the server's cache
                    times.append(ms)
                else:
                    print(f"first load (server reads storage): {ms:.0f} ms", file=sys.stderr)
            print(
                f"job page, {args.calls} calls: median {statistics.median(times):.0f} ms, "
                f"min {min(times):.0f} ms, max {max(times):.0f} ms over {len(times)} loads"
            )
        finally:
            driver.quit()
            dashboard.send_signal(signal.SIGTERM)
            dashboard.wait(timeout=10)


if __name__ == "__main__":
    main()
