"""The logs and metrics providers inside the running server."""

from __future__ import annotations

import anyio
import httpx

from tests.support.kernel import KernelSession
from tests.support.server import error_text, mcp_session, structured


def call(server, tool, arguments, mode="auto"):
    async def go():
        async with mcp_session(server.mcp_url, server.token, mode) as client:
            return await client.call_tool(tool, arguments)

    return anyio.run(go)


def test_logs_capture_kernel_lifecycle_and_filter_by_level_and_source(server):
    session = KernelSession(server, "data_quality.ipynb")
    try:
        page = structured(call(server, "logs__recent", {"source": "kernel", "kernel_id": session.kernel_id}))
        assert any("Kernel started" in e["message"] for e in page["entries"])
        assert all(e["kernel_id"] == session.kernel_id for e in page["entries"])
    finally:
        session.close()
    httpx.post(server.mcp_url, json={}, timeout=10)  # an unauthenticated request logs a warning
    warnings = structured(call(server, "logs__recent", {"level": "WARNING", "since_minutes": 5}))
    assert warnings["entries"], "the refused request should have been logged"
    assert all(e["level"] in ("WARNING", "ERROR", "CRITICAL") for e in warnings["entries"])
    assert any("403 POST" in e["message"] for e in warnings["entries"])
    text = error_text(call(server, "logs__recent", {"since": "2026-01-01T00:00:00"}))
    assert "needs a timezone" in text


def test_metrics_report_kernel_usage_sessions_and_endpoint_traffic(server):
    session = KernelSession(server, "sales_overview.ipynb")
    try:
        session.execute("blob = bytearray(64 * 1024 * 1024)")
        for _ in range(3):
            structured(call(server, "sql__databases", {}))
        metrics = structured(call(server, "metrics__snapshot", {}))["metrics"]
        only_kernels = structured(call(server, "metrics__snapshot", {"prefix": "kernel_"}))["metrics"]
    finally:
        session.close()
    by_name: dict[str, list[dict]] = {}
    for metric in metrics:
        by_name.setdefault(metric["name"], []).append(metric)
    rss = next(m for m in by_name["kernel_memory_rss_bytes"] if m["labels"]["kernel_id"] == session.kernel_id)
    assert rss["value"] > 64 * 1024 * 1024
    assert any(m["labels"]["kernel_id"] == session.kernel_id for m in by_name["kernel_cpu_percent"])
    assert by_name["jupyter_sessions"][0]["value"] >= 1
    calls = sum(m["value"] for m in by_name["mcp_requests_total"] if m["labels"]["method"] == "tools/call")
    assert calls >= 3
    quantiles = {
        m["labels"]["quantile"] for m in by_name["mcp_request_latency_ms"] if m["labels"]["method"] == "tools/call"
    }
    assert quantiles == {"0.5", "0.95", "0.99"}
    assert only_kernels and all(m["name"].startswith("kernel_") for m in only_kernels)
