"""Notebooks under the server root: list, read (cells and outputs), full-text search, resources."""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from collections.abc import Hashable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import nbformat
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.prompts.base import Message, UserMessage
from mcp_types import Resource as MCPResource
from pydantic import BaseModel, Field

from contextlab.providers.base import (
    PromptSpec,
    Provider,
    ProviderError,
    ResourceTemplateSpec,
    ToolSpec,
)
from contextlab.providers.paths import relative_posix, resolve_in_root

NOTEBOOK_URI_SCHEME = "notebook://"


class NotebookInfo(BaseModel):
    path: str = Field(description="Path relative to the server root, with '/' separators.")
    uri: str = Field(description="The notebook's MCP resource URI.")
    size_bytes: int
    modified: datetime
    cell_count: int
    kernel: str | None = Field(None, description="Kernel spec name from the notebook metadata.")
    language: str | None = None


class NotebookList(BaseModel):
    root: str
    notebooks: list[NotebookInfo]
    truncated: bool = Field(description="True when more notebooks matched than `limit`.")


class CellOutput(BaseModel):
    output_type: str
    text: str = Field(description="Text of the output, truncated to the configured size.")
    truncated: bool = False
    omitted: list[str] = Field(default_factory=list, description="MIME types left out (images, widgets).")


class Cell(BaseModel):
    index: int
    cell_type: Literal["code", "markdown", "raw"]
    source: str
    execution_count: int | None = None
    outputs: list[CellOutput] = Field(default_factory=list)


class NotebookContent(BaseModel):
    path: str
    kernel: str | None = None
    language: str | None = None
    cells: list[Cell]
    cell_count: int


class SearchHit(BaseModel):
    path: str
    cell_index: int
    cell_type: str
    line: int = Field(description="1-based line number inside the cell source.")
    snippet: str


class SearchResult(BaseModel):
    query: str
    hits: list[SearchHit]
    notebooks_scanned: int
    truncated: bool


class _Parsed:
    __slots__ = ("mtime_ns", "size", "notebook")

    def __init__(self, mtime_ns: int, size: int, notebook: Any) -> None:
        self.mtime_ns = mtime_ns
        self.size = size
        self.notebook = notebook


_TEXT_MIMES = ("text/plain", "text/markdown", "application/json", "text/html")
_BINARY_PREFIXES = ("image/", "application/vnd.jupyter.widget", "application/pdf", "video/", "audio/")


