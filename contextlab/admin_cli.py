"""Gateway admin commands: `contextlab registry|token|audit|policy|prompts …`.

They talk to the running server's REST API (the server owns the state store), found the same way
as `contextlab mcp-config` finds it, or given by --url/--token.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import yaml

_API = "contextlab/api"


def add_admin_commands(sub: Any, add_server_arguments: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register the admin sub-commands on the main parser's subparsers."""

    def command(parent: Any, name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> Any:
        parser = parent.add_parser(name, help=help_text, description=help_text)
        add_server_arguments(parser)
        parser.add_argument("--json", action="store_true", help="Print the raw JSON answer.")
        parser.set_defaults(func=lambda args, _extra: func(args))
        return parser

    registry = sub.add_parser(
        "registry",
        help="Register and manage upstream MCP servers behind the gateway.",
        description="Register upstream MCP servers (stdio commands or streamable-HTTP URLs) once; every client "
        "of the ContextLab endpoint then sees their tools as <server>__<tool>, governed by the gateway.",
    )
    rsub = registry.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    add = command(rsub, "add", "Register an upstream server.", _registry_add)
    add.add_argument("name", help="Server name: lower-case letters, digits and '-'.")
    where = add.add_mutually_exclusive_group(required=True)
    where.add_argument("--http", dest="upstream_url", metavar="URL", help="Streamable-HTTP endpoint of the upstream.")
    where.add_argument(
        "--stdio", dest="upstream_command", metavar="COMMAND", help="stdio command line, e.g. 'mcp-server-time'."
    )
    add.add_argument("--arg", action="append", default=[], help="Extra argument for the stdio command (repeat).")
    add.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="stdio env (stored encrypted).")
    add.add_argument("--header", action="append", default=[], metavar="NAME=VALUE", help="HTTP header (encrypted).")
    add.add_argument("--bearer", help="Bearer token sent to the upstream (stored encrypted).")
    add.add_argument("--description", default="")
    add.add_argument("--timeout", type=float, default=30.0, help="Per-call timeout in seconds (default 30).")
    add.add_argument("--retries", type=int, default=2, help="Retries for idempotent calls (default 2).")
    add.add_argument("--protocol", choices=["auto", "legacy", "modern"], default="auto")
    add.add_argument("--org")
    add.add_argument("--project")
    add.add_argument("--owner")
    add.add_argument("--sensitivity", choices=["public", "internal", "confidential", "secret"], default="internal")
    add.add_argument("--cacheable", action="append", default=[], help="Glob of tools whose results may be cached.")
    add.add_argument("--disabled", action="store_true", help="Register it disabled.")
    provider = command(
        rsub,
        "add-provider",
        "Register a ContextLab provider class, served on its own over stdio, from its generated manifest.",
        _registry_add_provider,
    )
    provider.add_argument("provider", help="The provider class, as pkg.module:Class (built without arguments).")
    provider.add_argument("--name", help="Server name (default: the provider's name).")
    provider.add_argument("--sensitivity", choices=["public", "internal", "confidential", "secret"], default="internal")
    command(rsub, "list", "List registered servers with their health.", _registry_list)
    for name, text in (
        ("show", "Show one server: settings, secret names, health, tools."),
        ("enable", "Enable a server (its tools appear)."),
        ("disable", "Disable a server (its tools disappear)."),
        ("remove", "Remove a server from the registry."),
    ):
        command(rsub, name, text, _registry_action(name)).add_argument("name")
    health = command(rsub, "health", "Check the health of one server or all of them now.", _registry_health)
    health.add_argument("name", nargs="?")
    apply = command(rsub, "apply", "Apply a registry manifest file (YAML or JSON).", _registry_apply)
    apply.add_argument("file", type=Path)
    command(rsub, "reviews", "List tools quarantined as possible tool poisoning.", _registry_reviews)
    approve = command(rsub, "approve", "Approve a quarantined tool after review.", _registry_approve)
    approve.add_argument("server")
    approve.add_argument("tool")

    token = sub.add_parser(
        "token",
        help="Create, list and revoke ContextLab API tokens.",
        description="API tokens carry scopes (sql:query, notebooks:*, upstream:github__*, admin, *) and ABAC "
        "attributes. The secret is shown once at creation; only its hash is stored.",
    )
    tsub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = command(tsub, "create", "Create a token and print its secret once.", _token_create)
    create.add_argument("name")
    create.add_argument("--scopes", required=True, help="Comma-separated scopes, e.g. 'sql:*,upstream:time__*'.")
    create.add_argument("--expires", default="30d", help="Lifetime: 30m, 12h, 7d, 2w or 'never' (default 30d).")
    create.add_argument("--role", action="append", default=[], help="Owner, Admin, Operator or Viewer (repeat).")
    create.add_argument("--org")
    create.add_argument("--project")
    tlist = command(tsub, "list", "List tokens (never their secrets).", _token_list)
    tlist.add_argument("--all", action="store_true", help="Include revoked tokens.")
    revoke = command(tsub, "revoke", "Revoke a token now.", _token_revoke)
    revoke.add_argument("id")

    audit = command(sub, "audit", "Query the audit log of MCP requests, newest first.", _audit)
    audit.add_argument("--since", help="Only entries younger than this: 90s, 15m, 1h, 7d.")
    audit.add_argument("--tool", help="Only calls of this tool, e.g. sql__query.")
    audit.add_argument("--outcome", help="ok, tool_error, error or denied.")
    audit.add_argument("--principal", help="Only this caller (a Jupyter user or token:<name>).")
    audit.add_argument("--method", help="Only this MCP method, e.g. tools/call.")
    audit.add_argument("--limit", type=int, default=50)

    policy = sub.add_parser(
        "policy",
        help="Show or reload the gateway policy.",
        description="The policy (ABAC rules, rate limits, DLP) lives in <workspace>/.contextlab/policy.yaml.",
    )
    psub = policy.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    command(psub, "show", "Show the policy in force and the last load error.", _policy_show)
    command(
        psub, "reload", "Re-read the policy file now; a broken file leaves the old policy in force.", _policy_reload
    )

    from contextlab.prompts_cli import add_prompt_commands

    add_prompt_commands(sub, command)


