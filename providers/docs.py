"""Document chunks as context: hybrid search over the workspace's docs and notebook markdown.

The index is built by the `rag_build` pipeline (or at server start for the configured sources)
and lives in a LanceDB folder (`providers/docs_index.py`). Each chunk is also a resource,
`docs://chunk/{chunk_id}`, that says where it comes from (file, heading or cell, lines).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from contextlab.providers.base import Provider, ProviderError, ResourceTemplateSpec, ToolSpec
from contextlab.providers.docs_index import DocIndex, DocIndexError

BUILD_HINT = (
    "Build it with `contextlab pipeline run rag_build` (or restart the server to index the configured sources)."
)


class DocChunk(BaseModel):
    """The `DocChunk` context type."""

    id: str
    doc_id: str = Field(description="The source file, relative to the workspace.")
    kind: Literal["markdown", "notebook", "text"]
    location: str = Field(description="Heading path (markdown) or 'cell N' (notebook).")
    start_line: int
    end_line: int
    text: str
    score: float
    uri: str = Field(description="The chunk as a resource: docs://chunk/<id>.")


class DocSearchResult(BaseModel):
    chunks: list[DocChunk]
    indexed_chunks: int


class DocIndexStatus(BaseModel):
    built: bool
    built_at: str | None
    documents: int
    chunks: int
    embedder: str
    hint: str | None = None


class DocsProvider(Provider):
    name = "docs"
    description = "Workspace documents (markdown, notebook markdown) as searchable chunks with their source location."
    context_types = ["DocChunk"]

    def __init__(self, index: DocIndex) -> None:
        self.index = index

    def tool_specs(self) -> list[ToolSpec]:
        return [
            ToolSpec(
                self.search,
                "search",
                "Search the workspace's documents and notebook notes (hybrid keyword and semantic search). "
                "Returns the best chunks with their file, heading or cell, and lines.",
                "Search documents",
            ),
            ToolSpec(self.status, "status", "What the document index holds and when it was built.", "Index status"),
        ]

    def resource_templates(self) -> list[ResourceTemplateSpec]:
        return [
            ResourceTemplateSpec(
                self.chunk_resource,
                "docs://chunk/{chunk_id}",
                "doc_chunk",
                "One document chunk with its source location (file, heading or cell, lines).",
            )
        ]

    async def search(
        self,
        query: Annotated[str, Field(min_length=1, max_length=2000, description="What to look for.")],
        k: Annotated[int, Field(ge=1, le=50, description="How many chunks.")] = 5,
        path: Annotated[str | None, Field(max_length=500, description="Only files matching this glob.")] = None,
        kind: Literal["markdown", "notebook", "text"] | None = None,
        doc_id: Annotated[str | None, Field(max_length=1000, description="Only this file.")] = None,
    ) -> DocSearchResult:
        if not query.strip():
            raise ProviderError("query is empty: say what to look for.")
        try:
            hits = await asyncio.to_thread(self.index.search, query, k, path=path, kind=kind, doc_id=doc_id)
            total = len(self.index._chunks)
        except DocIndexError as exc:
            raise ProviderError(str(exc)) from exc
        if total == 0:
            raise ProviderError(f"The document index is empty. {BUILD_HINT}")
        return DocSearchResult(chunks=[_chunk(c) for c in hits], indexed_chunks=total)

    async def status(self) -> DocIndexStatus:
        try:
            info = await asyncio.to_thread(self.index.status)
        except DocIndexError as exc:
            raise ProviderError(str(exc)) from exc
        return DocIndexStatus(
            built=info["built"],
            built_at=info["built_at"],
            documents=info["documents"],
            chunks=info["chunks"],
            embedder=info["embedder"],
            hint=None if info["chunks"] else BUILD_HINT,
        )

    async def chunk_resource(self, chunk_id: str) -> str:
        chunk = await asyncio.to_thread(self.index.get, chunk_id)
        if chunk is None:
            raise ProviderError(f"No chunk {chunk_id!r}; search with docs__search to get current ids.")
        return json.dumps(_chunk(chunk).model_dump())


def _chunk(chunk: object) -> DocChunk:
    data = chunk.to_dict()
    return DocChunk(**{k: data[k] for k in DocChunk.model_fields if k != "uri"}, uri=f"docs://chunk/{data['id']}")


def default_index(state_dir: str | Path) -> DocIndex:
    return DocIndex(Path(state_dir) / "docs-index")
