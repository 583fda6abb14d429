"""Resource change notifications: subscriptions/listen (2026-07-28) and resources/subscribe (2025-11-25)."""

from __future__ import annotations

import uuid

import anyio
import mcp_types as types
import nbformat
import pytest
from mcp.shared.exceptions import MCPError
from nbformat.v4 import new_markdown_cell, new_notebook

from tests.support.server import mcp_session, start_server


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    root = tmp_path_factory.mktemp("watched")
    nbformat.write(new_notebook(cells=[new_markdown_cell("# v1")]), root / "report.ipynb")
    srv = start_server(
        root, tmp_path_factory.mktemp("watch-home"), extra_args=["--ContextLab.resource_poll_seconds=0.2"]
    )
    yield srv
    srv.stop()


def edit(root, name="report.ipynb"):
    nb = nbformat.read(root / name, as_version=4)
    nb.cells.append(new_markdown_cell(f"edit {uuid.uuid4().hex}"))
    nbformat.write(nb, root / name)


def test_listen_stream_announces_an_edited_notebook_and_a_new_one(watched):
    async def go():
        async with mcp_session(watched.mcp_url, watched.token, "auto") as client:
            assert client.protocol_version == "2026-07-28"
            async with client.listen(
                resources_list_changed=True, resource_subscriptions=["notebook://report.ipynb"]
            ) as subscription:
                edit(watched.root)
                with anyio.fail_after(20):
                    events = [await anext(aiter(subscription))]
                nbformat.write(new_notebook(), watched.root / f"new-{uuid.uuid4().hex[:6]}.ipynb")
                with anyio.fail_after(20):
                    async for event in subscription:
                        events.append(event)
                        if type(event).__name__ == "ResourcesListChanged":
                            break
                return events

    events = anyio.run(go)
    assert getattr(events[0], "uri", None) == "notebook://report.ipynb"
    assert type(events[-1]).__name__ == "ResourcesListChanged"


@pytest.mark.filterwarnings("ignore:resources/(un)?subscribe is removed")
def test_legacy_subscription_gets_resources_updated_on_its_session(watched):
    async def go():
        received = []
        arrived = anyio.Event()

        async def on_message(message):
            if isinstance(message, types.ResourceUpdatedNotification):
                received.append(str(message.params.uri))
                arrived.set()

        async with mcp_session(watched.mcp_url, watched.token, "legacy", message_handler=on_message) as client:
            assert client.server_capabilities.resources.subscribe is True
            await client.session.subscribe_resource("notebook://report.ipynb")
            with pytest.raises(MCPError) as info:
                await client.session.subscribe_resource("notebook://missing.ipynb")
            assert info.value.code == -32602 and "resources/list" in info.value.message
            edit(watched.root)
            with anyio.fail_after(20):
                await arrived.wait()
            await client.session.unsubscribe_resource("notebook://report.ipynb")
        return received

    assert anyio.run(go)[0] == "notebook://report.ipynb"
