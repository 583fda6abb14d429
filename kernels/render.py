"""Output bundles (text/plain + text/markdown) for suggestions, tables and streaming text."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from contextlab.copilot.engine import TARGETS

PREVIEW_ROWS = 5


def _fence(code: str, language: str) -> str:
    ticks = "````" if "```" in code else "```"
    return f"{ticks}{language}\n{code}\n{ticks}"


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")[:80]


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in columns]] + [["" if v is None else str(v)[:60] for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def table_bundle(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> dict[str, str]:
    head_md = f"**{title}**\n\n" if title else ""
    head_txt = f"{title}\n" if title else ""
    if not rows:
        return {"text/plain": f"{head_txt}(none)", "text/markdown": f"{head_md}_(none)_"}
    return {
        "text/plain": head_txt + text_table(columns, rows),
        "text/markdown": head_md + markdown_table(columns, rows),
    }


def stream_bundle(text: str, label: str = "Generating") -> dict[str, str]:
    return {"text/plain": f"{label}…\n{text}", "text/markdown": f"_{label}…_\n\n{_fence(text, '')}"}


def suggestion_bundle(record: Any, note: str) -> dict[str, str]:
    """The magic cell's output for a suggestion: status, the code, a preview of the validation rows."""
    s = record.suggestion
    language = TARGETS[s.target]().language if s.target in TARGETS else ""
    if not s.valid:
        status = f"did not pass validation: {s.validation.get('error') or 'unknown reason'}"
    elif not record.request.validate:
        status = "not validated (--no-validate)"
    elif s.repaired:
        status = f"valid after {len(s.attempts) - 1} repair(s)"
    else:
        status = "valid" + (" (checked against the database)" if "rows" in s.validation else "")
    sources = ", ".join(c["title"] for c in s.context) or "none"
    plain = [
        f"Copilot {s.target} suggestion {s.id[:12]} · model {s.model} · {status}",
        f"context: {sources}",
        "",
        s.code or "(the model's answer held no code)",
    ]
    md = [
        f"**Copilot · {s.target}** · `{s.id[:12]}` · model `{s.model}` · "
        + (f"**{status}**" if s.valid else f"⚠️ **{status}**"),
        f"<small>context: {sources}</small>",
        "",
        _fence(s.code, language) if s.code else "_(the model's answer held no code)_",
    ]
    columns = [c.get("name", "") for c in s.validation.get("columns") or []]
    rows = (s.validation.get("rows") or [])[:PREVIEW_ROWS]
    if columns and rows:
        plain += ["", f"first rows ({len(rows)}):", text_table(columns, rows)]
        md += ["", f"First rows ({len(rows)}):", "", markdown_table(columns, rows)]
    if record.explanation:
        plain += ["", "Explanation:", record.explanation]
        md += ["", "**Explanation.** " + record.explanation]
    plain += ["", note]
    md += ["", f"_{note}_"]
    return {"text/plain": "\n".join(plain), "text/markdown": "\n".join(md)}


def explanation_bundle(text: str) -> dict[str, str]:
    return {"text/plain": f"Explanation:\n{text}", "text/markdown": f"**Explanation.** {text}"}


class Throttled:
    """Collects streamed tokens and calls `show(text)` at most every `interval` seconds (and at `finish`)."""

    def __init__(self, show: Callable[[str], None], interval: float = 0.1) -> None:
        self.show = show
        self.interval = interval
        self.pieces: list[str] = []
        self._last = 0.0

    def __call__(self, token: str) -> None:
        self.pieces.append(token)
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.show("".join(self.pieces))

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def finish(self) -> None:
        self.show(self.text)
