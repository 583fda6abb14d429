"""The docs provider: its tools and chunk resources on a real index, inside a real Jupyter server through the
official MCP client, and as context for the Copilot's recipes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import anyio
import pytest

from contextlab.copilot.context import ContextClient, Endpoint
from contextlab.copilot.recipes import ContextRecipe, run_recipe
from contextlab.providers.base import ProviderError
from contextlab.providers.docs import DocsProvider
from contextlab.providers.docs_index import DocIndex
from contextlab.workspace import create_demo_workspace
from tests.support.server import error_text, mcp_session, start_server, structured, wait_for


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = create_demo_workspace(tmp_path_factory.mktemp("ws"))
    (root / "docs" / "runbook.md").write_text(
        "# Runbook\n\n## Paging\n\nPage the data on-call after 10 minutes of a failed load.\n"
    )
    return root


def test_tools_before_and_after_a_build(root: Path, tmp_path: Path) -> None:
    index = DocIndex(tmp_path / "ix")
    provider = DocsProvider(index)
    with pytest.raises(ProviderError, match="No document index at .* yet: run `contextlab docs build`"):
        asyncio.run(provider.search("revenue"))
    status = asyncio.run(provider.status())
    assert not status.built and status.hint and "contextlab docs build" in status.hint
    assert asyncio.run(provider.sources()).documents == []

    index.build(root, progress=False)
    result = asyncio.run(provider.search("who do we page when a load fails", k=2))
    top = result.chunks[0]
    assert (top.doc_id, top.location, top.start_line) == ("docs/runbook.md", "Runbook > Paging", 3)
    assert top.uri == f"docs://chunk/{top.id}" and result.indexed_chunks == len(index)
    resource = json.loads(asyncio.run(provider.chunk_resource(top.id)))
    assert resource["location"] == top.location and resource["end_line"] == top.end_line
    with pytest.raises(ProviderError, match="No chunk 'nope'"):
        asyncio.run(provider.chunk_resource("nope"))
    sources = asyncio.run(provider.sources())
    assert {d.doc_id for d in sources.documents} >= {"docs/runbook.md", "sales_overview.ipynb"}
    assert sources.chunks == len(index) and sources.hint is None
    status = asyncio.run(provider.status())
    assert status.built and status.chunks == len(index) and status.chunk_size == 200 and status.hint is None
    with pytest.raises(ProviderError, match="no document 'x.md' is indexed"):
        asyncio.run(provider.search("revenue", doc_id="x.md"))
    with pytest.raises(ProviderError, match="query is empty"):
        asyncio.run(provider.search("  "))

    manifest = provider.manifest()
    assert manifest.context_types == ["DocChunk"] and manifest.resource_templates == ["docs://chunk/{chunk_id}"]
    search = next(t for t in manifest.tools if t.name == "docs__search")
    assert search.input_schema["properties"]["k"]["maximum"] == 50
    assert {t.name for t in manifest.tools} == {"docs__search", "docs__sources", "docs__status"}


def test_an_index_of_nothing_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    index = DocIndex(tmp_path / "ix")
    report = index.build(tmp_path / "empty", progress=False)
    assert report.chunks_total == 0 and report.unmatched_sources == ["**/*.md", "**/*.ipynb"]
    with pytest.raises(ProviderError, match="The document index is empty: no file matched its sources"):
        asyncio.run(DocsProvider(index).search("revenue"))


@pytest.fixture(scope="module")
def docs_server(root: Path, tmp_path_factory: pytest.TempPathFactory):
    server = start_server(
        root,
        tmp_path_factory.mktemp("docs-home"),
        extra_args=["--ContextLab.providers=docs", "--ContextLab.providers=sql"],
    )
    yield server
    server.stop()


def call(server, tool: str, arguments: dict) -> object:
    async def go():
        async with mcp_session(server.mcp_url, server.token) as client:
            return await client.call_tool(tool, arguments)

    return anyio.run(go)


def read(server, uri: str) -> str:
    async def go():
        async with mcp_session(server.mcp_url, server.token) as client:
            return (await client.read_resource(uri)).contents[0].text

    return anyio.run(go)


def test_the_server_indexes_the_workspace_and_serves_search(docs_server) -> None:
    # The server builds the index in the background at start; a search that comes first says so at once.
    early = call(docs_server, "docs__search", {"query": "revenue"})
    assert not early.is_error or "is being built" in error_text(early) or "yet" in error_text(early)
    built = wait_for(lambda: structured(call(docs_server, "docs__status", {}))["built"], timeout=120)
    assert built, docs_server.log_text()[-3000:]
    status = structured(call(docs_server, "docs__status", {}))
    assert status["documents"] == 6 and status["chunks_by_kind"]["notebook"] >= 2
    page = structured(call(docs_server, "docs__search", {"query": "how is revenue defined", "k": 3}))
    assert "docs/metrics.md" in [c["doc_id"] for c in page["chunks"]] and len(page["chunks"]) == 3
    notebook = structured(call(docs_server, "docs__search", {"query": "excluded orders", "kind": "notebook"}))
    assert all(c["kind"] == "notebook" and c["cell"] is not None for c in notebook["chunks"])
    chunk = json.loads(read(docs_server, page["chunks"][0]["uri"]))
    assert chunk["id"] == page["chunks"][0]["id"] and chunk["start_line"] >= 1
    sources = structured(call(docs_server, "docs__sources", {}))
    assert "docs/runbook.md" in [d["doc_id"] for d in sources["documents"]]
    assert (docs_server.root / ".contextlab" / "docs-index" / "manifest.json").exists()

    assert "less than or equal to 50" in error_text(call(docs_server, "docs__search", {"query": "x", "k": 51}))
    assert "greater than or equal to 1" in error_text(call(docs_server, "docs__search", {"query": "x", "k": 0}))
    assert "at least 1 character" in error_text(call(docs_server, "docs__search", {"query": ""}))
    assert "notebook" in error_text(call(docs_server, "docs__search", {"query": "x", "kind": "pdf"}))
    unknown = error_text(call(docs_server, "docs__search", {"query": "x", "doc_id": "../../etc/passwd"}))
    assert "no document '../../etc/passwd' is indexed" in unknown


RECIPE = """
name: analyst
budget_tokens: 4000
steps:
  - tool: sql__schema
    title: Database schema
    priority: 1
  - tool: docs__search
    arguments: {query: "{{ request }}", k: 3}
    title: Related documentation
    priority: 4
    top_k: 2
    when: {target: [sql, python]}
"""


def test_recipes_put_document_chunks_with_their_source_in_the_context(docs_server) -> None:
    wait_for(lambda: structured(call(docs_server, "docs__status", {}))["built"], timeout=120)
    client = ContextClient(Endpoint(docs_server.mcp_url, docs_server.token))
    recipe = ContextRecipe.parse(RECIPE)
    gathered = run_recipe(recipe, client, target="sql", request="revenue of delivered orders")
    docs = [item for item in gathered.items if item.source == "docs__search"]
    assert len(docs) == 2 and all(item.title == "Related documentation" for item in docs)
    assert any(item.text.startswith("[docs/metrics.md > Metric definitions, lines 1-5]\n") for item in docs)
    assert "condition not met" in run_recipe(recipe, client, target="er", request="revenue").skipped[0]
