"""`contextlab provider new|regenerate`: one-command providers from an OpenAPI spec or a database.

The generated package is plain Python in `<workspace>/providers/<name>/`. It is registered with the
running server like `contextlab registry add-provider`: served over stdio by
`python -m contextlab.providers.serve <name>.provider:<Class>`, with the package's parent folder as
working directory and the credentials as registry env secrets (stored encrypted).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from contextlab.admin_cli import ApiError, _call, _pairs

_NEW_EPILOG = """\
examples:
  contextlab provider new --from-openapi openapi.yaml --name petstore --auth api_key=$PETSTORE_KEY
  contextlab provider new --from-openapi file:///specs/jira.json --base-url https://acme.atlassian.net \\
      --bearer-env JIRA_TOKEN
  contextlab provider new --from-openapi rest-api.yml --name jlab --base-url http://localhost:8888/ \\
      --header "Authorization=token $JUPYTER_TOKEN"
  contextlab provider new --from-db duckdb:///data/shop.duckdb            # relative path
  contextlab provider new --from-db sqlite:////srv/app.db --name app      # absolute path
  contextlab provider new --from-db postgresql://reader:secret@db/sales --name sales
  contextlab provider new --from-openapi openapi.yaml --dry-run           # list the tools only
"""


def add_provider_commands(sub: Any, add_server_arguments: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register `provider new` and `provider regenerate` on the main parser's subparsers."""
    provider = sub.add_parser(
        "provider",
        help="Generate a provider from an OpenAPI spec or a database, and register it.",
        description="Generate an editable provider package (readable Python) from an OpenAPI 3.x spec or a "
        "DuckDB / SQLite / PostgreSQL database, and register it with the running ContextLab server.",
    )
    psub = provider.add_subparsers(dest="provider_command", metavar="ACTION", required=True)

    new = psub.add_parser(
        "new",
        help="Generate a provider package and register it.",
        description="Generate a provider package from an OpenAPI 3.0/3.1 spec (one tool per operation, answers "
        "typed as SaaSRecord) or a database (a schema resource and tool, a read-only query tool, and a typed "
        "lookup tool per table), write it to <workspace>/providers/<name>/ and register it with the running "
        "server. Existing packages are only replaced with --force; use `provider regenerate` to refresh one.",
        epilog=_NEW_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = new.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from-openapi", metavar="SPEC", help="OpenAPI 3.0 or 3.1 spec, YAML or JSON: a file path or file:// URL."
    )
    source.add_argument(
        "--from-db",
        metavar="URL",
        help="duckdb:///file.duckdb, sqlite:///file.db (three slashes: relative path; four: absolute) or "
        "postgresql://user:password@host/database.",
    )
    new.add_argument(
        "--name", help="Provider name; tools appear as <name>__<tool> (default: the API title or database name)."
    )
    _generation_arguments(new)
    add_server_arguments(new)
    new.set_defaults(func=lambda args, _extra: _cmd_new(args))

    regen = psub.add_parser(
        "regenerate",
        help="Regenerate a generated provider from its source (refuses to overwrite edited code).",
        description="Regenerate a provider package from the source and options recorded when it was generated "
        "(or a new --from-openapi / --from-db source), then update its registration. provider.py edited by "
        "hand is only overwritten with --force (the edited file is kept as provider.py.bak). Secret flags "
        "given here replace every stored secret of the provider; without them the stored ones are kept.",
    )
    regen.add_argument("directory", type=Path, help="The generated package folder, e.g. providers/petstore.")
    source = regen.add_mutually_exclusive_group()
    source.add_argument("--from-openapi", metavar="SPEC", help="A new spec to generate from.")
    source.add_argument("--from-db", metavar="URL", help="A new database URL to generate from.")
    _generation_arguments(regen, regenerate=True)
    add_server_arguments(regen)
    regen.set_defaults(func=lambda args, _extra: _cmd_regenerate(args))


