"""Delta fine-tuning end to end with real parts: a SQLite state store filled through CopilotRecords, the real
offline model (SmolLM2-135M) trained with PEFT LoRA for two steps, a real MLflow store and registry in a tmp
folder, and the router serving the registered adapter.

The base model comes from the shared dequantised cache (the one `LocalModelBackend` uses; built on first use,
25-40 s); `$CONTEXTLAB_MODEL_CACHE` points at a tmp folder that links to it, so downloaded adapters stay in tmp.
One adapter is trained per module and shared by the tests.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from contextlab.copilot.adapters import adapter_reference, resolve_adapter
from contextlab.copilot.finetune import (
    METADATA_FILE,
    REGISTERED_NAME,
    Example,
    NoTrainingData,
    PromotionRule,
    TrainConfig,
    build_dataset,
    chat,
    compare,
    examples_from_feedback,
    feedback_examples,
    read_feedback,
    register_adapter,
    train_adapter,
)
from contextlab.copilot.llm import LLMError, LLMRouter, ModelSpec, make_backend
from contextlab.copilot.local import (
    ENV_CACHE,
    AdapterMismatch,
    LocalModelBackend,
    check_cache,
    default_cache_dir,
    find_gguf,
    gguf_sha256,
)
from contextlab.extension.copilot_records import CopilotRecords
from contextlab.state import StateStore

MODEL = "smollm2-135m-instruct"
SCHEMA = [
    {
        "source": "sql__schema",
        "title": "Database schema",
        "text": "customers(id INTEGER, name VARCHAR, country VARCHAR)  -- 40 rows\n"
        "orders(id INTEGER, customer_id INTEGER, amount DOUBLE, status VARCHAR)  -- 300 rows",
    }
]
CONFIG = TrainConfig(steps=2, batch_size=1, max_length=128, r=4, alpha=8, dropout=0.05, seed=7)

# (request, suggested code, [(feedback kind, executed code, succeeded)])
FEEDBACK = [
    ("count the customers", "SELECT count(*) FROM customers", [("accepted", None, None)]),
    ("total revenue", "SELECT sum(amount) FROM orders", [("accepted", None, None)]),
    ("customers per country", "SELECT country, count(*) FROM customers GROUP BY country", [("accepted", None, None)]),
    ("the five biggest orders", "SELECT * FROM orders ORDER BY amount DESC LIMIT 5", [("accepted", None, None)]),
    (
        "orders per status",
        "SELECT status FROM orders",
        [
            ("edited", "SELECT status, count(*) FROM orders GROUP BY status", None),
            ("ran", "SELECT status, count(*) FROM orders GROUP BY status", True),
        ],
    ),
    ("Count  the customers?", "SELECT count(*)  FROM customers;", [("accepted", None, None)]),  # a duplicate
    ("drop everything", "SELECT 1", [("rejected", None, None)]),
    (
        "customer names",
        "SELECT name FROM customers",
        [("edited", "SELECT upper(name) FROM customers", None), ("reverted", "SELECT name FROM customers", None)],
    ),
    ("average order", "SELECT avg(amount) FROM orders", [("accepted", None, None), ("deleted", None, None)]),
    ("broken edit", "SELECT 1", [("edited", "SELEC oops", None), ("ran", "SELEC oops", False)]),
    ("never answered", "SELECT 2", []),
]


@pytest.fixture(scope="module", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tmp `$CONTEXTLAB_MODEL_CACHE` whose base model is a link to the shared dequantised cache."""
    shared = default_cache_dir(MODEL)
    if check_cache(shared, MODEL) is not None:  # first run on this machine: build the shared cache once
        builder = LocalModelBackend(MODEL, engine="transformers", cache_dir=shared)
        builder.load()
        builder.close()
    root = tmp_path_factory.mktemp("model-cache")
    (root / MODEL).symlink_to(shared, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ENV_CACHE, str(root))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("CONTEXTLAB_LOCAL_GGUF", raising=False)
        yield root


