"""`contextlab pipeline|schedule|jobs|scheduler …`: papermill pipelines, their schedules and history.

These commands work on a workspace's state store directly (`<workspace>/.contextlab/state.db`), so
pipelines run with or without a Jupyter server. A server running on the same workspace fires the
schedules added here on its next tick; `contextlab scheduler run` does the same without a server.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def add_pipeline_commands(sub: Any) -> None:
    """Register `pipeline`, `schedule`, `jobs` and `scheduler`."""

    def command(parent: Any, name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> Any:
        parser = parent.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--workspace", default=".", help="Workspace folder (default: the current folder).")
        parser.add_argument("--state-url", help="SQLAlchemy URL of the state store (default: the workspace's).")
        parser.add_argument("--json", action="store_true", help="Print JSON.")
        parser.set_defaults(func=lambda args, _extra: func(args))
        return parser

    def params(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "-p",
            "--param",
            nargs=2,
            action="append",
            default=[],
            metavar=("NAME", "VALUE"),
            help='A notebook parameter; VALUE is read as JSON when it parses (42, true, ["a"]), else as text.',
        )
        parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="A run tag (repeat).")
        parser.add_argument("--timeout", type=_duration, help="Stop the run after this long (e.g. 900s, 30m, 2h).")

    pipeline = sub.add_parser(
        "pipeline",
        help="Run the improvement-loop notebooks (papermill) and track them in MLflow.",
        description="Pipelines are parameterised notebooks run by papermill. Every run is recorded in the "
        "state store (status, parameters, timings, output notebook, error cell) and in MLflow.",
    )
    psub = pipeline.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)
    command(psub, "list", "List the shipped pipelines and their parameters.", _pipeline_list)
    run = command(psub, "run", "Run a pipeline now and wait for it (exit code 1 if it fails).", _pipeline_run)
    run.add_argument("pipeline", help="A shipped pipeline (see `pipeline list`) or a path to a notebook.")
    params(run)
    run.add_argument("--executor", default="local", help="local, local:N, or dask://host:8786 (default local).")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in the workspace state folder).")
    run.add_argument("--no-progress", action="store_true", help="Hide papermill's progress bar.")

    schedule = sub.add_parser(
        "schedule",
        help="Cron schedules for pipelines, with retries, timeouts and alerts.",
        description="Schedules fire inside the ContextLab server, or under `contextlab scheduler run`. "
        "A schedule missed during downtime fires once, not once per missed slot.",
    )
    ssub = schedule.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)
    add = command(ssub, "add", "Add a schedule.", _schedule_add)
    add.add_argument("name", help="Schedule name, e.g. nightly-eval.")
    add.add_argument("--pipeline", required=True, help="The pipeline to run.")
    add.add_argument("--cron", required=True, help="Cron expression, e.g. '0 2 * * *'.")
    add.add_argument("--tz", default="UTC", help="IANA time zone the cron is read in (default UTC).")
    params(add)
    add.add_argument("--retries", type=int, default=0, help="Retries after a failure (default 0).")
    add.add_argument("--backoff", type=_duration, default=60.0, help="First retry delay; doubles each time (60s).")
    add.add_argument("--max-concurrent", type=int, default=1, help="Runs of this schedule in flight at once (1).")
    add.add_argument(
        "--alert",
        action="append",
        default=[],
        help="On final failure: webhook:URL, email:ADDRESS or event[:topic] (repeat).",
    )
    add.add_argument("--disabled", action="store_true", help="Create it disabled.")
    add.add_argument("--replace", action="store_true", help="Overwrite a schedule of the same name.")
    command(ssub, "list", "List schedules with their next run.", _schedule_list)
    for action, text in (("remove", "Delete a schedule."), ("enable", "Enable."), ("disable", "Disable.")):
        parser = command(ssub, action, text, _schedule_action(action))
        parser.add_argument("name")

    jobs = sub.add_parser(
        "jobs", help="Pipeline run history.", description="Query, inspect, cancel and purge pipeline runs."
    )
    jsub = jobs.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    jlist = command(jsub, "list", "List runs, newest first.", _jobs_list)
    jlist.add_argument("--status", action="append", help="queued, running, succeeded, failed, cancelled, timed-out.")
    jlist.add_argument("--pipeline")
    jlist.add_argument("--schedule")
    jlist.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    jlist.add_argument("--since", type=_duration, help="Only runs created this recently (e.g. 7d, 12h).")
    jlist.add_argument("--until", type=_duration, help="Only runs created at least this long ago.")
    jlist.add_argument("--limit", type=int, default=20, help="Rows per page (default 20).")
    jlist.add_argument("--page", type=int, default=1, help="Page number, from 1.")
    show = command(jsub, "show", "Show one run: status, error cell, output notebook, MLflow run.", _jobs_show)
    show.add_argument("run_id", help="Run id (a unique prefix is enough).")
    show.add_argument("--html", metavar="FILE", help="Also write the executed notebook as an HTML page to FILE.")
    cancel = command(jsub, "cancel", "Cancel a queued or running run.", _jobs_cancel)
    cancel.add_argument("run_id")
    purge = command(jsub, "purge", "Delete old finished runs and their output notebooks.", _jobs_purge)
    purge.add_argument("--older-than", type=_duration, help="e.g. 30d.")
    purge.add_argument("--keep-last", type=int, help="Keep this many newest runs per pipeline.")

    scheduler = sub.add_parser("scheduler", help="Run the pipeline scheduler without a Jupyter server.")
    schsub = scheduler.add_subparsers(dest="scheduler_command", metavar="ACTION", required=True)
    srun = command(schsub, "run", "Fire due schedules until interrupted (Ctrl-C).", _scheduler_run)
    srun.add_argument("--tick", type=float, default=15.0, help="Seconds between checks (default 15).")
    srun.add_argument("--once", action="store_true", help="Check once, wait for the runs started, and exit.")
    srun.add_argument("--executor", default="local", help="local, local:N, or dask://host:8786.")
    srun.add_argument("--max-concurrent", type=int, default=2, help="Runs in flight at once, all schedules (2).")
    srun.add_argument("--tracking-uri", help="MLflow tracking URI.")
    srun.add_argument("--retention-days", type=float, default=30.0, help="Delete finished runs older than this.")
    srun.add_argument("--keep-last", type=int, default=200, help="Keep at most this many runs per pipeline.")
    srun.add_argument("--smtp", default="localhost:25", help="SMTP host:port for email alerts.")
    srun.add_argument("--smtp-from", default="contextlab@localhost", help="Sender of email alerts.")


# -- helpers ---------------------------------------------------------------------------------------
def _duration(text: str) -> float:
    match = DURATION.match(text.strip())
    if match is None:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: give seconds or a duration like 90s, 30m, 2h, 7d") from None
    return float(match.group(1)) * _UNITS[match.group(2)]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"contextlab: {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def _state(args: argparse.Namespace) -> tuple[Any, Path]:
    from contextlab.state import StateStore, sqlite_url_for_workspace

    state_dir = Path(args.workspace).expanduser().resolve() / ".contextlab"
    store = StateStore(args.state_url or sqlite_url_for_workspace(state_dir))
    store.migrate()
    return store, state_dir


def _runner(args: argparse.Namespace, **kwargs: Any) -> Any:
    from contextlab.pipelines.executors import ExecutorError, make_executor
    from contextlab.pipelines.runner import PipelineRunner

    store, state_dir = _state(args)
    try:
        executor = make_executor(getattr(args, "executor", "local"))
    except ExecutorError as exc:
        raise SystemExit(f"contextlab: {exc}") from exc
    workspace = Path(args.workspace).expanduser().resolve()
    return PipelineRunner(
        store,
        state_dir,
        tracking_uri=getattr(args, "tracking_uri", None),
        executor=executor,
        cwd=workspace,
        notebook_dirs=[workspace / "notebooks", workspace],
        env={"CONTEXTLAB_WORKSPACE": str(workspace)},
        publish=_publisher(store),
        **kwargs,
    )


def _publisher(store: Any) -> Callable[[str, dict[str, Any]], Any]:
    from contextlab.extension.events import EventBus

    bus = EventBus(store)
    return bus.publish


def _fmt_time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _print(args: argparse.Namespace, value: Any, text: str) -> None:
    print(json.dumps(value, indent=2, default=str) if args.json else text)


def _table(rows: list[list[Any]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


# -- pipeline --------------------------------------------------------------------------------------
def _pipeline_list(args: argparse.Namespace) -> int:
    from contextlab.pipelines.runner import notebook_parameters, packaged_pipelines, resolve_notebook

    out = {}
    for name in packaged_pipelines():
        out[name] = {k: v.get("default") for k, v in notebook_parameters(resolve_notebook(name)).items()}
    lines = [f"{name}\n    " + ", ".join(f"{k}={v}" for k, v in ps.items()) for name, ps in out.items()]
    _print(args, out, "\n".join(lines))
    return 0


def _pipeline_run(args: argparse.Namespace) -> int:
    from contextlab.pipelines.runner import PipelineError

    runner = _runner(args, progress=not args.no_progress and not args.json)
    try:
        record = runner.run(
            args.pipeline,
            {name: _value(value) for name, value in args.param},
            tags=_pairs(args.tag),
            timeout_s=args.timeout,
        )
    except PipelineError as exc:
        print(f"contextlab: {exc}", file=sys.stderr)
        return 2
    finally:
        runner.close()
    _print(args, record, _describe(record))
    return 0 if record["status"] == "succeeded" else 1


def _describe(record: dict[str, Any]) -> str:
    lines = [
        f"run        {record['id']}",
        f"pipeline   {record['pipeline']}  (attempt {record['attempt']}, {record['trigger']})",
        f"status     {record['status']}",
        f"created    {_fmt_time(record['created_at'])}",
        f"duration   {record['duration_s']:.1f} s" if record.get("duration_s") is not None else "duration   -",
        f"notebook   {record.get('output_path') or '-'}",
        f"mlflow     {record.get('mlflow_run_id') or '-'}",
    ]
    if record.get("parameters"):
        lines.append(f"parameters {json.dumps(record['parameters'])}")
    if record.get("metrics"):
        lines.append("metrics    " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(record["metrics"].items())))
    if record.get("error"):
        cell = f" (cell {record['error_cell']})" if record.get("error_cell") is not None else ""
        lines.append(f"error{cell}  {record['error']}")
    if record.get("tracking_error"):
        lines.append(f"tracking   not recorded in MLflow: {record['tracking_error']}")
    return "\n".join(lines)


# -- schedule --------------------------------------------------------------------------------------
def _scheduler(args: argparse.Namespace, **kwargs: Any) -> Any:
    from contextlab.pipelines.scheduler import Scheduler

    runner = _runner(args, **{k: v for k, v in kwargs.items() if k == "max_concurrent"})
    return Scheduler(runner, **{k: v for k, v in kwargs.items() if k != "max_concurrent"})


def _schedule_add(args: argparse.Namespace) -> int:
    from contextlab.pipelines.scheduler import ScheduleError

    scheduler = _scheduler(args)
    try:
        row = scheduler.add(
            args.name,
            args.pipeline,
            args.cron,
            tz=args.tz,
            parameters={name: _value(value) for name, value in args.param},
            tags=_pairs(args.tag),
            retries=args.retries,
            backoff_s=args.backoff,
            timeout_s=args.timeout,
            max_concurrent=args.max_concurrent,
            alerts=args.alert,
            enabled=not args.disabled,
            replace=args.replace,
        )
    except ScheduleError as exc:
        print(f"contextlab: {exc}", file=sys.stderr)
        return 2
    finally:
        scheduler.runner.close()
    _print(
        args,
        row,
        f"schedule {row['name']}: {row['pipeline']} at '{row['cron']}' ({row['tz']}); "
        f"next run {_fmt_time(row['next_run_at'])} UTC",
    )
    return 0


def _schedule_list(args: argparse.Namespace) -> int:
    scheduler = _scheduler(args)
    rows = scheduler.list()
    scheduler.runner.close()
    table = _table(
        [
            [
                r["name"],
                r["pipeline"],
                r["cron"],
                r["tz"],
                "yes" if r["enabled"] else "no",
                r["retries"],
                _fmt_time(r["next_run_at"]),
                _fmt_time(r["last_run_at"]),
                ",".join(r["alerts"]) or "-",
            ]
            for r in rows
        ],
        ["NAME", "PIPELINE", "CRON", "TZ", "ENABLED", "RETRIES", "NEXT (UTC)", "LAST (UTC)", "ALERTS"],
    )
    _print(args, rows, table if rows else "no schedules")
    return 0


def _schedule_action(action: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        scheduler = _scheduler(args)
        try:
            done = (
                scheduler.remove(args.name)
                if action == "remove"
                else scheduler.set_enabled(args.name, action == "enable")
            )
        finally:
            scheduler.runner.close()
        if not done:
            print(f"contextlab: no schedule named {args.name!r} (see `contextlab schedule list`)", file=sys.stderr)
            return 1
        _print(args, {"name": args.name, "action": action}, f"schedule {args.name}: {action}d")
        return 0

    return run


# -- jobs ------------------------------------------------------------------------------------------
def _jobs_list(args: argparse.Namespace) -> int:
    runner = _runner(args)
    now = datetime.now(UTC)
    try:
        page = runner.history(
            status=args.status,
            pipeline=args.pipeline,
            schedule=args.schedule,
            tags=_pairs(args.tag),
            since=now - timedelta(seconds=args.since) if args.since else None,
            until=now - timedelta(seconds=args.until) if args.until else None,
            limit=args.limit,
            offset=(max(args.page, 1) - 1) * args.limit,
        )
    except ValueError as exc:
        print(f"contextlab: {exc}", file=sys.stderr)
        return 2
    finally:
        runner.close()
    rows = [
        [
            r["id"][:12],
            r["pipeline"],
            r["status"],
            r["trigger"],
            r["attempt"],
            _fmt_time(r["created_at"]),
            f"{r['duration_s']:.1f}" if r["duration_s"] is not None else "-",
            (r["error"] or "")[:60],
        ]
        for r in page.runs
    ]
    pages = max(1, -(-page.total // page.limit))
    text = _table(rows, ["RUN", "PIPELINE", "STATUS", "TRIGGER", "TRY", "CREATED (UTC)", "SECONDS", "ERROR"])
    text += f"\npage {page.offset // page.limit + 1} of {pages} ({page.total} runs)"
    _print(args, {"runs": page.runs, "total": page.total, "limit": page.limit, "offset": page.offset}, text)
    return 0


def _find(runner: Any, prefix: str) -> dict[str, Any] | None:
    record = runner.get(prefix)
    if record is not None:
        return record
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from contextlab.state.models import PipelineRunRow

    with Session(runner.store.engine) as session:
        ids = list(session.scalars(select(PipelineRunRow.id).where(PipelineRunRow.id.startswith(prefix)).limit(2)))
    return runner.get(ids[0]) if len(ids) == 1 else None


def _jobs_show(args: argparse.Namespace) -> int:
    runner = _runner(args)
    record = _find(runner, args.run_id)
    runner.close()
    if record is None:
        print(f"contextlab: no run {args.run_id!r} (or the prefix is ambiguous)", file=sys.stderr)
        return 1
    _print(args, record, _describe(record))
    if args.html:
        from contextlab.pipelines.runner import render_html

        if not record.get("output_path") or not Path(record["output_path"]).exists():
            print(f"contextlab: run {record['id']} has no output notebook", file=sys.stderr)
            return 1
        Path(args.html).write_text(render_html(record["output_path"]), encoding="utf-8")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0


def _jobs_cancel(args: argparse.Namespace) -> int:
    runner = _runner(args)
    record = _find(runner, args.run_id)
    try:
        if record is None:
            print(f"contextlab: no run {args.run_id!r}", file=sys.stderr)
            return 1
        if not runner.cancel(record["id"]):
            print(f"contextlab: run {record['id']} already finished ({record['status']})", file=sys.stderr)
            return 1
    finally:
        runner.close(wait=False)
    _print(args, {"id": record["id"], "cancelled": True}, f"run {record['id']}: cancel requested")
    return 0


def _jobs_purge(args: argparse.Namespace) -> int:
    if args.older_than is None and args.keep_last is None:
        print("contextlab: give --older-than and/or --keep-last", file=sys.stderr)
        return 2
    runner = _runner(args)
    deleted = runner.purge(
        older_than=timedelta(seconds=args.older_than) if args.older_than else None, keep_last=args.keep_last
    )
    runner.close()
    _print(args, {"deleted": deleted}, f"deleted {deleted} run(s)")
    return 0


# -- scheduler -------------------------------------------------------------------------------------
def _scheduler_run(args: argparse.Namespace) -> int:
    from contextlab.pipelines.scheduler import RetentionPolicy, SmtpSettings

    host, _, port = args.smtp.partition(":")
    scheduler = _scheduler(
        args,
        max_concurrent=args.max_concurrent,
        smtp=SmtpSettings(host=host, port=int(port or 25), sender=args.smtp_from),
        retention=RetentionPolicy(timedelta(days=args.retention_days), args.keep_last),
    )
    if args.once:
        started = scheduler.tick()
        for run_id in started:
            scheduler.runner.wait(run_id)
        scheduler.runner.close()
        _print(args, {"started": started}, f"started {len(started)} run(s): {' '.join(started) or '-'}")
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"contextlab scheduler: {len(scheduler.list())} schedule(s); checking every {args.tick:g} s", flush=True)
    try:
        scheduler.run_forever(stop, args.tick)
    except KeyboardInterrupt:
        pass
    finally:
        scheduler.runner.close(wait=False)
    return 0
