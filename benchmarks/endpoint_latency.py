"""Latency and throughput of the ContextLab MCP endpoint, side by side with a bare MCP SDK server.

Starts a Jupyter server with ContextLab on a fresh demo workspace (plus a kernel holding a
DataFrame) and, for comparison, a bare `MCPServer` served by uvicorn that answers the same
sql schema tool with the same code. Each simulated client is the official `mcp` client with its
own session; clients run in several processes so the client side is not one event loop.
Prints one JSON document.

    python benchmarks/endpoint_latency.py [--seconds 5] [--clients 1 8 32] [--mode legacy|auto]

BENCH_PROCS (default 4) sets how many client processes share the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contextlab.workspace import create_demo_workspace  # noqa: E402
from tests.support.kernel import KernelSession  # noqa: E402
from tests.support.server import free_port, mcp_session, start_server  # noqa: E402

# The same providers and tool list as ContextLab mounts (kernels and metrics see no kernels here),
# on a plain MCPServer served by uvicorn: the ceiling of the SDK on this machine.
BARE_SERVER = """
import sys, uvicorn
from mcp.server.mcpserver import MCPServer
from contextlab.providers.kernels import KernelsProvider
from contextlab.providers.logs import LogBuffer, LogsProvider
from contextlab.providers.metrics import MetricsProvider, RequestStats
from contextlab.providers.notebooks import NotebooksProvider
from contextlab.providers.sql import SQLProvider

class NoKernels:
    async def kernels(self):
        return []
    def manager(self, kernel_id):
        raise KeyError(kernel_id)

root = sys.argv[1]
server = MCPServer("bare", log_level="WARNING")
for provider in [NotebooksProvider(root), KernelsProvider(NoKernels()), SQLProvider.discover(root),
                 LogsProvider(LogBuffer()), MetricsProvider(NoKernels(), RequestStats())]:
    provider.register(server)
app = server.streamable_http_app(host="127.0.0.1")
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


async def _client_loop(url, token, op, args, mode, warmed, go: asyncio.Event, window: list[float]):
    latencies: list[float] = []
    async with mcp_session(url, token, mode) as client:
        call = (lambda: client.list_tools()) if op == "tools/list" else (lambda: client.call_tool(op, args))
        result = await call()  # warm up the session
        if getattr(result, "is_error", False):
            raise RuntimeError(f"{op} failed: {result.content}")
        warmed()
        await go.wait()
        while time.perf_counter() < window[1]:
            began = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - began) * 1000)
    return latencies


def _worker(url, token, op, args, mode, clients, seconds, ready, start, results, cpus) -> None:
    """One client process: open `clients` sessions, report ready, wait for the start signal, measure."""
    if cpus:
        os.sched_setaffinity(0, cpus)

    async def main():
        go, window, pending = asyncio.Event(), [0.0, 0.0], [clients]

        def warmed():
            pending[0] -= 1

        tasks = [
            asyncio.create_task(_client_loop(url, token, op, args, mode, warmed, go, window)) for _ in range(clients)
        ]
        while pending[0]:
            await asyncio.sleep(0.01)
        ready.put(os.getpid())
        await asyncio.to_thread(start.wait)
        window[:] = [time.perf_counter(), time.perf_counter() + seconds]
        go.set()
        return [x for r in await asyncio.gather(*tasks) for x in r]

    results.put(asyncio.run(main()))


