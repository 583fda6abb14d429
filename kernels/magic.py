"""`%%copilot`, `%copilot` and `%%duckdb`: the Copilot in a notebook.

    %%copilot sql [--model M] [--no-context] [--no-validate] [--explain] [--project P] [--sensitivity S]
    top 5 customers by revenue

streams the model's answer into the cell output, shows the validated suggestion with Accept / Reject /
Regenerate / Explain buttons, and inserts the code as a NEW cell below (`%%duckdb` for SQL), never
touching the cell that asked. `docs/copilot-cells.md` is the user guide.
"""

from __future__ import annotations

import atexit
import logging
import shlex
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from contextlab.copilot.context import ContextUnavailable, ToolFailed
from contextlab.copilot.llm import SENSITIVITY_ORDER
from contextlab.kernels.api import auth_header
from contextlab.kernels.render import (
    Throttled,
    explanation_bundle,
    stream_bundle,
    suggestion_bundle,
    table_bundle,
)
from contextlab.kernels.session import CellError, CopilotSession
from contextlab.kernels.widgets import SuggestionView

LINE_USAGE = """\
%copilot models              the configured models, the default chain, budgets
%copilot context [TARGET]    what a %%copilot cell would put in the prompt now (default: sql)
%copilot history             this kernel's suggestions
%copilot accept [ID]         record that the last (or given) suggestion was good
%copilot reject [ID]         record that it was not
%copilot insert [ID]         insert the suggestion's code as a new cell (e.g. after Regenerate)
%copilot explain [ID]        explain the suggestion's code in plain words
%copilot config [KEY=VALUE]  show or set: model, project, user, sensitivity, frames, max_repairs
%copilot usage               tokens, cost and latency per user, project and model
%copilot reload              forget the cached models (after the server's configuration changed)
%copilot log                 the Copilot's recent log lines in this kernel"""

EXTENSION_LOGGER = "contextlab"


@magic_arguments()
@argument("target", nargs="?", help="What to generate: sql.")
@argument("--model", "-m", default=None, help="Ask this model first (policy may still refuse it).")
@argument("--no-context", action="store_true", help="Send only the request: no schema, no DataFrames.")
@argument("--no-validate", action="store_true", help="Do not check the code (for SQL: do not run it).")
@argument("--explain", action="store_true", help="Also explain the code in plain words.")
@argument("--project", "-p", default=None, help="Account usage to this project (budgets apply per project).")
@argument("--sensitivity", "-s", default=None, choices=SENSITIVITY_ORDER, help="How sensitive the context is.")
def _copilot_cell_arguments(line: str) -> None:
    """%%copilot TARGET [options], then the request in the cell."""


