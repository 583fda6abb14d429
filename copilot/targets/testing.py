"""The `test` target: pytest tests for a function defined in the notebook, run in a subprocess against the
function's current definition; they must collect and pass."""

from __future__ import annotations

import ast
import inspect
import os
import sys
import tempfile
import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from contextlab.copilot.context import ContextClient
from contextlab.copilot.engine import ContextItem, Validation, extract_code
from contextlab.copilot.targets._common import child_env, run_bounded
from contextlab.copilot.targets.python import bound_names, kernel_namespace, syntax_error

SUBJECT = "subject"

TEST_TEMPLATE = """\
You write pytest tests for a function defined in a Jupyter notebook. Answer with one ```python block holding
the test module and nothing else.
- Import the code under test from the module `subject`, e.g. `from subject import slugify`; never copy or
  redefine it in the tests.
- Write plain `def test_...():` functions with `assert` (use `pytest.raises` and `pytest.mark.parametrize`
  where they help); no network, no files outside `tmp_path`, nothing slow.
- The tests are run against the current definition and must pass: test what the code does and should do.
{% for item in context %}

## {{ item.title }}
{{ item.text }}
{% endfor %}
"""


def defined_names(source: str) -> list[str]:
    """Top-level functions and classes a source defines."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)]


def source_from_namespace(names: Sequence[str], namespace: Mapping[str, Any]) -> tuple[str, list[str]]:
    """The source of `names` as defined in a live namespace (a kernel's), with the modules and helper
    functions they refer to; (source, names that could not be found)."""
    imports: list[str] = []
    chunks: list[str] = []
    missing: list[str] = []
    seen: set[str] = set()
    queue = list(names)
    while queue:
        name = queue.pop(0)
        if name in seen:
            continue
        seen.add(name)
        value = namespace.get(name)
        if value is None:
            missing.append(name)
            continue
        if isinstance(value, types.ModuleType):
            imports.append(f"import {value.__name__} as {name}" if value.__name__ != name else f"import {name}")
            continue
        module = getattr(value, "__module__", None)
        if callable(value) and module not in (None, "__main__", "builtins") and name not in names:
            # a helper imported into the notebook, e.g. `from math import sqrt`
            original = getattr(value, "__name__", name)
            imports.append(f"from {module} import {original}" + (f" as {name}" if original != name else ""))
            continue
        if isinstance(value, int | float | str | bool | bytes | tuple | frozenset) and name not in names:
            constant = repr(value)
            try:
                ast.literal_eval(constant)
            except (ValueError, SyntaxError):
                continue
            if len(constant) <= 2000:
                chunks.append(f"{name} = {constant}\n")
            continue
        if not (inspect.isfunction(value) or inspect.isclass(value)):
            continue
        try:
            chunks.append(inspect.getsource(value).rstrip() + "\n")
        except (OSError, TypeError):
            missing.append(name)
            continue
        code = getattr(value, "__code__", None)
        if code is not None and len(seen) < 50:
            queue.extend(n for n in _global_names(code) if n in namespace and n not in seen)
    source = "\n".join(sorted(set(imports))) + ("\n\n\n" if imports else "") + "\n\n".join(reversed(chunks))
    return source, missing


def notebook_functions(
    namespace: Mapping[str, Any], *, everything: bool = False, limit_chars: int = 6000
) -> dict[str, str]:
    """Source of the functions defined in the notebook (module `__main__`; every function of the namespace with
    `everything`), within `limit_chars`."""
    found: dict[str, str] = {}
    used = 0
    for name, value in namespace.items():
        if name.startswith("_") or not inspect.isfunction(value):
            continue
        if not everything and value.__module__ != "__main__":
            continue
        try:
            source = inspect.getsource(value).rstrip()
        except (OSError, TypeError):
            continue
        if used + len(source) > limit_chars:
            break
        found[name] = source
        used += len(source)
    return found


def _global_names(code: types.CodeType) -> Iterable[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _global_names(const)


class PytestTarget:
    """pytest tests for a notebook function. The function's source comes from the constructor
    (`function_source`), from a context item with source "kernel" (`use_context`), or, inside a kernel, from
    the live definition of the names the tests import from `subject`. Tests and source are written to a
    temporary folder and run with `python -m pytest` in a subprocess with a time limit; collection errors
    and failing tests are reported by name with their assertion message."""

    __test__ = False  # not a pytest test class

    name = "test"
    template_name = "copilot.test"
    template = TEST_TEMPLATE
    language = "python"
    max_tokens = 1200  # answers of this target run long

    def __init__(
        self,
        function_source: str | None = None,
        *,
        function: str | None = None,
        preamble: str = "",
        timeout_s: float = 60.0,
        namespace: Mapping[str, Any] | None = None,
    ) -> None:
        self.function_source = function_source
        self.function = function
        self.preamble = preamble
        self.timeout_s = timeout_s
        self._namespace = namespace

    @property
    def namespace(self) -> Mapping[str, Any]:
        if self._namespace is not None:
            return self._namespace
        return kernel_namespace() or {}

    def use_context(self, items: Iterable[ContextItem]) -> None:
        """Take the function source from the first context item from the kernel that defines a function."""
        if self.function_source:
            return
        for item in items:
            if item.source == "kernel" and defined_names(item.text):
                self.function_source = item.text
                return

    def gather(self, client: ContextClient | None) -> list[ContextItem]:
        source = self.function_source
        if not source and self.function:
            source, missing = source_from_namespace([self.function], self.namespace)
            source = source if not missing else ""
            if source:
                self.function_source = source
        if not source:
            functions = notebook_functions(self.namespace, everything=self._namespace is not None)
            if not functions:
                return []
            names = ", ".join(functions)
            text = "\n\n".join(functions.values())
            return [ContextItem("kernel", f"Functions defined in the notebook (import from subject: {names})", text)]
        names = ", ".join(defined_names(source)) or "the code below"
        return [ContextItem("kernel", f"Code under test (import {names} from subject)", source)]

    def extract(self, text: str) -> str:
        return extract_code(text, ("python", "py", "python3"))

    def validate(self, code: str, client: ContextClient | None) -> Validation:
        if not code.strip():
            return Validation(False, "The answer holds no test code.")
        try:
            tree = ast.parse(code)
            compile(code, "test_subject.py", "exec", dont_inherit=True)
        except SyntaxError as exc:
            return Validation(False, syntax_error(exc, "test_subject.py: "))
        imported = [
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == SUBJECT
            for alias in node.names
        ]
        source = self.function_source
        if not source:
            if not imported:
                return Validation(
                    False,
                    f"The tests must import the function under test from `{SUBJECT}`, e.g. "
                    f"`from {SUBJECT} import my_function`.",
                )
            source, missing = source_from_namespace([n for n in imported if n != "*"], self.namespace)
            if missing:
                return Validation(
                    False,
                    f"No definition of {', '.join(f'`{n}`' for n in missing)} was found in the notebook; "
                    "import only functions defined there.",
                )
        subject_names = defined_names(source)
        if not imported and not any(
            isinstance(n, ast.Import) and any(a.name == SUBJECT for a in n.names) for n in ast.walk(tree)
        ):
            wanted = ", ".join(subject_names) or "the function"
            return Validation(
                False, f"The tests never import the code under test: add `from {SUBJECT} import {wanted}`."
            )
        unknown = [n for n in imported if n != "*" and n not in subject_names and n not in bound_names(source)]
        if unknown:
            return Validation(
                False,
                f"`{SUBJECT}` has no {', '.join(f'`{n}`' for n in unknown)}; it defines "
                f"{', '.join(f'`{n}`' for n in subject_names) or 'nothing importable'}.",
            )
        redefined = [
            n.name
            for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and n.name in subject_names
        ]
        if redefined:
            return Validation(
                False,
                f"The tests redefine {', '.join(f'`{n}`' for n in redefined)} (line "
                f"{', '.join(str(n.lineno) for n in tree.body if getattr(n, 'name', None) in redefined)}); "
                f"import it from `{SUBJECT}` instead so the notebook's definition is tested.",
            )
        return run_pytest(self.preamble + ("\n\n" if self.preamble else "") + source, code, self.timeout_s)


def run_pytest(subject_source: str, test_source: str, timeout_s: float) -> Validation:
    """Run `test_source` against a `subject` module holding `subject_source`; the outcome as a Validation."""
    with tempfile.TemporaryDirectory(prefix="contextlab-tests-") as tmp:
        folder = Path(tmp)
        (folder / f"{SUBJECT}.py").write_text(subject_source)
        (folder / "test_subject.py").write_text(test_source)
        (folder / "pytest.ini").write_text("[pytest]\naddopts =\n")
        report = folder / "report.xml"
        run = run_bounded(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "--color=no",
                f"--junitxml={report}",
                "-o",
                "junit_family=xunit2",
                "test_subject.py",
            ],
            timeout_s=timeout_s,
            cwd=tmp,
            env=child_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONPATH=_pythonpath(tmp)),
        )
        if run.timed_out:
            return Validation(
                False,
                f"The tests did not finish within {timeout_s:g} s (an endless loop, a sleep or a test waiting "
                "for input?).",
                {"timed_out": True},
            )
        if "No module named pytest" in run.stderr:
            return Validation(False, "pytest is not installed in this Python (pip install pytest).")
        cases = _read_report(report) if report.exists() else []
    output_tail = "\n".join(run.stdout.strip().splitlines()[-15:])
    errors = [c for c in cases if c["outcome"] == "error"]
    failures = [c for c in cases if c["outcome"] == "failure"]
    passed = [c["name"] for c in cases if c["outcome"] == "passed"]
    detail: dict[str, Any] = {"returncode": run.returncode, "passed": passed, "output": output_tail}
    collection = [c for c in errors if not c["classname"] or c["message"] == "collection failure"]
    if collection:
        return Validation(
            False, "Collecting test_subject.py failed: " + collection[0]["reason"], {**detail, "collect": collection}
        )
    if failures or errors:
        lines = [
            f"{c['name']} {'failed' if c['outcome'] == 'failure' else 'errored'}: {c['reason']}"
            for c in [*failures, *errors]
        ]
        summary = f"{len(failures) + len(errors)} of {len(cases)} tests failed:\n" + "\n".join(lines[:8])
        return Validation(False, summary, {**detail, "failed": lines})
    if run.returncode == 5 or not cases:
        return Validation(False, "No tests were collected: name the test functions `test_...` at module level.", detail)
    if run.returncode != 0:
        return Validation(False, f"pytest exited with code {run.returncode}:\n{output_tail}", detail)
    return Validation(True, detail={"passed": passed, "tests": len(passed)})


def _pythonpath(folder: str) -> str:
    """The test folder first, then the caller's folder (local modules a notebook imports), then the rest."""
    return os.pathsep.join(p for p in (folder, os.getcwd(), os.environ.get("PYTHONPATH", "")) if p)


def _read_report(path: Path) -> list[dict[str, str]]:
    """Test cases from a junit XML report: name, classname, outcome and a one-line reason."""
    cases = []
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError:
        return []
    for case in root.iter("testcase"):
        outcome, reason, message = "passed", "", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = child.tag
                message = child.get("message", "")
                reason = _reason(message, child.text or "")
                break
            if child.tag == "skipped":
                outcome = "skipped"
        cases.append(
            {
                "name": case.get("name", "?"),
                "classname": case.get("classname", ""),
                "outcome": outcome,
                "message": message,
                "reason": reason,
            }
        )
    return cases


def _reason(message: str, text: str) -> str:
    """The 'E ...' lines of a pytest traceback (the assertion and its explanation), with the test line."""
    lines = text.splitlines()
    explained = [line[1:].strip() for line in lines if line.startswith("E ")]
    explained = explained[:1] + [e for e in explained[1:] if e and e[0] not in "-+?" and e != "Full diff:"]
    where = next(
        (line.strip() for line in reversed(lines) if line.startswith("test_subject.py:") and ":" in line[16:]), ""
    )
    body = " | ".join(e for e in explained[:6] if e) or message.strip() or "unknown error"
    return body + (f" ({where})" if where else "")
