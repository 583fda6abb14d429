"""Top-k tool retrieval for clients: the `search_tools` meta-tool and the `top_k` listing mode.

`ToolSearch` keeps the LanceDB tool index (`tool_index.ToolIndex`) in step with the catalog: the
router and the prompt store mark it stale when upstream tools or descriptions change, and the next
search syncs it incrementally (only changed tools are re-embedded). Policy comes first: a search
ranks only the tools the caller may list, so a denied tool can never be retrieved.

The `top_k` listing mode answers `tools/list` with the pinned essentials, `search_tools` itself and
the tools relevant to a query (or, without a query, the caller's most recent search results).
Clients ask for it with list params `{"filter": "top_k", "query": …, "k": …}`, or with the same
keys under `_meta` as `contextlab/filter`, `contextlab/query`, `contextlab/k`, or on the endpoint
URL (`…/contextlab/mcp?tools=top_k&k=8`) for clients whose configuration is only a URL.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from contextlab.extension.principals import Caller, ToolTarget
from contextlab.extension.prompts import PromptStore
from contextlab.extension.tool_index import Embedder, IndexedTool, SyncResult, ToolIndex

log = logging.getLogger(__name__)

SEARCH_TOOL = "search_tools"
SEARCH_DESCRIPTION = (
    "Find the tools relevant to a task among every tool this gateway offers you (hybrid BM25 + embedding "
    "search over names, descriptions and parameters). Returns up to k tools with their input schemas; call "
    "any of them directly by name. Use it when the tool you need is not in your list."
)
MAX_K = 50


class FoundTool(BaseModel):
    name: str
    description: str
    server: str = Field(description="The upstream server or built-in provider that serves it.")
    score: float = Field(description="Fused relevance score; higher is better.")
    inputSchema: dict[str, Any] = Field(default_factory=dict)  # noqa: N815 (the MCP field name)


class SearchToolsResult(BaseModel):
    query: str
    tools: list[FoundTool]
    searched: int = Field(description="How many tools the caller may use, all of which were ranked.")


CatalogSource = Callable[[], Awaitable[list[tuple[dict[str, Any], ToolTarget]]]]


class ToolSearch:
    """The tool index kept current with the catalog, searched under the caller's permissions."""

    def __init__(
        self,
        index_dir: Path | str | None,
        catalog: CatalogSource,
        visible: Callable[[Caller, Iterable[tuple[Any, ToolTarget]]], list[Any]],
        *,
        prompts: PromptStore | None = None,
        embedder: Embedder | None = None,
        default_k: int = 5,
        pinned: Iterable[str] = (),
        remembered_callers: int = 1000,
    ) -> None:
        self.index = ToolIndex(index_dir, embedder=embedder)
        self.catalog = catalog
        self.visible = visible
        self.prompts = prompts
        self.default_k = default_k
        self.pinned = tuple(pinned)
        self._stale = True
        self._lock = asyncio.Lock()
        self._recent: OrderedDict[str, list[str]] = OrderedDict()
        self._remembered = remembered_callers
        self.last_sync: SyncResult | None = None

    def mark_stale(self, *_args: Any) -> None:
        self._stale = True

    async def ensure_fresh(self) -> list[tuple[dict[str, Any], ToolTarget]]:
        """The current catalog; the index is synced to it first if anything changed since the last sync."""
        catalog = await self.catalog()
        async with self._lock:  # a search waits for a sync in progress instead of reading a half-built index
            if self._stale:
                self._stale = False  # a change during the sync marks it stale again
                tools = [self._indexed(tool, target) for tool, target in catalog if tool["name"] != SEARCH_TOOL]
                try:
                    self.last_sync = await asyncio.to_thread(self.index.sync, tools)
                except BaseException:
                    self._stale = True
                    raise
                log.info("tool index synced: %s", self.last_sync)
        return catalog

    async def search(self, caller: Caller, query: str, k: int | None = None) -> SearchToolsResult:
        """The caller's k most relevant tools for `query`, with the text this caller is shown."""
        k = self._check_k(k)
        if not isinstance(query, str) or not query.strip():
            raise ValueError("`query` must describe the task in words, e.g. 'current time in Tokyo'.")
        catalog = await self.ensure_fresh()
        allowed = {tool["name"]: tool for tool in self.visible(caller, catalog) if tool["name"] != SEARCH_TOOL}
        hits = await asyncio.to_thread(self.index.search, query, k, set(allowed))
        found = []
        for hit in hits:
            tool = self._shown(allowed[hit.name], caller)
            found.append(
                FoundTool(
                    name=hit.name,
                    description=str(tool.get("description") or ""),
                    server=hit.server,
                    score=round(hit.score, 6),
                    inputSchema=dict(tool.get("inputSchema") or {}),
                )
            )
        self._remember(caller.name, [f.name for f in found])
        return SearchToolsResult(query=query, tools=found, searched=len(allowed))

    async def top_k_listing(
        self, caller: Caller, listed: list[dict[str, Any]], query: str | None, k: int | None
    ) -> list[dict[str, Any]]:
        """`listed` (the caller's full, filtered listing) cut down to pinned + search_tools + retrieved tools."""
        by_name = {tool["name"]: tool for tool in listed}
        keep: list[str] = [SEARCH_TOOL] if SEARCH_TOOL in by_name else []
        keep += [n for n in by_name if n not in keep and any(fnmatchcase(n, p) for p in self.pinned)]
        if query and query.strip():
            retrieved = [tool.name for tool in (await self.search(caller, query, k)).tools]
        else:
            retrieved = list(self._recent.get(caller.name, []))
        keep += [n for n in retrieved if n in by_name and n not in keep]
        return [by_name[n] for n in keep]

    def stats(self) -> dict[str, Any]:
        return {**self.index.stats(), "stale": self._stale, "default_k": self.default_k, "pinned": list(self.pinned)}

    def close(self) -> None:
        self.index.close()

    def _indexed(self, tool: Mapping[str, Any], target: ToolTarget) -> IndexedTool:
        # The index holds the stable text: what most callers see and what the search ranks.
        if self.prompts is not None:
            version = self.prompts.stable(str(tool["name"]))
            if version is not None:
                from contextlab.extension.prompts import apply_content

                tool = apply_content(dict(tool), version.content)
        return IndexedTool.from_mcp(tool, server=target.server)

    def _shown(self, tool: dict[str, Any], caller: Caller) -> dict[str, Any]:
        return self.prompts.apply(tool, caller.name) if self.prompts is not None else tool

    def _check_k(self, k: Any) -> int:
        if k is None:
            return self.default_k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ValueError(f"`k` must be a whole number from 1 to {MAX_K}, not {k!r}.")
        return k

    def _remember(self, caller: str, names: list[str]) -> None:
        self._recent[caller] = names
        self._recent.move_to_end(caller)
        while len(self._recent) > self._remembered:
            self._recent.popitem(last=False)


def listing_filter(params: Mapping[str, Any], query_params: Mapping[str, str]) -> tuple[bool, str | None, Any]:
    """Whether a `tools/list` asks for the top-k mode, with its query and k (from params, _meta or the URL)."""
    meta = params.get("_meta") or {}
    mode = params.get("filter") or meta.get("contextlab/filter") or query_params.get("tools")
    if mode is None:
        return False, None, None
    if mode != "top_k":
        raise ValueError(f"Unknown tools/list filter {mode!r}; the only filter is 'top_k'.")
    query = params.get("query") or meta.get("contextlab/query") or query_params.get("query")
    k: Any = params.get("k") or meta.get("contextlab/k") or query_params.get("k")
    if isinstance(k, str):
        k = int(k) if k.isdigit() else k
    return True, query, k
