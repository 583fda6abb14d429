"""Gateway faults: misbehaving upstreams, breakers, poisoning, a broken policy file, restarts.

Each bad upstream must get a clear error while the gateway stays up and the other servers keep
working; nothing recorded in the audit log may be lost."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import anyio
import httpx
import pytest
from mcp.shared.exceptions import MCPError

from tests.support.gateway import create_token, start_upstream, stdio, tool_names
from tests.support.server import REPO, free_port, mcp_session, start_server, wait_for

POLICY = """
version: 1
default: deny
rules:
  - name: admins
    effect: allow
    caller: {roles: [Owner, Admin]}
  - name: viewers-public-only
    effect: allow
    caller: {roles: [Viewer]}
    target: {sensitivity: public}
"""


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults-root")
    home = tmp_path_factory.mktemp("faults-home")
    (root / ".contextlab").mkdir()
    (root / ".contextlab" / "policy.yaml").write_text(POLICY)
    server = start_server(
        root,
        home,
        extra_args=[
            "--ContextLab.providers=logs",
            "--ContextLab.breaker_threshold=2",
            "--ContextLab.breaker_cooldown_seconds=1",
            "--ContextLab.upstream_list_ttl_seconds=0.5",
            "--ContextLab.policy_check_seconds=0.2",
        ],
    )
    server.home = home
    register(server, "local", stdio("tests.support.upstream_server", "stdio"), sensitivity="public")
    yield server
    server.stop()


def register(server, name, command=None, *, url=None, **extra):
    body = {"name": name, "transport": "stdio" if command else "http", **extra}
    attributes = {"sensitivity": body.pop("sensitivity", "internal")}
    body["attributes"] = attributes
    if command:
        body.update(command=command, cwd=str(REPO))
    else:
        body["url"] = url
    response = server.api("POST", "contextlab/api/registry", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def bad(mode: str) -> list[str]:
    return stdio("tests.support.bad_upstream", "stdio", mode)


async def call(server, tool, args, token=None, mode="auto"):
    async with mcp_session(server.mcp_url, token or server.token, mode) as client:
        return await client.call_tool(tool, args)


async def call_error(server, tool, args, token=None, mode="auto") -> MCPError:
    async with mcp_session(server.mcp_url, token or server.token, mode) as client:
        with pytest.raises(MCPError) as caught:
            await client.call_tool(tool, args)
        return caught.value


def local_still_works(server) -> None:
    result = anyio.run(call, server, "local__add", {"a": 20, "b": 22})
    assert result.structured_content == {"result": 42}


def cli(server, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "contextlab", *args, "--url", server.url, "--token", server.token]
    return subprocess.run(command, capture_output=True, text=True, env=server.env, timeout=60)


def show(server, name) -> dict:
    response = server.api("GET", f"contextlab/api/registry/{name}")
    assert response.status_code == 200, response.text
    return response.json()


def test_an_upstream_that_crashes_on_start_is_reported_down_with_its_stderr(gw):
    register(gw, "crashy", bad("crash-on-start"))
    health = gw.api("POST", "contextlab/api/registry/crashy/health").json()
    assert health["status"] == "down"
    assert "fatal: missing configuration file" in health["last_error"]
    assert not any(n.startswith("crashy__") for n in anyio.run(tool_names, gw, gw.token, "auto"))
    local_still_works(gw)
    health_cli = cli(gw, "registry", "health", "crashy")
    assert health_cli.returncode == 1
    assert "down" in health_cli.stdout and "fatal: missing configuration" in health_cli.stdout


def test_a_hanging_upstream_times_out_without_blocking_others(gw):
    register(gw, "hangs", bad("hang"), timeout_seconds=1, retries=0)
    assert wait_for(lambda: "hangs__ok" in anyio.run(tool_names, gw, gw.token, "auto"))

    async def both():
        results = {}

        async def hung():
            results["hung"] = await call_error(gw, "hangs__ok", {})

        async def fine():
            results["fine"] = await call(gw, "local__echo", {"text": "unblocked"})

        async with anyio.create_task_group() as group:
            group.start_soon(hung)
            group.start_soon(fine)
        return results

    results = anyio.run(both)
    assert results["hung"].error.code == -32010
    assert "'hangs'" in str(results["hung"]) and "no answer to tools/call within 1 s" in str(results["hung"])
    assert results["fine"].content[0].text == "unblocked"


def test_malformed_json_rpc_and_invalid_schemas_are_refused_precisely(gw):
    register(gw, "garbled", bad("malformed"))
    register(gw, "schemas", bad("invalid-schema"))
    names = wait_for(
        lambda: (found := anyio.run(tool_names, gw, gw.token, "auto")) and "schemas__ok" in found and found
    )
    assert "schemas__ok" in names and "schemas__bad" not in names
    assert not any(n.startswith("garbled__") for n in names)
    garbled = wait_for(lambda: show(gw, "garbled")["catalog_error"])
    assert "malformed JSON-RPC response" in garbled
    rejected = show(gw, "schemas")["rejected_tools"]
    assert rejected == [{"tool": "bad", "reason": rejected[0]["reason"]}]
    assert "invalid JSON Schema" in rejected[0]["reason"]
    local_still_works(gw)


def test_an_upstream_dying_mid_stream_gives_an_error_naming_it(gw):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.bad_upstream", "http", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.post(f"http://127.0.0.1:{port}/mcp", json={"jsonrpc": "2.0", "method": "x"}, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        register(gw, "dies", url=f"http://127.0.0.1:{port}/mcp", retries=0)
        assert wait_for(lambda: "dies__ok" in anyio.run(tool_names, gw, gw.token, "legacy"))
        error = anyio.run(call_error, gw, "dies__ok", {}, None, "legacy")
        assert error.error.code == -32010 and "Upstream 'dies'" in str(error)
        assert "broke" in str(error) or "before answering" in str(error)
        local_still_works(gw)
    finally:
        process.kill()


def test_a_stdio_upstream_flooding_stderr_keeps_working_with_bounded_memory(gw):
    register(gw, "noisy", bad("flood-stderr"))
    assert wait_for(lambda: "noisy__ok" in anyio.run(tool_names, gw, gw.token, "auto"))
    for _ in range(3):
        assert anyio.run(call, gw, "noisy__ok", {}).content[0].text == "ok"
    health = wait_for(
        lambda: (h := gw.api("POST", "contextlab/api/registry/noisy/health").json())["stderr_bytes"] > 5_000_000 and h
    )
    assert health["status"] == "up"
    assert len(health["stderr_tail"]) <= 5


def test_a_poisoned_tool_is_quarantined_until_an_admin_approves_it(gw):
    register(gw, "poisoned", bad("poisoned"))
    names = wait_for(
        lambda: (found := anyio.run(tool_names, gw, gw.token, "auto")) and "poisoned__ok" in found and found
    )
    assert "poisoned__add" not in names
    error = anyio.run(call_error, gw, "poisoned__add", {"a": 1, "b": 2})
    assert error.error.code == -32012 and "quarantined" in str(error)
    reviews = gw.api("GET", "contextlab/api/reviews", params={"status": "quarantined"}).json()["reviews"]
    flagged = next(r for r in reviews if r["server"] == "poisoned")
    assert flagged["tool"] == "add"
    assert {"hidden_directive", "exfiltration"} <= {f["kind"] for f in flagged["findings"]}
    approved = cli(gw, "registry", "approve", "poisoned", "add")
    assert approved.returncode == 0, approved.stderr
    assert wait_for(lambda: "poisoned__add" in anyio.run(tool_names, gw, gw.token, "auto"))


def test_breaker_opens_on_a_dead_upstream_and_closes_when_it_returns(gw):
    port = free_port()
    upstream = start_upstream(port)
    register(gw, "flaky", url=f"http://127.0.0.1:{port}/mcp", protocol="legacy", retries=0)
    try:
        assert wait_for(lambda: "flaky__echo" in anyio.run(tool_names, gw, gw.token, "auto"))
        assert anyio.run(call, gw, "flaky__echo", {"text": "up"}).content[0].text == "up"
        upstream.kill()
        upstream.wait()
        errors = [anyio.run(call_error, gw, "flaky__echo", {"text": "x"}) for _ in range(3)]
        assert all(e.error.code == -32010 for e in errors)
        assert "circuit breaker open" in str(errors[-1]) and "'flaky'" in str(errors[-1])
        assert show(gw, "flaky")["breaker"] == "open"
        local_still_works(gw)
        upstream = start_upstream(port)  # a new process: it knows nothing of the gateway's old session
        time.sleep(1.2)  # the cool-down
        assert anyio.run(call, gw, "flaky__echo", {"text": "back"}).content[0].text == "back"
        assert show(gw, "flaky")["breaker"] == "closed"
    finally:
        upstream.kill()


def test_a_broken_policy_file_is_reported_and_the_old_policy_stays(gw):
    viewer = create_token(gw, "faults-viewer", ["*"], roles=["Viewer"])
    assert anyio.run(call, gw, "local__add", {"a": 1, "b": 1}, viewer).structured_content == {"result": 2}
    policy = gw.root / ".contextlab" / "policy.yaml"
    policy.write_text(
        POLICY.replace("effect: allow\n    caller: {roles: [Viewer]}", "effect: allow\n  caller: [Viewer")
    )
    reloaded = gw.api("POST", "contextlab/api/policy/reload")
    assert reloaded.status_code == 422
    assert "line" in reloaded.json()["error"]
    assert gw.api("GET", "contextlab/api/policy").json()["error"] == reloaded.json()["error"]
    from_cli = cli(gw, "policy", "reload")
    assert from_cli.returncode == 1 and "the previous policy stays in force" in from_cli.stdout
    # The old policy is still in force: the viewer may still call public tools, and only those.
    assert anyio.run(call, gw, "local__add", {"a": 2, "b": 2}, viewer).structured_content == {"result": 4}
    assert "logs__recent" not in anyio.run(tool_names, gw, viewer, "auto")
    policy.write_text(POLICY)
    fixed = gw.api("POST", "contextlab/api/policy/reload")
    assert fixed.status_code == 200 and fixed.json()["error"] is None


def test_events_stream_registry_changes_and_resume_from_the_last_id(gw):
    register(gw, "evented", stdio("tests.support.upstream_server", "stdio"))
    gw.api("POST", "contextlab/api/registry/evented/disable")
    text = gw.api("GET", "contextlab/api/events", params={"topic": "registry.*", "since": 0, "once": 1}).text
    events = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
    ids = [int(line[3:]) for line in text.splitlines() if line.startswith("id:")]
    mine = [e for e in events if e["payload"]["server"] == "evented"]
    assert [e["payload"]["action"] for e in mine] == ["added", "disabled"]
    assert "event: registry.changed" in text
    resumed = gw.api(
        "GET",
        "contextlab/api/events",
        params={"topic": "registry.*", "once": 1},
        headers={**gw.auth, "Last-Event-ID": str(ids[-2])},
    ).text
    assert [int(line[3:]) for line in resumed.splitlines() if line.startswith("id:")] == [ids[-1]]


def test_clients_hear_list_changed_when_the_registry_changes(gw):
    async def run():
        heard = anyio.Event()

        async def on_message(message):
            if getattr(message, "method", None) == "notifications/tools/list_changed":
                heard.set()

        async with mcp_session(gw.mcp_url, gw.token, "legacy", message_handler=on_message) as client:
            await client.list_tools()
            await anyio.to_thread.run_sync(
                lambda: register(gw, "announced", stdio("tests.support.upstream_server", "stdio"))
            )
            with anyio.fail_after(10):
                await heard.wait()
            return {t.name for t in (await client.list_tools()).tools}

    assert "announced__echo" in anyio.run(run)


def test_audit_cli_filters_by_tool_outcome_and_age(gw):
    viewer = create_token(gw, "audit-viewer", ["upstream:local__echo"], roles=["Viewer"])
    anyio.run(call_error, gw, "local__add", {"a": 1, "b": 1}, viewer)
    result = cli(gw, "audit", "--since", "1h", "--tool", "local__add", "--outcome", "denied", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows and all(r["target"] == "local__add" and r["outcome"] == "denied" for r in rows)
    assert rows[0]["principal"] == "token:audit-viewer"
    assert rows[0]["decision"] == "deny:scope:upstream:local__add"


def test_registry_and_audit_survive_a_restart_with_nothing_lost(tmp_path):
    root, home = tmp_path / "root", tmp_path / "home"
    root.mkdir()
    server = start_server(root, home, extra_args=["--ContextLab.providers=logs"])
    try:
        register(server, "keeper", stdio("tests.support.upstream_server", "stdio"), env={"KEEP": "secret-value"})

        async def burst():
            async with mcp_session(server.mcp_url, server.token, "legacy") as client:
                for i in range(60):
                    await client.call_tool("keeper__add", {"a": i, "b": 1})

        anyio.run(burst)
    finally:
        server.stop()  # a clean shutdown: the audit writer must flush everything
    with sqlite3.connect(root / ".contextlab" / "state.db") as db:
        calls = db.execute("SELECT COUNT(*) FROM audit_log WHERE target = 'keeper__add' AND outcome = 'ok'").fetchone()
    assert calls[0] == 60
    again = start_server(root, home, extra_args=["--ContextLab.providers=logs"])
    try:
        record = again.api("GET", "contextlab/api/registry/keeper").json()
        assert record["secrets"]["env"] == ["KEEP"] and record["source"] == "api"
        assert anyio.run(call, again, "keeper__add", {"a": 2, "b": 3}).structured_content == {"result": 5}
    finally:
        again.stop()


def test_admins_read_audit_and_events_as_mcp_resources_and_hear_of_new_events(gw):
    viewer = create_token(gw, "resource-viewer", ["*"], roles=["Viewer"])

    async def run():
        updated = anyio.Event()

        async def on_message(message):
            if getattr(message, "method", None) == "notifications/resources/updated":
                updated.set()

        async with mcp_session(gw.mcp_url, gw.token, "legacy", message_handler=on_message) as client:
            uris = {str(r.uri) for r in (await client.list_resources()).resources}
            audit_rows = json.loads((await client.read_resource("contextlab://audit/recent")).contents[0].text)
            await client.subscribe_resource("contextlab://events/recent")
            await anyio.to_thread.run_sync(
                lambda: register(gw, "heard", stdio("tests.support.upstream_server", "stdio"))
            )
            with anyio.fail_after(15):
                await updated.wait()
            events = json.loads((await client.read_resource("contextlab://events/recent")).contents[0].text)
        async with mcp_session(gw.mcp_url, viewer, "legacy") as client:
            viewer_uris = {str(r.uri) for r in (await client.list_resources()).resources}
            with pytest.raises(MCPError) as denied:
                await client.read_resource("contextlab://audit/recent")
        return uris, audit_rows, events, viewer_uris, denied.value

    uris, audit_rows, events, viewer_uris, denied = anyio.run(run)
    assert {"contextlab://audit/recent", "contextlab://events/recent"} <= uris
    assert audit_rows["entries"] and {"principal", "decision", "redactions"} <= set(audit_rows["entries"][0])
    assert any(e["topic"] == "registry.changed" and e["payload"]["server"] == "heard" for e in events["events"])
    assert not {"contextlab://audit/recent", "contextlab://events/recent"} & viewer_uris
    assert "Unknown resource" in str(denied)


def test_cacheable_tool_results_are_reused_until_the_registry_changes(gw):
    register(gw, "cached", stdio("tests.support.upstream_server", "stdio"), cacheable_tools=["increment", "pid"])
    assert wait_for(lambda: "cached__increment" in anyio.run(tool_names, gw, gw.token, "auto"))
    first = anyio.run(call, gw, "cached__increment", {}).structured_content["result"]
    assert anyio.run(call, gw, "cached__increment", {}).structured_content["result"] == first  # not re-run
    old_pid = anyio.run(call, gw, "cached__pid", {}).structured_content["result"]
    assert gw.api("PATCH", "contextlab/api/registry/cached", json={"cache_ttl_seconds": 120}).status_code == 200
    assert wait_for(lambda: "cached__pid" in anyio.run(tool_names, gw, gw.token, "auto"))
    # The change reconnected the server (a new process) and dropped its cached results.
    assert anyio.run(call, gw, "cached__pid", {}).structured_content["result"] != old_pid


def test_a_contextlab_provider_registers_itself_from_its_generated_manifest(gw):
    target = "tests.support.standalone_provider:GreetingsProvider"
    result = cli(gw, "registry", "add-provider", target)
    assert result.returncode == 0, result.stderr
    record = show(gw, "greetings")
    assert record["source"] == "provider"
    assert record["command"][1:] == ["-m", "contextlab.providers.serve", target]
    assert "Greets people." in record["description"] and "Greeting" in record["description"]
    assert wait_for(lambda: "greetings__hello" in anyio.run(tool_names, gw, gw.token, "auto"))
    hello = anyio.run(call, gw, "greetings__hello", {"name": "Ada"})
    assert hello.structured_content == {"text": "Hello, Ada!"}


def test_upstream_sessions_are_kept_per_caller_identity_or_shared(gw):
    register(gw, "percaller", stdio("tests.support.upstream_server", "stdio"), session_scope="caller")
    viewer = create_token(gw, "pool-viewer", ["*"], roles=["Admin"])
    assert wait_for(lambda: "percaller__pid" in anyio.run(tool_names, gw, viewer, "auto"))

    async def pids(token, tool, times=2):
        async with mcp_session(gw.mcp_url, token, "auto") as client:
            return [(await client.call_tool(tool, {})).structured_content["result"] for _ in range(times)]

    first, second = anyio.run(pids, viewer, "percaller__pid")
    assert first == second  # the caller's session is reused
    assert anyio.run(pids, viewer, "percaller__pid", 1) == [first]  # also from a new client connection
    other = anyio.run(pids, create_token(gw, "pool-other", ["*"], roles=["Admin"]), "percaller__pid", 1)
    assert other != [first]  # another identity gets its own session (here: its own process)
    # `local` keeps the stdio default, one process shared by every caller.
    shared = {anyio.run(pids, token, "local__pid", 1)[0] for token in (viewer, gw.token)}
    assert len(shared) == 1
    assert show(gw, "local")["session_scope"] == "shared" and show(gw, "percaller")["session_scope"] == "caller"


def test_the_gateway_class_can_be_swapped_through_config(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    swap = "--ContextLab.gateway_class=tests.support.gateway.HideEchoGateway"
    server = start_server(root, tmp_path / "home", extra_args=["--ContextLab.providers=logs", swap])
    try:
        register(server, "local", stdio("tests.support.upstream_server", "stdio"))
        names = wait_for(
            lambda: (found := anyio.run(tool_names, server, server.token, "auto")) and "local__add" in found and found
        )
        assert "local__add" in names and "local__echo" not in names
    finally:
        server.stop()
