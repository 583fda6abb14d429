"""The document index: llama-index ingestion into LanceDB, incremental builds, hybrid search with filters,
corruption and rebuild, and searches that never wait for a build."""

from __future__ import annotations

import pickle
import socket
import threading
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from contextlab.extension.tool_index import WordLlamaEmbedder
from contextlab.providers.docs_index import (
    DocIndex,
    DocIndexCorrupted,
    DocIndexError,
    DocIndexNotBuilt,
    collect_files,
    make_embedder,
    word_tokens,
)
from contextlab.workspace import create_demo_workspace

RUNBOOK = """# Runbook

## Restarting the warehouse

Stop the loader, then run `make restart`.
Wait for the green light on the dashboard.

## Paging

Page the data on-call after 10 minutes.

```python
# a comment, not a heading
retries = 3
```
"""


def _workspace(root: Path) -> Path:
    create_demo_workspace(root)
    (root / "docs" / "runbook.md").write_text(RUNBOOK)
    notes = root / "notes"
    notes.mkdir()
    (notes / "glossary.txt").write_text("Churn: a customer who cancels the pro or enterprise plan.\n")
    nbformat.write(
        new_notebook(
            cells=[
                new_markdown_cell("# Forecast\nWe forecast weekly revenue with a seasonal model."),
                new_code_cell("print('hello')"),
                new_markdown_cell("## Caveats\nHolidays shift demand by up to two weeks.\nRetrain monthly."),
            ]
        ),
        root / "forecast.ipynb",
    )
    hidden = root / ".private"
    hidden.mkdir()
    (hidden / "secret.md").write_text("# Secret\nThe launch code is 1234.\n")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> DocIndex:
    root = _workspace(tmp_path_factory.mktemp("ws"))
    index = DocIndex(tmp_path_factory.mktemp("ix") / "index")
    index.build(root, ["**/*.md", "**/*.ipynb", "notes"], progress=False)
    return index


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    return _workspace(tmp_path / "ws")


def test_chunks_record_their_source_location(built: DocIndex) -> None:
    chunks = {(c.doc_id, c.location): c for c in built.chunks()}
    restart = chunks[("docs/runbook.md", "Runbook > Restarting the warehouse")]
    assert (restart.kind, restart.heading, restart.cell) == ("markdown", "Runbook > Restarting the warehouse", None)
    assert (restart.start_line, restart.end_line) == (3, 6) and "make restart" in restart.text
    paging = chunks[("docs/runbook.md", "Runbook > Paging")]
    assert paging.start_line == 8 and "# a comment, not a heading" in paging.text  # no heading inside code
    caveats = chunks[("forecast.ipynb", "cell 2 > Caveats")]
    assert (caveats.kind, caveats.cell, caveats.start_line, caveats.end_line) == ("notebook", 2, 1, 3)
    glossary = chunks[("notes/glossary.txt", "")]
    assert glossary.kind == "text" and glossary.heading == "" and glossary.start_line == 1
    assert not any(c.doc_id.startswith(".private") for c in built.chunks())
    assert all(len(c.id) == 24 and c.path == c.doc_id for c in built.chunks())
    assert built.get(restart.id) == restart and built.get("nope") is None


def test_hybrid_search_ranks_and_filters(built: DocIndex) -> None:
    hits = built.search("how do I restart the warehouse", k=3)
    assert hits[0].location == "Runbook > Restarting the warehouse" and len(hits) == 3
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert built.search("what shifts demand around holidays", k=1)[0].doc_id == "forecast.ipynb"
    assert built.search("who counts as churned", k=1)[0].doc_id == "notes/glossary.txt"
    notebook = built.search("revenue", k=10, kind="notebook")
    assert notebook and all(c.kind == "notebook" and c.cell is not None for c in notebook)
    assert {c.doc_id for c in built.search("revenue", k=10, path="docs/*")} <= {
        "docs/metrics.md",
        "docs/README.md",
        "docs/data_dictionary.md",
        "docs/runbook.md",
    }
    assert {c.doc_id for c in built.search("revenue", k=10, doc_id="docs/metrics.md")} == {"docs/metrics.md"}
    assert built.search("revenue", k=5, path="*.ipynb", kind="markdown") == []
    status = built.status()
    assert status["built"] and status["documents"] == 8 and status["chunks"] == len(built)
    assert status["chunks_by_kind"]["text"] == 1 and status["sources"] == ["**/*.md", "**/*.ipynb", "notes"]
    assert {d["doc_id"] for d in built.documents()} >= {"docs/runbook.md", "forecast.ipynb", "notes/glossary.txt"}


