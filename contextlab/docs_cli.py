"""`contextlab docs build|search|status`: the workspace's document index (the `docs` provider's), on disk.

These commands open the index folder directly (by default `<workspace>/.contextlab/docs-index`, the one
a server on that workspace serves), so they work with or without a server; a running server notices a
build and reloads. Exit codes: 0 done, 1 the index cannot be used (not built, corrupted), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contextlab.providers.docs_index import DEFAULT_SOURCES, EMBEDDERS, KINDS, MAX_K, SPLITTERS


def add_docs_commands(sub: Any) -> None:
    """Register `docs build`, `docs search` and `docs status` on the `contextlab` subparsers."""
    docs = sub.add_parser(
        "docs",
        help="Build, search and inspect the document index (markdown files and notebook notes).",
        description="The document index holds chunks of the workspace's markdown, text and notebook markdown "
        "cells, searched by keywords and embeddings (the `docs` provider's docs__search). Builds are "
        "incremental: unchanged files are skipped.",
    )
    dsub = docs.add_subparsers(dest="docs_command", metavar="ACTION", required=True)

    def command(name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        parser = dsub.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--workspace", default=".", help="Workspace folder (default: the current folder).")
        parser.add_argument("--index", help="Index folder (default: <workspace>/.contextlab/docs-index).")
        parser.add_argument("--json", action="store_true", help="Print JSON.")
        parser.set_defaults(func=lambda args, _extra: _run(func, args))
        return parser

    build = command(
        "build",
        "Index the workspace's documents (incremental; --rebuild starts from scratch, e.g. after corruption).",
        _build,
    )
    build.add_argument(
        "--source",
        action="append",
        metavar="GLOB",
        help="A glob or folder relative to the workspace (repeat). Default: the last build's sources, "
        f"else {' '.join(DEFAULT_SOURCES)}. Files no source names any more leave the index.",
    )
    build.add_argument("--rebuild", action="store_true", help="Wipe the index and ingest every file again.")
    build.add_argument("--chunk-size", type=int, help="Words per chunk (default: as built, else 200).")
    build.add_argument("--chunk-overlap", type=int, help="Words shared by neighbouring chunks (default: 30).")
    build.add_argument("--splitter", choices=SPLITTERS, help="markdown: by headings, then sentences (default).")
    build.add_argument("--embedder", choices=EMBEDDERS, help="wordllama (default, bundled) or minilm (optional).")
    build.add_argument("--quiet", action="store_true", help="No progress bar.")

    search = command("search", "Search the index: the best chunks with their file, heading or cell, lines.", _search)
    search.add_argument("query", help="What to look for.")
    search.add_argument("-k", type=int, default=5, help=f"How many chunks (1-{MAX_K}, default 5).")
    search.add_argument("--path", help="Only documents whose path matches this glob, e.g. 'docs/*'.")
    search.add_argument("--kind", choices=KINDS, help="Only chunks of this kind.")
    search.add_argument("--doc", dest="doc_id", help="Only this document (its path in the workspace).")

    command("status", "What the index holds, when it was built, and how it chunks.", _status)


def _run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    from contextlab.providers.docs_index import DocIndexError

    try:
        return func(args)
    except DocIndexError as exc:
        print(f"contextlab docs: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:
        print(f"contextlab docs {args.docs_command}: error: {exc}", file=sys.stderr)
        return 2


def _index(args: argparse.Namespace, **options: Any) -> Any:
    from contextlab.providers.docs import default_index_path
    from contextlab.providers.docs_index import DocIndex

    folder = Path(args.index) if args.index else default_index_path(Path(args.workspace).resolve())
    return DocIndex(folder, **options)


def _build(args: argparse.Namespace) -> int:
    index = _index(
        args,
        chunk_size=args.chunk_size,
        chunk_overlap=args.chunk_overlap,
        splitter=args.splitter,
        embedder=args.embedder,
    )
    report = index.build(Path(args.workspace), args.source, rebuild=args.rebuild, progress=not args.quiet)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(f"{index.path}: {report.summary()}")
    return 0


def _search(args: argparse.Namespace) -> int:
    index = _index(args)
    chunks = index.search(args.query, args.k, path=args.path, kind=args.kind, doc_id=args.doc_id)
    if args.json:
        print(json.dumps([c.to_dict() for c in chunks], indent=1))
        return 0
    if not chunks:
        print("No chunk matches (the index is empty, or the filters exclude everything).")
    for rank, chunk in enumerate(chunks, 1):
        where = " > ".join(p for p in (chunk.doc_id, chunk.location) if p)
        print(f"{rank}. {where} (lines {chunk.start_line}-{chunk.end_line}, score {chunk.score:.4f})")
        lines = chunk.text.strip().splitlines()
        for line in lines[:4]:
            print(f"   {line}")
        if len(lines) > 4:
            more = len(lines) - 4
            print(f"   … {more} more line{'s' if more > 1 else ''} (docs://chunk/{chunk.id})")
    return 0


def _status(args: argparse.Namespace) -> int:
    info = _index(args).status()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    if not info["built"]:
        print(f"No document index at {info['path']} yet: run `contextlab docs build`.")
        return 0
    settings = info["settings"]
    kinds = ", ".join(f"{n} {kind}" for kind, n in info["chunks_by_kind"].items() if n)
    print(f"index:    {info['path']}")
    print(f"built:    {info['built_at']} from {info['root']}")
    print(f"sources:  {' '.join(info['sources'])}")
    print(f"holds:    {info['documents']} documents, {info['chunks']} chunks ({kinds or 'none'})")
    print(f"chunking: {settings['splitter']}, {settings['chunk_size']} words, overlap {settings['chunk_overlap']}")
    print(f"embedder: {info['embedder']}")
    return 0
