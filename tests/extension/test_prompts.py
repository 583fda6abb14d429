"""Tool descriptions as versioned prompts, end to end: a real Jupyter server with a stdio upstream,
the official `mcp` client under several identities, the `contextlab prompts` CLI, the audit log and
the MLflow prompt registry the versions are mirrored to."""

from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
import sys

import anyio
import pytest

from contextlab.extension.prompts import canary_bucket
from tests.support.gateway import create_token, local_upstream, write_manifest
from tests.support.server import mcp_session, start_server, wait_for

TOOL = "local__echo"


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts-root")
    home = tmp_path_factory.mktemp("prompts-home")
    manifest = write_manifest(home / "upstreams.json", [local_upstream("local")])
    server = start_server(
        root,
        home,
        extra_args=["--ContextLab.providers=logs", f"--ContextLab.registry_manifests={manifest}"],
    )
    yield server
    server.stop()


def cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "contextlab", *args, "--url", server.url, "--token", server.token],
        capture_output=True,
        text=True,
        env=server.env,
        timeout=60,
    )


async def described(server, token: str, name: str = TOOL, mode: str = "legacy") -> tuple[str, dict]:
    async with mcp_session(server.mcp_url, token, mode) as client:
        tool = next(t for t in (await client.list_tools()).tools if t.name == name)
        return tool.description, tool.input_schema


async def call(server, token: str, name: str, arguments: dict) -> None:
    async with mcp_session(server.mcp_url, token, "legacy") as client:
        result = await client.call_tool(name, arguments)
        assert not result.is_error, result.content


def versions(server, name: str = TOOL) -> list[dict]:
    return server.api("GET", f"contextlab/api/prompts/{name}").json()["versions"]


def test_a_new_version_reaches_a_connected_client_without_a_reconnect(srv):
    published, _ = anyio.run(described, srv, srv.token)

    async def run():
        heard = anyio.Event()

        async def on_message(message):
            if getattr(message, "method", None) == "notifications/tools/list_changed":
                heard.set()

        async with mcp_session(srv.mcp_url, srv.token, "legacy", message_handler=on_message) as client:
            before = next(t for t in (await client.list_tools()).tools if t.name == TOOL)
            result = await anyio.to_thread.run_sync(
                lambda: cli(
                    srv,
                    "prompts",
                    "set",
                    TOOL,
                    "-d",
                    "Repeat the text back, unchanged.",
                    "-p",
                    "text=The text to repeat.",
                    "-m",
                    "clearer wording",
                )
            )
            assert result.returncode == 0, result.stderr
            with anyio.fail_after(10):
                await heard.wait()
            after = next(t for t in (await client.list_tools()).tools if t.name == TOOL)
            return before, after, result.stdout

    before, after, out = anyio.run(run)
    assert before.description == published
    assert after.description == "Repeat the text back, unchanged."
    assert after.input_schema["properties"]["text"]["description"] == "The text to repeat."
    assert "v2" in out and "+Repeat the text back, unchanged." in out
    history = versions(srv)
    assert [v["version"] for v in history] == [1, 2]
    assert history[0]["author"] == "upstream" and history[0]["description"] == published
    assert history[1]["message"] == "clearer wording" and history[1]["author"] != "upstream"
    # A modern (stateless) client sees the same text.
    assert anyio.run(described, srv, srv.token, TOOL, "auto")[0] == "Repeat the text back, unchanged."


def test_canary_splits_callers_stickily_and_the_audit_records_the_version_each_saw(srv):
    # Two token identities on opposite sides of a 50% split (the bucket is a hash; pick names that split).
    names = {}
    for i in itertools.count():
        name = f"canary-user-{i}"
        side = canary_bucket("local__reverse", f"token:{name}") < 5000
        names.setdefault(side, name)
        if len(names) == 2:
            break
    tokens = {side: create_token(srv, name, ["*"], roles=["Viewer"]) for side, name in names.items()}
    created = srv.api(
        "POST",
        "contextlab/api/prompts/local__reverse/versions",
        json={"description": "Reverse a string (canary wording).", "canary_weight": 50, "message": "try"},
    )
    assert created.status_code == 201, created.text
    seen = {side: anyio.run(described, srv, token, "local__reverse")[0] for side, token in tokens.items()}
    assert seen[True] == "Reverse a string (canary wording)."
    assert seen[False] != seen[True] and seen[False] == versions(srv, "local__reverse")[0]["description"]
    # Sticky: asking again gives the same answer.
    assert anyio.run(described, srv, tokens[True], "local__reverse")[0] == seen[True]
    for token in tokens.values():
        anyio.run(call, srv, token, "local__reverse", {"text": "abc"})
    srv.api("GET", "contextlab/api/audit", params={"flush": 1})
    with sqlite3.connect(srv.state_db) as db:
        rows = db.execute(
            "SELECT principal, prompt_version, prompt_label FROM audit_log "
            "WHERE target = 'local__reverse' AND method = 'tools/call'"
        ).fetchall()
    assert (f"token:{names[True]}", 2, "canary") in rows
    assert (f"token:{names[False]}", 1, "stable") in rows
    # Rolling back the canary removes it: everyone sees stable again.
    result = cli(srv, "prompts", "rollback", "local__reverse", "--label", "canary")
    assert result.returncode == 0 and "canary removed" in result.stdout, result.stderr
    assert anyio.run(described, srv, tokens[True], "local__reverse")[0] == seen[False]


