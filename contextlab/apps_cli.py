"""`contextlab apps …`: create, check, version, publish and serve no-code apps (PageDSL).

The commands work on a workspace's state store (`<workspace>/.contextlab/state.db`) and its apps folder
(`<workspace>/apps`, the apps' DuckDB files and BPMN flows), with or without a Jupyter server.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SKELETON = """\
dsl: "1.0"
app:
  name: {name}
  title: {title}
pages:
  - id: home
    title: Home
    route: /home
    components:
      - id: welcome
        type: markdown
        text: "# {title}\\n\\nEdit this app in the builder, or with `contextlab apps export` and `import`."
"""


def add_apps_commands(sub: Any) -> None:
    """Register `contextlab apps`."""
    apps = sub.add_parser(
        "apps",
        help="No-code apps: create, validate, version, publish and serve PageDSL apps.",
        description="No-code apps are PageDSL documents (docs/apps.md). Every save is a version; publishing "
        "serves a version as a Panel dashboard (`apps serve`).",
    )
    asub = apps.add_subparsers(dest="apps_command", metavar="ACTION", required=True)

    def command(name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        parser = asub.add_parser(name, help=help_text, description=help_text)
        parser.add_argument(
            "--workspace",
            default=os.environ.get("CONTEXTLAB_WORKSPACE") or ".",
            help="Workspace folder (default: $CONTEXTLAB_WORKSPACE, set in a Jupyter server's terminals and "
            "kernels, else the current folder).",
        )
        parser.add_argument(
            "--state-url",
            default=os.environ.get("CONTEXTLAB_STATE_URL") or None,
            help="SQLAlchemy URL of the state store (default: $CONTEXTLAB_STATE_URL, else the workspace's).",
        )
        parser.add_argument("--author", default=None, help="Who makes the change (default: $USER).")
        parser.set_defaults(func=lambda args, _extra: _guard(func, args))
        return parser

    new = command("new", "Create an app: from a file, a shipped example, a description, or a skeleton.", _new)
    new.add_argument("name", help="The app's name (a-z, 0-9, - and _; part of its URL).")
    source = new.add_mutually_exclusive_group()
    source.add_argument("--from", dest="from_file", help="A PageDSL file (YAML or JSON).")
    source.add_argument("--example", choices=["expenses"], help="A shipped example app.")
    source.add_argument("--describe", help="Describe the app in plain words; the Copilot drafts it.")
    new.add_argument("--model", default="local", help="Model for --describe (local, openai:<id>, anthropic:<id>).")
    new.add_argument(
        "--mcp-url",
        help="ContextLab MCP endpoint whose tables and apps --describe uses as context "
        "(default: $CONTEXTLAB_MCP_URL; without one the draft has no workspace context).",
    )
    new.add_argument("--mcp-token", help="Token for --mcp-url (default: $CONTEXTLAB_TOKEN).")
    new.add_argument("--title", help="Title (default: from the name).")
    new.add_argument("--publish", action="store_true", help="Publish the new app at once.")

    validate = command("validate", "Check a PageDSL file; prints each issue with its path and line.", _validate)
    validate.add_argument("file")

    command("list", "List the apps with their current and published versions.", _list).add_argument(
        "--json", action="store_true", help="Print JSON."
    )
    show = command("show", "Print an app (YAML).", _export)
    show.add_argument("name")
    show.add_argument("--version", type=int)
    show.set_defaults(output=None)

    save = command("save", "Save a file as the app's next version (refused if the app changed since --base).", _save)
    save.add_argument("name")
    save.add_argument("file")
    save.add_argument("--base", type=int, required=True, help="The version your edit starts from.")
    save.add_argument("-m", "--message", default="", help="What changed.")
    save.add_argument("--confirm", action="store_true", help="Allow data-losing model changes (backed up first).")

    publish = command("publish", "Serve a version (default: the current one) at the app's URL.", _publish)
    publish.add_argument("name")
    publish.add_argument("--version", type=int)
    unpublish = command("unpublish", "Stop serving an app.", _unpublish)
    unpublish.add_argument("name")

    export = command("export", "Write an app as a PageDSL YAML file (with its DSL version).", _export)
    export.add_argument("name")
    export.add_argument("--version", type=int)
    export.add_argument("-o", "--output", help="File to write (default: stdout).")
    export.add_argument(
        "--python", action="store_true", help="Write a plain Panel script (low-code) instead of the YAML document."
    )

    imp = command("import", "Import a PageDSL file: creates the app or saves a new version of it.", _import)
    imp.add_argument("file")

    versions = command("versions", "List an app's versions.", _versions)
    versions.add_argument("name")
    versions.add_argument("--json", action="store_true", help="Print JSON.")

    diff = command("diff", "Show what changed between two versions.", _diff)
    diff.add_argument("name")
    diff.add_argument("old", type=int)
    diff.add_argument("new", type=int, nargs="?")

    rollback = command("rollback", "Make an old version current again (as a new version).", _rollback)
    rollback.add_argument("name")
    rollback.add_argument("version", type=int)

    migrate = command("migrate", "Bring the app's DuckDB tables to its data model (shows the plan first).", _migrate)
    migrate.add_argument("name")
    migrate.add_argument("--dry-run", action="store_true", help="Only print the plan.")
    migrate.add_argument("--confirm", action="store_true", help="Allow data-losing steps (backed up first).")

    er = command("er", "Print the app's data model as a Mermaid erDiagram.", _er)
    er.add_argument("name")
    er.add_argument("--version", type=int)

    serve = command("serve", "Serve the published apps with Panel (standalone, with basic auth or OAuth).", _serve)
    serve.add_argument("--port", type=int, default=5006)
    serve.add_argument("--address", default="127.0.0.1")
    serve.add_argument("--prefix", default="", help="URL prefix when served behind a proxy (e.g. /contextlab-apps).")
    serve.add_argument("--users", help="Users file (YAML: users: {name: {password, roles}}); enables basic auth.")
    serve.add_argument("--env", help="Environment whose data sources to use (e.g. prod).")
    serve.add_argument("--oauth-provider", help="Panel OAuth provider (github, google, azure, generic, …).")
    serve.add_argument("--oauth-key", help="OAuth client id.")
    serve.add_argument("--oauth-secret", help="OAuth client secret.")
    serve.add_argument("--cookie-secret", help="Secret for signed cookies (default: random per start).")
    serve.add_argument("--allow-websocket-origin", action="append", default=[], help="Extra allowed host:port.")
    serve.add_argument(
        "--anonymous-role",
        action="append",
        default=[],
        help="Role of a viewer when no auth is configured (repeatable; `admin` opens every page).",
    )
    serve.add_argument(
        "--mcp-url",
        help="ContextLab MCP endpoint that flows' service tasks call (default: $CONTEXTLAB_MCP_URL).",
    )
    serve.add_argument("--mcp-token", help="Token for --mcp-url (default: $CONTEXTLAB_TOKEN).")
    serve.add_argument(
        "--model", default="local", help="Model the builder drafts apps with (local, openai:<id>, anthropic:<id>)."
    )
    serve.add_argument(
        "--mlflow-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow tracking URI whose latest runs the console plots (default: $MLFLOW_TRACKING_URI).",
    )


def _guard(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Known errors print one clear message and exit 1 (2 for a conflict); no tracebacks."""
    from contextlab.apps import dsl
    from contextlab.apps.db import AppDataError
    from contextlab.apps.store import AppConflict, AppError

    try:
        from contextlab.apps.er import ERModelError
    except ImportError:  # pragma: no cover - the ER module ships with the package
        ERModelError = ValueError  # noqa: N806
    try:
        return func(args)
    except AppConflict as exc:
        print(f"contextlab: {exc}\n\n{exc.diff}", file=sys.stderr)
        return 2
    except (dsl.DSLValidationError, AppError, AppDataError, ERModelError) as exc:
        print(f"contextlab: {exc}", file=sys.stderr)
        return 1