def _generation_arguments(parser: argparse.ArgumentParser, regenerate: bool = False) -> None:
    if not regenerate:
        parser.add_argument(
            "--out",
            type=Path,
            help="Package folder to write (default: <workspace>/providers/<name>). Its name is the Python package.",
        )
        parser.add_argument(
            "--workspace",
            type=Path,
            help="Workspace whose providers/ folder receives the package (default: the running server's root, "
            "else the current folder).",
        )
    parser.add_argument("--force", action="store_true", help="Replace an existing package, even edited code.")
    parser.add_argument("--dry-run", action="store_true", help="Show the tools that would be generated; write nothing.")
    parser.add_argument("--no-register", action="store_true", help="Write the package but do not register it.")
    parser.add_argument("--json", action="store_true", help="Print a JSON summary.")
    parser.add_argument(
        "--sensitivity",
        choices=["public", "internal", "confidential", "secret"],
        default=None if regenerate else "internal",
        help="The registry's sensitivity attribute (policy rules match on it; default internal).",
    )
    parser.add_argument(
        "--cacheable", action="append", default=[], metavar="GLOB", help="Tools whose results may be cached (repeat)."
    )
    api = parser.add_argument_group("OpenAPI options")
    api.add_argument("--base-url", help="The API's base URL (default: the spec's first absolute server URL).")
    api.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="A header sent with every request, e.g. 'Authorization=token abc' (stored as an encrypted secret).",
    )
    api.add_argument(
        "--header-env",
        action="append",
        default=[],
        metavar="NAME=VAR",
        help="Like --header, the value read from the environment variable VAR (keeps it off the command line).",
    )
    api.add_argument(
        "--bearer-env", metavar="VAR", help="Send 'Authorization: Bearer <value of VAR>' with every request."
    )
    api.add_argument(
        "--auth",
        action="append",
        default=[],
        metavar="SCHEME=VALUE",
        help="Credential of a security scheme of the spec (apiKey, http bearer; 'user:password' for basic).",
    )
    api.add_argument(
        "--auth-env", action="append", default=[], metavar="SCHEME=VAR", help="Like --auth, read from VAR."
    )
    api.add_argument(
        "--ignore-auth-scheme",
        action="append",
        default=[],
        metavar="NAME",
        help="Treat this security scheme (e.g. an oauth2 one) as handled by your own --header.",
    )
    api.add_argument("--include", action="append", default=[], metavar="GLOB", help="Only these operations.")
    api.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="Skip these operations.")
    api.add_argument("--no-validate", action="store_true", help="Skip openapi-spec-validator's checks.")
    db = parser.add_argument_group("database options")
    db.add_argument("--table", action="append", default=[], metavar="GLOB", help="Only these tables (repeat).")


# -- commands -------------------------------------------------------------------------------------
def _cmd_new(args: argparse.Namespace) -> int:
    from contextlab.providers.generate import GenerationError
    from contextlab.providers.generate.names import snake

    try:
        if args.from_openapi:
            name = snake(args.name) if args.name else None
            plan = _plan_openapi(args, args.from_openapi, name, options={})
        else:
            name = snake(args.name) if args.name else _database_name(args.from_db)
            plan = _plan_database(args, args.from_db, name, options={})
        out = args.out or (_workspace(args) / "providers" / plan["name"])
        return _finish(args, plan, out.expanduser().resolve(), regenerate=False)
    except GenerationError as exc:
        raise ApiError(f"contextlab provider new: {exc}") from exc


def _cmd_regenerate(args: argparse.Namespace) -> int:
    from contextlab.providers.generate import GenerationError
    from contextlab.providers.generate.package import read_metadata

    directory = args.directory.expanduser().resolve()
    try:
        metadata = read_metadata(directory)
        if metadata is None:
            raise GenerationError(f"{directory} holds no .contextlab-generated.json: it was not generated here.")
        options = dict(metadata.get("options") or {})
        if args.sensitivity is None:
            args.sensitivity = options.get("sensitivity", "internal")
        if metadata.get("kind") == "openapi" and not args.from_db:
            source = args.from_openapi or metadata["source"]
            if not args.from_openapi and not Path(source).exists():
                copies = sorted(directory.glob("openapi.*"))
                if not copies:
                    raise GenerationError(f"The recorded spec {source} is gone; pass --from-openapi.")
                source = str(copies[0])
            plan = _plan_openapi(args, source, metadata["name"], options=options)
        else:
            source = args.from_db or metadata["source"]
            if "***" in source:
                raise GenerationError("The recorded database URL has a password; pass --from-db with the full URL.")
            plan = _plan_database(args, source, metadata["name"], options=options)
        return _finish(args, plan, directory, regenerate=True)
    except GenerationError as exc:
        raise ApiError(f"contextlab provider regenerate: {exc}") from exc


