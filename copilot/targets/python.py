"""The `python` target: a notebook cell (pandas and polars aware), compiled, linted with ruff, checked for
pandas/polars API mix-ups and, when asked, run in a scratch subprocess."""

from __future__ import annotations

import ast
import difflib
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from contextlab.copilot.context import ContextClient
from contextlab.copilot.engine import ContextItem, Validation, extract_code
from contextlab.copilot.targets._common import child_env, run_bounded, schema_context

PYTHON_TEMPLATE = """\
You write one Python cell for a Jupyter notebook. Answer with the code in one ```python block and nothing else.
- Plain Python only: no IPython magics (%...) and no shell escapes (!...).
- Import what you use (`import pandas as pd`, `import polars as pl`, `import duckdb`) and nothing you do not use.
- Variables listed below already exist in the kernel: use them, do not re-create them.
- pandas and polars differ: polars has `group_by`, `with_columns`, `filter`, `sort`, `pl.col(...)` and no index,
  `.loc` or `.iloc`; pandas has `groupby`, `assign`, `sort_values`, `.loc`. Use the API of the library that
  owns the DataFrame.
- DuckDB databases can be queried with `duckdb.connect(path, read_only=True).sql(...)`.
- End with the expression to display, if any.
{% for item in context %}

## {{ item.title }}
{{ item.text }}
{% endfor %}
"""

RUFF_RULES = "E9,F63,F7,F82,F401,F811,F841"

# A method call on a polars object that is written the pandas way, and what polars calls it (and back).
PANDAS_TO_POLARS = {
    "groupby": "group_by",
    "with_column": "with_columns",
    "assign": "with_columns",
    "apply": "map_rows (DataFrame) or map_elements (Series)",
    "sort_values": "sort",
    "drop_duplicates": "unique",
    "fillna": "fill_null",
    "isna": "is_null",
    "isnull": "is_null",
    "notna": "is_not_null",
    "merge": "join",
    "astype": "cast",
    "query": "filter",
    "loc": "filter / select / row",
    "iloc": "slice / row / item",
    "reset_index": "nothing (polars frames have no index)",
    "set_index": "nothing (polars frames have no index)",
    "to_csv": "write_csv",
    "to_parquet": "write_parquet",
    "nunique": "n_unique",
    "value_counts": "group_by(...).len() (or Series.value_counts)",
}
POLARS_TO_PANDAS = {
    "group_by": "groupby",
    "with_columns": "assign",
    "sort": "sort_values",
    "unique": "drop_duplicates",
    "fill_null": "fillna",
    "is_null": "isna",
    "cast": "astype",
    "write_csv": "to_csv",
    "write_parquet": "to_parquet",
    "n_unique": "nunique",
    "select": "df[[...]]",
    "with_row_index": "reset_index",
    "collect": "nothing (pandas is eager)",
}
_PANDAS_READERS = {
    "DataFrame",
    "read_csv",
    "read_parquet",
    "read_json",
    "read_feather",
    "read_orc",
    "read_table",
    "read_fwf",
    "read_sql",
    "read_sql_query",
    "read_sql_table",
    "concat",
    "merge",
}
_POLARS_LAZY = {"LazyFrame", "scan_csv", "scan_parquet", "scan_ndjson", "scan_ipc", "scan_delta", "scan_iceberg"}
# Methods that hand back a frame of the same library and kind.
_SAME_KIND = {
    "filter",
    "select",
    "with_columns",
    "sort",
    "head",
    "tail",
    "join",
    "unique",
    "drop",
    "drop_nulls",
    "rename",
    "fill_null",
    "cast",
    "limit",
    "slice",
    "sample",
    "assign",
    "sort_values",
    "drop_duplicates",
    "fillna",
    "dropna",
    "merge",
    "query",
    "astype",
    "copy",
    "reset_index",
}