def test_a_pickled_copy_opens_the_same_folder(built: DocIndex) -> None:
    copy = pickle.loads(pickle.dumps(built))
    assert copy.path == built.path
    query = "which order statuses count as revenue"
    assert [c.id for c in copy.search(query, k=4)] == [c.id for c in built.search(query, k=4)]


def test_ingestion_is_incremental(workspace: Path, tmp_path: Path) -> None:
    index = DocIndex(tmp_path / "ix")
    first = index.build(workspace, progress=False)
    assert sorted(first.added) == sorted(
        ["docs/README.md", "docs/metrics.md", "docs/data_dictionary.md", "docs/runbook.md"]
        + ["sales_overview.ipynb", "data_quality.ipynb", "forecast.ipynb"]
    )
    assert first.chunks_total == first.chunks_written == len(index) > 7
    ids = {c.id for c in index.chunks()}
    again = index.build(workspace, progress=False)
    assert (again.added, again.updated, again.removed, again.skipped) == ([], [], [], 7)
    assert again.chunks_written == 0 and {c.id for c in index.chunks()} == ids

    other = DocIndex(tmp_path / "ix")  # another handle (another process, say) on the same folder
    assert len(other) == first.chunks_total
    (workspace / "docs" / "runbook.md").write_text("# Runbook\n\nEverything moved to the wiki.\n")
    (workspace / "docs" / "metrics.md").unlink()
    changed = other.build(workspace, progress=False)
    assert changed.updated == ["docs/runbook.md"] and changed.removed == ["docs/metrics.md"]
    assert changed.chunks_removed == 3 and changed.chunks_written == 1 and changed.skipped == 5
    # The first handle notices the other's build and reloads.
    runbook = index.search("restart the warehouse", k=5, doc_id="docs/runbook.md")
    assert [c.text for c in runbook] == ["# Runbook\n\nEverything moved to the wiki."]
    with pytest.raises(ValueError, match="no document 'docs/metrics.md' is indexed"):
        index.search("revenue", doc_id="docs/metrics.md")
    # Without sources, a build uses the last build's.
    narrowed = index.build(workspace, ["docs"], progress=False)
    assert sorted(narrowed.removed) == ["data_quality.ipynb", "forecast.ipynb", "sales_overview.ipynb"]
    assert index.build(workspace, progress=False).skipped == 3 and index.status()["sources"] == ["docs"]


def test_other_chunking_reindexes_everything(workspace: Path, tmp_path: Path) -> None:
    DocIndex(tmp_path / "ix").build(workspace, ["docs/*.md"], progress=False)
    fine = DocIndex(tmp_path / "ix", chunk_size=64, chunk_overlap=10, splitter="sentence")
    report = fine.build(workspace, ["docs/*.md"], progress=False)
    assert len(report.added) == 4 and report.skipped == 0 and report.reingested.startswith("the chunking")
    assert all(c.heading == "" for c in fine.chunks())  # the sentence splitter ignores headings
    reopened = DocIndex(tmp_path / "ix")  # settings left out: the folder's are kept
    assert reopened.settings(reopened.manifest())["chunk_size"] == 64
    assert reopened.build(workspace, ["docs/*.md"], progress=False).skipped == 4


