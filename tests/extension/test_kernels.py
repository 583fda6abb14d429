"""The kernels provider against a real kernel started by the Jupyter server."""

from __future__ import annotations

import os
import signal

import anyio
import pytest

from tests.support.kernel import KernelSession
from tests.support.server import error_text, mcp_session, structured

CELL = """
import pandas as pd, polars as pl
orders = pd.DataFrame({"order_id": [1, 2, 3], "amount": [9.5, 20.0, 3.25],
                       "placed": pd.to_datetime(["2025-01-01", "2025-01-02", "2025-01-03"])})
events = pl.DataFrame({"kind": ["click", "view"], "n": [3, 4]})
threshold = 10
print(len(orders))
"""


@pytest.fixture(scope="module")
def kernel(server):
    session = KernelSession(server, "sales_overview.ipynb")
    reply = session.execute(CELL)
    assert reply["status"] == "ok", reply
    assert reply["execution_count"] == 1
    yield session
    session.close()


def call(server, mode, tool, arguments):
    async def go():
        async with mcp_session(server.mcp_url, server.token, mode) as client:
            return await client.call_tool(tool, arguments)

    return anyio.run(go)


def test_kernels_list_shows_the_kernel_and_its_notebook(server, kernel, mode):
    kernels = structured(call(server, mode, "kernels__list", {}))["kernels"]
    mine = next(k for k in kernels if k["id"] == kernel.kernel_id)
    assert mine["name"] == "python3"
    assert mine["notebooks"] == ["sales_overview.ipynb"]


def test_variables_report_dataframe_columns_dtypes_and_samples(server, kernel, mode):
    result = structured(call(server, mode, "kernels__variables", {"kernel_id": kernel.kernel_id, "sample_rows": 2}))
    variables = {v["name"]: v for v in result["variables"]}
    assert {"orders", "events", "threshold"} <= set(variables)
    assert "pd" not in variables and "pl" not in variables  # modules are not data
    orders = variables["orders"]
    assert orders["kind"] == "dataframe" and orders["library"] == "pandas"
    assert orders["shape"] == [3, 3]
    assert [c["name"] for c in orders["columns"]] == ["order_id", "amount", "placed"]
    assert orders["columns"][1]["dtype"] == "float64"
    assert orders["sample"] == [
        {"order_id": 1, "amount": 9.5, "placed": "2025-01-01T00:00:00.000"},
        {"order_id": 2, "amount": 20.0, "placed": "2025-01-02T00:00:00.000"},
    ]
    events = variables["events"]
    assert events["library"] == "polars"
    assert [(c["name"], c["dtype"]) for c in events["columns"]] == [("kind", "String"), ("n", "Int64")]
    assert variables["threshold"]["value"] == "10"


def test_describe_one_variable(server, kernel, mode):
    described = structured(
        call(
            server,
            mode,
            "kernels__describe",
            {"kernel_id": kernel.kernel_id, "name": "orders", "sample_rows": 3},
        )
    )
    assert described["name"] == "orders"
    assert len(described["sample"]) == 3
    missing = error_text(call(server, mode, "kernels__describe", {"kernel_id": kernel.kernel_id, "name": "nope"}))
    assert "No variable 'nope'" in missing


def test_analyze_prompt_embeds_the_dataframe(server, kernel, mode):
    async def go():
        async with mcp_session(server.mcp_url, server.token, mode) as client:
            prompt = await client.get_prompt(
                "kernels__analyze_dataframe", {"kernel_id": kernel.kernel_id, "name": "orders"}
            )
            return prompt.messages[0].content.text

    text = anyio.run(go)
    assert "`orders`" in text and '"amount"' in text and '"float64"' in text


def test_inspection_leaves_execution_counter_and_history_untouched(server, kernel):
    for mode in ("legacy", "auto"):
        structured(call(server, mode, "kernels__variables", {"kernel_id": kernel.kernel_id}))
    reply = kernel.execute("print(len(In) - 1, sorted(k for k in dir() if k.startswith('__g') or k == '_probe'))")
    # One cell ran before this one, so this is cell 2 and In holds exactly two entries.
    assert reply["execution_count"] == 2
    assert reply["stdout"].strip() == "2 []"


def test_unknown_kernel_id_is_a_clear_error(server, mode):
    text = error_text(call(server, mode, "kernels__variables", {"kernel_id": "00000000-0000-0000-0000-000000000000"}))
    assert "No running kernel with id" in text


def test_a_kernel_that_dies_mid_call_gives_an_error_and_the_server_stays_healthy(server):
    session = KernelSession(server, "data_quality.ipynb")
    try:
        pid = int(session.execute("import os; print(os.getpid())")["stdout"])
        session.send_execute("import time; time.sleep(60)")  # the probe will queue behind this cell

        async def go():
            async with mcp_session(server.mcp_url, server.token) as client:
                async with anyio.create_task_group() as tg:
                    results = {}

                    async def probe():
                        results["r"] = await client.call_tool("kernels__variables", {"kernel_id": session.kernel_id})

                    tg.start_soon(probe)
                    await anyio.sleep(1.0)
                    os.kill(pid, signal.SIGKILL)
                text = error_text(results["r"])
                assert f"Kernel {session.kernel_id} died" in text
                # The endpoint and the other providers still answer.
                assert structured(await client.call_tool("sql__databases", {}))["databases"]

        anyio.run(go)
    finally:
        session.close()