@magics_class
class CopilotMagics(Magics):
    def __init__(self, shell: Any, session: CopilotSession) -> None:
        super().__init__(shell)
        self.session = session

    # -- %%copilot / %copilot ---------------------------------------------------------------------------
    @line_cell_magic
    def copilot(self, line: str, cell: str | None = None) -> None:
        """%%copilot TARGET [options] + request: generate code. %copilot COMMAND: models, history, usage, …"""
        if cell is None:
            self._line(line)
        else:
            self._generate(line, cell)

    def _generate(self, line: str, cell: str) -> None:
        args = parse_argstring(_copilot_cell_arguments, line)
        session = self.session
        request = session.request(
            args.target,
            cell,
            model=args.model,
            use_context=not args.no_context,
            validate=not args.no_validate,
            project=args.project,
            sensitivity=args.sensitivity,
            explain=args.explain,
        )
        handle: list[Any] = []  # created with the first token, so an early error leaves no output behind

        def show(text: str) -> None:
            if not handle:
                handle.append(display(stream_bundle(text), raw=True, display_id=True))
            else:
                handle[0].update(stream_bundle(text), raw=True)

        stream = Throttled(show)
        try:
            record = session.generate(request, on_token=stream)
        except CellError:
            if handle:
                handle[0].update({"text/plain": ""}, raw=True)
            raise
        problem = ""
        if request.explain:
            try:
                session.explain(record)
            except CellError as exc:
                problem = f" (no explanation: {exc})"
        if record.cell:
            self.shell.set_next_input(record.cell, replace=False)
            kind = record.cell.splitlines()[0] if record.cell.startswith("%%") else "code"
            note = f"Inserted below as a new {kind} cell" + (
                " with a warning header: review it before running it." if not record.suggestion.valid else "."
            )
        else:
            note = "Nothing inserted: the model's answer held no code."
        bundle = suggestion_bundle(record, note + problem)
        metadata = {"contextlab": record.suggestion.provenance()}
        if handle:
            handle[0].update(bundle, raw=True, metadata=metadata)
        else:
            display(bundle, raw=True, metadata=metadata)
        display(SuggestionView(session, record).widget)

    def _line(self, line: str) -> None:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise CellError(f"Cannot read {line!r}: {exc}.") from None
        command, rest = (words[0], words[1:]) if words else ("help", [])
        handler = getattr(self, f"_cmd_{command}", None)
        if handler is None:
            raise CellError(f"Unknown command {command!r}. Commands:\n{LINE_USAGE}")
        handler(rest)

    def _cmd_help(self, rest: list[str]) -> None:
        print("%%copilot TARGET [--model M] [--no-context] [--no-validate] [--explain] [--project P]\n" + LINE_USAGE)

    def _cmd_models(self, rest: list[str]) -> None:
        router = self.session.router()
        rows = [
            [
                spec.name,
                spec.backend,
                spec.model,
                spec.locality,
                spec.latency,
                spec.cost_per_1k_input,
                spec.cost_per_1k_output,
                spec.base_url or "",
            ]
            for spec in router.models.values()
        ]
        columns = ["name", "backend", "model", "locality", "latency", "in/1k", "out/1k", "base_url"]
        display(table_bundle(columns, rows, f"Models (from {self.session.models_source})"), raw=True)
        budgets = ", ".join(f"{p}: {b:g}" for p, b in router.policy.budgets.items()) or "none"
        latency = ", ".join(f"{t}: {v}" for t, v in router.policy.target_latency.items()) or "none"
        print(f"default chain: {' → '.join(router.default_chain)}")
        print(f"budgets: {budgets}; latency preferences: {latency}")
        print(f"this kernel asks first: {self.session.settings.model or 'the chain (no model set)'}")

    def _cmd_context(self, rest: list[str]) -> None:
        target = rest[0] if rest else "sql"
        items = self.session.context(target, " ".join(rest[1:]))
        if not items:
            print(f"No context for {target}.")
            return
        for item in items:
            display(
                {
                    "text/plain": f"## {item.title} ({item.source})\n{item.text}",
                    "text/markdown": f"**{item.title}** <small>({item.source})</small>\n\n```\n{item.text}\n```",
                },
                raw=True,
            )

    def _cmd_history(self, rest: list[str]) -> None:
        rows = []
        for record in self.session.history:
            s = record.suggestion
            request = s.request if len(s.request) <= 60 else s.request[:59] + "…"
            rows.append(
                [s.id[:12], s.target, s.valid, s.model, ",".join(record.feedback) or "-", len(record.runs), request]
            )
        columns = ["id", "target", "valid", "model", "feedback", "runs", "request"]
        display(table_bundle(columns, rows, "Copilot suggestions in this kernel"), raw=True)

    def _feedback(self, rest: list[str], kind: str) -> None:
        record = self.session.find(rest[0] if rest else None)
        self.session.feedback(record.id, kind)
        view = self.session.views.get(record.id)
        if view is not None:
            view.accept.disabled = view.reject.disabled = True
            view.say(f"{kind.capitalize()} (with %copilot {kind[:-2] if kind.endswith('ed') else kind}).")
        print(f"Recorded: {kind} for suggestion {record.id[:12]} ({record.request.text[:60]}).")

    def _cmd_accept(self, rest: list[str]) -> None:
        self._feedback(rest, "accepted")

    def _cmd_reject(self, rest: list[str]) -> None:
        self._feedback(rest, "rejected")

    def _cmd_insert(self, rest: list[str]) -> None:
        record = self.session.find(rest[0] if rest else None)
        if not record.cell:
            raise CellError(f"Suggestion {record.id[:12]} holds no code to insert.")
        self.shell.set_next_input(record.cell, replace=False)
        print(f"Inserted suggestion {record.id[:12]} below.")

    def _cmd_explain(self, rest: list[str]) -> None:
        record = self.session.find(rest[0] if rest else None)
        display(explanation_bundle(self.session.explain(record)), raw=True)

    def _cmd_config(self, rest: list[str]) -> None:
        settings = self.session.settings
        for pair in rest:
            key, sep, value = pair.partition("=")
            if not sep:
                raise CellError(f"Write settings as KEY=VALUE, not {pair!r}.")
            settings.set(key.strip(), value.strip(), lambda: self.session.router().models)
        api = self.session.api
        rows = [
            ["model", settings.model or "(the chain)"],
            ["project", settings.project],
            ["user", settings.user],
            ["sensitivity", settings.sensitivity],
            ["frames", settings.frames],
            ["max_repairs", settings.max_repairs],
            ["server", api.base_url if api else "(none: CONTEXTLAB_MCP_URL is not set)"],
            ["auth", (auth_header(api.token).get("Authorization", "none").split(" ")[0]) if api else "-"],
            ["models from", self.session.models_source or "(not loaded yet)"],
        ]
        display(table_bundle(["setting", "value"], rows, "Copilot configuration"), raw=True)

    def _cmd_usage(self, rest: list[str]) -> None:
        rows, source = self.session.usage.summary()
        columns = ["user", "project", "model", "calls", "failures", "prompt_tokens", "completion_tokens", "cost"]
        table = [[row.get(c, "") for c in columns] + [row.get("latency_s", "")] for row in rows]
        display(table_bundle([*columns, "mean_latency_s"], table, f"LLM usage ({source})"), raw=True)

    def _cmd_reload(self, rest: list[str]) -> None:
        self.session.reload()
        router = self.session.router()
        print(f"Models reloaded from {self.session.models_source}: {', '.join(router.models)}.")

    def _cmd_log(self, rest: list[str]) -> None:
        print("\n".join(self.session.log.lines) or "(nothing logged)")

    # -- %%duckdb --------------------------------------------------------------------------------------
    @magic_arguments()
    @argument("--database", "-d", default=None, help="Database name (the server's default when omitted).")
    @argument("--limit", "-l", type=int, default=None, help="Maximum rows (the server's row limit when omitted).")
    @argument("-o", "--output", default=None, help="Also store the DataFrame in this variable.")
    @cell_magic
    def duckdb(self, line: str, cell: str) -> Any:
        """Run one read-only SQL query through the ContextLab endpoint; the result is a pandas DataFrame."""
        args = parse_argstring(self.duckdb, line)
        sql = cell.strip().rstrip(";").strip()
        if not any(s.strip() and not s.strip().startswith("--") for s in sql.splitlines()):
            raise CellError("Write one SQL query below `%%duckdb`.", prefix="DuckDB")
        if args.limit is not None and args.limit < 1:
            raise CellError("--limit must be 1 or more.", prefix="DuckDB")
        if args.output is not None and not args.output.isidentifier():
            raise CellError(f"-o needs a variable name, not {args.output!r}.", prefix="DuckDB")
        try:
            client = self.session.client(required=True)
        except CellError as exc:
            raise CellError(str(exc), prefix="DuckDB") from None
        arguments: dict[str, Any] = {"sql": sql}
        if args.database:
            arguments["database"] = args.database
        if args.limit:
            arguments["limit"] = args.limit
        try:
            result = client.call_tool("sql__query", arguments)
        except ToolFailed as exc:
            raise CellError(f"The query failed: {exc}", prefix="DuckDB") from None
        except ContextUnavailable as exc:
            raise CellError(str(exc), prefix="DuckDB") from None
        frame = result_frame(result)
        if args.output:
            self.shell.user_ns[args.output] = frame
        if result.get("truncated"):
            print(f"Showing the first {result.get('limit')} rows (the row limit); use --limit N for more.")
        return frame


