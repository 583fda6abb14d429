"""The kernel's REST client against a local server that implements the Copilot API contract."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from contextlab.copilot.llm import OFFLINE_MODEL, UsageRecord
from contextlab.kernels.api import (
    ModelConfigError,
    ServerAPI,
    ServerUsage,
    api_base,
    auth_header,
    load_model_config,
)
from tests.kernels.fake_server import FakeContextLab
from tests.support.server import free_port

CLOUD = {"name": "cloud", "backend": "openai", "model": "gpt-x", "base_url": "http://127.0.0.1:9/v1"}


@pytest.fixture(scope="module")
def fake():
    with FakeContextLab(models={"models": [CLOUD], "default_chain": ["cloud"], "budgets": {"team": 2.0}}) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(fake):
    fake.reset()


def usage(cost: float = 0.5, project: str = "team", **kw) -> UsageRecord:
    values = dict(
        user="ada",
        project=project,
        model="cloud",
        backend="openai",
        target="sql",
        prompt_tokens=100,
        completion_tokens=20,
        cost=cost,
        latency_s=0.25,
        ok=True,
    )
    return UsageRecord(**{**values, **kw})


@pytest.mark.parametrize(
    ("mcp_url", "base"),
    [
        ("http://127.0.0.1:8888/contextlab/mcp", "http://127.0.0.1:8888/"),
        ("http://h:1/user/ada/contextlab/mcp/", "http://h:1/user/ada/"),
        ("https://hub.example/user/bo/contextlab/mcp?x=1", "https://hub.example/user/bo/"),
        ("http://h:2/elsewhere/mcp", "http://h:2/"),
    ],
)
def test_the_api_base_is_the_mcp_url_without_its_suffix(mcp_url, base):
    assert api_base(mcp_url) == base


def test_contextlab_tokens_are_bearer_and_jupyter_tokens_are_token(fake):
    assert auth_header("cl_abc") == {"Authorization": "Bearer cl_abc"}
    assert auth_header("f00") == {"Authorization": "token f00"}
    assert auth_header(None) == {}
    api = ServerAPI.from_env({"CONTEXTLAB_MCP_URL": fake.mcp_url, "CONTEXTLAB_TOKEN": "cl_live_1"})
    assert api.base_url == fake.base_url
    api.get("models")
    assert fake.requests[-1]["authorization"] == "Bearer cl_live_1"
    ServerAPI.from_env({"CONTEXTLAB_MCP_URL": fake.mcp_url, "JUPYTER_TOKEN": "abc"}).get("models")
    assert fake.requests[-1]["authorization"] == "token abc"
    assert ServerAPI.from_env({}) is None


def test_reports_wait_in_order_while_the_server_is_down_and_are_delivered_later(fake):
    api = ServerAPI(fake.base_url, "t")
    fake.down = True
    assert not api.report("suggestions", {"id": "s1", "target": "sql"})
    assert not api.report("feedback", {"suggestion_id": "s1", "kind": "accepted"})
    assert len(api.pending) == 2 and "HTTP 503" in api.last_error and fake.suggestions == []
    fake.down = False
    assert api.report("feedback", {"suggestion_id": "s1", "kind": "ran", "succeeded": True})
    assert api.pending == [] and [s["id"] for s in fake.suggestions] == ["s1"]
    assert [f["kind"] for f in fake.feedback] == ["accepted", "ran"]  # the suggestion went first


def test_reports_the_server_will_never_take_are_dropped_not_retried(fake):
    api = ServerAPI(fake.base_url, "t")
    assert not api.report("suggestions", {"id": "x"})  # 422
    assert api.report("suggestions", {"id": "s2", "target": "sql"})
    assert not api.report("suggestions", {"id": "s2", "target": "sql"})  # 409 duplicate
    assert not api.report("feedback", {"suggestion_id": "nope", "kind": "ran"})  # 404 unknown suggestion
    assert api.pending == [] and len(fake.suggestions) == 1


def test_an_unreachable_server_keeps_reports_raises_nothing_and_is_not_retried_at_every_cell():
    api = ServerAPI(f"http://127.0.0.1:{free_port()}/", "t", timeout=2)
    attempts = []
    request = api._http.request
    api._http.request = lambda *args, **kwargs: attempts.append(args) or request(*args, **kwargs)
    assert not api.report("feedback", {"suggestion_id": "s", "kind": "accepted"})
    assert len(api.pending) == 1 and "ConnectError" in api.last_error and len(attempts) == 1
    assert not api.report("feedback", {"suggestion_id": "s", "kind": "rejected"})
    assert len(api.pending) == 2 and len(attempts) == 1  # backing off: queued without a new attempt
    assert api.flush(force=True) == 2 and len(attempts) == 2  # at shutdown it tries once more


def test_usage_is_buffered_posted_in_batches_and_spent_asks_the_server(fake):
    api = ServerAPI(fake.base_url, "t")
    sink = ServerUsage(api, batch=3)
    sink.record(usage(0.5))
    sink.record(usage(0.25))
    assert fake.usage == []  # buffered
    sink.record(usage(0.25, project="other"))  # the batch is full: posted
    assert len(fake.usage) == 3 and fake.usage[0]["ts"].endswith("+00:00")
    sink.record(usage(1.0))  # not delivered yet, but counted
    assert sink.spent("team") == pytest.approx(1.75)
    assert fake.requests[-1]["params"] == {"project": "team"}
    fake.down = True
    assert sink.spent("team") == pytest.approx(1.75)  # from the kernel's own records
    sink.flush()
    assert len(api.pending) == 1
    rows, source = sink.summary()
    assert source.startswith("this kernel only")
    assert {(r["project"], r["calls"]) for r in rows} == {("team", 3), ("other", 1)}
    fake.down = False
    rows, source = sink.summary()
    assert source == "server" and api.pending == []
    team = next(r for r in rows if r["project"] == "team")
    assert team["calls"] == 3 and team["cost"] == pytest.approx(1.75) and team["prompt_tokens"] == 300


def test_without_a_server_usage_stays_in_the_kernel():
    sink = ServerUsage(None)
    sink.record(usage(0.5))
    assert sink.spent("team") == 0.5
    rows, source = sink.summary()
    assert rows[0]["calls"] == 1 and "this kernel only" in source


def test_models_come_from_the_server_when_it_configures_any(fake, tmp_path):
    config, source = load_model_config(ServerAPI(fake.base_url), {"CONTEXTLAB_MODELS": str(tmp_path / "nope")})
    assert source == "server" and config["models"] == [CLOUD] and config["budgets"] == {"team": 2.0}


def test_a_models_file_is_used_when_the_server_offers_only_the_offline_model(fake, tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - {name: mine, backend: openai, model: m, base_url: 'http://x/v1'}\n")
    saved = fake.models
    fake.models = {"models": [asdict(OFFLINE_MODEL)], "default_chain": ["smollm2"], "budgets": {"team": 1.0}}
    try:
        config, source = load_model_config(ServerAPI(fake.base_url), {"CONTEXTLAB_MODELS": str(path)})
        assert source == f"CONTEXTLAB_MODELS={path}" and config["models"][0]["name"] == "mine"
        assert config["budgets"] == {"team": 1.0}  # the server's budgets still apply
        config, source = load_model_config(ServerAPI(fake.base_url), {})
        assert source == "server (offline model only)" and config["models"][0]["name"] == "smollm2"
    finally:
        fake.models = saved


def test_an_unreachable_server_falls_back_to_the_file_then_to_the_offline_model(tmp_path):
    dead = ServerAPI(f"http://127.0.0.1:{free_port()}/", timeout=2)
    path = tmp_path / "models.json"
    path.write_text(json.dumps([CLOUD]))  # a bare list is accepted too
    config, source = load_model_config(dead, {"CONTEXTLAB_MODELS": str(path)})
    assert config["models"] == [CLOUD] and source.startswith("CONTEXTLAB_MODELS")
    config, source = load_model_config(None, {})
    assert [m["name"] for m in config["models"]] == ["smollm2"] and source.startswith("offline default")


def test_a_broken_models_file_is_an_error_that_names_it(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models: {name: [unclosed\n")
    with pytest.raises(ModelConfigError, match="CONTEXTLAB_MODELS=.*models.yaml: not valid"):
        load_model_config(None, {"CONTEXTLAB_MODELS": str(path)})
    path.write_text("just: text\n")
    with pytest.raises(ModelConfigError, match="expected an object with a 'models' list"):
        load_model_config(None, {"CONTEXTLAB_MODELS": str(path)})
    with pytest.raises(ModelConfigError, match="cannot read it"):
        load_model_config(None, {"CONTEXTLAB_MODELS": str(tmp_path / "missing.yaml")})
