"""Running kernels and their live variables (DataFrames with columns, dtypes and sample rows).

Variables are read with a silent execute request whose `user_expressions` carry the probe in
`kernel_probe.py`: no cell is inserted, and the user's execution counter and history stay as
they were.
"""

from __future__ import annotations

import ast
import asyncio
import json
import queue
import time
from datetime import datetime
from typing import Annotated, Any, Protocol

from mcp.server.mcpserver.prompts.base import Message, UserMessage
from pydantic import BaseModel, Field

from contextlab.providers.base import PromptSpec, Provider, ProviderError, ToolSpec
from contextlab.providers.kernel_probe import probe_expression


class KernelSource(Protocol):
    """Where kernels come from. The extension adapts Jupyter's kernel and session managers to this."""

    async def kernels(self) -> list[dict[str, Any]]:
        """Running kernels: id, name, execution_state, last_activity, connections, notebooks."""
        ...

    def manager(self, kernel_id: str) -> Any:
        """The kernel's (async) KernelManager; raises KeyError for an unknown id."""
        ...


class KernelInfo(BaseModel):
    id: str
    name: str = Field(description="Kernel spec name, e.g. 'python3'.")
    execution_state: str | None = None
    last_activity: datetime | None = None
    connections: int = 0
    notebooks: list[str] = Field(default_factory=list, description="Notebook paths whose session uses it.")


class KernelList(BaseModel):
    kernels: list[KernelInfo]


class ColumnSummary(BaseModel):
    name: str
    dtype: str


class Variable(BaseModel):
    name: str
    type: str = Field(description="Fully qualified type name, e.g. 'pandas.DataFrame'.")
    kind: str = Field(description="dataframe, series, array, scalar, text, collection or object.")
    library: str | None = None
    shape: list[int] | None = None
    dtype: str | None = None
    columns: list[ColumnSummary] | None = None
    sample: Any = Field(None, description="A few rows (DataFrames) or values (Series), JSON-safe.")
    memory_bytes: int | None = None
    length: int | None = None
    value: str | None = Field(None, description="repr() of small values, clipped.")
    series_name: str | None = None
    error: str | None = Field(None, description="Why part of the description could not be computed.")


class VariableList(BaseModel):
    kernel_id: str
    variables: list[Variable]
    total: int = Field(description="Variables in the namespace (before the limit).")
    truncated: bool


