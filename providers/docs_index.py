"""The document index behind the `docs` provider: chunks of markdown, text and notebook markdown in
LanceDB, searched by BM25 and embeddings fused with reciprocal-rank fusion.

Ingestion uses llama-index: each file becomes `Document`s (one per markdown section or notebook
cell, with its source location), and llama-index's `SentenceSplitter` cuts them into chunks, with
a whitespace tokenizer so that nothing downloads a tokenizer. Embeddings are wordllama's bundled
static weights (no network). Rows live in a LanceDB table (the store of record); queries are served
from an in-memory copy (a normalised embedding matrix and a BM25 inverted index), which keeps p99
latency in milliseconds at 100k chunks.

Ingestion is incremental: a manifest keeps each file's content hash, so unchanged files are
skipped, changed files are re-chunked (their old chunks deleted) and deleted files' chunks removed.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import math
import re
import shutil
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

TEXT_SUFFIXES = (".md", ".markdown", ".txt", ".rst")
NOTEBOOK_SUFFIX = ".ipynb"
DEFAULT_SOURCES = ("**/*.md", "**/*.ipynb")
TABLE = "chunks"
MANIFEST = "manifest.json"
RRF_K = 60
_TOKEN = re.compile(r"[a-z0-9]+")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_STOP = frozenset(
    "a an and are as at be by for from how i in is it of on or that the this to was what when which with".split()
)


class DocIndexError(RuntimeError):
    """The index cannot be used; the message says how to fix it (usually: rebuild)."""


class DocIndexCorrupted(DocIndexError):
    """The LanceDB folder cannot be read."""


@dataclass
class Chunk:
    id: str
    doc_id: str
    kind: str  # markdown, text or notebook
    path: str
    location: str  # heading path, or "cell N"
    start_line: int
    end_line: int
    text: str
    score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: int = 0
    chunks_written: int = 0
    chunks_total: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@functools.lru_cache(maxsize=1)
def _porter() -> Any:
    from nltk.stem.porter import PorterStemmer  # rule-based: needs no downloaded data

    return PorterStemmer()


@functools.lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return _porter().stem(word)


def analyze(text: str) -> list[str]:
    """Lower-cased, stop words dropped, Porter-stemmed (so "defined" meets "definitions")."""
    return [_stem(t) for t in _TOKEN.findall(text.lower()) if t not in _STOP]


class DocIndex:
    """A LanceDB folder of document chunks with hybrid search. Thread-safe for concurrent searches."""

    def __init__(
        self,
        path: str | Path,
        *,
        chunk_size: int = 200,
        chunk_overlap: int = 30,
        embedder: Any = None,
    ) -> None:
        if chunk_size < 20 or not 0 <= chunk_overlap < chunk_size:
            raise ValueError("chunk_size must be ≥ 20 words and 0 ≤ chunk_overlap < chunk_size")
        self.path = Path(path)
        self.chunk_size = chunk_size
        self.chunk_overlap = chunk_overlap
        self._embedder = embedder
        self._lock = threading.RLock()
        self._loaded = False
        self._chunks: list[Chunk] = []
        self._matrix = np.zeros((0, 1), dtype=np.float32)
        self._postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._lengths = np.zeros(0, dtype=np.float32)
        self.built_at: str | None = None
        self._loaded_stamp: int | None = None

    def _stamp(self) -> int | None:
        try:
            return (self.path / MANIFEST).stat().st_mtime_ns
        except FileNotFoundError:
            return None

    # -- state ---------------------------------------------------------------------------------
    @property
    def embedder(self) -> Any:
        if self._embedder is None:
            from contextlab.extension.tool_index import WordLlamaEmbedder

            self._embedder = WordLlamaEmbedder()
        return self._embedder

    def exists(self) -> bool:
        return (self.path / MANIFEST).exists()

    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / MANIFEST).read_text())
        except FileNotFoundError:
            return {"files": {}, "built_at": None, "settings": {}}
        except ValueError as exc:
            raise DocIndexCorrupted(self._corrupt_message(f"its manifest is not JSON ({exc})")) from exc

    def status(self) -> dict[str, Any]:
        manifest = self.manifest()
        self.load()
        return {
            "path": str(self.path),
            "built": self.exists(),
            "built_at": manifest.get("built_at"),
            "documents": len(manifest.get("files", {})),
            "chunks": len(self._chunks),
            "settings": manifest.get("settings", {}),
            "embedder": getattr(self.embedder, "name", type(self.embedder).__name__),
        }

    def _corrupt_message(self, why: str) -> str:
        return (
            f"The document index at {self.path} cannot be read: {why}. Rebuild it with "
            "`contextlab pipeline run rag_build -p rebuild true` (or DocIndex.build(..., rebuild=True))."
        )

    def _table(self, create: bool = False) -> Any:
        import lancedb

        try:
            db = lancedb.connect(str(self.path / "lance"))
            if TABLE in _table_names(db):
                return db.open_table(TABLE)
        except Exception as exc:
            raise DocIndexCorrupted(self._corrupt_message(f"{type(exc).__name__}: {exc}")) from exc
        if self.exists() and self.manifest().get("files"):
            raise DocIndexCorrupted(self._corrupt_message("the chunk table is missing"))
        return None

    # -- ingestion -----------------------------------------------------------------------------
    def build(
        self,
        root: str | Path,
        sources: Sequence[str] = DEFAULT_SOURCES,
        *,
        rebuild: bool = False,
        progress: bool = True,
    ) -> IngestReport:
        """Index the files under `root` matching the globs `sources` (paths stay inside `root`)."""
        import time

        import pyarrow as pa
        from tqdm.auto import tqdm

        started = time.perf_counter()
        root = Path(root).resolve()
        files = _collect(root, sources)
        with self._lock:
            if rebuild and self.path.exists():
                shutil.rmtree(self.path)
            self.path.mkdir(parents=True, exist_ok=True)
            manifest = self.manifest() if not rebuild else {"files": {}}
            settings = {
                "chunk_size": self.chunk_size,
                "chunk_overlap": self.chunk_overlap,
                "embedder": getattr(self.embedder, "name", "custom"),
            }
            if manifest.get("settings") and manifest["settings"] != settings:
                manifest = {"files": {}}  # other chunking or embedder: every file is re-indexed
                shutil.rmtree(self.path / "lance", ignore_errors=True)
            table = self._table()
            old = manifest.get("files", {})
            report = IngestReport()
            current: dict[str, str] = {}
            changed: list[tuple[str, Path]] = []
            for doc_id, file in files.items():
                digest = hashlib.sha256(file.read_bytes()).hexdigest()
                current[doc_id] = digest
                if old.get(doc_id) == digest:
                    report.skipped += 1
                else:
                    changed.append((doc_id, file))
                    (report.updated if doc_id in old else report.added).append(doc_id)
            report.removed = sorted(set(old) - set(current))
            stale = [d for d, _ in changed if d in old] + report.removed
            if table is not None and stale:
                table.delete(" OR ".join(f"doc_id = '{_sql_quote(d)}'" for d in stale))
            rows: list[dict[str, Any]] = []
            bar = tqdm(changed, disable=not progress, unit="file", desc="indexing")
            for doc_id, file in bar:
                chunks = self._chunk(doc_id, file)
                if chunks:
                    vectors = self.embedder.embed([c.text for c in chunks])
                    rows.extend({**c.to_dict(), "vector": v.tolist()} for c, v in zip(chunks, vectors, strict=True))
                bar.set_postfix(chunks=len(rows))
            if rows:
                rows = [{k: v for k, v in r.items() if k != "score"} for r in rows]
                if table is None:
                    import lancedb

                    db = lancedb.connect(str(self.path / "lance"))
                    table = db.create_table(TABLE, data=pa.Table.from_pylist(rows))
                else:
                    table.add(rows)
            report.chunks_written = len(rows)
            built_at = datetime.now(UTC).isoformat()
            tmp = self.path / f".{MANIFEST}.tmp"
            tmp.write_text(json.dumps({"files": current, "built_at": built_at, "settings": settings}))
            tmp.replace(self.path / MANIFEST)
            self._loaded = False
            self.load()
            report.chunks_total = len(self._chunks)
            report.seconds = time.perf_counter() - started
            return report

    def _chunk(self, doc_id: str, file: Path) -> list[Chunk]:
        from llama_index.core import Document
        from llama_index.core.node_parser import SentenceSplitter

        splitter = SentenceSplitter(chunk_size=self.chunk_size, chunk_overlap=self.chunk_overlap, tokenizer=str.split)
        kind, sections = _sections(file)
        chunks: list[Chunk] = []
        for location, first_line, text in sections:
            if not text.strip():
                continue
            document = Document(text=text, metadata={"doc_id": doc_id, "location": location})
            for node in splitter.get_nodes_from_documents([document]):
                body = node.get_content()
                start = node.start_char_idx if node.start_char_idx is not None else max(text.find(body), 0)
                end = node.end_char_idx if node.end_char_idx is not None else start + len(body)
                start_line = first_line + text.count("\n", 0, start)
                end_line = first_line + text.count("\n", 0, end)
                chunk_id = hashlib.sha256(f"{doc_id}\0{location}\0{start}\0{body}".encode()).hexdigest()[:24]
                chunks.append(Chunk(chunk_id, doc_id, kind, doc_id, location, start_line, end_line, body))
        return chunks

    # -- queries -------------------------------------------------------------------------------
    def load(self) -> None:
        """Read the rows into memory; again when another process (a rag_build run) rebuilt the index."""
        with self._lock:
            stamp = self._stamp()
            if self._loaded and stamp == self._loaded_stamp:
                return
            self._loaded_stamp = stamp
            table = self._table()
            if table is None:
                self._chunks, self._matrix = [], np.zeros((0, 1), dtype=np.float32)
                self._postings, self._lengths = {}, np.zeros(0, dtype=np.float32)
                self._loaded = True
                return
            try:
                data = table.to_arrow().to_pylist()
            except Exception as exc:
                raise DocIndexCorrupted(self._corrupt_message(f"{type(exc).__name__}: {exc}")) from exc
            self._chunks = [Chunk(**{k: r[k] for k in Chunk.__dataclass_fields__ if k != "score"}) for r in data]
            self._matrix = np.asarray([r["vector"] for r in data], dtype=np.float32).reshape(len(data), -1)
            postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
            lengths = np.zeros(len(data), dtype=np.float32)
            for i, chunk in enumerate(self._chunks):
                terms = Counter(analyze(f"{chunk.location} {chunk.text}"))
                lengths[i] = sum(terms.values())
                for term, count in terms.items():
                    postings[term].append((i, count))
            self._postings = {
                t: (np.array([i for i, _ in p], dtype=np.int32), np.array([c for _, c in p], dtype=np.float32))
                for t, p in postings.items()
            }
            self._lengths = lengths
            self._loaded = True

    def search(
        self,
        query: str,
        k: int = 5,
        *,
        path: str | None = None,
        kind: str | None = None,
        doc_id: str | None = None,
    ) -> list[Chunk]:
        """The k best chunks for `query` (BM25 and embeddings fused by RRF), filtered by a path glob,
        a kind (markdown, notebook, text) or a document id."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query is empty")
        if k < 1 or k > 100:
            raise ValueError("k must be between 1 and 100")
        if kind is not None and kind not in ("markdown", "notebook", "text"):
            raise ValueError(f"unknown kind {kind!r}: use markdown, notebook or text")
        self.load()
        with self._lock:
            n = len(self._chunks)
            if n == 0:
                return []
            allowed = np.ones(n, dtype=bool)
            if path or kind or doc_id:
                for i, c in enumerate(self._chunks):
                    allowed[i] = (
                        (not path or fnmatch.fnmatch(c.path, path))
                        and (not kind or c.kind == kind)
                        and (not doc_id or c.doc_id == doc_id)
                    )
            bm25 = self._bm25(query)
            dense = self._matrix @ self.embedder.embed([query])[0]
            fused = np.zeros(n, dtype=np.float64)
            depth = min(n, max(50, k * 10))
            for scores in (bm25, dense):
                masked = np.where(allowed, scores, -np.inf)
                top = np.argpartition(-masked, min(depth, n) - 1)[:depth]
                top = top[np.argsort(-masked[top])]
                for rank, i in enumerate(top):
                    if np.isfinite(masked[i]) and (scores is dense or masked[i] > 0):
                        fused[i] += 1.0 / (RRF_K + rank + 1)
            order = [i for i in np.argsort(-fused)[:k] if fused[i] > 0]
            out = []
            for i in order:
                chunk = Chunk(**{**self._chunks[i].to_dict(), "score": round(float(fused[i]), 6)})
                out.append(chunk)
            return out

    def get(self, chunk_id: str) -> Chunk | None:
        self.load()
        return next((c for c in self._chunks if c.id == chunk_id), None)

    def _bm25(self, query: str, k1: float = 1.2, b: float = 0.75) -> np.ndarray:
        n = len(self._chunks)
        scores = np.zeros(n, dtype=np.float32)
        average = float(self._lengths.mean()) if n else 1.0
        for term in set(analyze(query)):
            posting = self._postings.get(term)
            if posting is None:
                continue
            ids, tf = posting
            idf = math.log(1 + (n - len(ids) + 0.5) / (len(ids) + 0.5))
            norm = tf + k1 * (1 - b + b * self._lengths[ids] / average)
            scores[ids] += idf * tf * (k1 + 1) / norm
        return scores


