"""2025-11-25 sessions belong to the Jupyter user who opened them."""

from __future__ import annotations

import pytest

from contextlab.state import StateStore
from tests.support.server import start_server, wait_for

HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "MCP-Protocol-Version": "2025-11-25",
}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
CALL = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "sql__databases", "arguments": {}}}


@pytest.fixture(scope="module")
def multi_user(demo_root, tmp_path_factory):
    srv = start_server(
        demo_root,
        tmp_path_factory.mktemp("multi-home"),
        extra_args=["--ServerApp.identity_provider_class=tests.support.identity.HeaderUserIdentityProvider"],
    )
    yield srv
    srv.stop()


def post(server, user, body, session_id=None):
    headers = {**HEADERS, **server.auth, "X-Test-User": user}
    if session_id:
        headers["Mcp-Session-Id"] = session_id
    return server.api("POST", "contextlab/mcp", json=body, headers=headers)


def test_another_user_cannot_use_a_session_and_the_owner_still_can(multi_user):
    opened = post(multi_user, "alice", INIT)
    assert opened.status_code == 200
    session_id = opened.headers["mcp-session-id"]
    assert (
        post(multi_user, "alice", {"jsonrpc": "2.0", "method": "notifications/initialized"}, session_id).status_code
        == 202
    )
    stolen = post(multi_user, "bob", CALL, session_id)
    assert stolen.status_code == 404
    assert "Session not found" in stolen.json()["error"]["message"]
    own = post(multi_user, "alice", CALL, session_id)
    assert own.status_code == 200 and '"shop"' in own.text

    store = StateStore(f"sqlite:///{multi_user.state_db}")
    try:
        rows = wait_for(lambda: [r for r in store.audit(target="sql__databases") if r["session_id"] == session_id])
        assert [r["principal"] for r in rows] == ["alice"]  # bob's attempt never reached a tool
    finally:
        store.close()