# -- plumbing -------------------------------------------------------------------------------------
class ApiError(SystemExit):
    pass


def _call(args: argparse.Namespace, method: str, path: str, *, accept: tuple[int, ...] = (), **kwargs: Any) -> Any:
    from contextlab.cli import find_server

    url, token = find_server(args.url, args.token)
    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        response = httpx2.request(method, f"{url.rstrip('/')}/{_API}/{path}", headers=headers, timeout=60, **kwargs)
    except httpx2.HTTPError as exc:
        raise ApiError(f"Cannot reach the ContextLab server at {url}: {exc}. Is it running (`contextlab up`)?") from exc
    if response.status_code == 204:
        return None
    try:
        body = response.json()
    except ValueError:
        body = {"error": response.text}
    if response.status_code >= 400 and response.status_code not in accept:
        message = body.get("error") or body.get("message") or response.reason_phrase
        raise ApiError(f"Error {response.status_code}: {message}")
    return body


def _emit(args: argparse.Namespace, value: Any, text: Callable[[Any], str]) -> int:
    print(json.dumps(value, indent=2, default=str) if args.json else text(value))
    return 0


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ApiError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


# -- registry -------------------------------------------------------------------------------------
def _registry_add(args: argparse.Namespace) -> int:
    spec: dict[str, Any] = {
        "name": args.name,
        "description": args.description,
        "timeout_seconds": args.timeout,
        "retries": args.retries,
        "protocol": args.protocol,
        "cacheable_tools": args.cacheable,
        "enabled": not args.disabled,
        "attributes": {
            k: v
            for k, v in {
                "org": args.org,
                "project": args.project,
                "owner": args.owner,
                "sensitivity": args.sensitivity,
            }.items()
            if v
        },
    }
    if args.upstream_url:
        spec.update(transport="http", url=args.upstream_url, headers=_pairs(args.header, "--header"))
        if args.bearer:
            spec["auth"] = {"type": "bearer", "token": args.bearer}
    else:
        import shlex

        spec.update(
            transport="stdio", command=shlex.split(args.upstream_command) + args.arg, env=_pairs(args.env, "--env")
        )
    record = _call(args, "POST", "registry", json=spec)
    return _emit(args, record, lambda r: f"Registered {r['name']} ({r['transport']}). Secrets: {_secrets(r)}")