def fill(store: StateStore, feedback: list = FEEDBACK, target: str = "sql") -> None:
    records = CopilotRecords(store)
    for request, code, events in feedback:
        sid = uuid.uuid4().hex
        body = {
            "id": sid,
            "target": target,
            "request": request,
            "code": code,
            "valid": True,
            "model": "smollm2",
            "prompt_version": "copilot.sql@builtin",
            "context": SCHEMA,
            "project": "team",
        }
        records.add_suggestion(body, "ada")
        for kind, executed, succeeded in events:
            records.add_feedback(
                {"suggestion_id": sid, "kind": kind, "executed_code": executed, "succeeded": succeeded}, "ada"
            )


def new_store(folder: Path) -> StateStore:
    store = StateStore(f"sqlite:///{folder / 'state.db'}")
    store.migrate()
    return store


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> StateStore:
    store = new_store(tmp_path_factory.mktemp("state"))
    fill(store)
    return store


@pytest.fixture(scope="module")
def dataset(store: StateStore):
    examples, counts = feedback_examples(store.url)
    return build_dataset(examples, counts=counts, seed=CONFIG.seed)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list]:
    folder = tmp_path_factory.mktemp("adapter") / "adapter"
    steps: list[tuple[int, float]] = []
    metadata = train_adapter(dataset, folder, config=CONFIG, progress=False, on_step=lambda s, v: steps.append((s, v)))
    print(
        f"\nLoRA training: {metadata['training']['step_seconds']} s per step, losses {metadata['training']['losses']}"
    )
    return folder, metadata, steps


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def comparison(trained, dataset, tracking_uri: str) -> dict:
    folder, _, _ = trained
    result = compare(
        folder,
        dataset.validation,
        tracking_uri=tracking_uri,
        generate_cases=2,
        max_new_tokens=12,
        max_length=CONFIG.max_length,
    )
    print("\nbase vs adapter:", json.dumps({k: result[k] for k in ("base", "adapter", "better", "reason")}))
    return result


@pytest.fixture(scope="module")
def registered(trained, comparison: dict, tracking_uri: str) -> dict:
    folder, _, _ = trained
    return register_adapter(folder, comparison, tracking_uri=tracking_uri)


# -- data -------------------------------------------------------------------------------------------------------------


def test_accepted_and_edited_suggestions_become_examples_and_the_rest_is_counted(store: StateStore):
    examples, counts = feedback_examples(store.url)
    assert counts == {
        "suggestions": 11,
        "accepted": 5,
        "edited": 1,
        "rejected": 1,
        "reverted": 1,
        "deleted": 1,
        "undecided": 1,
        "edited_failed": 1,
        "edited_without_code": 0,
        "unknown_target": 0,
    }
    by_request = {e.request: e for e in examples}
    edited = by_request["orders per status"]
    assert edited.kind == "edited" and edited.answer == "SELECT status, count(*) FROM orders GROUP BY status"
    assert by_request["total revenue"].answer == "SELECT sum(amount) FROM orders"
    assert by_request["total revenue"].context == (("sql__schema", "Database schema", SCHEMA[0]["text"]),)
    assert not {"drop everything", "customer names", "average order", "broken edit"} & set(by_request)


def test_the_training_prompt_is_the_copilots_prompt(store: StateStore):
    from contextlab.copilot.engine import _ENV, SQL_TEMPLATE, ContextItem

    example = next(e for e in feedback_examples(store.url)[0] if e.request == "total revenue")
    messages = chat(example)
    assert messages[0] == {
        "role": "system",
        "content": _ENV.from_string(SQL_TEMPLATE).render(context=[ContextItem(**SCHEMA[0])], target="sql"),
    }
    assert messages[1] == {"role": "user", "content": "total revenue"}


