"""`contextlab prompts …`: tool descriptions as versioned prompts, through the server's REST API."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import yaml

from contextlab.admin_cli import ApiError, _call, _emit, _pairs, _table


def add_prompt_commands(sub: Any, command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register `prompts list|show|diff|set|label|rollback` (`command` adds the server options)."""
    prompts = sub.add_parser(
        "prompts",
        help="Version, label, canary and roll back tool descriptions.",
        description="Every tool's description and parameter descriptions are prompts with immutable versions. "
        "Callers see the version labelled `stable`; `canary` serves another version to a sticky share of callers. "
        "Changes reach connected clients at once (tools/list_changed) and are mirrored to MLflow.",
    )
    psub = prompts.add_subparsers(dest="prompts_command", metavar="ACTION", required=True)
    listing = command(psub, "list", "List tools with their description versions and labels.", _list)
    listing.add_argument("--managed", action="store_true", help="Only tools whose text has versions.")
    listing.add_argument("--server", help="Only the tools of this server (an upstream, or a built-in provider: sql).")
    show = command(psub, "show", "Show a tool's versions (author, message, time) and labels.", _show)
    show.add_argument("tool", help="The tool as clients see it, e.g. time__get_current_time.")
    show.add_argument("--version", type=int, help="Print the full text of this version.")
    diff = command(psub, "diff", "Show the difference between two versions.", _diff)
    diff.add_argument("tool")
    diff.add_argument("old", nargs="?", type=int, help="Older version (default: the one before NEW).")
    diff.add_argument("new", nargs="?", type=int, help="Newer version (default: the newest).")
    set_ = command(psub, "set", "Record a new version of a tool's text; by default it goes live (stable).", _set)
    set_.add_argument("tool")
    set_.add_argument("-d", "--description", help="The new description.")
    set_.add_argument(
        "-p", "--param", action="append", default=[], metavar="NAME=TEXT", help="A parameter's description (repeat)."
    )
    set_.add_argument("-m", "--message", default="", help="Why this change (kept with the version).")
    how = set_.add_mutually_exclusive_group()
    how.add_argument("--canary", type=float, metavar="PERCENT", help="Serve it to this share of callers only.")
    how.add_argument("--no-promote", action="store_true", help="Record it without serving it (label it later).")
    set_.add_argument("--label", action="append", default=[], help="Also put this custom label on it (repeat).")
    label = command(psub, "label", "Point a label at a version (canary takes --weight).", _label)
    label.add_argument("tool")
    label.add_argument("label", help="stable, canary, or a custom label.")
    label.add_argument("version", nargs="?", type=int, help="The version (omit with --delete).")
    label.add_argument("--weight", type=float, help="Canary traffic share in percent (0–100).")
    label.add_argument("--delete", action="store_true", help="Remove the label (not stable or latest).")
    rollback = command(psub, "rollback", "Move a label back to the version it pointed at before.", _rollback)
    rollback.add_argument("tool")
    rollback.add_argument("--label", default="stable", help="The label to move back (default: stable).")
    rollback.add_argument("--to", type=int, help="Go to this version instead of the previous one.")


def _path(tool: str, *rest: str) -> str:
    return "/".join(["prompts", quote(tool, safe=""), *rest])


def _labels_text(labels: dict[str, Any]) -> str:
    parts = []
    for name, info in sorted(labels.items()):
        weight = f" {info['weight']:g}%" if info.get("weight") else ""
        parts.append(f"{name}=v{info['version']}{weight}")
    return " ".join(parts)