def test_rollback_label_diff_and_show_through_the_cli(srv):
    tool = "local__add"
    for text in ("Add two integers (v2).", "Add two integers and return the sum (v3)."):
        assert cli(srv, "prompts", "set", tool, "-d", text).returncode == 0
    assert anyio.run(described, srv, srv.token, tool)[0].endswith("(v3).")
    rolled = cli(srv, "prompts", "rollback", tool)
    assert rolled.returncode == 0, rolled.stderr
    assert "@stable -> v2" in rolled.stdout
    assert anyio.run(described, srv, srv.token, tool)[0] == "Add two integers (v2)."
    again = cli(srv, "prompts", "rollback", tool)
    assert "@stable -> v1" in again.stdout
    assert anyio.run(described, srv, srv.token, tool)[0] == versions(srv, tool)[0]["description"]
    forward = cli(srv, "prompts", "label", tool, "stable", "3")
    assert forward.returncode == 0 and "-> v3" in forward.stdout
    assert anyio.run(described, srv, srv.token, tool)[0].endswith("(v3).")
    diff = cli(srv, "prompts", "diff", tool, "1", "3")
    assert "-" + versions(srv, tool)[0]["description"] in diff.stdout and "+Add two integers and return" in diff.stdout
    show = cli(srv, "prompts", "show", tool)
    assert "stable" in show.stdout and "v3" in show.stdout and "upstream" in show.stdout
    listing = cli(srv, "prompts", "list", "--managed", "--json")
    managed = {p["name"]: p for p in json.loads(listing.stdout)}
    assert managed[tool]["labels"]["stable"]["version"] == 3 and managed[tool]["versions"] == 3
    assert cli(srv, "prompts", "label", tool, "reviewed", "2").returncode == 0
    labels = {lb["label"]: lb["version"] for lb in srv.api("GET", f"contextlab/api/prompts/{tool}").json()["labels"]}
    assert labels == {"stable": 3, "latest": 3, "reviewed": 2}