def measure(
    url: str,
    token: str | None,
    op: str,
    args: dict,
    clients: int,
    seconds: float,
    mode: str,
    cpus: set[int] = frozenset(),
) -> dict:
    processes = min(clients, int(os.environ.get("BENCH_PROCS", "4")))
    shares = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    ctx = mp.get_context("spawn")
    ready, results, start = ctx.Queue(), ctx.Queue(), ctx.Event()
    workers = [
        ctx.Process(target=_worker, args=(url, token, op, args, mode, n, seconds, ready, start, results, cpus))
        for n in shares
    ]
    for w in workers:
        w.start()
    for _ in workers:  # every session is open and warm before the clock starts
        ready.get(timeout=180)
    start.set()
    latencies = [x for _ in workers for x in results.get(timeout=120 + seconds)]
    for w in workers:
        w.join()
    latencies.sort()
    return {
        "op": op,
        "clients": clients,
        "calls": len(latencies),
        "throughput_rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(statistics.median(latencies), 2),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="Measured seconds per scenario.")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32], help="Concurrent clients.")
    parser.add_argument(
        "--mode",
        default="legacy",
        choices=["legacy", "auto"],
        help="legacy = 2025-11-25 sessions; auto = stateless 2026-07-28.",
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="Extra option for the Jupyter server, e.g. --server-arg=--ContextLab.sql_row_limit=10.",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="Pin the servers (and the kernel) to CPU 0 and the clients to the other CPUs, so the two "
        "sides do not steal each other's time; steadier figures on small machines.",
    )
    parser.add_argument(
        "--ops",
        nargs="+",
        default=["tools/list", "sql__schema", "kernels__variables"],
        help="Which operations to measure.",
    )
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="contextlab-bench-"))
    root = create_demo_workspace(tmp / "workspace")
    server = start_server(root, tmp / "home", extra_args=args.server_arg)
    bare_port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(root), str(bare_port)], env=server.env)
    kernel = None
    try:
        kernel = KernelSession(server, "sales_overview.ipynb")
        kernel.execute("import pandas as pd\ndf = pd.DataFrame({'a': range(1000), 'b': ['x'] * 1000})")
        bare_url = f"http://127.0.0.1:{bare_port}/mcp"
        _wait_for_bare(bare_url)
        scenarios = [
            ("contextlab", server.mcp_url, server.token, "tools/list", {}),
            ("bare_sdk", bare_url, None, "tools/list", {}),
            ("contextlab", server.mcp_url, server.token, "sql__schema", {}),
            ("bare_sdk", bare_url, None, "sql__schema", {}),
            ("contextlab", server.mcp_url, server.token, "kernels__variables", {"kernel_id": kernel.kernel_id}),
        ]
        pids = {"contextlab": server.process.pid, "bare_sdk": bare.pid}
        client_cpus: set[int] = set()
        if args.pin:
            cpus = sorted(os.sched_getaffinity(0))
            client_cpus = set(cpus[1:]) or set(cpus)
            for pid in [*pids.values(), *(p.pid for p in psutil.Process(server.process.pid).children(recursive=True))]:
                os.sched_setaffinity(pid, {cpus[0]})
        results = []
        for clients in args.clients:
            for target, url, token, op, op_args in [s for s in scenarios if s[3].split("__")[-1] in _ops(args.ops)]:
                process = psutil.Process(pids[target])
                before = process.cpu_times()
                row = measure(url, token, op, op_args, clients, args.seconds, args.mode, client_cpus)
                after = process.cpu_times()
                # Server CPU per call (the process itself, not its kernels): steadier than wall-clock
                # figures when clients and server share two cores. It includes the warm-up calls.
                cpu_ms = ((after.user - before.user) + (after.system - before.system)) * 1000
                row["server_cpu_ms_per_call"] = round(cpu_ms / max(row["calls"] + clients, 1), 3)
                row["server"] = target
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        if kernel is not None:
            kernel.close()
        server.stop()
        bare.terminate()
        bare.wait(10)

    def find(target: str, op: str, clients: int) -> dict[str, Any] | None:
        return next((r for r in results if r["server"] == target and r["op"] == op and r["clients"] == clients), None)

    summary: dict[str, Any] = {
        "benchmark": "endpoint_latency",
        "mode": args.mode,
        "seconds_per_scenario": args.seconds,
        "pinned": args.pin,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "results": results,
    }
    for clients in args.clients if {"tools/list", "schema"} <= _ops(args.ops) else []:
        cheap = find("contextlab", "sql__schema", clients)
        bare_cheap = find("bare_sdk", "sql__schema", clients)
        listing, bare_listing = find("contextlab", "tools/list", clients), find("bare_sdk", "tools/list", clients)
        summary[f"p99_ms_c{clients}"] = cheap["p99_ms"]
        summary[f"throughput_ratio_c{clients}"] = round(cheap["throughput_rps"] / bare_cheap["throughput_rps"], 3)
        summary[f"server_cpu_ratio_c{clients}"] = round(
            cheap["server_cpu_ms_per_call"] / bare_cheap["server_cpu_ms_per_call"], 3
        )
        summary[f"tools_list_throughput_ratio_c{clients}"] = round(
            listing["throughput_rps"] / bare_listing["throughput_rps"], 3
        )
    print(json.dumps(summary, indent=2))


def _ops(ops: list[str]) -> set[str]:
    """Operation names without their provider prefix (the bare server's tools carry the same names)."""
    return {op.split("__")[-1] for op in ops}


def _wait_for_bare(url: str) -> None:
    async def probe() -> None:
        async with mcp_session(url, None, "legacy") as client:
            await client.list_tools()

    deadline = time.monotonic() + 60
    while True:
        try:
            asyncio.run(probe())
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


if __name__ == "__main__":
    main()