def _plan_openapi(args: argparse.Namespace, source: str, name: str | None, options: dict[str, Any]) -> dict[str, Any]:
    from contextlab.providers.generate import GenerationError, openapi, render
    from contextlab.providers.generate.names import env_name, snake

    base_url = args.base_url or options.get("base_url")
    ignore = sorted(set(args.ignore_auth_scheme) | set(options.get("ignore_auth_schemes", [])))
    include = args.include or options.get("include", [])
    exclude = args.exclude or options.get("exclude", [])
    validate = not args.no_validate and options.get("validate", True)
    provisional = name or "api"
    model, text, kind = openapi.load(
        source,
        name=provisional,
        base_url=base_url,
        ignore_schemes=ignore,
        include=include,
        exclude=exclude,
        check=validate,
    )
    if name is None:
        name = _free_name(snake(model.title))
        model, text, kind = openapi.load(
            source, name=name, base_url=base_url, ignore_schemes=ignore, include=include, exclude=exclude, check=False
        )
    prefix = name.upper()
    headers = dict(_pairs(args.header, "--header"))
    for header, variable in _pairs(args.header_env, "--header-env").items():
        headers[header] = _from_environment(variable, "--header-env")
    if args.bearer_env:
        headers["Authorization"] = "Bearer " + _from_environment(args.bearer_env, "--bearer-env")
    header_names = sorted(set(options.get("headers", [])) | set(headers))
    model.secret_headers = {h: env_name(prefix, f"header_{h}") for h in header_names}
    env = {model.secret_headers[h]: value for h, value in headers.items()}
    schemes = {s.key: s for s in model.schemes}
    credentials = dict(_pairs(args.auth, "--auth"))
    for scheme, variable in _pairs(args.auth_env, "--auth-env").items():
        credentials[scheme] = _from_environment(variable, "--auth-env")
    for scheme, value in credentials.items():
        if scheme not in schemes:
            known = ", ".join(schemes) or "none (the operations need no credentials)"
            raise GenerationError(f"--auth {scheme}=…: no operation uses a scheme {scheme!r}; schemes: {known}.")
        env[schemes[scheme].env] = value
    code = render.render_openapi(model, name=name, source_label=Path(source).name)
    return {
        "kind": "openapi",
        "name": name,
        "class": _class(code),
        "code": code,
        "source": str(Path(source).resolve()) if "://" not in source else source,
        "extra_files": {f"openapi.{kind}": text},
        "env": env,
        "warnings": model.warnings,
        "tools": [
            {
                "name": op.tool,
                "method": op.method,
                "path": op.path,
                "summary": op.summary,
                "parameters": [p.py_name for p in op.params] + ([op.body.py_name] if op.body else []),
                "auth": op.auth,
            }
            for op in model.operations
        ],
        "secrets": sorted({*model.secret_headers.values(), *(s.env for s in model.schemes)}),
        "readme": _readme_openapi(name, model, source),
        "options": {
            "base_url": model.base_url,
            "headers": header_names,
            "ignore_auth_schemes": ignore,
            "include": include,
            "exclude": exclude,
            "validate": validate,
        },
    }


def _plan_database(args: argparse.Namespace, url: str, name: str, options: dict[str, Any]) -> dict[str, Any]:
    from contextlab.providers.generate import database, render

    tables = args.table or options.get("tables", [])
    model = database.load(url, name=name, tables=tables)
    code = render.render_database(model, source_label=model.display_url)
    env = {f"{name.upper()}_DATABASE_URL": model.secret_url} if model.secret_url else {}
    return {
        "kind": "database",
        "name": name,
        "class": _class(code),
        "code": code,
        "source": model.display_url,
        "extra_files": {},
        "env": env,
        "warnings": model.warnings,
        "tools": [{"name": "schema"}, {"name": "query"}]
        + [
            {"name": t.tool, "table": t.label, "key": t.key, "parameters": [c.param for c in t.filter_columns]}
            for t in model.tables
        ],
        "secrets": [f"{name.upper()}_DATABASE_URL"] if model.secret_url else [],
        "readme": _readme_database(name, model),
        "options": {"tables": tables},
    }


