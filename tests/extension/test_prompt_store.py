"""The prompt store on its own: versions, labels, rollback history and the canary split."""

from __future__ import annotations

import pytest

from contextlab.extension.prompts import (
    DescriptionContent,
    PromptError,
    PromptStore,
    apply_content,
    canary_bucket,
)

BASE = DescriptionContent("Echo the text.", {"text": "Text."})
TOOL = {
    "name": "srv__echo",
    "description": "Echo the text.",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string", "description": "Text."}}},
}


def content(text: str) -> DescriptionContent:
    return DescriptionContent(text, {"text": "Text."})


def test_first_version_records_the_published_text_and_goes_live(store):
    prompts = PromptStore(store)
    assert prompts.resolve("srv__echo", "anyone") == (None, None)
    v2 = prompts.create_version("srv__echo", content("Say it back."), author="ann", message="m", baseline=BASE)
    assert v2.version == 2 and "-Echo the text." in v2.diff and "+Say it back." in v2.diff
    version, label = prompts.resolve("srv__echo", "anyone")
    assert (version.version, label) == (2, "stable")
    assert prompts.apply(TOOL, "anyone")["description"] == "Say it back."
    assert TOOL["description"] == "Echo the text."  # the catalog's definition is not mutated
    assert [v.author for v in prompts.versions("srv__echo")] == ["upstream", "ann"]


def test_rollback_walks_the_label_history_and_an_explicit_target_is_a_move(store):
    prompts = PromptStore(store)
    for i in range(2, 5):
        prompts.create_version("srv__echo", content(f"text {i}"), author="ann", baseline=BASE)
    assert prompts.rollback("srv__echo", author="bob").version == 3
    assert prompts.rollback("srv__echo", author="bob").version == 2
    assert prompts.rollback("srv__echo", author="bob", to=4).version == 4
    assert prompts.rollback("srv__echo", author="bob").version == 2  # back to where it was before the move
    assert prompts.resolve("srv__echo", "x")[0].content.description == "text 2"
    with pytest.raises(PromptError, match="has no version 9; its versions are 1–4"):
        prompts.rollback("srv__echo", author="bob", to=9)


def test_a_new_store_reads_the_same_state(store):
    PromptStore(store).create_version("srv__echo", content("persisted"), author="ann", baseline=BASE)
    assert PromptStore(store).resolve("srv__echo", "x")[0].content.description == "persisted"


def test_the_canary_share_matches_its_weight_and_is_sticky(store):
    prompts = PromptStore(store)
    prompts.create_version("srv__echo", content("canary"), author="ann", baseline=BASE, canary_weight=10)
    labels = [prompts.resolve("srv__echo", f"user-{i}")[1] for i in range(5000)]
    share = labels.count("canary") / len(labels)
    assert 0.085 < share < 0.115
    assert all(prompts.resolve("srv__echo", f"user-{i}")[1] == labels[i] for i in range(200))
    # Raising the weight keeps everyone already in the canary there (buckets do not move).
    prompts.set_label("srv__echo", "canary", 2, author="ann", weight=50)
    assert all(prompts.resolve("srv__echo", f"user-{i}")[1] == "canary" for i in range(5000) if labels[i] == "canary")
    assert 0 <= canary_bucket("srv__echo", "someone") < 10_000


def test_parameter_descriptions_apply_without_touching_other_schema(store):
    prompts = PromptStore(store)
    prompts.create_version(
        "srv__echo", DescriptionContent("Echo.", {"text": "What to echo."}), author="ann", baseline=BASE
    )
    applied = prompts.apply(TOOL, "x")
    assert applied["inputSchema"]["properties"]["text"] == {"type": "string", "description": "What to echo."}
    assert TOOL["inputSchema"]["properties"]["text"]["description"] == "Text."
    cleared = apply_content(TOOL, DescriptionContent("Echo.", {"text": ""}))
    assert "description" not in cleared["inputSchema"]["properties"]["text"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.create_version("bad name!", content("x"), author="a", baseline=BASE), "must match"),
        (lambda p: p.create_version("srv__new", content("x"), author="a"), "no baseline"),
        (lambda p: p.create_version("srv__echo", content("x"), author="a", labels=("Bad",), baseline=BASE), "Label"),
        (lambda p: p.set_label("srv__echo", "stable", 1, author="a"), "no versions"),
        (lambda p: p.delete_label("srv__echo", "canary", author="a"), "has no label"),
    ],
)
def test_invalid_requests_raise_precise_errors(store, call, message):
    prompts = PromptStore(store)
    with pytest.raises(PromptError, match=message):
        call(prompts)
    assert prompts.summary() == {}
