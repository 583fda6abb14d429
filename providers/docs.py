"""Document chunks as context: hybrid search over the workspace's docs and notebook markdown.

The index lives in a LanceDB folder (`providers/docs_index.py`) and is built by the server at start
(the configured sources, incrementally), by `contextlab docs build`, or by the `rag_build` pipeline.
Each chunk is also a resource, `docs://chunk/{chunk_id}`, that says where it comes from (file,
heading or notebook cell, lines).

Served on its own (`python -m contextlab.providers.serve contextlab.providers.docs:DocsProvider`) it
reads `$CONTEXTLAB_DOCS_INDEX`, else `.contextlab/docs-index` under the current folder.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from contextlab.providers.base import Provider, ProviderError, ResourceTemplateSpec, ToolSpec
from contextlab.providers.docs_index import BUILD_HINT, Chunk, DocIndex, DocIndexError

Kind = Literal["markdown", "notebook", "text"]


def default_index_path(workspace: str | Path) -> Path:
    """Where a workspace's document index lives unless configured: `<workspace>/.contextlab/docs-index`
    (the server's `<state_dir>/docs-index` with the default state folder)."""
    return Path(workspace) / ".contextlab" / "docs-index"


class DocChunk(BaseModel):
    """The `DocChunk` context type: a piece of a document and its source location."""

    id: str
    doc_id: str = Field(description="The source file, relative to the workspace.")
    kind: Kind
    path: str = Field(description="The file path relative to the workspace (what the `path` filter matches).")
    location: str = Field(description="Heading path (markdown), or 'cell N' and its heading (notebook).")
    heading: str = Field(description="The markdown heading path, 'A > B'; empty if none.")
    cell: int | None = Field(None, description="The notebook cell index, for notebook chunks.")
    start_line: int = Field(description="First line, 1-based, in the file (in the cell's source for notebooks).")
    end_line: int
    text: str
    score: float = Field(description="Fused rank score (reciprocal-rank fusion of keyword and semantic search).")
    uri: str = Field(description="The chunk as a resource: docs://chunk/<id>.")

    @classmethod
    def of(cls, chunk: Chunk) -> DocChunk:
        return cls(**chunk.to_dict(), uri=f"docs://chunk/{chunk.id}")


class DocSearchResult(BaseModel):
    query: str
    chunks: list[DocChunk]
    indexed_chunks: int


class DocSource(BaseModel):
    doc_id: str
    kind: Kind
    chunks: int
    indexed_at: str | None = None


class DocSources(BaseModel):
    documents: list[DocSource]
    chunks: int
    hint: str | None = Field(None, description="What to do when nothing is indexed.")


class DocIndexStatus(BaseModel):
    built: bool
    building: bool
    built_at: str | None
    documents: int
    chunks: int
    chunks_by_kind: dict[str, int]
    embedder: str
    chunk_size: int
    chunk_overlap: int
    hint: str | None = Field(None, description="What to do when nothing is indexed.")


class DocsProvider(Provider):
    name = "docs"
    description = (
        "Workspace documents (markdown files and notebook markdown cells) as searchable chunks with their "
        "source location."
    )
    context_types = ["DocChunk"]

    def __init__(self, index: DocIndex | None = None) -> None:
        if index is None:
            index = DocIndex(os.environ.get("CONTEXTLAB_DOCS_INDEX") or default_index_path(Path.cwd()))
        self.index = index

    def tool_specs(self) -> list[ToolSpec]:
        return [
            ToolSpec(
                self.search,
                "search",
                "Search the workspace's documents and notebook notes (keyword and semantic search combined): "
                "metric definitions, data dictionaries, runbooks. Returns the best chunks, each with its file, "
                "heading or notebook cell, and lines. Filter by a path glob, a kind or one document.",
                "Search documents",
            ),
            ToolSpec(
                self.sources,
                "sources",
                "The documents the index holds, with their kind and number of chunks (the values the "
                "`doc_id` and `path` filters of docs__search take).",
                "Indexed documents",
            ),
            ToolSpec(
                self.status,
                "status",
                "Whether the document index is built, when, what it holds and how it chunks.",
                "Document index status",
            ),
        ]

    def resource_templates(self) -> list[ResourceTemplateSpec]:
        return [
            ResourceTemplateSpec(
                self.chunk_resource,
                "docs://chunk/{chunk_id}",
                "doc_chunk",
                "One document chunk with its source location (file, heading or notebook cell, lines).",
            )
        ]

    async def search(
        self,
        query: Annotated[str, Field(min_length=1, max_length=2000, description="What to look for.")],
        k: Annotated[int, Field(ge=1, le=50, description="How many chunks to return.")] = 5,
        path: Annotated[
            str | None, Field(max_length=500, description="Only documents whose path matches this glob.")
        ] = None,
        kind: Annotated[Kind | None, Field(description="Only chunks of this kind.")] = None,
        doc_id: Annotated[str | None, Field(max_length=1000, description="Only this document.")] = None,
    ) -> DocSearchResult:
        if not query.strip():
            raise ProviderError("query is empty: say what to look for.")
        try:
            hits = await asyncio.to_thread(self.index.search, query, k, path=path, kind=kind, doc_id=doc_id)
        except (DocIndexError, ValueError) as exc:
            raise ProviderError(str(exc)) from exc
        total = len(self.index)
        if total == 0:
            raise ProviderError(f"The document index is empty: no file matched its sources. {BUILD_HINT.capitalize()}.")
        return DocSearchResult(query=query, chunks=[DocChunk.of(c) for c in hits], indexed_chunks=total)

    async def sources(self) -> DocSources:
        try:
            documents = await asyncio.to_thread(self.index.documents)
        except DocIndexError as exc:
            raise ProviderError(str(exc)) from exc
        entries = [
            DocSource(doc_id=d["doc_id"], kind=d["kind"], chunks=d["chunks"], indexed_at=d.get("indexed_at"))
            for d in documents
        ]
        total = sum(e.chunks for e in entries)
        return DocSources(documents=entries, chunks=total, hint=None if total else _hint(self.index))

    async def status(self) -> DocIndexStatus:
        try:
            info = await asyncio.to_thread(self.index.status)
        except DocIndexError as exc:
            raise ProviderError(str(exc)) from exc
        return DocIndexStatus(
            built=info["built"],
            building=info["building"],
            built_at=info["built_at"],
            documents=info["documents"],
            chunks=info["chunks"],
            chunks_by_kind=info["chunks_by_kind"],
            embedder=info["embedder"],
            chunk_size=info["settings"]["chunk_size"],
            chunk_overlap=info["settings"]["chunk_overlap"],
            hint=None if info["chunks"] else _hint(self.index),
        )

    async def chunk_resource(self, chunk_id: str) -> str:
        try:
            chunk = await asyncio.to_thread(self.index.get, chunk_id)
        except DocIndexError as exc:
            raise ProviderError(str(exc)) from exc
        if chunk is None:
            raise ProviderError(f"No chunk {chunk_id!r} in the document index; docs__search returns current ids.")
        return json.dumps(DocChunk.of(chunk).model_dump())


def _hint(index: DocIndex) -> str:
    if index.building:
        return "The index is being built; try again shortly."
    return f"Nothing is indexed yet: {BUILD_HINT} (the server also indexes its configured sources at start)."