def _finish(args: argparse.Namespace, plan: dict[str, Any], out: Path, *, regenerate: bool) -> int:
    from contextlab.providers.generate import package
    from contextlab.providers.generate.names import server_name

    summary: dict[str, Any] = {
        "name": plan["name"],
        "directory": str(out),
        "target": f"{out.name}.provider:{plan['class']}",
        "tools": plan["tools"],
        "warnings": plan["warnings"],
        "secrets": plan["secrets"],
    }
    if args.dry_run:
        return _print(args, summary, _dry_run_text(summary))
    notes = package.check_destination(out, force=args.force, regenerate=regenerate)
    options = {**plan["options"], "sensitivity": args.sensitivity}
    metadata = package.write(
        out,
        code=plan["code"],
        class_name=plan["class"],
        readme=plan["readme"],
        extra_files=plan["extra_files"],
        metadata={"kind": plan["kind"], "name": plan["name"], "source": plan["source"], "options": options},
    )
    summary["notes"] = notes
    summary["registered"] = None
    if not args.no_register:
        provider = package.load(out, plan["class"])
        command = [sys.executable, "-m", "contextlab.providers.serve", metadata["target"]]
        entry = provider.registry_entry(
            command=command, name=server_name(plan["name"]), attributes={"sensitivity": args.sensitivity}
        )
        entry["cwd"] = str(out.parent)
        entry["cacheable_tools"] = list(args.cacheable)
        if plan["env"]:
            entry["env"] = plan["env"]
        summary["registered"] = _register(args, entry, replace=regenerate or args.force)
    return _print(args, summary, _done_text(summary, regenerate))


def _register(args: argparse.Namespace, entry: dict[str, Any], *, replace: bool) -> dict[str, Any]:
    """POST the entry; when it exists and replacing is allowed, PATCH it (secrets not given are kept)."""
    created = _call(args, "POST", "registry?source=provider", json=entry, accept=(409,))
    if "error" not in created:
        return created
    if not replace:
        raise ApiError(
            f"The package was written, but a server named {entry['name']!r} is already registered: "
            "pass --force to replace its registration, or `contextlab registry remove` it first."
        )
    changes = {k: v for k, v in entry.items() if k != "name"}
    record = _call(args, "PATCH", f"registry/{entry['name']}", json=changes)
    if record.get("enabled"):  # reconnect now: the code changed even when the registry entry did not
        record = _call(args, "POST", f"registry/{entry['name']}/enable")
    return record


# -- helpers --------------------------------------------------------------------------------------
def _workspace(args: argparse.Namespace) -> Path:
    if args.workspace:
        return args.workspace.expanduser().resolve()
    if not args.no_register and not args.dry_run:
        try:
            from jupyter_server.serverapp import list_running_servers

            from contextlab.cli import find_server

            url, _token = find_server(args.url, args.token)
            for server in list_running_servers():
                if server["url"].rstrip("/") == url.rstrip("/") and server.get("root_dir"):
                    return Path(server["root_dir"]).expanduser().resolve()
        except SystemExit:
            pass
    return Path.cwd()


def _database_name(url: str) -> str:
    from contextlab.providers.generate.names import snake

    tail = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return _free_name(snake(tail.rsplit(".", 1)[0] if "." in tail else tail) or "database")


def _free_name(name: str) -> str:
    """`name`, or `name_api` when a module of that name is importable (a package must not shadow it)."""
    from contextlab.providers.generate.package import _installed_module

    return f"{name}_api" if _installed_module(name) else name


