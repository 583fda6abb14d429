"""The LLM router with the real `openai` SDK against local OpenAI-compatible servers: policy, fallback, usage."""

from __future__ import annotations

import pytest

from contextlab.copilot.llm import LLMError, LLMRouter, MemoryUsage, ModelSpec, PolicyRefused, RouterPolicy
from tests.support.fake_llm import FakeLLM
from tests.support.server import free_port

MESSAGES = [{"role": "user", "content": "say hi"}]


def spec(name: str, url: str, **kwargs) -> ModelSpec:
    return ModelSpec(name=name, backend="openai", model=f"{name}-model", base_url=url, timeout_s=5, **kwargs)


def test_a_completion_streams_and_is_accounted():
    with FakeLLM(["hello there friend"]) as llm:
        usage = MemoryUsage()
        router = LLMRouter([spec("cloud", llm.base_url, cost_per_1k_input=1.0, cost_per_1k_output=2.0)], usage=usage)
        pieces = []
        completion = router.complete(MESSAGES, user="ada", project="p1", on_token=pieces.append)
    assert completion.text == "hello there friend" == "".join(pieces)
    assert completion.model == "cloud" and completion.completion_tokens == 3 and completion.prompt_tokens == 2
    assert llm.requests[0]["model"] == "cloud-model" and llm.requests[0]["stream"] is True
    [record] = usage.records
    assert (record.user, record.project, record.ok) == ("ada", "p1", True)
    assert record.cost == pytest.approx(2 / 1000 * 1.0 + 3 / 1000 * 2.0)
    assert usage.summary()[0]["calls"] == 1


def test_fallback_on_a_dead_endpoint_an_http_error_and_a_timeout():
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with FakeLLM([("status", 503)]) as broken, FakeLLM([("sleep", 3, "late")]) as slow, FakeLLM(["ok"]) as good:
        usage = MemoryUsage()
        router = LLMRouter(
            [
                spec("dead", dead),
                spec("broken", broken.base_url),
                ModelSpec(name="slow", backend="openai", model="m", base_url=slow.base_url, timeout_s=0.5),
                spec("good", good.base_url),
            ],
            usage=usage,
        )
        completion = router.complete(MESSAGES)
    assert completion.text == "ok" and completion.model == "good"
    assert [(r.model, r.ok) for r in usage.records] == [
        ("dead", False),
        ("broken", False),
        ("slow", False),
        ("good", True),
    ]
    assert "Connection" in usage.records[0].error and "503" in usage.records[1].error
    assert "Timeout" in usage.records[2].error


def test_every_model_failing_gives_one_clear_error():
    router = LLMRouter(
        [spec("a", f"http://127.0.0.1:{free_port()}/v1"), spec("b", f"http://127.0.0.1:{free_port()}/v1")]
    )
    with pytest.raises(LLMError, match=r"Every model failed: a: .*; b: "):
        router.complete(MESSAGES)


def test_sensitivity_keeps_confidential_context_on_private_or_local_models():
    router = LLMRouter(
        [
            spec("cloud", "http://x/v1"),
            spec("onprem", "http://y/v1", locality="private"),
            ModelSpec(name="tiny", backend="local", locality="local"),
        ]
    )
    assert [m.name for m in router.chain(sensitivity="internal")] == ["cloud", "onprem", "tiny"]
    assert [m.name for m in router.chain(sensitivity="confidential")] == ["onprem", "tiny"]
    assert [m.name for m in router.chain(sensitivity="secret")] == ["tiny"]
    with pytest.raises(PolicyRefused, match="Policy refuses model 'cloud': public models may not receive secret"):
        router.chain(sensitivity="secret", model="cloud")
    assert router.chain(sensitivity="confidential", model="tiny")[0].name == "tiny"


def test_a_policy_that_forbids_every_model_says_why():
    router = LLMRouter([spec("cloud", "http://x/v1")])
    with pytest.raises(PolicyRefused, match="allows no configured model.*cloud: public models may not receive secret"):
        router.complete(MESSAGES, sensitivity="secret")
    with pytest.raises(LLMError, match="Unknown model 'gpt-9'. Configured models: cloud"):
        router.chain(model="gpt-9")