def test_built_in_tools_are_prompts_too(srv):
    tool = next(t for t in srv.api("GET", "contextlab/api/prompts").json()["prompts"] if t["server"] == "logs")["name"]
    response = srv.api(
        "POST", f"contextlab/api/prompts/{tool}/versions", json={"description": "Recent server log lines."}
    )
    assert response.status_code == 201, response.text
    assert anyio.run(described, srv, srv.token, tool)[0] == "Recent server log lines."
    anyio.run(call, srv, srv.token, tool, {})
    srv.api("GET", "contextlab/api/audit", params={"flush": 1})
    with sqlite3.connect(srv.state_db) as db:
        row = db.execute(
            "SELECT prompt_version, prompt_label FROM audit_log WHERE target = ? AND method = 'tools/call' "
            "ORDER BY id DESC LIMIT 1",
            (tool,),
        ).fetchone()
    assert row == (2, "stable")


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "nope__tool/versions", {"description": "x"}, 404, "No tool named 'nope__tool'"),
        ("POST", f"{TOOL}/versions", {"parameters": {"missing": "x"}}, 422, "no parameter 'missing'"),
        ("POST", f"{TOOL}/versions", {"description": 5}, 422, '"description" must be a string'),
        ("POST", f"{TOOL}/versions", {"colour": "red"}, 422, "Unknown field(s): colour"),
        ("POST", f"{TOOL}/versions", {}, 422, "Give a new"),
        ("POST", f"{TOOL}/versions", {"description": "x", "canary_weight": 150}, 400, "between 0 and 100"),
        ("PUT", f"{TOOL}/labels/stable", {"version": 99}, 404, "has no version 99"),
        ("PUT", f"{TOOL}/labels/stable", {"version": 1, "weight": 5}, 400, "Only the `canary` label"),
        ("PUT", f"{TOOL}/labels/latest", {"version": 1}, 400, "moves by itself"),
        ("PUT", f"{TOOL}/labels/stable", {}, 422, '"version"'),
        ("DELETE", f"{TOOL}/labels/stable", None, 400, "cannot be removed"),
        ("POST", f"{TOOL}/rollback", {"to": "two"}, 422, '"to" must be a version number'),
        ("POST", "local__pid/rollback", {}, 404, "has no label 'stable'"),
    ],
)
def test_bad_requests_get_precise_errors_and_change_nothing(srv, method, path, body, status, message):
    before = srv.api("GET", "contextlab/api/prompts").json()["prompts"]
    response = srv.api(method, f"contextlab/api/prompts/{path}", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    after = srv.api("GET", "contextlab/api/prompts").json()["prompts"]
    assert after == before


def test_same_text_twice_is_refused_and_non_admins_are_refused(srv):
    current = anyio.run(described, srv, srv.token)[0]
    same = srv.api("POST", f"contextlab/api/prompts/{TOOL}/versions", json={"description": current})
    assert same.status_code == 409 and "already has this text" in same.json()["error"]
    viewer = create_token(srv, "prompt-viewer", ["*"], roles=["Viewer"])
    denied = srv.api(
        "POST",
        f"contextlab/api/prompts/{TOOL}/versions",
        json={"description": "sneaky"},
        headers={"Authorization": f"Bearer {viewer}"},
    )
    assert denied.status_code == 403
    assert anyio.run(described, srv, srv.token)[0] == current


def test_versions_and_labels_are_mirrored_to_the_mlflow_prompt_registry(srv):
    missing = srv.api("POST", "contextlab/api/prompts/local__no_such_tool/versions", json={"description": "x"})
    assert missing.status_code == 404
    created = srv.api(
        "POST",
        f"contextlab/api/prompts/{TOOL}/versions",
        json={"description": "Echo, canary wording.", "canary_weight": 10},
    )
    assert created.status_code == 201, created.text

    def synced():
        status = srv.api("GET", "contextlab/api/prompts").json()["mlflow"]
        return status["pending_versions"] == 0 and status["pending_labels"] == 0 and status

    status = wait_for(synced, timeout=120, interval=0.5)
    assert status["last_error"] is None
    from mlflow import MlflowClient

    uri = f"sqlite:///{srv.root / '.contextlab' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    canary = client.load_prompt(f"prompts:/{TOOL}@canary")
    stable = client.load_prompt(f"prompts:/{TOOL}@stable")
    assert canary.template.startswith("Echo, canary wording.")
    assert stable.template.startswith("Repeat the text back, unchanged.")
    assert "- text: The text to repeat." in stable.template
    assert json.loads(canary.tags["contextlab.parameters"]) == {"text": "The text to repeat."}
    ours = {v["version"]: v["mlflow_version"] for v in versions(srv)}
    assert canary.version == ours[max(ours)]
    assert client.get_prompt_version(TOOL, ours[1]).template.startswith(versions(srv)[0]["description"])
    assert "local__no_such_tool" not in {p.name for p in client.search_prompts(max_results=100)}


def test_the_server_instructions_are_a_versioned_prompt_too(srv):
    async def instructions(mode: str) -> str | None:
        async with mcp_session(srv.mcp_url, srv.token, mode) as client:
            return client.instructions

    published = anyio.run(instructions, "legacy")
    assert published and "ContextLab serves the context" in published
    result = cli(srv, "prompts", "set", "contextlab.instructions", "-d", "Start with search_tools.", "-m", "shorter")
    assert result.returncode == 0, result.stderr
    assert anyio.run(instructions, "legacy") == "Start with search_tools."
    assert anyio.run(instructions, "auto") == "Start with search_tools."
    assert cli(srv, "prompts", "rollback", "contextlab.instructions").returncode == 0
    assert anyio.run(instructions, "legacy") == published
    record = srv.api("GET", "contextlab/api/prompts/contextlab.instructions").json()
    assert [v["kind"] for v in record["versions"]] == ["instructions", "instructions"]