def _from_environment(variable: str, flag: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise ApiError(f"{flag} {variable}: the environment variable {variable} is not set.")
    return value


def _class(code: str) -> str:
    for line in code.splitlines():
        if line.startswith("class ") and "Provider)" in line:
            return line[len("class ") :].split("(", 1)[0]
    raise RuntimeError("generated code has no provider class")


def _print(args: argparse.Namespace, summary: dict[str, Any], text: str) -> int:
    print(json.dumps(summary, indent=2, default=str) if args.json else text)
    return 0


def _dry_run_text(summary: dict[str, Any]) -> str:
    lines = [f"Would write {summary['directory']} ({summary['target']}) with {len(summary['tools'])} tools:"]
    for tool in summary["tools"]:
        where = f"  {tool.get('method', '')} {tool.get('path', tool.get('table', ''))}".rstrip()
        params = ", ".join(tool.get("parameters", []))
        lines.append(f"  {summary['name']}__{tool['name']}({params}){where}")
    lines += [f"warning: {w}" for w in summary["warnings"]]
    if summary["secrets"]:
        lines.append("Environment variables read for credentials: " + ", ".join(summary["secrets"]))
    return "\n".join(lines)


def _done_text(summary: dict[str, Any], regenerate: bool) -> str:
    verb = "Regenerated" if regenerate else "Generated"
    lines = [f"{verb} provider {summary['name']} ({len(summary['tools'])} tools) in {summary['directory']}"]
    lines += [f"note: {n}" for n in summary.get("notes", [])]
    lines += [f"warning: {w}" for w in summary["warnings"]]
    record = summary["registered"]
    if record:
        from contextlab.admin_cli import _secrets

        lines.append(
            f"Registered as {record['name']} (stdio: python -m contextlab.providers.serve {summary['target']}). "
            f"Secrets: {_secrets(record)}. Its tools appear as {record['name']}__<tool>."
        )
    else:
        lines.append(
            f"Not registered. Serve it with `python -m contextlab.providers.serve {summary['target']}` from "
            f"{Path(summary['directory']).parent}, or register it with `contextlab provider regenerate "
            f"{summary['directory']}`."
        )
    lines.append(
        "Edit provider.py freely; `contextlab provider regenerate` will not overwrite your edits without --force."
    )
    return "\n".join(lines)


def _readme_openapi(name: str, model: Any, source: str) -> str:
    rows = "\n".join(
        f"| `{op.tool}` | `{op.method} {op.path}` | {(op.summary or '').replace('|', '/')} |" for op in model.operations
    )
    secrets = "\n".join(f"- `{env}`: header `{header}`" for header, env in model.secret_headers.items())
    secrets += "".join(f"\n- `{s.env}`: security scheme `{s.key}` ({s.kind})" for s in model.schemes)
    return f"""# {name}: {model.title}

Generated by `contextlab provider new --from-openapi {Path(source).name}` from an OpenAPI
{model.openapi_version} spec (a copy is in this folder). Every tool answers with a `SaaSRecord`.

| tool | operation | summary |
|---|---|---|
{rows}

## Configuration

- `{name.upper()}_BASE_URL` overrides the base URL `{model.base_url}`.
{secrets or "- no credentials are read"}

The ContextLab registry keeps these values as encrypted env secrets of the registered server.

## Editing

`provider.py` is yours to edit. `contextlab provider regenerate <this folder>` rebuilds it from the
spec and refuses to overwrite an edited file unless given `--force` (which keeps a `provider.py.bak`).
Run it on its own with `python -m contextlab.providers.serve <package>.provider:<Class>` from the parent folder.
"""


def _readme_database(name: str, model: Any) -> str:
    rows = "\n".join(f"| `{t.tool}` | {t.label} | {', '.join(t.key)} |" for t in model.tables)
    return f"""# {name}: {model.kind_label} database

Generated by `contextlab provider new --from-db {model.display_url}`.

- `schema` (tool) and `db://{name}/schema` (resource): tables, columns, keys
- `query`: one read-only SQL query (writes refused)

| lookup tool | table | key |
|---|---|---|
{rows}

`{name.upper()}_DATABASE_URL` overrides the database URL (the registry keeps it as an encrypted secret when
it holds a password). `provider.py` is yours to edit; `contextlab provider regenerate <this folder>` refuses
to overwrite an edited file unless given `--force`.
"""