def test_the_dataset_is_deduplicated_split_by_hash_and_fingerprinted(store: StateStore, dataset):
    assert dataset.counts["examples"] == 6 and dataset.counts["duplicates"] == 1 and dataset.counts["unique"] == 5
    train = {e.key for e in dataset.train}
    validation = {e.key for e in dataset.validation}
    assert train and validation and not train & validation and len(train | validation) == 5
    examples, counts = feedback_examples(store.url)  # read afresh: the same dataset
    again = build_dataset(examples, counts=counts, seed=CONFIG.seed)
    assert again.fingerprint == dataset.fingerprint and len(dataset.fingerprint) == 64
    assert build_dataset(feedback_examples(store.url)[0], seed=CONFIG.seed + 1).fingerprint != dataset.fingerprint
    # New feedback does not move old examples across the split.
    more = [Example("sql", f"question {i}", f"SELECT {i}") for i in range(40)]
    grown = build_dataset([*feedback_examples(store.url)[0], *more], seed=CONFIG.seed)
    assert {e.key for e in grown.train} >= train and {e.key for e in grown.validation} >= validation


def test_records_can_be_given_as_dicts():
    records = read_feedback(
        [
            {"target": "sql", "request": "count orders", "code": "SELECT count(*) FROM orders", "kind": "accepted"},
            {"target": "sql", "request": "bad", "code": "SELECT 1", "kind": "rejected"},
            {"target": "cobol", "request": "hello", "code": "DISPLAY 'HI'", "kind": "accepted"},
        ]
    )
    examples, counts = examples_from_feedback(records)
    assert [e.answer for e in examples] == ["SELECT count(*) FROM orders"]
    assert counts["rejected"] == 1 and counts["unknown_target"] == 1
    ran = [{"target": "sql", "request": "n", "code": "SELECT 1", "feedback": [{"kind": "ran", "succeeded": True}]}]
    assert examples_from_feedback(ran)[1]["undecided"] == 1
    assert examples_from_feedback(ran, implicit_accept=True)[0][0].kind == "accepted"  # a clean run, if you say so


def test_an_empty_feedback_store_says_what_to_do(tmp_path: Path):
    missing = tmp_path / "nowhere" / "state.db"
    assert read_feedback(f"sqlite:///{missing}") == [] and not missing.exists()  # looking creates nothing
    empty = new_store(tmp_path)
    examples, counts = feedback_examples(empty.url)
    with pytest.raises(NoTrainingData, match="no accepted or edited suggestions yet") as raised:
        build_dataset(examples, counts=counts)
    assert "Accept (or edit and run) some %%copilot suggestions first" in str(raised.value)
    fill(empty, [("bad", "SELECT 1", [("rejected", None, None)]), ("ok", "SELECT 2", [("accepted", None, None)])])
    examples, counts = feedback_examples(empty.url)
    with pytest.raises(
        NoTrainingData, match=r"only 1 usable example\(s\); at least 4 are needed.*left out: 1 rejected"
    ):
        build_dataset(examples, counts=counts)


def test_the_rest_api_serves_suggestions_with_their_feedback(tmp_path: Path):
    from tests.support.gateway import create_token
    from tests.support.server import start_server

    root = tmp_path / "root"
    root.mkdir()
    server = start_server(root, tmp_path / "home")
    try:
        fill(StateStore(f"sqlite:///{server.state_db}"), FEEDBACK[:2] + FEEDBACK[4:5])
        records = read_feedback(server.url, token=server.token)
        assert [len(r["feedback"]) for r in records] == [1, 1, 2] and records[2]["feedback"][0]["kind"] == "edited"
        examples, counts = examples_from_feedback(records)
        assert counts["accepted"] == 2 and counts["edited"] == 1
        viewer = create_token(server, "bob", ["*"], roles=["Viewer"])
        assert read_feedback(server.mcp_url, token=viewer) == []  # not an admin: only bob's own suggestions
    finally:
        server.stop()


# -- training, measuring, registering, serving ------------------------------------------------------------------------