_RUNNER = r"""
import ast, asyncio, inspect, json, sys, traceback
result_path = sys.argv[3]
namespace = {"__name__": "__main__"}

def report(where, exc):
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<" + where + ">"]
    line = frames[-1].lineno if frames else getattr(exc, "lineno", None)
    with open(result_path, "w") as out:
        json.dump({"where": where, "type": type(exc).__name__, "message": str(exc), "line": line}, out)

for where, path in (("preamble", sys.argv[1]), ("cell", sys.argv[2])):
    with open(path) as source:
        text = source.read()
    try:
        code = compile(text, "<" + where + ">", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        if code.co_flags & inspect.CO_COROUTINE:
            asyncio.run(eval(code, namespace))
        else:
            exec(code, namespace)
    except BaseException as exc:
        report(where, exc)
        sys.exit(1)
with open(result_path, "w") as out:
    json.dump({"ok": True, "names": sorted(k for k in namespace if not k.startswith("_"))}, out)
"""


def kernel_namespace() -> dict[str, Any] | None:
    """The user namespace of the IPython kernel this runs in, if any."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    namespace = getattr(shell, "user_ns", None) if shell is not None else None
    return namespace if isinstance(namespace, dict) else None


def frame_kind(value: Any) -> str | None:
    """'pandas.DataFrame', 'polars.LazyFrame', ... for DataFrame-like values; None otherwise."""
    cls = type(value)
    library = cls.__module__.split(".")[0]
    if library in ("pandas", "polars") and cls.__name__ in ("DataFrame", "Series", "LazyFrame"):
        return f"{library}.{cls.__name__}"
    return None


def bound_names(code: str) -> set[str]:
    """Names a piece of code binds at top level (imports, assignments, defs), best effort."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name != "*":
                    names.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


