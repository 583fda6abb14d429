"""Server and kernel metrics: CPU and memory per kernel, sessions, and the MCP endpoint's own traffic."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated

import psutil
from pydantic import BaseModel, Field

from contextlab.providers.base import Provider, ToolSpec
from contextlab.providers.kernels import KernelSource, kernel_pid


class Metric(BaseModel):
    """The `Metric` context type: one sample with Prometheus-style name and labels."""

    name: str
    value: float
    unit: str
    labels: dict[str, str] = Field(default_factory=dict)
    time: datetime


class MetricSet(BaseModel):
    metrics: list[Metric]


class RequestStats:
    """Counts and latencies of MCP requests, kept for a sliding window of recent requests per method."""

    def __init__(self, window: int = 2048) -> None:
        self._window = window
        self._counts: dict[tuple[str, str], int] = {}
        self._latencies: dict[str, deque[float]] = {}
        self._guard = threading.Lock()

    def observe(self, method: str, outcome: str, latency_ms: float) -> None:
        with self._guard:
            self._counts[(method, outcome)] = self._counts.get((method, outcome), 0) + 1
            self._latencies.setdefault(method, deque(maxlen=self._window)).append(latency_ms)

    def snapshot(self) -> tuple[dict[tuple[str, str], int], dict[str, list[float]]]:
        with self._guard:
            return dict(self._counts), {m: list(v) for m, v in self._latencies.items()}


def _quantile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


class MetricsProvider(Provider):
    name = "metrics"
    description = "Metrics of this Jupyter server: per-kernel CPU and memory, sessions, MCP endpoint traffic."
    context_types = ["Metric"]

    def __init__(
        self,
        kernels: KernelSource,
        stats: RequestStats,
        session_count: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.kernels = kernels
        self.stats = stats
        self.session_count = session_count
        self._processes: dict[int, psutil.Process] = {}
        self._server = psutil.Process(os.getpid())
        self._server.cpu_percent(None)

    def tool_specs(self) -> list[ToolSpec]:
        return [
            ToolSpec(
                self.snapshot,
                "snapshot",
                "Current metrics: kernel CPU % and memory, kernel and session counts, server CPU and memory, "
                "and MCP endpoint request counts and latency quantiles. Filter by name prefix.",
                "Metrics snapshot",
            )
        ]

    async def snapshot(
        self,
        prefix: Annotated[str, Field(description="Only metrics whose name starts with this.")] = "",
    ) -> MetricSet:
        now = datetime.now(UTC)
        out: list[Metric] = []

        def add(name: str, value: float, unit: str, **labels: str) -> None:
            if name.startswith(prefix):
                out.append(Metric(name=name, value=round(float(value), 4), unit=unit, labels=labels, time=now))

        kernels = await self.kernels.kernels()
        add("jupyter_kernels", len(kernels), "count")
        if self.session_count is not None:
            add("jupyter_sessions", await self.session_count(), "count")
        for kernel in kernels:
            try:
                pid = kernel_pid(self.kernels.manager(kernel["id"]))
            except KeyError:
                continue
            usage = self._process_usage(pid)
            if usage is not None:
                labels = {"kernel_id": kernel["id"], "kernel_name": kernel["name"]}
                add("kernel_cpu_percent", usage[0], "percent", **labels)
                add("kernel_memory_rss_bytes", usage[1], "bytes", **labels)
        add("server_cpu_percent", self._server.cpu_percent(None), "percent")
        add("server_memory_rss_bytes", self._server.memory_info().rss, "bytes")
        counts, latencies = self.stats.snapshot()
        for (method, outcome), count in sorted(counts.items()):
            add("mcp_requests_total", count, "count", method=method, outcome=outcome)
        for method, values in sorted(latencies.items()):
            values.sort()
            for q in (0.5, 0.95, 0.99):
                add("mcp_request_latency_ms", _quantile(values, q), "ms", method=method, quantile=str(q))
        return MetricSet(metrics=out)

    def _process_usage(self, pid: int | None) -> tuple[float, int] | None:
        if pid is None:
            return None
        try:
            process = self._processes.get(pid)
            if process is None or not process.is_running():
                # First sight of this kernel: report its average CPU since it started.
                process = psutil.Process(pid)
                self._processes = {p: proc for p, proc in self._processes.items() if proc.is_running()}
                self._processes[pid] = process
                times = process.cpu_times()
                cpu = 100.0 * (times.user + times.system) / max(time.time() - process.create_time(), 1e-3)
                process.cpu_percent(None)
            else:
                cpu = process.cpu_percent(None)
            rss = process.memory_info().rss
            for child in process.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.Error:
                    pass
            return cpu, rss
        except psutil.Error:
            self._processes.pop(pid, None)
            return None
