"""The gateway end to end: real upstream MCP servers (our SDK server over HTTP and stdio, and
`mcp-server-time` from PyPI) behind a real Jupyter server, called with the official `mcp` client
under different identities."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import anyio
import httpx
import nbformat
import pytest
from mcp.shared.exceptions import MCPError

from tests.support.gateway import create_token, start_upstream, stdio, tool_names
from tests.support.server import (
    REPO,
    JupyterServer,
    free_port,
    mcp_session,
    start_server,
    wait_for,
)

POLICY = """
version: 1
default: deny
rules:
  - name: admins
    effect: allow
    caller: {roles: [Owner, Admin]}
  - name: viewers-no-confidential
    effect: deny
    caller: {roles: [Viewer]}
    target: {sensitivity: {at_least: confidential}}
  - name: same-org
    effect: allow
    target: {org: "${caller.org}"}
  - name: public
    effect: allow
    target: {sensitivity: public}
rate_limits:
  - name: add-burst
    per: caller+tool
    rate: 1/h
    burst: 3
    match: {tool: "demo__add", caller: "token:*"}
dlp:
  custom:
    - name: employee_id
      pattern: "EMP-\\\\d{6}"
"""


@pytest.fixture(scope="module")
def upstream_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def gw(tmp_path_factory, upstream_port):
    """Jupyter + ContextLab with three upstreams from a manifest, a policy file and fast breakers."""
    root = tmp_path_factory.mktemp("gw-root")
    home = tmp_path_factory.mktemp("gw-home")
    (root / ".contextlab").mkdir()
    (root / ".contextlab" / "policy.yaml").write_text(POLICY)
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# Hello")]), root / "hello.ipynb")
    manifest = home / "upstreams.yaml"
    manifest.write_text(
        json.dumps(
            {
                "version": 1,
                "servers": [
                    {
                        "name": "demo",
                        "transport": "http",
                        "url": f"http://127.0.0.1:{upstream_port}/mcp",
                        "headers": {"X-Upstream-Key": "hdr-secret-123"},
                        "retries": 1,
                        "attributes": {"org": "acme", "sensitivity": "internal"},
                    },
                    {
                        "name": "local",
                        "transport": "stdio",
                        "command": stdio("tests.support.upstream_server", "stdio"),
                        "cwd": str(REPO),
                        "env": {"LOCAL_SECRET": "env-secret-456"},
                        "attributes": {"org": "acme", "sensitivity": "confidential"},
                    },
                    {
                        "name": "time",
                        "transport": "stdio",
                        "command": ["mcp-server-time", "--local-timezone", "UTC"],
                        "attributes": {"sensitivity": "public"},
                    },
                ],
            }
        )
    )
    upstream = start_upstream(upstream_port)
    server = start_server(
        root,
        home,
        extra_args=[
            "--ContextLab.providers=notebooks",
            "--ContextLab.providers=logs",
            f"--ContextLab.registry_manifests={manifest}",
            "--ContextLab.breaker_threshold=2",
            "--ContextLab.breaker_cooldown_seconds=1",
            "--ContextLab.upstream_list_ttl_seconds=0.5",
            "--ContextLab.policy_check_seconds=0.2",
            "--ContextLab.upstream_health_seconds=1",
        ],
    )
    server.upstream = upstream
    server.home = home
    yield server
    server.stop()
    if server.upstream.poll() is None:
        server.upstream.kill()


@pytest.fixture(scope="module")
def tokens(gw):
    return {
        "viewer": create_token(gw, "viewer", ["*"], roles=["Viewer"], org="acme"),
        "scoped": create_token(
            gw,
            "scoped",
            ["upstream:demo__echo", "upstream:demo__reverse", "upstream:demo__customer_card"],
            roles=["Operator"],
            org="acme",
        ),
        "outsider": create_token(gw, "outsider", ["*"], roles=["Viewer"], org="globex"),
    }


def audit(server: JupyterServer, **params) -> list[dict]:
    response = server.api("GET", "contextlab/api/audit", params={"flush": 1, **params})
    assert response.status_code == 200, response.text
    return response.json()["entries"]


# -- aggregation and routing --------------------------------------------------------------------------
def test_tools_of_every_upstream_are_listed_under_stable_namespaces(gw, mode):
    names = anyio.run(tool_names, gw, gw.token, mode)
    assert {"demo__echo", "demo__add", "local__echo", "local__add", "time__get_current_time"} <= names
    assert {"notebooks__list", "logs__search"} & names  # built-in providers are still there
    assert not any(name.startswith("demo__demo") for name in names)


def test_calls_are_routed_to_http_stdio_and_pypi_upstreams(gw, mode):
    async def run():
        async with mcp_session(gw.mcp_url, gw.token, mode) as client:
            http_sum = await client.call_tool("demo__add", {"a": 2, "b": 40})
            stdio_sum = await client.call_tool("local__add", {"a": 1, "b": 1})
            now = await client.call_tool("time__get_current_time", {"timezone": "Europe/Paris"})
            return http_sum, stdio_sum, now

    http_sum, stdio_sum, now = anyio.run(run)
    assert http_sum.structured_content == {"result": 42}
    assert stdio_sum.structured_content == {"result": 2}
    assert not now.is_error
    assert "Europe/Paris" in now.content[0].text
    rows = audit(gw, tool="demo__add", limit=5)
    assert rows[0]["upstream"] == "demo" and rows[0]["outcome"] == "ok"
    assert rows[0]["decision"] == "allow:admins"


def test_upstream_prompts_and_resources_are_aggregated(gw, mode):
    async def run():
        async with mcp_session(gw.mcp_url, gw.token, mode) as client:
            prompts = {p.name for p in (await client.list_prompts()).prompts}
            resources = {str(r.uri): r for r in (await client.list_resources()).resources}
            prompt = await client.get_prompt("demo__greet", {"name": "Ada"})
            uri = next(u for u in resources if u.startswith("upstream://demo/"))
            content = await client.read_resource(uri)
            return prompts, prompt, content

    prompts, prompt, content = anyio.run(run)
    assert "demo__greet" in prompts
    assert "Hello Ada" in prompt.messages[0].content.text
    assert content.contents[0].text == "The upstream readme."


# -- who sees and calls what --------------------------------------------------------------------------
def test_policy_and_scopes_decide_what_each_caller_sees(gw, tokens, mode):
    viewer = anyio.run(tool_names, gw, tokens["viewer"], mode)
    assert "demo__echo" in viewer and "time__get_current_time" in viewer  # same org; public
    assert not any(n.startswith("local__") for n in viewer)  # confidential: viewers may not
    assert not any(n.startswith("notebooks__") for n in viewer)  # built-ins have no org: default deny
    scoped = anyio.run(tool_names, gw, tokens["scoped"], mode)
    assert scoped == {"demo__echo", "demo__reverse", "demo__customer_card"}
    outsider = anyio.run(tool_names, gw, tokens["outsider"], mode)
    assert outsider == {n for n in viewer if n.startswith("time__")}


def test_refused_calls_get_precise_errors_and_audit_rows(gw, tokens):
    async def call(token, tool, args):
        async with mcp_session(gw.mcp_url, token, "legacy") as client:
            with pytest.raises(MCPError) as caught:
                await client.call_tool(tool, args)
            return caught.value

    hidden = anyio.run(call, tokens["viewer"], "local__add", {"a": 1, "b": 2})
    assert "Unknown tool 'local__add'" in str(hidden)
    out_of_scope = anyio.run(call, tokens["scoped"], "demo__add", {"a": 1, "b": 2})
    assert out_of_scope.error.code == -32003
    assert "lacks the scope 'upstream:demo__add'" in str(out_of_scope)
    rows = audit(gw, tool="demo__add", principal="token:scoped", limit=1)
    assert rows[0]["outcome"] == "denied" and rows[0]["decision"] == "deny:scope:upstream:demo__add"


def test_rate_limit_answers_with_retry_after(gw):
    token = create_token(gw, "burst", ["*"], roles=["Viewer"], org="acme")

    async def run():
        async with mcp_session(gw.mcp_url, token, "auto") as client:
            for _ in range(3):
                assert (await client.call_tool("demo__add", {"a": 1, "b": 1})).structured_content == {"result": 2}
            with pytest.raises(MCPError) as caught:
                await client.call_tool("demo__add", {"a": 1, "b": 1})
            other_tool = await client.call_tool("demo__echo", {"text": "still fine"})
            return caught.value, other_tool

    error, other_tool = anyio.run(run)
    assert error.error.code == -32029
    assert error.error.data["retryAfter"] > 0 and error.error.data["rule"] == "add-burst"
    assert other_tool.content[0].text == "still fine"
    assert audit(gw, principal="token:burst", outcome="denied", limit=5)[0]["decision"] == "deny:rate_limit:add-burst"


def test_dlp_redacts_results_and_arguments_and_counts_in_audit(gw, tokens):
    async def run():
        async with mcp_session(gw.mcp_url, tokens["scoped"], "auto") as client:
            card = await client.call_tool("demo__customer_card", {"customer_id": 7})
            echoed = await client.call_tool("demo__echo", {"text": "mail bob@example.org, badge EMP-123456"})
            reversed_ = await client.call_tool("demo__reverse", {"text": "mail bob@example.org"})
            return card, echoed, reversed_

    card, echoed, reversed_ = anyio.run(run)
    text = card.content[0].text
    assert "jane.doe7@example.com" not in text and "4111 1111 1111 1111" not in text
    assert "[REDACTED:email]" in text and "[REDACTED:credit_card]" in text
    assert card.structured_content["email"] == "[REDACTED:email]"
    assert card.structured_content["note"] == "prefers email"
    assert echoed.content[0].text == "mail [REDACTED:email], badge [REDACTED:employee_id]"
    card_row = audit(gw, tool="demo__customer_card", limit=1)[0]
    assert card_row["redactions"] >= 3
    assert {"email", "phone", "credit_card"} <= set(card_row["redaction_kinds"])
    assert audit(gw, tool="demo__echo", principal="token:scoped", limit=1)[0]["redactions"] == 2
    # The upstream saw the redacted argument: reversed, a real address ("gro.elpmaxe@bob") would no longer
    # look like one and would pass the result check, so only argument redaction can explain this answer.
    assert reversed_.content[0].text == "mail [REDACTED:email]"[::-1]


# -- tokens -------------------------------------------------------------------------------------------
def test_bad_tokens_get_401_with_the_reason(gw, tokens):
    def post(token):
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        return httpx.post(gw.mcp_url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)

    token = create_token(gw, "short-lived", ["*"])
    token_id = token.split("_")[1]
    with sqlite3.connect(gw.state_db) as db:
        db.execute("UPDATE api_tokens SET expires_at = '2020-01-01 00:00:00.000000' WHERE id = ?", (token_id,))
    expired = post(token)
    assert expired.status_code == 401 and expired.json()["error"] == "expired"
    revoked_token = create_token(gw, "to-revoke", ["*"])
    assert gw.api("DELETE", f"contextlab/api/tokens/{revoked_token.split('_')[1]}").status_code == 200
    revoked = post(revoked_token)
    assert revoked.status_code == 401 and revoked.json()["error"] == "revoked"
    unknown = post(tokens["viewer"][:-4] + "AAAA")
    assert unknown.status_code == 401 and unknown.json()["error"] == "unknown"
    assert "cl_" not in gw.api("GET", "contextlab/api/tokens").text  # secrets are never listed


def test_tokens_cannot_use_the_admin_api_without_the_admin_scope(gw, tokens):
    response = httpx.get(
        f"{gw.url}contextlab/api/registry", headers={"Authorization": f"Bearer {tokens['viewer']}"}, timeout=10
    )
    assert response.status_code == 403
    assert "admin" in response.json()["error"]


# -- registry -----------------------------------------------------------------------------------------
def test_registry_never_reveals_secrets_and_encrypts_them_at_rest(gw):
    listed = gw.api("GET", "contextlab/api/registry").text
    shown = gw.api("GET", "contextlab/api/registry/local").json()
    assert "env-secret-456" not in listed and "hdr-secret-123" not in listed
    assert shown["secrets"]["env"] == ["LOCAL_SECRET"]
    assert "env-secret-456" not in json.dumps(shown)
    with sqlite3.connect(gw.state_db) as db:
        blob = " ".join(str(v) for row in db.execute("SELECT * FROM upstream_servers") for v in row)
    assert "env-secret-456" not in blob and "hdr-secret-123" not in blob
    key_file = gw.home / "data" / "contextlab" / "secret.key"
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert not str(key_file).startswith(str(gw.root))


def test_registry_rejects_duplicates_and_unknown_fields(gw):
    duplicate = gw.api("POST", "contextlab/api/registry", json={"name": "demo", "transport": "stdio", "command": ["x"]})
    assert duplicate.status_code == 409 and "already registered" in duplicate.json()["error"]
    unknown = gw.api("POST", "contextlab/api/registry", json={"name": "x", "transport": "stdio", "comand": ["x"]})
    assert unknown.status_code == 422 and "comand" in unknown.json()["error"]
    manifest = (
        "version: 1\nservers:\n"
        "  - {name: a, transport: stdio, command: [x]}\n"
        "  - {name: a, transport: stdio, command: [y]}\n"
    )
    bad = gw.api("POST", "contextlab/api/registry/manifest", content=manifest.encode())
    assert bad.status_code == 400 and "$.servers[1].name: duplicate server name 'a'" in bad.json()["error"]


def test_cli_rest_and_manifest_doors_agree(gw):
    env = dict(gw.env)
    base = [sys.executable, "-m", "contextlab"]
    target = ["--url", gw.url, "--token", gw.token]
    added = subprocess.run(
        [
            *base,
            "registry",
            "add",
            "clitime",
            "--stdio",
            "mcp-server-time",
            "--env",
            "TZ_SECRET=zzz-789",
            "--sensitivity",
            "public",
            *target,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    assert "env:TZ_SECRET" in added.stdout and "zzz-789" not in added.stdout
    rest = {s["name"] for s in gw.api("GET", "contextlab/api/registry").json()["servers"]}
    assert {"demo", "local", "time", "clitime"} <= rest
    listed = subprocess.run([*base, "registry", "list", *target], capture_output=True, text=True, env=env, timeout=60)
    assert "clitime" in listed.stdout and "zzz-789" not in listed.stdout

    def listed() -> set[str]:
        return anyio.run(tool_names, gw, gw.token, "auto")

    names = wait_for(lambda: (found := listed()) and "clitime__get_current_time" in found and found)
    assert names and "demo__echo" in names
    disabled = subprocess.run(
        [*base, "registry", "disable", "clitime", *target], capture_output=True, text=True, env=env, timeout=60
    )
    assert disabled.returncode == 0, disabled.stderr
    assert wait_for(lambda: "clitime__get_current_time" not in anyio.run(tool_names, gw, gw.token, "auto"))
    removed = subprocess.run(
        [*base, "registry", "remove", "clitime", *target], capture_output=True, text=True, env=env, timeout=60
    )
    assert removed.returncode == 0
    assert gw.api("GET", "contextlab/api/registry/clitime").status_code == 404


def test_built_in_resources_and_prompts_follow_the_policy_too(gw, tokens):
    async def run(token):
        async with mcp_session(gw.mcp_url, token, "legacy") as client:
            uris = {str(r.uri) for r in (await client.list_resources()).resources}
            prompts = {p.name for p in (await client.list_prompts()).prompts}
            try:
                await client.read_resource("notebook://hello.ipynb")
                read = "ok"
            except MCPError as exc:
                read = str(exc)
            return uris, prompts, read

    owner_uris, owner_prompts, owner_read = anyio.run(run, gw.token)
    assert "notebook://hello.ipynb" in owner_uris and owner_read == "ok"
    assert any(p.startswith("notebooks__") for p in owner_prompts)
    viewer_uris, viewer_prompts, viewer_read = anyio.run(run, tokens["viewer"])
    assert "notebook://hello.ipynb" not in viewer_uris
    assert not any(p.startswith("notebooks__") for p in viewer_prompts)
    assert "Unknown resource 'notebook://hello.ipynb'" in viewer_read


def test_health_checks_run_on_a_schedule_and_record_latency(gw):
    def healthy() -> dict | None:
        servers = {s["name"]: s for s in gw.api("GET", "contextlab/api/registry").json()["servers"]}
        health = servers["demo"]["health"]
        return health if health.get("status") == "up" and servers["time"]["health"].get("status") == "up" else None

    health = wait_for(healthy, timeout=20)
    assert health, "no scheduled health check recorded"
    assert health["latency_ms"] > 0 and health["last_error"] is None
    assert health["protocol_version"] == "2026-07-28" and health["breaker"] == "closed"