def test_training_saves_the_adapter_with_metadata_that_rebuilds_it(trained, dataset):
    folder, metadata, steps = trained
    assert {"adapter_config.json", "adapter_model.safetensors", METADATA_FILE} <= {p.name for p in folder.iterdir()}
    saved = json.loads((folder / METADATA_FILE).read_text())
    assert saved == metadata
    gguf = find_gguf(MODEL)
    assert saved["base_model"] == MODEL and saved["base_gguf_file"] == gguf.name
    assert saved["base_gguf_sha256"] == gguf_sha256(gguf)
    assert set(saved["versions"]) >= {"torch", "transformers", "peft"}
    assert saved["lora"]["r"] == 4 and saved["lora"]["alpha"] == 8 and saved["lora"]["target_modules"]
    assert saved["training"]["steps"] == 2 and saved["training"]["max_length"] == 128 and saved["training"]["seed"] == 7
    assert saved["dataset"]["fingerprint"] == dataset.fingerprint and saved["dataset"]["train"] == len(dataset.train)
    assert [s for s, _ in steps] == [0, 1] and [v for _, v in steps] == saved["training"]["losses"]
    assert saved["training"]["answer_tokens"] > 0 and saved["training"]["seconds_per_step"] > 0


def test_training_is_deterministic(trained, dataset, tmp_path: Path):
    _, metadata, _ = trained
    again = train_adapter(
        dataset, tmp_path / "again", config=TrainConfig(**{**CONFIG.__dict__, "steps": 1}), progress=False
    )
    assert again["training"]["losses"] == metadata["training"]["losses"][:1]


def test_training_steps_are_bounded(dataset, tmp_path: Path):
    with pytest.raises(ValueError, match="steps must be between 1 and"):
        train_adapter(dataset, tmp_path / "x", config=TrainConfig(steps=100_000), progress=False)


def test_base_and_adapter_are_compared_on_held_out_examples(comparison: dict, dataset):
    for side in ("base", "adapter"):
        scores = comparison[side]
        assert scores["loss"] > 0 and scores["perplexity"] > 1 and scores["answer_tokens"] > 0
        assert 0 <= scores["exact_match"] <= 1 and 0 <= scores["similarity"] <= 1
    assert comparison["adapter"]["loss"] != comparison["base"]["loss"]  # two steps changed the model
    assert comparison["champion"] is None and "no adapter" in comparison["champion_note"].lower()
    assert comparison["better"] == PromotionRule()(comparison["adapter"], comparison["base"])
    assert len(comparison["examples"]) == min(2, len(dataset.validation))


def test_the_promotion_rule_is_a_parameter():
    base = {"loss": 1.0, "similarity": 0.5}
    assert PromotionRule()({"loss": 0.9, "similarity": 0.5}, base)
    assert not PromotionRule()({"loss": 0.9, "similarity": 0.4}, base)
    assert PromotionRule(similarity_tolerance=0.2)({"loss": 0.9, "similarity": 0.4}, base)
    assert not PromotionRule(min_loss_drop=0.2)({"loss": 0.9, "similarity": 0.9}, base)


