"""The kernel's live DataFrames as Copilot context: columns with dtypes, shape and a few sample rows."""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any

from contextlab.copilot.engine import ContextItem

MAX_COLUMNS = 40
MAX_TEXT = 2000


def _frame_types() -> tuple[type, ...]:
    # Only libraries the user already imported: never import pandas or polars just to look.
    types: list[type] = []
    pandas = sys.modules.get("pandas")
    if pandas is not None:
        types.append(pandas.DataFrame)
    polars = sys.modules.get("polars")
    if polars is not None:
        types.append(polars.DataFrame)
    return tuple(types)


def live_frames(namespace: Mapping[str, Any], *, request: str = "", limit: int = 5) -> list[tuple[str, Any]]:
    """DataFrames in `namespace` (public names only), those named in `request` first, at most `limit`."""
    types = _frame_types()
    if not types or limit <= 0:
        return []
    found = [
        (name, value)
        for name, value in list(namespace.items())
        if not name.startswith("_") and isinstance(value, types)
    ]
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", request))
    found.sort(key=lambda item: item[0] not in words)  # stable: otherwise the namespace's order
    return found[:limit]


def describe_frame(name: str, frame: Any, *, sample_rows: int = 3) -> str:
    """Shape, columns with dtypes and a few rows of a pandas or polars DataFrame, as prompt text."""
    rows, cols = frame.shape
    library = type(frame).__module__.split(".")[0]
    schema = list(zip(frame.columns, frame.dtypes, strict=False))
    shown = ", ".join(f"{column} {dtype}" for column, dtype in schema[:MAX_COLUMNS])
    more = f", … ({cols - MAX_COLUMNS} more)" if cols > MAX_COLUMNS else ""
    if library == "polars":
        sample = frame.head(sample_rows).select(frame.columns[:MAX_COLUMNS])
        sample_text = "\n".join(str(row) for row in sample.rows())
    else:
        sample = frame.head(sample_rows).iloc[:, :MAX_COLUMNS]
        sample_text = sample.to_string(max_colwidth=40)
    text = (
        f"{library} DataFrame `{name}` in the notebook's kernel: {rows} rows x {cols} columns\n"
        f"columns: {shown}{more}\n"
        f"first rows:\n{sample_text}"
    )
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def frame_context(namespace: Mapping[str, Any], *, request: str = "", limit: int = 5) -> list[ContextItem]:
    items = []
    for name, frame in live_frames(namespace, request=request, limit=limit):
        try:
            items.append(ContextItem("kernel", f"DataFrame {name}", describe_frame(name, frame)))
        except Exception:  # an exotic frame must not stop a generation
            continue
    return items
