"""The document index (`contextlab.providers.docs_index`): ingestion throughput, query latency at scale, and
retrieval quality on a public question-answer set.

**Scale.** For each size (default 10k and 100k chunks) a synthetic workspace is written: markdown files of
ten sections of about 120 words each (a Zipf-distributed vocabulary of pseudo-words), one chunk per
section at the default chunk size. Reported: `ingest_seconds` and `chunks_per_second` of a full build
(llama-index parsing and splitting, embedding, BM25 terms, LanceDB write, loading the in-memory mirror),
`incremental_seconds` (a build after one file changed), `reopen_seconds` (a new handle loading the mirror
from LanceDB), and the latency of `DocIndex.search` (k=5, query embedding included, one thread) as
`query_p50_ms`/`query_p99_ms`, and with a path filter as `filtered_p50_ms`/`filtered_p99_ms`. The queries
are six words drawn from a random section, so `known_item_hit_at_5` (that section among the top 5) is a
sanity check, not a quality figure.

**Quality.** The English part of the `chatterbot-corpus` package (a public, BSD-licensed question/answer
corpus that ships its data in the wheel; an optional dependency: `pip install chatterbot-corpus`) becomes
a retrieval task: every distinct answer is a document, every distinct question a query whose relevant
documents are its answers. Reported through `contextlab.evaluation.rag`: hit@1, hit@5, MRR and nDCG@5 for
the hybrid ranking, and for BM25 alone and embeddings alone (`ablation`). Without the package the section
says how to install it.

    python benchmarks/rag.py [--sizes 10000 100000] [--queries 1000] [--embedder wordllama|minilm]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from contextlab.evaluation.rag import QACase, evaluate_rag  # noqa: E402
from contextlab.providers import docs_index  # noqa: E402
from contextlab.providers.docs_index import DocIndex  # noqa: E402

SECTIONS_PER_FILE = 10
WORDS_PER_SECTION = 120


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def vocabulary(rng: random.Random, size: int = 20_000) -> list[str]:
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"] + ["ing", "er", "on", "al", "ex"]
    words = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def write_workspace(root: Path, chunks: int, rng: random.Random) -> list[tuple[str, list[str]]]:
    """Markdown files of SECTIONS_PER_FILE sections; returns (doc id, section words) per section."""
    words = vocabulary(rng)
    weights = [1 / (rank + 1) for rank in range(len(words))]  # Zipf
    sections: list[tuple[str, list[str]]] = []
    for number in range(chunks // SECTIONS_PER_FILE):
        doc_id = f"d{number // 1000:03d}/doc{number:06d}.md"
        parts = [f"# Document {number}\n"]
        for section in range(SECTIONS_PER_FILE):
            body = rng.choices(words, weights, k=WORDS_PER_SECTION)
            sentences = [" ".join(body[i : i + 12]).capitalize() + "." for i in range(0, len(body), 12)]
            parts.append(f"## Section {section} {body[0]}\n\n" + " ".join(sentences) + "\n")
            sections.append((doc_id, body))
        path = root / doc_id
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(parts))
    return sections


def scale(size: int, queries: int, embedder: str, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        started = time.perf_counter()
        sections = write_workspace(root, size, rng)
        log(f"{size}: wrote {len(sections)} sections in {time.perf_counter() - started:.1f} s")
        index = DocIndex(Path(tmp) / "ix", embedder=embedder)
        started = time.perf_counter()
        report = index.build(root, ["**/*.md"], progress=sys.stderr.isatty())
        ingest = time.perf_counter() - started
        log(f"{size}: built {report.chunks_total} chunks in {ingest:.1f} s")
        changed = root / sections[0][0]
        changed.write_text(changed.read_text() + "\nOne more line.\n")
        started = time.perf_counter()
        index.build(root, progress=False)
        incremental = time.perf_counter() - started
        started = time.perf_counter()
        reopened = DocIndex(Path(tmp) / "ix")
        reopened.load()
        reopen = time.perf_counter() - started
        picks = [rng.randrange(len(sections)) for _ in range(queries)]
        texts = [" ".join(rng.sample(sections[i][1], 6)) for i in picks]
        for text in texts[:20]:  # warm-up
            index.search(text, k=5)
        latencies, filtered, hits = [], [], 0
        for pick, text in zip(picks, texts, strict=True):
            started = time.perf_counter()
            results = index.search(text, k=5)
            latencies.append((time.perf_counter() - started) * 1000)
            body = " ".join(sections[pick][1][:12]).capitalize()
            hits += any(r.doc_id == sections[pick][0] and body in r.text for r in results)
            started = time.perf_counter()
            index.search(text, k=5, path="d000/*")
            filtered.append((time.perf_counter() - started) * 1000)
        mirror = index._current()
        memory = mirror.vectors.nbytes + mirror.post_rows.nbytes + mirror.post_tf.nbytes if mirror else 0
        return {
            "chunks": report.chunks_total,
            "files": report.documents,
            "ingest_seconds": round(ingest, 2),
            "chunks_per_second": round(report.chunks_total / ingest, 1),
            "incremental_seconds": round(incremental, 2),
            "reopen_seconds": round(reopen, 2),
            "query_p50_ms": round(statistics.median(latencies), 2),
            "query_p99_ms": round(percentile(latencies, 99), 2),
            "filtered_p50_ms": round(statistics.median(filtered), 2),
            "filtered_p99_ms": round(percentile(filtered, 99), 2),
            "queries": queries,
            "known_item_hit_at_5": round(hits / queries, 3),
            "mirror_vectors_and_postings_mb": round(memory / 1e6, 1),
        }


def quality(embedder: str) -> dict[str, Any]:
    if importlib.util.find_spec("chatterbot_corpus") is None:
        return {
            "skipped": "the chatterbot-corpus package is not installed: `pip install chatterbot-corpus` "
            "(an optional benchmark dependency; it ships its data, no download at run time)"
        }
    import yaml

    spec = importlib.util.find_spec("chatterbot_corpus")
    folder = Path(spec.origin).parent / "data" / "english"
    answers: dict[str, str] = {}  # answer text -> doc id
    gold: dict[str, set[str]] = {}  # question -> doc ids of its answers
    for file in sorted(folder.glob("*.yml")):
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
        for conversation in data.get("conversations") or []:
            if len(conversation) < 2 or not all(isinstance(t, str) for t in conversation[:2]):
                continue
            question, answer = conversation[0].strip(), conversation[1].strip()
            if len(answer.split()) < 3:
                continue  # "Yes." is not a document
            digest = hashlib.sha256(answer.encode()).hexdigest()[:10]
            doc_id = answers.setdefault(answer, f"answers/{file.stem}/{digest}.txt")
            gold.setdefault(question, set()).add(doc_id)
    cases = [QACase(f"q{i}", q, tuple(sorted(docs))) for i, (q, docs) in enumerate(sorted(gold.items()))]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        for answer, doc_id in answers.items():
            (root / doc_id).parent.mkdir(parents=True, exist_ok=True)
            (root / doc_id).write_text(answer + "\n")
        index = DocIndex(Path(tmp) / "ix", embedder=embedder)
        index.build(root, ["answers"], progress=False)
        out: dict[str, Any] = {
            "dataset": "chatterbot-corpus (english): distinct questions against distinct answers",
            "documents": len(answers),
            "questions": len(cases),
            "embedder": index.status()["embedder"],
        }
        weights = (docs_index.BM25_WEIGHT, docs_index.VECTOR_WEIGHT)
        try:
            for name, bm25, vector in (("hybrid", *weights), ("bm25_only", 1.0, 0.0), ("vector_only", 0.0, 1.0)):
                docs_index.BM25_WEIGHT, docs_index.VECTOR_WEIGHT = bm25, vector
                summary = evaluate_rag(index, cases, k=5).summary
                keys = ("hit@1", "hit@5", "mrr", "ndcg@5")
                scores = {key.replace("@", "_at_"): round(summary[key], 4) for key in keys}
                if name == "hybrid":
                    out.update(scores)
                else:
                    out.setdefault("ablation", {})[name] = scores
        finally:
            docs_index.BM25_WEIGHT, docs_index.VECTOR_WEIGHT = weights
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000], help="Chunk counts to test.")
    parser.add_argument("--queries", type=int, default=1000, help="Queries timed per size.")
    parser.add_argument("--embedder", default="wordllama", choices=docs_index.EMBEDDERS)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "embedder": args.embedder,
        "scale": [scale(size, args.queries, args.embedder, args.seed) for size in args.sizes],
    }
    if not args.skip_quality:
        result["quality"] = quality(args.embedder)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