def _registry_add_provider(args: argparse.Namespace) -> int:
    import sys

    from contextlab.providers.serve import load_provider

    command = [sys.executable, "-m", "contextlab.providers.serve", args.provider]
    entry = load_provider(args.provider).registry_entry(
        command=command, name=args.name, attributes={"sensitivity": args.sensitivity}
    )
    record = _call(args, "POST", "registry?source=provider", json=entry)
    return _emit(args, record, lambda r: f"Registered provider {args.provider} as {r['name']} (stdio).")


def _secrets(record: dict[str, Any]) -> str:
    secrets = record.get("secrets") or {}
    names = [f"env:{n}" for n in secrets.get("env", [])] + [f"header:{n}" for n in secrets.get("headers", [])]
    if secrets.get("auth"):
        names.append(f"auth:{secrets['auth']}")
    return ", ".join(names) or "none"


def _registry_list(args: argparse.Namespace) -> int:
    servers = _call(args, "GET", "registry")["servers"]
    rows = [
        [
            s["name"],
            s["transport"],
            "yes" if s["enabled"] else "no",
            (s.get("health") or {}).get("status", "unknown"),
            (s.get("health") or {}).get("latency_ms"),
            (s.get("attributes") or {}).get("sensitivity"),
            s["url"] or " ".join(s["command"] or []),
        ]
        for s in servers
    ]
    header = ["NAME", "TRANSPORT", "ENABLED", "HEALTH", "LATENCY_MS", "SENSITIVITY", "TARGET"]
    return _emit(args, servers, lambda _: _table(rows, header) if rows else "No upstream servers registered.")