class KernelsProvider(Provider):
    name = "kernels"
    description = "Running Jupyter kernels and their live variables, including DataFrame columns and samples."
    context_types = ["Kernel", "Variable", "DataFrame"]

    def __init__(self, source: KernelSource, *, timeout_seconds: float = 10.0, max_repr_chars: int = 200) -> None:
        self.source = source
        self.timeout_seconds = timeout_seconds
        self.max_repr_chars = max_repr_chars
        self._clients: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def tool_specs(self) -> list[ToolSpec]:
        return [
            ToolSpec(
                self.list_kernels,
                "list",
                "List the running kernels and the notebooks attached to them.",
                "List kernels",
            ),
            ToolSpec(
                self.variables,
                "variables",
                "List the live variables of a kernel: name, type, shape; for pandas/polars DataFrames also "
                "columns, dtypes and sample rows. Runs silently; the user's notebook is not touched.",
                "Kernel variables",
            ),
            ToolSpec(self.describe, "describe", "Describe one variable of a kernel in detail.", "Describe variable"),
        ]

    def prompt_specs(self) -> list[PromptSpec]:
        return [
            PromptSpec(
                self.analyze_prompt,
                "analyze_dataframe",
                "Suggest an analysis of a live DataFrame, given its columns and sample rows.",
                "Analyze this DataFrame",
            )
        ]

    async def list_kernels(self) -> KernelList:
        return KernelList(kernels=[KernelInfo(**k) for k in await self.source.kernels()])

    async def variables(
        self,
        kernel_id: Annotated[str, Field(min_length=1, description="Kernel id from kernels__list.")],
        sample_rows: Annotated[int, Field(ge=0, le=50)] = 3,
        limit: Annotated[int, Field(ge=1, le=1000)] = 200,
    ) -> VariableList:
        data = await self._probe(kernel_id, None, sample_rows, limit)
        variables = [Variable(**v) for v in data["variables"]]
        return VariableList(
            kernel_id=kernel_id,
            variables=variables,
            total=data["total"],
            truncated=data["total"] > len(variables),
        )

    async def describe(
        self,
        kernel_id: Annotated[str, Field(min_length=1)],
        name: Annotated[str, Field(min_length=1, max_length=200, description="Variable name.")],
        sample_rows: Annotated[int, Field(ge=0, le=200)] = 10,
    ) -> Variable:
        if not name.isidentifier():
            raise ProviderError(f"{name!r} is not a Python identifier.")
        data = await self._probe(kernel_id, name, sample_rows, 1)
        if "missing" in data:
            raise ProviderError(f"No variable {name!r} in kernel {kernel_id}. Call kernels__variables to list them.")
        return Variable(**data["variables"][0])

    async def analyze_prompt(self, kernel_id: str, name: str) -> list[Message]:
        variable = await self.describe(kernel_id, name, sample_rows=10)
        return [
            UserMessage(
                f"The live variable `{name}` in my kernel is described below. Suggest three useful analyses "
                "with pandas code for each, noting data quality issues you can see in the sample.\n\n"
                f"```json\n{variable.model_dump_json(indent=1, exclude_none=True)}\n```"
            )
        ]

    async def close(self) -> None:
        for client in self._clients.values():
            client.stop_channels()
        self._clients.clear()

    # -- internals ------------------------------------------------------------------------------
    def _manager(self, kernel_id: str) -> Any:
        try:
            return self.source.manager(kernel_id)
        except KeyError:
            self._drop_client(kernel_id)
            raise ProviderError(f"No running kernel with id {kernel_id!r}. Call kernels__list for the ids.") from None

    def _drop_client(self, kernel_id: str) -> None:
        client = self._clients.pop(kernel_id, None)
        self._locks.pop(kernel_id, None)
        if client is not None:
            client.stop_channels()

    def _prune_clients(self) -> None:
        """Close the channels of kernels that were shut down since we last probed them."""
        for kernel_id in list(self._clients):
            try:
                self.source.manager(kernel_id)
            except KeyError:
                self._drop_client(kernel_id)

    async def _probe(self, kernel_id: str, only: str | None, sample_rows: int, limit: int) -> dict[str, Any]:
        self._prune_clients()
        manager = self._manager(kernel_id)
        spec = getattr(manager, "kernel_spec", None)
        language = getattr(spec, "language", "python") or "python"
        if language.lower() != "python":
            raise ProviderError(f"Kernel {kernel_id} runs {language}; variables can only be read from Python kernels.")
        lock = self._locks.setdefault(kernel_id, asyncio.Lock())
        async with lock:
            client = self._clients.get(kernel_id)
            if client is None:
                client = manager.client()
                client.start_channels(shell=True, iopub=False, stdin=False, hb=False, control=False)
                self._clients[kernel_id] = client
            expression = probe_expression(only, sample_rows, limit, self.max_repr_chars)
            msg_id = client.execute(
                "",
                silent=True,
                store_history=False,
                user_expressions={"probe": expression},
                allow_stdin=False,
            )
            reply = await self._await_reply(kernel_id, manager, client, msg_id)
        result = reply["content"].get("user_expressions", {}).get("probe", {})
        if result.get("status") != "ok":
            raise ProviderError(
                f"Reading variables failed inside kernel {kernel_id}: "
                f"{result.get('ename', reply['content'].get('ename', 'error'))}: "
                f"{result.get('evalue', reply['content'].get('evalue', ''))}"
            )
        return json.loads(ast.literal_eval(result["data"]["text/plain"]))

    async def _await_reply(self, kernel_id: str, manager: Any, client: Any, msg_id: str) -> dict[str, Any]:
        pid = kernel_pid(manager)
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            try:
                reply = await client.get_shell_msg(timeout=0.2)
            except queue.Empty:
                if not await manager.is_alive() or kernel_pid(manager) != pid:
                    self._drop_client(kernel_id)
                    raise ProviderError(
                        f"Kernel {kernel_id} died while its variables were being read. Restart it (or wait for "
                        "the automatic restart) and run the cells that create the variables again."
                    ) from None
                if time.monotonic() > deadline:
                    raise ProviderError(
                        f"Kernel {kernel_id} did not answer within {self.timeout_seconds:g} s; it is probably busy "
                        "running a cell. Try again when it is idle."
                    ) from None
                continue
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                return reply


def kernel_pid(manager: Any) -> int | None:
    provisioner = getattr(manager, "provisioner", None)
    return getattr(provisioner, "pid", None)
