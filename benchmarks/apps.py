"""Published apps: time to first render and memory per session, at 10k and 100k rows.

For each size a workspace gets the shipped expenses app (`contextlab apps new --example expenses`), N
generated expenses (all pending, so the managers' table pages through N rows) and is published. The apps
server (`contextlab apps serve`, anonymous viewers with the manager role) runs in its own process.

Reported per size:
- `server_render_ms`: p50 of an HTTP GET of the review page: Panel builds the session's document on the
  server (the page's queries, the Tabulator's first page, the chart and the indicator) and sends the HTML;
- `first_render_ms`: p50, in headless Chromium (Debian's), from navigation to the first table row painted;
- `rss_per_session_mb`: growth of the server's resident memory per open browser session (sessions kept
  open, measured after `sessions` pages have rendered), and `rss_baseline_mb` before any session.

    python benchmarks/apps.py [--sizes 10000 100000] [--runs 5] [--sessions 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from tqdm import tqdm

CHROMIUM = "/usr/bin/chromium"
TABLE_ROW = ".cl-pending_table .tabulator-row"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def contextlab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "contextlab", *args], check=True, capture_output=True, text=True)


def workspace(root: Path, rows: int) -> None:
    from contextlab.apps import db

    contextlab("apps", "new", "expenses", "--example", "expenses", "--workspace", str(root), "--publish")
    with db.connect(root / "apps" / "expenses.duckdb") as con:
        con.execute(
            "INSERT INTO expenses (employee, category, amount, description, status, submitted_at) "
            "SELECT 'employee ' || (i % 500), ['travel', 'meals', 'equipment', 'other'][1 + i % 4], "
            "round(1 + (i * 7919 % 200000) / 100.0, 2), 'item ' || i, 'pending', "
            "TIMESTAMP '2026-01-01' + to_seconds(i * 60) FROM range(?) t(i)",
            [rows],
        )


def serve(root: Path, port: int) -> subprocess.Popen:
    args = [sys.executable, "-m", "contextlab", "apps", "serve", "--workspace", str(root), "--port", str(port)]
    process = subprocess.Popen(
        [*args, "--anonymous-role", "manager"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/apps", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the apps server did not start")


def measure(rows: int, runs: int, sessions: int) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        workspace(root, rows)
        port = free_port()
        url = f"http://127.0.0.1:{port}/apps/expenses/review"
        server = serve(root, port)
        try:
            rss = psutil.Process(server.pid)
            httpx.get(url, timeout=60)  # warm-up: imports, caches
            baseline = rss.memory_info().rss
            server_ms = []
            for _ in range(runs):
                start = time.perf_counter()
                response = httpx.get(url, timeout=120)
                server_ms.append((time.perf_counter() - start) * 1000)
                assert response.status_code == 200, response.status_code
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
                )
                first_ms = []
                for _ in range(runs):
                    page = browser.new_page()
                    start = time.perf_counter()
                    page.goto(url)
                    page.wait_for_selector(TABLE_ROW, timeout=120_000)
                    first_ms.append((time.perf_counter() - start) * 1000)
                    page.close()
                time.sleep(1.0)  # let closed sessions be discarded
                before = rss.memory_info().rss
                pages = []
                for _ in range(sessions):
                    page = browser.new_page()
                    page.goto(url)
                    page.wait_for_selector(TABLE_ROW, timeout=120_000)
                    pages.append(page)
                after = rss.memory_info().rss
                browser.close()
        finally:
            server.terminate()
            server.wait(30)
    return {
        "rows": rows,
        "server_render_ms_p50": round(statistics.median(server_ms), 1),
        "first_render_ms_p50": round(statistics.median(first_ms), 1),
        "first_render_ms_max": round(max(first_ms), 1),
        "rss_baseline_mb": round(baseline / 2**20, 1),
        "rss_per_session_mb": round((after - before) / sessions / 2**20, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="Rows per run.")
    parser.add_argument("--runs", type=int, default=5, help="Renders timed per size.")
    parser.add_argument("--sessions", type=int, default=8, help="Browser sessions kept open for the memory figure.")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(json.dumps({"error": f"{CHROMIUM} is missing: apt-get install chromium"}))
        return 1
    results = [measure(n, args.runs, args.sessions) for n in tqdm(args.sizes, desc="sizes", file=sys.stderr)]
    print(
        json.dumps(
            {
                "benchmark": "apps",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "results": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