class NotebooksProvider(Provider):
    name = "notebooks"
    description = "Jupyter notebooks under the server root: list, read cells and outputs, full-text search."
    context_types = ["Notebook", "NotebookCell"]

    def __init__(self, root: str | Path, *, max_output_chars: int = 2000, max_notebooks: int = 5000) -> None:
        self.root = Path(root).resolve()
        self.max_output_chars = max_output_chars
        self.max_notebooks = max_notebooks
        self._cache: dict[Path, _Parsed] = {}
        self._lock = threading.Lock()

    # -- specs -------------------------------------------------------------------------------
    def tool_specs(self) -> list[ToolSpec]:
        return [
            ToolSpec(self.list_notebooks, "list", "List the notebooks under the server root.", "List notebooks"),
            ToolSpec(
                self.read_notebook,
                "read",
                "Read a notebook's cells and outputs. Long outputs are truncated; images are omitted.",
                "Read notebook",
            ),
            ToolSpec(
                self.search,
                "search",
                "Full-text search across every notebook's cells (case-insensitive; regex optional).",
                "Search notebooks",
            ),
        ]

    def prompt_specs(self) -> list[PromptSpec]:
        return [
            PromptSpec(
                self.explain_prompt,
                "explain",
                "Explain what a notebook does, cell by cell, with its results.",
                "Explain this notebook",
            )
        ]

    def resource_templates(self) -> list[ResourceTemplateSpec]:
        return [
            ResourceTemplateSpec(
                self.read_resource,
                NOTEBOOK_URI_SCHEME + "{+path}",
                "notebook",
                "A notebook under the server root, as JSON cells with outputs.",
            )
        ]

    # -- tools --------------------------------------------------------------------------------
    def list_notebooks(
        self,
        prefix: Annotated[str, Field(description="Only notebooks whose path starts with this folder.")] = "",
        limit: Annotated[int, Field(ge=1, le=5000)] = 200,
    ) -> NotebookList:
        infos = []
        paths = self._notebook_paths(prefix)
        for path in paths[:limit]:
            try:
                stat = path.stat()
                nb = self._load(path)
            except (OSError, ProviderError):
                continue
            spec = nb.metadata.get("kernelspec", {})
            infos.append(
                NotebookInfo(
                    path=relative_posix(self.root, path),
                    uri=NOTEBOOK_URI_SCHEME + relative_posix(self.root, path),
                    size_bytes=stat.st_size,
                    modified=datetime.fromtimestamp(stat.st_mtime, UTC),
                    cell_count=len(nb.cells),
                    kernel=spec.get("name"),
                    language=nb.metadata.get("language_info", {}).get("name") or spec.get("language"),
                )
            )
        return NotebookList(root=str(self.root), notebooks=infos, truncated=len(paths) > limit)

    def read_notebook(
        self,
        path: Annotated[str, Field(description="Notebook path relative to the server root.")],
        include_outputs: bool = True,
        max_output_chars: Annotated[int | None, Field(ge=0, le=200_000)] = None,
    ) -> NotebookContent:
        resolved = self._resolve_notebook(path)
        nb = self._load(resolved)
        limit = self.max_output_chars if max_output_chars is None else max_output_chars
        cells = [self._cell(i, cell, include_outputs, limit) for i, cell in enumerate(nb.cells)]
        spec = nb.metadata.get("kernelspec", {})
        return NotebookContent(
            path=relative_posix(self.root, resolved),
            kernel=spec.get("name"),
            language=nb.metadata.get("language_info", {}).get("name") or spec.get("language"),
            cells=cells,
            cell_count=len(cells),
        )

    async def search(
        self,
        query: Annotated[str, Field(min_length=1, max_length=500)],
        ctx: Context,
        regex: bool = False,
        prefix: str = "",
        limit: Annotated[int, Field(ge=1, le=1000)] = 50,
    ) -> SearchResult:
        try:
            pattern = re.compile(query if regex else re.escape(query), re.IGNORECASE)
        except re.error as exc:
            raise ProviderError(
                f"Invalid regular expression {query!r}: {exc}. Pass regex=false for plain text."
            ) from exc
        hits: list[SearchHit] = []
        paths = self._notebook_paths(prefix)
        truncated = False
        for n, path in enumerate(paths, start=1):
            try:
                nb = self._load(path)
            except ProviderError:
                continue
            rel = relative_posix(self.root, path)
            for index, cell in enumerate(nb.cells):
                for line_no, line in enumerate(cell.source.splitlines(), start=1):
                    if pattern.search(line):
                        hits.append(
                            SearchHit(
                                path=rel,
                                cell_index=index,
                                cell_type=cell.cell_type,
                                line=line_no,
                                snippet=line.strip()[:300],
                            )
                        )
                        if len(hits) >= limit:
                            truncated = True
                            break
                if truncated:
                    break
            if n % 25 == 0 or n == len(paths):
                await ctx.report_progress(n, len(paths), f"scanned {n} of {len(paths)} notebooks")
            if truncated:
                break
        return SearchResult(query=query, hits=hits, notebooks_scanned=n if paths else 0, truncated=truncated)

    # -- prompts and resources ----------------------------------------------------------------
    def explain_prompt(self, path: str) -> list[Message]:
        content = self.read_notebook(path, include_outputs=True)
        body = json.dumps(content.model_dump(mode="json"), indent=1)
        return [
            UserMessage(
                "Explain what this Jupyter notebook does for a colleague who has not seen it. Go cell by "
                "cell, say what each step computes and what its outputs show, and end with open "
                f"questions or risks.\n\nNotebook `{content.path}`:\n```json\n{body}\n```"
            )
        ]

    async def dynamic_resources(self) -> list[MCPResource]:
        listing = await asyncio.to_thread(self.list_notebooks, "", self.max_notebooks)
        return [
            MCPResource(
                uri=info.uri,
                name=info.path,
                mime_type="application/json",
                description=f"Notebook with {info.cell_count} cells ({info.kernel or 'no kernel'})",
            )
            for info in listing.notebooks
        ]

    def resource_versions(self) -> dict[str, Hashable]:
        versions: dict[str, Hashable] = {}
        for path in self._notebook_paths(""):
            try:
                stat = path.stat()
            except OSError:
                continue
            versions[NOTEBOOK_URI_SCHEME + relative_posix(self.root, path)] = (stat.st_mtime_ns, stat.st_size)
        return versions

    def read_resource(self, path: str) -> str:
        return self.read_notebook(path).model_dump_json()

    # -- internals ----------------------------------------------------------------------------
    def _resolve_notebook(self, path: str) -> Path:
        resolved = resolve_in_root(self.root, path)
        if resolved.suffix != ".ipynb":
            raise ProviderError(f"{path!r} is not a notebook: only .ipynb files can be read.")
        if not resolved.is_file():
            raise ProviderError(f"No notebook at {path!r}. Call notebooks__list to see what exists.")
        return resolved

    def _notebook_paths(self, prefix: str) -> list[Path]:
        start = resolve_in_root(self.root, prefix) if prefix else self.root
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
            for filename in sorted(filenames):
                if filename.endswith(".ipynb") and not filename.startswith("."):
                    path = Path(dirpath, filename)
                    if path.resolve().is_relative_to(self.root):
                        found.append(path)
            if len(found) >= self.max_notebooks:
                break
        return sorted(found)

    def _load(self, path: Path) -> Any:
        stat = path.stat()
        with self._lock:
            cached = self._cache.get(path)
            if cached and cached.mtime_ns == stat.st_mtime_ns and cached.size == stat.st_size:
                return cached.notebook
        try:
            notebook = nbformat.read(path, as_version=4)
        except Exception as exc:
            raise ProviderError(f"{relative_posix(self.root, path)} is not a readable notebook: {exc}") from exc
        with self._lock:
            self._cache[path] = _Parsed(stat.st_mtime_ns, stat.st_size, notebook)
        return notebook

    def _cell(self, index: int, cell: Any, include_outputs: bool, limit: int) -> Cell:
        outputs = [self._output(o, limit) for o in cell.get("outputs", [])] if include_outputs else []
        return Cell(
            index=index,
            cell_type=cell.cell_type,
            source=cell.source,
            execution_count=cell.get("execution_count"),
            outputs=outputs,
        )

    @staticmethod
    def _output(output: Any, limit: int) -> CellOutput:
        kind = output.get("output_type", "unknown")
        omitted: list[str] = []
        if kind == "stream":
            text = output.get("text", "")
        elif kind == "error":
            text = f"{output.get('ename', '')}: {output.get('evalue', '')}"
        else:
            data = output.get("data", {})
            text = ""
            for mime in _TEXT_MIMES:
                if mime in data:
                    value = data[mime]
                    text = value if isinstance(value, str) else json.dumps(value)
                    break
            omitted = [m for m in data if m.startswith(_BINARY_PREFIXES)]
        truncated = len(text) > limit
        return CellOutput(output_type=kind, text=text[:limit], truncated=truncated, omitted=omitted)