def _registry_action(action: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if action == "show":
            record = _call(args, "GET", f"registry/{args.name}")
            return _emit(args, record, lambda r: yaml.safe_dump(r, sort_keys=False).rstrip())
        if action == "remove":
            _call(args, "DELETE", f"registry/{args.name}")
            print(f"Removed {args.name}.")
            return 0
        record = _call(args, "POST", f"registry/{args.name}/{action}")
        return _emit(args, record, lambda r: f"{r['name']}: {action}d.")

    return run


def _registry_health(args: argparse.Namespace) -> int:
    if args.name:
        result = {args.name: _call(args, "POST", f"registry/{args.name}/health")}
    else:
        result = _call(args, "POST", "registry/health")
    rows = [[n, h.get("status"), h.get("latency_ms"), h.get("breaker"), h.get("last_error")] for n, h in result.items()]
    failed = any(h.get("status") != "up" for h in result.values())
    _emit(args, result, lambda _: _table(rows, ["NAME", "STATUS", "LATENCY_MS", "BREAKER", "LAST_ERROR"]))
    return 1 if failed else 0


def _registry_apply(args: argparse.Namespace) -> int:
    try:
        text = args.file.read_text()
    except OSError as exc:
        raise ApiError(f"Cannot read {args.file}: {exc}") from exc
    summary = _call(args, "POST", f"registry/manifest?source={args.file.name}", content=text.encode())
    return _emit(args, summary, lambda s: "; ".join(f"{k}: {', '.join(v) or '-'}" for k, v in s.items()))


def _registry_reviews(args: argparse.Namespace) -> int:
    reviews = _call(args, "GET", "reviews")["reviews"]
    rows = [[r["server"], r["tool"], r["status"], ", ".join(f["kind"] for f in r["findings"])] for r in reviews]
    return _emit(args, reviews, lambda _: _table(rows, ["SERVER", "TOOL", "STATUS", "FINDINGS"]) if rows else "None.")


def _registry_approve(args: argparse.Namespace) -> int:
    review = _call(args, "POST", f"reviews/{args.server}/{args.tool}/approve")
    return _emit(args, review, lambda r: f"Approved {r['server']}__{r['tool']}.")


# -- tokens ---------------------------------------------------------------------------------------
def _token_create(args: argparse.Namespace) -> int:
    attributes: dict[str, Any] = {"roles": args.role or ["Viewer"]}
    if args.org:
        attributes["org"] = args.org
    if args.project:
        attributes["project"] = args.project
    body = {
        "name": args.name,
        "scopes": [s.strip() for s in args.scopes.split(",") if s.strip()],
        "expires": None if args.expires == "never" else args.expires,
        "attributes": attributes,
    }
    created = _call(args, "POST", "tokens", json=body)
    return _emit(
        args,
        created,
        lambda c: (
            f"{c['token']}\n\nToken {c['id']} ({c['name']}) expires {c['expires_at'] or 'never'}. "
            "Copy it now: it is not shown again."
        ),
    )


def _token_list(args: argparse.Namespace) -> int:
    tokens = _call(args, "GET", "tokens" + ("?all=1" if args.all else ""))["tokens"]
    rows = [[t["id"], t["name"], t["status"], ",".join(t["scopes"]), t["expires_at"]] for t in tokens]
    return _emit(
        args, tokens, lambda _: _table(rows, ["ID", "NAME", "STATUS", "SCOPES", "EXPIRES"]) if rows else "None."
    )


def _token_revoke(args: argparse.Namespace) -> int:
    record = _call(args, "DELETE", f"tokens/{args.id}")
    return _emit(args, record, lambda r: f"Revoked {r['id']} ({r['name']}).")


# -- audit and policy -----------------------------------------------------------------------------
def _audit(args: argparse.Namespace) -> int:
    params = {
        k: v
        for k, v in {
            "since": args.since,
            "tool": args.tool,
            "outcome": args.outcome,
            "principal": args.principal,
            "method": args.method,
            "limit": args.limit,
            "flush": 1,
        }.items()
        if v is not None
    }
    entries = _call(args, "GET", "audit", params=params)["entries"]
    rows = [
        [
            str(e["ts"])[:19],
            e["principal"],
            e["method"],
            e["target"],
            e["outcome"],
            e.get("decision"),
            e.get("redactions"),
            e.get("upstream"),
            f"v{e['prompt_version']}@{e['prompt_label']}" if e.get("prompt_version") else None,
            e["latency_ms"],
        ]
        for e in entries
    ]
    header = ["TS", "PRINCIPAL", "METHOD", "TARGET", "OUTCOME", "DECISION", "REDACTED", "UPSTREAM", "PROMPT", "MS"]
    return _emit(args, entries, lambda _: _table(rows, header) if rows else "No matching entries.")


def _policy_show(args: argparse.Namespace) -> int:
    status = _call(args, "GET", "policy")
    return _emit(args, status, lambda s: yaml.safe_dump(s, sort_keys=False).rstrip())


def _policy_reload(args: argparse.Namespace) -> int:
    status = _call(args, "POST", "policy/reload", accept=(422,))
    if status["error"]:
        text = f"Not reloaded; the previous policy stays in force. {status['error']}"
    elif status["reloaded"]:
        text = f"Reloaded {status['path']}."
    else:
        text = f"No policy file at {status['path']}: the built-in default policy is in force."
    _emit(args, status, lambda _: text)
    return 1 if status["error"] else 0