def test_long_documents_are_split_with_overlap(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    sentences = [f"Sentence number {i} talks about topic{i} in some detail here." for i in range(60)]
    (tmp_path / "ws" / "long.md").write_text("# Long\n\n" + "\n".join(sentences) + "\n")
    index = DocIndex(tmp_path / "ix", chunk_size=64, chunk_overlap=16)
    index.build(tmp_path / "ws", ["*.md"], progress=False)
    chunks = sorted(index.chunks(), key=lambda c: c.start_line)
    assert len(chunks) >= 6 and all(len(word_tokens(c.text)) <= 64 for c in chunks)
    assert all(a.end_line >= b.start_line for a, b in zip(chunks, chunks[1:], strict=False))  # they overlap
    for chunk in chunks:  # the recorded lines hold the chunk's first and last sentence
        lines = (tmp_path / "ws" / "long.md").read_text().splitlines()
        assert chunk.text.splitlines()[0] in lines[chunk.start_line - 1]
        assert chunk.text.splitlines()[-1] in lines[chunk.end_line - 1]
    hit = index.search("topic42", k=1)[0]
    assert "topic42" in hit.text


def test_sources_stay_inside_the_workspace(workspace: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "leak.md").write_text("# Leak\nSecret outside the workspace.\n")
    (workspace / "docs" / "link.md").symlink_to(outside / "leak.md")
    files, unmatched = collect_files(workspace, ["docs/*.md", str(workspace / "notes"), "*.pdf"])
    assert "docs/link.md" not in files and "docs/runbook.md" in files and "notes/glossary.txt" in files
    assert unmatched == ["*.pdf"]
    for source in ["../outside/*.md", "docs/../../outside/*.md", "/etc/*.conf", str(outside)]:
        with pytest.raises(ValueError, match="leaves the workspace"):
            collect_files(workspace, [source])
    with pytest.raises(ValueError, match="a source is empty"):
        collect_files(workspace, [" "])
    with pytest.raises(TypeError, match="not one string"):
        collect_files(workspace, "**/*.md")
    (workspace / "broken.ipynb").write_text("{not json")
    report = DocIndex(tmp_path / "ix").build(workspace, ["docs/*.md", "broken.ipynb", "*.pdf"], progress=False)
    assert report.unmatched_sources == ["*.pdf"] and "matched no markdown" in report.summary()
    assert report.failed["broken.ipynb"].startswith("cannot be parsed")
    assert "not indexed: broken.ipynb" in report.summary()
    assert report.documents == 4 and "broken.ipynb" not in report.added


def test_bad_queries_and_settings(built: DocIndex, tmp_path: Path) -> None:
    for query in ["", "   ", None]:
        with pytest.raises(ValueError, match="query is empty"):
            built.search(query)
    for k in [0, 101, -1, True, 2.5]:
        with pytest.raises(ValueError, match="k must be an integer between 1 and 100"):
            built.search("revenue", k=k)
    with pytest.raises(ValueError, match="unknown kind 'pdf'"):
        built.search("revenue", kind="pdf")
    with pytest.raises(ValueError, match="no document 'docs/absent.md' is indexed"):
        built.search("revenue", doc_id="docs/absent.md")
    with pytest.raises(ValueError, match="no indexed document matches the path 'reports/\\*'"):
        built.search("revenue", path="reports/*")
    with pytest.raises(ValueError, match="chunk_size must be an integer of at least 64"):
        DocIndex(tmp_path / "x", chunk_size=10)
    with pytest.raises(ValueError, match="chunk_overlap must be"):
        DocIndex(tmp_path / "x", chunk_size=100, chunk_overlap=60)
    with pytest.raises(ValueError, match="unknown splitter 'token'"):
        DocIndex(tmp_path / "x", splitter="token")
    with pytest.raises(ValueError, match="unknown embedder 'openai'"):
        DocIndex(tmp_path / "x", embedder="openai")
    with pytest.raises(ValueError, match="is not a folder"):
        DocIndex(tmp_path / "x").build(tmp_path / "missing")


def test_a_missing_index_says_how_to_build_it(tmp_path: Path) -> None:
    index = DocIndex(tmp_path / "never-built")
    with pytest.raises(DocIndexNotBuilt, match="No document index at .* yet: run `contextlab docs build`"):
        index.search("revenue")
    assert index.status()["built"] is False and len(index) == 0 and index.get("x") is None
    assert index.documents() == [] and index.chunks() == []


def test_a_corrupted_index_says_how_to_rebuild(workspace: Path, tmp_path: Path) -> None:
    index = DocIndex(tmp_path / "ix")
    index.build(workspace, progress=False)
    data = [f for f in sorted((tmp_path / "ix" / "lance").rglob("*.lance")) if f.is_file()]
    assert data
    for file in data:  # cut every data file in half
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(DocIndexCorrupted, match="cannot be read.*contextlab docs build --rebuild"):
        DocIndex(tmp_path / "ix").search("revenue")
    with pytest.raises(DocIndexCorrupted):
        DocIndex(tmp_path / "ix").build(workspace, progress=False)  # an incremental build refuses too
    for file in (tmp_path / "ix" / "lance").rglob("*"):
        if file.is_file():
            file.write_bytes(b"not a lance file")
    with pytest.raises(DocIndexCorrupted, match="cannot be read"):
        DocIndex(tmp_path / "ix").status()
    (tmp_path / "ix" / "manifest.json").write_text("{not json")
    with pytest.raises(DocIndexCorrupted, match="manifest cannot be read"):
        DocIndex(tmp_path / "ix").search("revenue")
    rebuilt = DocIndex(tmp_path / "ix").build(workspace, rebuild=True, progress=False)
    assert rebuilt.chunks_total > 7 and len(rebuilt.added) == 7 and rebuilt.reingested == "a rebuild was asked for"
    assert DocIndex(tmp_path / "ix").search("restart the warehouse", k=1)[0].doc_id == "docs/runbook.md"


def test_a_missing_table_is_corruption(workspace: Path, tmp_path: Path) -> None:
    import shutil

    DocIndex(tmp_path / "ix").build(workspace, ["docs/*.md"], progress=False)
    shutil.rmtree(tmp_path / "ix" / "lance")
    with pytest.raises(DocIndexCorrupted, match="its chunk table is missing"):
        DocIndex(tmp_path / "ix").search("revenue")


class GatedEmbedder:
    """wordllama embeddings that stop at texts holding GATE until released: a build frozen mid-way."""

    name = "gated-wordllama"

    def __init__(self) -> None:
        self.inner = WordLlamaEmbedder()
        self.dim = self.inner.dim
        self.entered = threading.Event()
        self.release = threading.Event()

    def embed(self, texts):
        if any("GATE" in text for text in texts):
            self.entered.set()
            self.release.wait(120)
        return self.inner.embed(texts)


def test_searches_never_wait_for_a_build(workspace: Path, tmp_path: Path) -> None:
    gated = GatedEmbedder()
    index = DocIndex(tmp_path / "ix", embedder=gated)
    (workspace / "docs" / "gate.md").write_text("# Gate\nGATE one.\n")

    def build() -> None:
        index.build(workspace, ["docs/*.md"], progress=False)

    first = threading.Thread(target=build)
    first.start()
    try:
        assert gated.entered.wait(120)
        with pytest.raises(DocIndexNotBuilt, match="is being built"):
            index.search("restart the warehouse")
        assert index.status()["building"] is True
    finally:
        gated.release.set()
        first.join(120)
    assert index.search("restart the warehouse", k=1)[0].doc_id == "docs/runbook.md"

    gated.entered.clear()
    gated.release.clear()
    (workspace / "docs" / "runbook.md").write_text("# Runbook\n\nGATE: the restart procedure moved.\n")
    second = threading.Thread(target=build)
    second.start()
    try:
        assert gated.entered.wait(120)
        during = index.search("restart the warehouse", k=1, doc_id="docs/runbook.md")  # the state before
        assert "make restart" in during[0].text
    finally:
        gated.release.set()
        second.join(120)
    assert "moved" in index.search("restart the warehouse", k=1, doc_id="docs/runbook.md")[0].text
    with pytest.raises(DocIndexError, match="built with the embedder 'gated-wordllama'"):
        DocIndex(tmp_path / "ix").search("restart")  # this folder needs its embedder


def test_llama_index_ingestion_stays_offline(workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_index.core
    from llama_index.core import Settings
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.llms.mock import MockLLM

    def no_network(*args, **kwargs):
        raise OSError("network access during ingestion")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    index = DocIndex(tmp_path / "ix")
    assert index.build(workspace, ["docs/*.md"], progress=False).chunks_total > 3
    assert isinstance(Settings._llm, MockLLM) and isinstance(Settings._embed_model, BaseEmbedding)
    assert Settings._embed_model.class_name() == "ContextLabDocEmbedding"
    assert llama_index.core.global_tokenizer is word_tokens
    vector = Settings._embed_model.get_text_embedding("revenue by month")
    assert len(vector) == index.embedder_for("wordllama").dim


def test_minilm_is_optional() -> None:
    embedder = make_embedder("minilm")  # created lazily: nothing loads until the first embed
    assert embedder.dim == 384 and embedder.name.endswith("all-MiniLM-L6-v2")
    with pytest.raises(ValueError, match="unknown embedder 'bert'"):
        make_embedder("bert")


class FailingEmbedder:
    """wordllama embeddings that fail on texts holding BOOM: a build that dies half-way."""

    name = "failing-wordllama"

    def __init__(self) -> None:
        self.inner = WordLlamaEmbedder()
        self.dim = self.inner.dim

    def embed(self, texts):
        if any("BOOM" in text for text in texts):
            raise RuntimeError("the embedder crashed")
        return self.inner.embed(texts)


def test_an_interrupted_build_is_recovered_by_the_next(workspace: Path, tmp_path: Path) -> None:
    embedder = FailingEmbedder()
    index = DocIndex(tmp_path / "ix", embedder=embedder)
    index.build(workspace, ["docs/*.md"], progress=False)
    (workspace / "docs" / "runbook.md").write_text("# Runbook\n\nBOOM goes the loader.\n")
    with pytest.raises(RuntimeError, match="the embedder crashed"):
        index.build(workspace, progress=False)
    assert "make restart" in index.search("restart the warehouse", k=1)[0].text  # still served from memory
    with pytest.raises(DocIndexCorrupted, match="a build was interrupted before it finished"):
        DocIndex(tmp_path / "ix", embedder=embedder).search("restart the warehouse")
    (workspace / "docs" / "runbook.md").write_text("# Runbook\n\nThe loader restarts itself now.\n")
    report = DocIndex(tmp_path / "ix", embedder=embedder).build(workspace, progress=False)
    assert report.reingested == "the previous build was interrupted" and len(report.added) == 4
    assert "restarts itself" in index.search("restart the warehouse", k=1, doc_id="docs/runbook.md")[0].text


def test_the_command_line(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from contextlab.docs_cli import add_docs_commands

    def run(*argv: str) -> int:
        parser = argparse.ArgumentParser(prog="contextlab")
        add_docs_commands(parser.add_subparsers(dest="command"))
        args = parser.parse_args([*argv, "--workspace", str(workspace)])
        return args.func(args, [])

    assert run("docs", "status") == 0 and "No document index" in capsys.readouterr().out
    assert run("docs", "search", "revenue") == 1 and "contextlab docs build" in capsys.readouterr().err
    assert run("docs", "build", "--quiet", "--source", "docs") == 0
    assert "4 documents" in capsys.readouterr().out
    assert (workspace / ".contextlab" / "docs-index" / "manifest.json").exists()
    assert run("docs", "search", "restart the warehouse", "-k", "1") == 0
    assert capsys.readouterr().out.startswith("1. docs/runbook.md > Runbook > Restarting the warehouse (lines 3-6")
    assert run("docs", "search", "revenue", "-k", "0") == 2 and "k must be" in capsys.readouterr().err
    assert run("docs", "build", "--quiet", "--source", "../x") == 2
    assert "leaves the workspace" in capsys.readouterr().err
    assert run("docs", "status", "--json") == 0 and '"documents": 4' in capsys.readouterr().out