def test_registration_logs_the_run_and_sets_the_aliases(trained, comparison: dict, registered: dict, tracking_uri):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run = client.get_run(registered["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["finetune.lora_r"] == "4" and run.data.params["finetune.steps"] == "2"
    assert run.data.metrics["adapter_loss"] == comparison["adapter"]["loss"]
    assert run.data.tags["contextlab.base_gguf_sha256"] == trained[1]["base_gguf_sha256"]
    artifacts = {a.path for a in client.list_artifacts(registered["run_id"])}
    assert {"adapter", METADATA_FILE, "comparison.json"} <= artifacts
    assert "MLmodel" in {Path(a.path).name for a in client.list_artifacts(registered["run_id"], "adapter")}
    version = client.get_model_version(REGISTERED_NAME, str(registered["version"]))
    assert alias("candidate", tracking_uri) == str(registered["version"]) and version.run_id == registered["run_id"]
    assert version.tags["base_gguf_sha256"] == trained[1]["base_gguf_sha256"]
    assert registered["champion"] == comparison["better"]  # champion only when it measured better
    print(f"\nregistered version {registered['version']}: {registered['reason']}")


def test_champion_moves_only_to_an_adapter_that_measured_better(trained, comparison, registered, tracking_uri):
    folder = trained[0]
    measured = {**comparison, "better": True, "champion_version": alias("champion", tracking_uri)}
    promoted = register_adapter(folder, measured, tracking_uri=tracking_uri)
    assert promoted["champion"] and alias("champion", tracking_uri) == str(promoted["version"])
    not_better = {**comparison, "better": False, "reason": "it did not measure better"}
    worse = register_adapter(folder, not_better, tracking_uri=tracking_uri)
    assert not worse["champion"] and worse["reason"].startswith("kept as candidate")
    assert alias("candidate", tracking_uri) == str(worse["version"])
    assert alias("champion", tracking_uri) == str(promoted["version"])
    unmeasured = {**comparison, "better": True, "champion_version": None}  # better than the base, champion unseen
    stale = register_adapter(folder, unmeasured, tracking_uri=tracking_uri)
    assert not stale["champion"] and "not measured against the current champion" in stale["reason"]
    assert alias("champion", tracking_uri) == str(promoted["version"])


def test_the_registry_champion_is_measured_too(trained, dataset, registered, tracking_uri):
    result = compare(
        trained[0], dataset.validation, tracking_uri=tracking_uri, generate_cases=0, max_length=CONFIG.max_length
    )
    assert result["champion"] is not None and result["champion_version"]
    # The champion is this very adapter (promoted above): a copy of it cannot beat it.
    assert result["champion"]["loss"] == pytest.approx(result["adapter"]["loss"])
    assert result["better_than_champion"] is False and result["better"] is False


def test_the_router_serves_the_registered_adapter(registered, tracking_uri, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    backend = make_backend(ModelSpec(name="tuned", backend="local", model="local+adapter@candidate", locality="local"))
    answer = backend.complete([{"role": "user", "content": "count the customers"}], max_tokens=8)
    assert answer.text.strip() and answer.completion_tokens > 0
    assert backend.adapter_path is not None and (backend.adapter_path / METADATA_FILE).is_file()
    assert backend.adapter_path.is_relative_to(Path(default_cache_dir("adapters")))  # downloaded once, into the cache
    assert backend.load_source == "cache" and backend.engine == "transformers"
    router = LLMRouter([ModelSpec(name="smollm2", backend="local", model=MODEL, locality="local")])
    routed = router.complete(
        [{"role": "user", "content": "count the customers"}], model="local+adapter@candidate", max_tokens=8
    )
    assert routed.model == "local+adapter@candidate" and routed.text == answer.text
    assert router.backend(router.models["local+adapter@candidate"]) is backend  # one loaded model per adapter
    with pytest.raises(LLMError, match="Unknown model 'gpt-9'"):
        router.complete([{"role": "user", "content": "hi"}], model="gpt-9")


def test_the_registered_version_is_an_mlflow_pyfunc_model(registered, tracking_uri, monkeypatch):
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{REGISTERED_NAME}@candidate")
    answers = model.predict(["count the customers"], params={"max_tokens": 4})
    assert len(answers) == 1 and answers[0].strip()


def test_adapter_names():
    assert adapter_reference("local+adapter@champion") == "@champion"
    assert adapter_reference("local+adapter:/srv/adapters/a1") == "/srv/adapters/a1"
    assert adapter_reference("smollm2") is None and adapter_reference(None) is None
    with pytest.raises(RuntimeError, match="say which adapter"):
        adapter_reference("local+adapter")


def test_a_missing_alias_says_what_to_do(tracking_uri: str, registered):
    with pytest.raises(RuntimeError, match=r"No adapter contextlab-local-adapter@nightly in the MLflow registry"):
        resolve_adapter("@nightly", tracking_uri=tracking_uri)


def test_an_adapter_for_another_gguf_file_is_refused(trained, tmp_path: Path):
    copy = tmp_path / "adapter"
    shutil.copytree(trained[0], copy)
    metadata = json.loads((copy / METADATA_FILE).read_text())
    metadata["base_gguf_sha256"] = "0" * 64
    (copy / METADATA_FILE).write_text(json.dumps(metadata))
    backend = LocalModelBackend(MODEL, adapter=copy)
    with pytest.raises(AdapterMismatch, match=r"was trained on .*\.gguf \(sha256 000000000000…\), but the installed"):
        backend.load()
    assert not backend.loaded


def alias(name: str, tracking_uri: str) -> str | None:
    """The registry version an alias points at, or None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        return str(client.get_model_version_by_alias(REGISTERED_NAME, name).version)
    except MlflowException:
        return None
