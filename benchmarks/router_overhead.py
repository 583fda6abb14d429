"""What the gateway adds to an upstream tool call: the same tool called directly and through ContextLab.

Starts an upstream MCP server (the SDK's streamable-HTTP server with an `echo` tool) and a Jupyter
server with ContextLab that has it registered. The gateway path runs everything a governed call
pays for: a ContextLab API token (auth), scope and ABAC checks, a token-bucket rate limit, DLP on
the arguments and the result, and an audit row. Clients are the official `mcp` client, spread over
several processes. Scenarios alternate direct / gateway at each concurrency so both see the same
machine. Prints one JSON document with `added_p50_ms_c1`, `added_p99_ms_c1` and
`throughput_ratio_c8` at the top.

    python benchmarks/router_overhead.py [--seconds 5] [--clients 1 8 32] [--mode auto|legacy] [--pin]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.endpoint_latency import measure  # noqa: E402
from tests.support.server import free_port, mcp_session, start_server  # noqa: E402

POLICY = """
version: 1
default: deny
rules:
  - name: same-org
    effect: allow
    target: {org: "${caller.org}"}
rate_limits:
  - name: per-caller
    per: caller
    rate: 100000/s
    burst: 100000
dlp:
  custom:
    - name: employee_id
      pattern: "EMP-\\\\d{6}"
"""

TEXT = "Quarterly revenue grew 4.2% on 1,284 orders; see the dashboard for the regional split."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="Measured seconds per scenario.")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="Concurrent clients.")
    parser.add_argument("--mode", default="auto", choices=["auto", "legacy"], help="The clients' protocol era.")
    parser.add_argument("--pin", action="store_true", help="Pin servers to CPU 0 and clients to the others.")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="Alternate direct and gateway this many times per concurrency; the summary takes the median "
        "of the per-round figures (steadier on a noisy machine).",
    )
    parser.add_argument(
        "--paths", nargs="+", default=["direct", "gateway"], choices=["direct", "gateway"], help="What to measure."
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="contextlab-router-bench-"))
    root, home = tmp / "workspace", tmp / "home"
    (root / ".contextlab").mkdir(parents=True)
    (root / ".contextlab" / "policy.yaml").write_text(POLICY)
    port = free_port()
    direct_url = f"http://127.0.0.1:{port}/mcp"
    manifest = tmp / "upstreams.json"
    manifest.write_text(
        json.dumps(
            {
                "version": 1,
                "servers": [
                    {"name": "demo", "transport": "http", "url": direct_url, "attributes": {"org": "bench"}},
                ],
            }
        )
    )
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.support.upstream_server", "http", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for(direct_url)
    server = start_server(
        root, home, extra_args=["--ContextLab.providers=logs", f"--ContextLab.registry_manifests={manifest}"]
    )
    results: list[dict[str, Any]] = []
    try:
        response = server.api(
            "POST",
            "contextlab/api/tokens",
            json={
                "name": "bench",
                "scopes": ["upstream:demo__*"],
                "attributes": {"roles": ["Operator"], "org": "bench"},
            },
        )
        response.raise_for_status()
        token = response.json()["token"]
        asyncio.run(_check(server.mcp_url, token, args.mode))
        pids = {"direct": upstream.pid, "gateway": server.process.pid}
        client_cpus: set[int] = set()
        if args.pin:
            cpus = sorted(os.sched_getaffinity(0))
            client_cpus = set(cpus[1:]) or set(cpus)
            for pid in pids.values():
                os.sched_setaffinity(pid, {cpus[0]})
        scenarios = [
            s
            for s in [("direct", direct_url, None, "echo"), ("gateway", server.mcp_url, token, "demo__echo")]
            if s[0] in args.paths
        ]
        for clients, round_no, (target, url, auth, tool) in (
            (c, r, s) for c in args.clients for r in range(args.rounds) for s in scenarios
        ):
            process = psutil.Process(pids[target])
            before = process.cpu_times()
            row = measure(url, auth, tool, {"text": TEXT}, clients, args.seconds, args.mode, client_cpus)
            after = process.cpu_times()
            cpu_ms = ((after.user - before.user) + (after.system - before.system)) * 1000
            row["path"] = target
            row["round"] = round_no
            row[f"{target}_process_cpu_ms_per_call"] = round(cpu_ms / max(row["calls"] + clients, 1), 3)
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        audit_rows = server.api("GET", "contextlab/api/audit", params={"flush": 1, "limit": 1}).json()["entries"]
    finally:
        server.stop()
        upstream.terminate()
        upstream.wait(10)

    def find(path: str, clients: int, round_no: int) -> dict[str, Any]:
        return next(r for r in results if (r["path"], r["clients"], r["round"]) == (path, clients, round_no))

    summary: dict[str, Any] = {}
    for clients in args.clients if len(args.paths) == 2 else []:
        pairs = [(find("direct", clients, n), find("gateway", clients, n)) for n in range(args.rounds)]
        summary[f"added_p50_ms_c{clients}"] = round(statistics.median(g["p50_ms"] - d["p50_ms"] for d, g in pairs), 2)
        summary[f"added_p99_ms_c{clients}"] = round(statistics.median(g["p99_ms"] - d["p99_ms"] for d, g in pairs), 2)
        summary[f"throughput_ratio_c{clients}"] = round(
            statistics.median(g["throughput_rps"] / d["throughput_rps"] for d, g in pairs), 3
        )
    summary.update(
        {
            "benchmark": "router_overhead",
            "mode": args.mode,
            "seconds_per_scenario": args.seconds,
            "rounds": args.rounds,
            "pinned": args.pin,
            "gateway_features": ["api-token auth", "scopes", "ABAC", "rate limit", "DLP args+result", "audit"],
            "last_audit_row": {k: audit_rows[0].get(k) for k in ("principal", "target", "decision", "upstream")}
            if audit_rows
            else None,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "results": results,
        }
    )
    print(json.dumps(summary, indent=2))


async def _check(url: str, token: str, mode: str) -> None:
    """One governed call before measuring, so a misconfiguration fails loudly instead of hanging workers."""
    async with mcp_session(url, token, mode) as client:
        result = await asyncio.wait_for(client.call_tool("demo__echo", {"text": TEXT}), 30)
        if result.is_error or result.content[0].text != TEXT:
            raise RuntimeError(f"gateway check failed: {result}")


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.post(url, json={}, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not start")


if __name__ == "__main__":
    main()
