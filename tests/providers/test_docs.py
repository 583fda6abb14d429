"""The document index (llama-index chunking, LanceDB, hybrid search) and the docs provider."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from contextlab.providers.base import ProviderError
from contextlab.providers.docs import DocsProvider
from contextlab.providers.docs_index import DocIndex, DocIndexCorrupted
from contextlab.workspace import create_demo_workspace


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    root = create_demo_workspace(tmp_path / "ws")
    (root / "docs" / "runbook.md").write_text(
        "# Runbook\n\n## Restarting the warehouse\n\nStop the loader, then run `make restart`.\n"
        "Wait for the green light on the dashboard.\n\n## Paging\n\nPage the data on-call after 10 minutes.\n"
    )
    return root


def test_build_chunks_with_source_locations_and_searches(workspace: Path, tmp_path: Path) -> None:
    index = DocIndex(tmp_path / "ix")
    report = index.build(workspace, progress=False)
    assert "docs/runbook.md" in report.added and "sales_overview.ipynb" in report.added
    assert report.chunks_total == report.chunks_written > 5
    hit = index.search("how do I restart the warehouse", k=3)[0]
    assert hit.doc_id == "docs/runbook.md" and hit.location == "Runbook > Restarting the warehouse"
    assert hit.start_line == 3 and hit.end_line >= 5 and "make restart" in hit.text
    notebook = index.search("cancelled and returned orders", k=5, kind="notebook")
    assert notebook and all(c.kind == "notebook" and c.location.startswith("cell ") for c in notebook)
    assert all(c.doc_id.startswith("docs/") for c in index.search("revenue", k=5, path="docs/*"))
    assert [c.doc_id for c in index.search("revenue", k=5, doc_id="docs/metrics.md")] == ["docs/metrics.md"]


def test_ingestion_is_incremental(workspace: Path, tmp_path: Path) -> None:
    index = DocIndex(tmp_path / "ix")
    first = index.build(workspace, progress=False)
    again = index.build(workspace, progress=False)
    assert again.added == again.updated == again.removed == [] and again.skipped == len(first.added)
    assert again.chunks_written == 0 and again.chunks_total == first.chunks_total
    (workspace / "docs" / "runbook.md").write_text("# Runbook\n\nEverything moved to the wiki.\n")
    (workspace / "docs" / "metrics.md").unlink()
    changed = index.build(workspace, progress=False)
    assert changed.updated == ["docs/runbook.md"] and changed.removed == ["docs/metrics.md"]
    assert not index.search("restart the warehouse", k=5, doc_id="docs/runbook.md")[0].text.count("make restart")
    assert index.search("revenue definition", k=10, doc_id="docs/metrics.md") == []
    # Another process's rebuild is seen: a fresh handle on the folder reads the same chunks.
    assert DocIndex(tmp_path / "ix").status()["chunks"] == changed.chunks_total


def test_bad_input(workspace: Path, tmp_path: Path) -> None:
    index = DocIndex(tmp_path / "ix")
    index.build(workspace, progress=False)
    with pytest.raises(ValueError, match="query is empty"):
        index.search("  ")
    with pytest.raises(ValueError, match="k must be between 1 and 100"):
        index.search("x", k=0)
    with pytest.raises(ValueError, match="unknown kind 'pdf'"):
        index.search("x", kind="pdf")
    with pytest.raises(ValueError, match="leaves the workspace"):
        index.build(workspace, ["../outside/*.md"], progress=False)
    with pytest.raises(ValueError, match="leaves the workspace"):
        index.build(workspace, ["/etc/*.conf"], progress=False)
    with pytest.raises(ValueError, match="chunk_size"):
        DocIndex(tmp_path / "x", chunk_size=5)


def test_a_corrupted_index_says_how_to_rebuild(workspace: Path, tmp_path: Path) -> None:
    index = DocIndex(tmp_path / "ix")
    index.build(workspace, progress=False)
    files = [p for p in (tmp_path / "ix" / "lance").rglob("*") if p.is_file()]
    assert files
    for data in files:  # every data, manifest and version file of the table is garbage now
        data.write_bytes(b"not a lance file")
    broken = DocIndex(tmp_path / "ix")
    with pytest.raises(DocIndexCorrupted, match="cannot be read.*rebuild true"):
        broken.search("revenue")
    (tmp_path / "ix" / "manifest.json").write_text("{not json")
    with pytest.raises(DocIndexCorrupted, match="manifest is not JSON"):
        DocIndex(tmp_path / "ix").status()
    rebuilt = DocIndex(tmp_path / "ix").build(workspace, rebuild=True, progress=False)
    assert rebuilt.chunks_total > 5 and DocIndex(tmp_path / "ix").search("revenue", k=1)


def test_provider_tools_and_chunk_resources(workspace: Path, tmp_path: Path) -> None:
    index = DocIndex(tmp_path / "ix")
    provider = DocsProvider(index)
    with pytest.raises(ProviderError, match="index is empty.*rag_build"):
        asyncio.run(provider.search("revenue"))
    assert asyncio.run(provider.status()).hint
    index.build(workspace, progress=False)
    result = asyncio.run(provider.search("page the on-call", k=2))
    top = result.chunks[0]
    assert top.doc_id == "docs/runbook.md" and top.uri == f"docs://chunk/{top.id}"
    resource = json.loads(asyncio.run(provider.chunk_resource(top.id)))
    assert resource["location"] == top.location and resource["start_line"] == top.start_line
    with pytest.raises(ProviderError, match="No chunk 'nope'"):
        asyncio.run(provider.chunk_resource("nope"))
    manifest = provider.manifest()
    assert manifest.context_types == ["DocChunk"] and manifest.resource_templates == ["docs://chunk/{chunk_id}"]