class PythonTarget:
    """A notebook cell: compiled (syntax errors with line and column), linted with ruff for the error rules
    (`E9,F63,F7,F82,F401,F811,F841`, names alive in the kernel count as defined), checked for pandas/polars
    methods called on the other library's frames, and optionally executed after `preamble` in a subprocess
    with a time limit (never in the kernel process)."""

    name = "python"
    template_name = "copilot.python"
    template = PYTHON_TEMPLATE
    language = "python"

    def __init__(
        self,
        *,
        execute: bool = False,
        preamble: str = "",
        timeout_s: float = 20.0,
        known_names: Iterable[str] = (),
        frames: Mapping[str, str] | None = None,
        lint: bool = True,
        namespace: Mapping[str, Any] | None = None,
    ) -> None:
        self.execute = execute
        self.preamble = preamble
        self.timeout_s = timeout_s
        self.lint = lint
        ns = dict(namespace) if namespace is not None else (kernel_namespace() or {})
        self.known_names = {*known_names, *(n for n in ns if not n.startswith("_")), *bound_names(preamble)}
        self.frames: dict[str, str] = {n: k for n, v in ns.items() if (k := frame_kind(v))}
        self.frames.update(frames or {})
        self.modules = {n: v.__name__ for n, v in ns.items() if type(v).__name__ == "module"}

    def gather(self, client: ContextClient | None) -> list[ContextItem]:
        # The kernel's DataFrames (columns, samples) come from the caller as extra context items.
        return schema_context(client)

    def extract(self, text: str) -> str:
        return extract_code(text, ("python", "py", "python3"))

    def validate(self, code: str, client: ContextClient | None) -> Validation:
        if not code.strip():
            return Validation(False, "The answer holds no Python code.")
        for number, line in enumerate(code.splitlines(), 1):
            stripped = line.lstrip()
            if stripped.startswith(("%", "!")):
                return Validation(
                    False,
                    f"Line {number} is an IPython magic or shell command (`{stripped[:40]}`); "
                    "write plain Python (e.g. subprocess or the library call) instead.",
                )
        try:
            compile(code, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        except SyntaxError as exc:
            return Validation(False, syntax_error(exc))
        detail: dict[str, Any] = {}
        if self.lint:
            problems, note = ruff_check(code, self.known_names)
            if problems:
                return Validation(False, "ruff found errors:\n" + "\n".join(problems), {"ruff": problems})
            detail["lint"] = note
        mixups = frame_mixups(code, self.frames, self.modules)
        if mixups:
            return Validation(False, "\n".join(mixups), {"api": mixups})
        if self.execute:
            outcome = run_cell(code, self.preamble, self.timeout_s)
            if outcome.error:
                return Validation(False, outcome.error, {"execution": outcome.detail})
            detail["execution"] = outcome.detail
        else:
            detail["execution"] = "not run (execute=False)"
        return Validation(True, detail=detail)


def syntax_error(exc: SyntaxError, label: str = "") -> str:
    where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
    text = (exc.text or "").rstrip("\n")
    shown = f"\n    {text}" if text.strip() else ""
    return f"{label}SyntaxError at {where}: {exc.msg}{shown}"


def ruff_check(code: str, known_names: Iterable[str]) -> tuple[list[str], str]:
    """ruff's findings as 'F401 at line 1, column 8: `os` imported but unused'; (findings, note)."""
    names = sorted({n for n in known_names if n.isidentifier()})
    args = [
        sys.executable,
        "-m",
        "ruff",
        "check",
        "--isolated",
        "--no-cache",
        "--select",
        RUFF_RULES,
        "--output-format",
        "json",
        "--config",
        f"builtins = {json.dumps(names)}",
        "--stdin-filename",
        "cell.py",
        "-",
    ]
    run = run_bounded(args, timeout_s=30, input_text=code, env=child_env())
    if run.timed_out:
        return [], "skipped: ruff did not answer in 30 s"
    if run.returncode not in (0, 1):
        if "No module named ruff" in run.stderr:
            return [], "skipped: ruff is not installed (pip install ruff)"
        return [], f"skipped: ruff failed ({run.stderr.strip()[:200]})"
    try:
        findings = json.loads(run.stdout or "[]")
    except json.JSONDecodeError:
        return [], "skipped: ruff gave no JSON"
    problems = []
    for item in findings:
        message = item.get("message", "")
        if item.get("code") == "F704" and "`await`" in message:
            continue  # top-level await is fine in a notebook cell
        loc = item.get("location") or {}
        problems.append(f"{item.get('code')} at line {loc.get('row')}, column {loc.get('column')}: {message}")
    return problems, f"ruff {RUFF_RULES}: clean"


def _aliases(tree: ast.AST, modules: Mapping[str, str]) -> dict[str, str]:
    aliases = {name: module for name, module in modules.items() if module in ("pandas", "polars")}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in ("pandas", "polars"):
                    aliases[alias.asname or alias.name] = alias.name
    return aliases


def _kind_of(value: ast.expr, kinds: Mapping[str, str], aliases: Mapping[str, str]) -> str | None:
    if not isinstance(value, ast.Call) or not isinstance(value.func, ast.Attribute):
        return None
    func = value.func
    owner = func.value
    if isinstance(owner, ast.Name) and owner.id in aliases:
        library = aliases[owner.id]
        if library == "pandas" and func.attr in _PANDAS_READERS:
            return "pandas.DataFrame"
        if library == "polars":
            if func.attr in _POLARS_LAZY:
                return "polars.LazyFrame"
            if func.attr == "DataFrame" or func.attr.startswith(("read_", "from_")):
                return "polars.DataFrame"
        return None
    inner = kinds.get(owner.id) if isinstance(owner, ast.Name) else _kind_of(owner, kinds, aliases)
    if inner is None:
        return None
    if func.attr == "to_pandas":
        return "pandas.DataFrame"
    if inner == "polars.LazyFrame" and func.attr == "collect":
        return "polars.DataFrame"
    if inner == "polars.DataFrame" and func.attr == "lazy":
        return "polars.LazyFrame"
    if func.attr in _SAME_KIND and not inner.endswith("Series"):
        return inner
    return None


def _class_of(kind: str) -> Any:
    library, name = kind.split(".")
    try:
        module = __import__(library)
    except ImportError:
        return None
    return getattr(module, name, None)


def frame_mixups(code: str, frames: Mapping[str, str], modules: Mapping[str, str] | None = None) -> list[str]:
    """Attribute uses on a frame whose library has no such attribute (e.g. `.groupby` on a polars frame).

    Frames are the kernel's (`frames`: name -> 'polars.DataFrame') and those the cell makes with
    `pl.read_csv(...)`, `pd.DataFrame(...)`, `.to_pandas()`, `.lazy()`, `.collect()`, ...
    """
    tree = ast.parse(code)
    aliases = _aliases(tree, modules or {})
    kinds = dict(frames)
    problems: list[str] = []
    body = tree.body if isinstance(tree, ast.Module) else []
    for statement in body:
        for node in ast.walk(statement):
            if not isinstance(node, ast.Attribute) or not isinstance(node.ctx, ast.Load):
                continue
            owner = node.value
            kind = kinds.get(owner.id) if isinstance(owner, ast.Name) else _kind_of(owner, kinds, aliases)
            if kind is None:
                continue
            cls = _class_of(kind)
            if cls is None or hasattr(cls, node.attr):
                continue
            is_call = any(isinstance(p, ast.Call) and p.func is node for p in ast.walk(statement))
            if kind.startswith("pandas") and not is_call:
                continue  # pandas exposes columns as attributes
            hint = (PANDAS_TO_POLARS if kind.startswith("polars") else POLARS_TO_PANDAS).get(node.attr)
            if hint is None:
                close = difflib.get_close_matches(node.attr, [a for a in dir(cls) if not a.startswith("_")], 1)
                hint = close[0] if close else None
            label = ast.unparse(owner) if len(ast.unparse(owner)) <= 30 else "the frame"
            problems.append(
                f"Line {node.lineno}, column {node.col_offset + 1}: `{label}` is a {kind}, which has no "
                f"`{node.attr}`" + (f"; use `{hint}`." if hint else ".")
            )
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
            if isinstance(target, ast.Name):
                made = _kind_of(statement.value, kinds, aliases)
                if made is None and isinstance(statement.value, ast.Name):
                    made = kinds.get(statement.value.id)
                if made is None:
                    kinds.pop(target.id, None)
                else:
                    kinds[target.id] = made
    return problems


class CellOutcome:
    def __init__(self, error: str | None, detail: dict[str, Any]) -> None:
        self.error = error
        self.detail = detail


def run_cell(code: str, preamble: str, timeout_s: float) -> CellOutcome:
    """Run `preamble` then `code` in a fresh interpreter; the first exception, with its cell line."""
    with tempfile.TemporaryDirectory(prefix="contextlab-cell-") as tmp:
        folder = Path(tmp)
        (folder / "preamble.py").write_text(preamble)
        (folder / "cell.py").write_text(code)
        (folder / "runner.py").write_text(_RUNNER)
        result_path = folder / "result.json"
        # The scratch folder is the working directory; the caller's folder stays importable (local modules).
        path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)
        run = run_bounded(
            [sys.executable, str(folder / "runner.py"), "preamble.py", "cell.py", str(result_path)],
            timeout_s=timeout_s,
            cwd=tmp,
            env=child_env(MPLBACKEND="Agg", PYTHONPATH=path),
        )
        if run.timed_out:
            return CellOutcome(
                f"Running the cell did not finish within {timeout_s:g} s (an endless loop, or too much work "
                "for a check?).",
                {"timed_out": True},
            )
        try:
            result = json.loads(result_path.read_text())
        except (OSError, json.JSONDecodeError):
            tail = (run.stderr or run.stdout).strip().splitlines()[-5:]
            return CellOutcome(
                f"Running the cell crashed the interpreter (exit code {run.returncode}): " + " | ".join(tail),
                {"returncode": run.returncode},
            )
    if result.get("ok"):
        return CellOutcome(None, {"ran": True, "stdout_tail": run.stdout[-500:]})
    where = result["where"]
    line = result.get("line")
    at = f" at line {line}" if line else ""
    if where == "preamble":
        return CellOutcome(
            f"The preamble failed{at} before the cell ran: {result['type']}: {result['message']}", result
        )
    shown = ""
    if line and 0 < line <= len(code.splitlines()):
        shown = f"\n    {code.splitlines()[line - 1].strip()}"
    return CellOutcome(f"Running the cell raised {result['type']}{at}: {result['message']}{shown}", result)