def _list(args: argparse.Namespace) -> int:
    answer = _call(args, "GET", "prompts")
    rows = [
        p
        for p in answer["prompts"]
        if (not args.managed or p["versions"]) and (args.server is None or p["server"] == args.server)
    ]
    table = [
        [p["name"], p["versions"] or "-", _labels_text(p["labels"]) or "(published text)", _short(p["description"])]
        for p in rows
    ]
    mlflow = answer.get("mlflow") or {}
    footer = ""
    if mlflow:
        pending = mlflow.get("pending_versions", 0) + mlflow.get("pending_labels", 0)
        footer = f"\nMLflow: {mlflow.get('tracking_uri')} ({'in sync' if not pending else f'{pending} pending'})"
        if mlflow.get("last_error"):
            footer += f"; last error: {mlflow['last_error']}"
    return _emit(
        args,
        rows,
        lambda _: (_table(table, ["TOOL", "VERSIONS", "LABELS", "DESCRIPTION"]) if table else "No tools.") + footer,
    )


def _show(args: argparse.Namespace) -> int:
    record = _call(args, "GET", _path(args.tool))
    if args.version is not None:
        version = next((v for v in record["versions"] if v["version"] == args.version), None)
        if version is None:
            raise ApiError(f"{args.tool} has no version {args.version}.")
        return _emit(args, version, lambda v: yaml.safe_dump(v, sort_keys=False, allow_unicode=True).rstrip())

    def text(r: dict[str, Any]) -> str:
        if not r["versions"]:
            return f"{r['name']}: no versions yet; clients see the published text:\n  {r['published']['description']}"
        labels = {}
        for label in r["labels"]:
            labels.setdefault(label["version"], []).append(
                label["label"] + (f" ({label['weight']:g}%)" if label.get("weight") else "")
            )
        rows = [
            [f"v{v['version']}", ", ".join(labels.get(v["version"], [])), v["author"], v["created_at"][:19]]
            + [v["message"]]
            for v in r["versions"]
        ]
        return _table(rows, ["VERSION", "LABELS", "AUTHOR", "CREATED", "MESSAGE"])

    return _emit(args, record, text)


def _diff(args: argparse.Namespace) -> int:
    params = {k: v for k, v in {"from": args.old, "to": args.new}.items() if v is not None}
    answer = _call(args, "GET", _path(args.tool, "diff"), params=params)
    return _emit(args, answer, lambda a: a["diff"].rstrip() or f"v{a['from']} and v{a['to']} have the same text.")


def _set(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"message": args.message, "labels": args.label}
    if args.description is not None:
        body["description"] = args.description
    if args.param:
        body["parameters"] = _pairs(args.param, "--param")
    if args.canary is not None:
        body["canary_weight"] = args.canary
    if args.no_promote:
        body["promote"] = False
    version = _call(args, "POST", _path(args.tool, "versions"), json=body)
    where = (
        f"canary for {args.canary:g}% of callers"
        if args.canary is not None
        else ("recorded, not served" if args.no_promote else "stable: every caller sees it now")
    )
    return _emit(args, version, lambda v: f"{args.tool} v{v['version']} ({where}).\n{v['diff'].rstrip()}")


def _label(args: argparse.Namespace) -> int:
    if args.delete:
        _call(args, "DELETE", _path(args.tool, "labels", args.label))
        print(f"Removed label {args.label} of {args.tool}.")
        return 0
    if args.version is None:
        raise ApiError("Give the VERSION the label should point at (or --delete).")
    body: dict[str, Any] = {"version": args.version}
    if args.weight is not None:
        body["weight"] = args.weight
    label = _call(args, "PUT", _path(args.tool, "labels", args.label), json=body)
    weight = f" for {label['weight']:g}% of callers" if label.get("weight") else ""
    return _emit(args, label, lambda lb: f"{args.tool}@{lb['label']} -> v{lb['version']}{weight}.")


def _rollback(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"label": args.label}
    if args.to is not None:
        body["to"] = args.to
    label = _call(args, "POST", _path(args.tool, "rollback"), json=body)
    if args.label == "canary" and not label.get("history"):
        return _emit(args, label, lambda _: f"{args.tool}: canary removed; every caller sees stable.")
    return _emit(args, label, lambda lb: f"{args.tool}@{lb['label']} -> v{lb['version']}.")


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