def result_frame(result: dict[str, Any]) -> Any:
    """A `sql__query` result as a pandas DataFrame, dates and timestamps parsed."""
    import pandas as pd

    columns = result.get("columns") or []
    names = [c.get("name", f"column{i}") for i, c in enumerate(columns)]
    frame = pd.DataFrame(result.get("rows") or [], columns=names)
    for i, column in enumerate(columns):
        kind = str(column.get("type", "")).upper()
        if kind == "DATE" or kind.startswith("TIMESTAMP"):
            frame.isetitem(i, pd.to_datetime(frame.iloc[:, i], errors="coerce"))
    return frame


def load(shell: Any) -> CopilotSession:
    """Register the magics and the feedback hook on `shell` (once); the session is this kernel's Copilot."""
    existing = session_for(shell)
    if existing is not None:
        return existing
    session = CopilotSession(shell)
    logger = logging.getLogger(EXTENSION_LOGGER)
    logger.addHandler(session.log)  # Copilot logs go to `%copilot log`, not to stderr in a cell
    logging.getLogger("contextlab.kernels").setLevel(logging.INFO)
    shell.register_magics(CopilotMagics(shell, session))
    shell.events.register("post_run_cell", session.on_post_run_cell)
    atexit.register(session.close)  # deliver what is still queued when the kernel shuts down
    return session


def unload(shell: Any) -> None:
    session = session_for(shell)
    if session is None:
        return
    try:
        shell.events.unregister("post_run_cell", session.on_post_run_cell)
    except ValueError:
        pass
    manager = shell.magics_manager
    for kind, names in (("line", ("copilot",)), ("cell", ("copilot", "duckdb"))):
        for name in names:
            manager.magics[kind].pop(name, None)
    manager.registry.pop("CopilotMagics", None)
    logging.getLogger(EXTENSION_LOGGER).removeHandler(session.log)
    atexit.unregister(session.close)
    session.close()


def session_for(shell: Any) -> CopilotSession | None:
    """The Copilot session of a shell where the extension is loaded."""
    magics = shell.magics_manager.registry.get("CopilotMagics")
    return getattr(magics, "session", None)