def _author(args: argparse.Namespace) -> str:
    import getpass

    return args.author or getpass.getuser()


def _store(args: argparse.Namespace) -> Any:
    from contextlab.apps.store import AppStore
    from contextlab.extension.events import EventBus
    from contextlab.state import StateStore, sqlite_url_for_workspace

    workspace = Path(args.workspace).expanduser().resolve()
    state = StateStore(args.state_url or sqlite_url_for_workspace(workspace / ".contextlab"))
    state.migrate()
    apps_dir = workspace / "apps"
    if os.environ.get("CONTEXTLAB_APPS_DIR") and str(workspace) == os.environ.get("CONTEXTLAB_WORKSPACE"):
        apps_dir = Path(os.environ["CONTEXTLAB_APPS_DIR"])  # the Jupyter server's `apps_dir` setting
    return AppStore(state, apps_dir, publish=EventBus(state).publish)


def _read(path: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise SystemExit(f"contextlab: no such file: {path}")
    return file.read_text(encoding="utf-8")


def _new(args: argparse.Namespace) -> int:
    from contextlab.apps import dsl
    from contextlab.apps.service import create_app

    store = _store(args)
    title = args.title or args.name.replace("-", " ").replace("_", " ").capitalize()
    if args.from_file:
        doc, _ = dsl.parse(_read(args.from_file))
    elif args.example:
        doc = _example(args.example, store)
    elif args.describe:
        doc = _draft(args.describe, args.model, args.mcp_url, args.mcp_token)
    else:
        doc, _ = dsl.parse(SKELETON.format(name=args.name, title=title))
    doc.setdefault("app", {})["name"] = args.name
    if args.title:
        doc["app"]["title"] = args.title
    saved = create_app(store, doc, _author(args))
    print(f"created app {saved.app!r} version {saved.version}")
    if args.publish:
        store.publish_app(saved.app, saved.version, _author(args))
        print(f"published version {saved.version}: `contextlab apps serve` serves it at /apps/{saved.app}")
    return 0


def _example(name: str, store: Any) -> dict[str, Any]:
    """A shipped example; the BPMN files of its flows are copied into the apps folder (never overwritten)."""
    from contextlab.apps import dsl

    examples = Path(dsl.__file__).parent / "examples"
    doc, _ = dsl.parse((examples / f"{name}.yaml").read_text(encoding="utf-8"))
    for flow in (doc.get("flows") or {}).values():
        target = store.data_dir / flow["file"]
        if not target.exists() and (examples / flow["file"]).is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((examples / flow["file"]).read_bytes())
    return doc


def draft_app(description: str, model: str = "local", mcp_url: str | None = None, mcp_token: str | None = None) -> str:
    """A PageDSL draft (YAML) from the Copilot's `page` target, validated and repaired.

    With an MCP endpoint the Copilot reads the workspace's tables and existing apps through it (audited)."""
    from contextlab.apps import dsl
    from contextlab.copilot.context import ContextClient, Endpoint
    from contextlab.copilot.engine import Copilot
    from contextlab.copilot.llm import LLMRouter, MemoryUsage
    from contextlab.evaluation.copilot_eval import resolve_model

    url = mcp_url or os.environ.get("CONTEXTLAB_MCP_URL")
    client = ContextClient(Endpoint(url, mcp_token or os.environ.get("CONTEXTLAB_TOKEN"))) if url else None
    router = LLMRouter([resolve_model(model)], usage=MemoryUsage())
    suggestion = Copilot(router, client, max_tokens=1800).generate("page", description)
    if not suggestion.valid:
        raise dsl.DSLValidationError(
            [dsl.DSLIssue("(draft)", suggestion.validation.error or "invalid")],
            f"The model's draft is not a valid app after {len(suggestion.attempts)} attempts",
        )
    return suggestion.code


def _draft(description: str, model: str, mcp_url: str | None, mcp_token: str | None) -> dict[str, Any]:
    from contextlab.apps import dsl

    doc, _ = dsl.parse(draft_app(description, model, mcp_url, mcp_token))
    return doc


def _validate(args: argparse.Namespace) -> int:
    from contextlab.apps import dsl
    from contextlab.apps.db import catalog

    store = _store(args)
    text = _read(args.file)
    doc, document = dsl.parse(text)
    doc = dsl.upgrade(doc)
    issues = dsl.validate(doc, catalog=catalog(store.data_dir, doc), document=document)
    if issues:
        for issue in issues:
            print(f"{args.file}:{issue.line or 0}: {issue.path}: {issue.message}")
        print(f"{len(issues)} issue(s)", file=sys.stderr)
        return 1
    print(f"{args.file}: valid PageDSL {dsl.DSL_VERSION} app {doc['app']['name']!r}")
    return 0


def _list(args: argparse.Namespace) -> int:
    infos = _store(args).list()
    if args.json:
        print(json.dumps([i.to_dict() for i in infos], indent=2))
        return 0
    if not infos:
        print("No apps yet: `contextlab apps new NAME --example expenses` creates one.")
        return 0
    rows = [
        [i.name, i.title, i.current_version, i.published_version or "-", i.updated_at.strftime("%F %T")] for i in infos
    ]
    _table(rows, ["NAME", "TITLE", "CURRENT", "PUBLISHED", "UPDATED"])
    return 0


def _table(rows: list[list[Any]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _save(args: argparse.Namespace) -> int:
    from contextlab.apps import dsl
    from contextlab.apps.service import save_app

    store = _store(args)
    doc, _ = dsl.parse(_read(args.file))
    saved = save_app(store, args.name, doc, _author(args), args.base, args.message, confirm=args.confirm)
    print(f"saved {saved.app!r} version {saved.version}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    saved = _store(args).publish_app(args.name, args.version, _author(args))
    print(f"published {saved.app!r} version {saved.version}")
    return 0


def _unpublish(args: argparse.Namespace) -> int:
    _store(args).unpublish(args.name)
    print(f"{args.name!r} is no longer published")
    return 0


def _export(args: argparse.Namespace) -> int:
    store = _store(args)
    if getattr(args, "python", False):
        from contextlab.apps.lowcode import panel_script

        name = Path(args.output).name if getattr(args, "output", None) else f"{args.name}_app.py"
        text = panel_script(store.get(args.name, args.version).dsl, store.data_dir, name)
    else:
        text = store.export_text(args.name, args.version)
    if getattr(args, "output", None):
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _import(args: argparse.Namespace) -> int:
    from contextlab.apps.service import create_app, save_app
    from contextlab.apps.store import AppNotFound

    store = _store(args)
    doc = store.import_check(_read(args.file))
    try:
        current = store.get(doc["app"]["name"])
    except AppNotFound:
        saved = create_app(store, doc, _author(args), "imported")
    else:
        saved = save_app(store, current.app, doc, _author(args), current.version, "imported")
    print(f"imported {saved.app!r} as version {saved.version}")
    return 0


def _versions(args: argparse.Namespace) -> int:
    store = _store(args)
    info = store.info(args.name)
    versions = store.versions(args.name)
    if args.json:
        print(json.dumps([v.summary() for v in versions], indent=2))
        return 0
    rows = []
    for v in versions:
        marks = ("current " if v.version == info.current_version else "") + (
            "published" if v.version == info.published_version else ""
        )
        rows.append([v.version, v.created_at.strftime("%F %T"), v.author, v.message or "-", marks.strip()])
    _table(rows, ["VERSION", "SAVED", "AUTHOR", "MESSAGE", ""])
    return 0


def _diff(args: argparse.Namespace) -> int:
    from contextlab.apps.store import diff

    store = _store(args)
    old = store.get(args.name, args.old)
    new = store.get(args.name, args.new)
    sys.stdout.write(diff(old.dsl, new.dsl, f"v{old.version}", f"v{new.version}") or "no difference\n")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from contextlab.apps.service import save_app

    store = _store(args)
    old = store.get(args.name, args.version)
    current = store.get(args.name)
    saved = save_app(store, args.name, old.dsl, _author(args), current.version, f"rollback to version {args.version}")
    print(f"{args.name!r} version {saved.version} = version {args.version}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from contextlab.apps.service import apply_model, plan_model

    store = _store(args)
    plan = plan_model(store, args.name)
    steps = [(source, s) for source, p in plan.items() for s in p["steps"]]
    if not steps:
        print("The database matches the model; nothing to do.")
        return 0
    for source, step in steps:
        flag = "DESTRUCTIVE " if step["destructive"] else ""
        print(f"{source}: {flag}{step['kind']} {step['table']}{'.' + step['column'] if step['column'] else ''}")
        print(f"    {step['sql']}")
    if args.dry_run:
        return 0
    result = apply_model(store, args.name, confirm=args.confirm)
    for source, outcome in result.items():
        backup = f" (backup: {outcome['backup']})" if outcome["backup"] else ""
        print(f"{source}: applied {len(outcome['applied'])} step(s){backup}")
    return 0


def _er(args: argparse.Namespace) -> int:
    from contextlab.apps.service import er_diagram

    print(er_diagram(_store(args).get(args.name, args.version).dsl))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from contextlab.apps.serve import AppServer, Users

    store = _store(args)
    users = Users.load(args.users) if args.users else Users()
    users.anonymous_roles |= set(args.anonymous_role)
    oauth = None
    if args.oauth_provider:
        oauth = {"oauth_provider": args.oauth_provider, "oauth_key": args.oauth_key, "oauth_secret": args.oauth_secret}
    flows = _flow_engine(store, args.mcp_url, args.mcp_token)
    prefix = "/" + args.prefix.strip("/") if args.prefix.strip("/") else ""
    server = AppServer(store, users, env=args.env, flows=flows, prefix=prefix, tools=_tools(store, flows, args))
    origins = [f"{args.address}:{args.port}", f"localhost:{args.port}", *args.allow_websocket_origin]
    print(f"ContextLab apps at http://{args.address}:{args.port}{prefix}/apps", flush=True)
    server.serve(
        port=args.port,
        address=args.address,
        oauth=oauth,
        cookie_secret=args.cookie_secret,
        websocket_origin=origins,
    )
    return 0


def _tools(store: Any, flows: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The pages served beside the apps: the console (admins) and the builder (admins and `builder`s)."""
    from contextlab.apps.builder import build_builder
    from contextlab.apps.console import ValueEvent, build_console
    from contextlab.apps.flows import FlowError

    def retry(event: ValueEvent) -> str:
        if event.payload.get("instance_id"):
            try:
                instance = flows.engine.retry(event.payload["instance_id"])
            except FlowError as exc:
                return f"Not retried: {exc}"
            return f"Flow instance {instance.id} is {instance.status} again."
        if event.payload.get("pipeline"):
            return f"Run it again with `contextlab pipeline run {event.payload['pipeline']}`."
        return "Nothing to retry."

    def console(viewer: Any) -> Any:
        return build_console(store.state, user=viewer.user, mlflow_uri=args.mlflow_uri, retry=retry)

    def draft(description: str) -> str:
        return draft_app(description, args.model, args.mcp_url, args.mcp_token)

    def builder(viewer: Any) -> Any:
        return build_builder(store, user=viewer.user, draft=draft)

    return {"console": (console, {"admin"}), "builder": (builder, {"builder"})}


def _flow_engine(store: Any, mcp_url: str | None = None, mcp_token: str | None = None) -> Any:
    from contextlab.apps.runtime import AppFlows, mcp_caller

    return AppFlows(store, call_tool=mcp_caller(mcp_url, mcp_token))