def _table_names(db: Any) -> list[str]:
    listed = db.list_tables()  # a response object with .tables in lancedb ≥ 0.30, a list before
    return list(getattr(listed, "tables", listed))


def _sql_quote(text: str) -> str:
    return text.replace("'", "''")


def _collect(root: Path, sources: Iterable[str]) -> dict[str, Path]:
    """doc id (path relative to root) → file, for text and notebook files matching the globs."""
    files: dict[str, Path] = {}
    for pattern in sources:
        if not isinstance(pattern, str) or not pattern.strip():
            raise ValueError("a source glob is empty")
        if Path(pattern).is_absolute() or ".." in Path(pattern).parts:
            raise ValueError(f"source {pattern!r} leaves the workspace: give a glob relative to it")
        for file in sorted(root.glob(pattern)):
            resolved = file.resolve()
            if not resolved.is_file() or not resolved.is_relative_to(root):
                continue
            relative = resolved.relative_to(root)
            if any(part.startswith(".") for part in relative.parts):
                continue
            if resolved.suffix in TEXT_SUFFIXES or resolved.suffix == NOTEBOOK_SUFFIX:
                files.setdefault(relative.as_posix(), resolved)
    return files


def _sections(file: Path) -> tuple[str, list[tuple[str, int, str]]]:
    """(kind, [(location, first line, text)]): markdown by heading, notebooks by markdown cell."""
    if file.suffix == NOTEBOOK_SUFFIX:
        try:
            cells = json.loads(file.read_text(encoding="utf-8")).get("cells", [])
        except (OSError, ValueError):
            return "notebook", []
        out = []
        for index, cell in enumerate(cells):
            if cell.get("cell_type") != "markdown":
                continue
            source = cell.get("source", "")
            out.append((f"cell {index}", 1, "".join(source) if isinstance(source, list) else source))
        return "notebook", out
    text = file.read_text(encoding="utf-8", errors="replace")
    if file.suffix not in (".md", ".markdown"):
        return "text", [("", 1, text)]
    sections: list[tuple[str, int, str]] = []
    trail: list[str] = []
    start, buffer = 1, []
    for number, line in enumerate(text.splitlines(), 1):
        match = _HEADING.match(line)
        if match:
            if "".join(buffer).strip():
                sections.append((" > ".join(trail), start, "\n".join(buffer)))
            level = len(match.group(1))
            trail = [*trail[: level - 1], match.group(2).strip()]
            start, buffer = number, [line]
        else:
            buffer.append(line)
    if "".join(buffer).strip():
        sections.append((" > ".join(trail), start, "\n".join(buffer)))
    return "markdown", sections