def test_budget_alerts_at_80_percent_and_routes_to_local_when_spent():
    alerts = []
    with FakeLLM(["one two three four five six seven eight nine ten"]) as llm:
        usage = MemoryUsage()
        router = LLMRouter(
            [
                spec("cloud", llm.base_url, cost_per_1k_output=100.0),  # 10 tokens = 1.0
                ModelSpec(name="tiny", backend="local", locality="local"),
            ],
            policy=RouterPolicy(budgets={"p": 2.0}),
            usage=usage,
            on_alert=lambda topic, details: alerts.append((topic, details)),
        )
        router.complete(MESSAGES, project="p")
        assert alerts == [] and router.chain(project="p")[0].name == "cloud"
        router.complete(MESSAGES, project="p")  # now 2.0 of 2.0 spent
    assert [m.name for m in router.chain(project="p")] == ["tiny"]
    assert alerts == [("copilot.budget", {"project": "p", "spent": 2.0, "budget": 2.0})]
    assert [m.name for m in router.chain(project="other")] == ["cloud", "tiny"]
    with pytest.raises(PolicyRefused, match="over its budget"):
        router.chain(project="p", model="cloud")


def test_latency_preference_puts_fast_models_first_for_a_target():
    router = LLMRouter(
        [spec("big", "http://x/v1", latency="slow"), spec("small", "http://y/v1")],
        policy=RouterPolicy(target_latency={"python": "fast"}),
    )
    assert [m.name for m in router.chain(target="python")] == ["small", "big"]
    assert [m.name for m in router.chain(target="sql")] == ["big", "small"]


def test_model_specs_are_validated():
    with pytest.raises(ValueError, match="unknown field"):
        ModelSpec.from_dict({"name": "x", "backend": "openai", "colour": "red"})
    with pytest.raises(ValueError, match="backend must be"):
        ModelSpec.from_dict({"name": "x", "backend": "gemini"})
    with pytest.raises(ValueError, match="default chain names unknown"):
        LLMRouter([spec("a", "http://x/v1")], default_chain=["b"])


def test_the_anthropic_backend_streams_through_the_real_sdk():
    with FakeLLM(["bonjour tout le monde"]) as llm:
        model = ModelSpec(name="claude", backend="anthropic", model="claude-x", base_url=f"http://127.0.0.1:{llm.port}")
        router = LLMRouter([model])
        pieces = []
        completion = router.complete(
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "greet"}], on_token=pieces.append
        )
    assert completion.text == "bonjour tout le monde" == "".join(pieces)
    assert (completion.prompt_tokens, completion.completion_tokens, completion.finish_reason) == (1, 4, "stop")
    request = llm.requests[0]
    assert request["system"] == "be brief" and request["messages"] == [{"role": "user", "content": "greet"}]
    assert request["model"] == "claude-x" and request["stream"] is True


def test_an_overloaded_anthropic_endpoint_falls_back():
    with FakeLLM([("status", 529)]) as bad, FakeLLM(["fine"]) as good:
        router = LLMRouter(
            [
                ModelSpec(name="claude", backend="anthropic", model="c", base_url=f"http://127.0.0.1:{bad.port}"),
                spec("backup", good.base_url),
            ]
        )
        assert router.complete(MESSAGES).model == "backup"


def test_a_zero_budget_means_local_models_only():
    router = LLMRouter(
        [spec("cloud", "http://x/v1"), ModelSpec(name="tiny", backend="local", locality="local")],
        policy=RouterPolicy(budgets={"frozen": 0.0}),
    )
    assert [m.name for m in router.chain(project="frozen")] == ["tiny"]


def test_an_offline_model_that_cannot_load_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("CONTEXTLAB_LOCAL_GGUF", str(tmp_path / "missing.gguf"))
    monkeypatch.setenv("CONTEXTLAB_MODEL_CACHE", str(tmp_path / "cache"))
    with FakeLLM(["from the cloud"]) as llm:
        usage = MemoryUsage()
        router = LLMRouter(
            [ModelSpec(name="tiny", backend="local", locality="local"), spec("cloud", llm.base_url)], usage=usage
        )
        assert router.complete(MESSAGES).text == "from the cloud"
    assert usage.records[0].model == "tiny" and not usage.records[0].ok and "missing.gguf" in usage.records[0].error
