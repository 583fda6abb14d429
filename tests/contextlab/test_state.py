"""The control-plane store: migrations, manifests and the batching audit writer on real SQLite."""

from __future__ import annotations

import sqlalchemy as sa
from jsonschema import Draft202012Validator

from contextlab.providers.logs import LogBuffer, LogsProvider
from contextlab.providers.notebooks import NotebooksProvider
from contextlab.providers.sql import SQLProvider
from contextlab.state import AuditEntry, AuditWriter, StateStore, sqlite_url_for_workspace


def test_migrations_create_the_tables_and_are_idempotent(tmp_path):
    store = StateStore(sqlite_url_for_workspace(tmp_path / ".contextlab"))
    store.migrate()
    store.migrate()
    inspector = sa.inspect(store.engine)
    assert {
        "provider_manifests",
        "audit_log",
        "alembic_version",
        "upstream_servers",
        "api_tokens",
        "events",
        "prompt_versions",
        "prompt_labels",
        "copilot_suggestions",
        "copilot_feedback",
        "llm_usage",
        "pipeline_runs",
        "pipeline_schedules",
        "apps",
        "app_versions",
        "flow_instances",
    } <= set(inspector.get_table_names())
    assert {"prompt_version", "prompt_label"} <= {c["name"] for c in inspector.get_columns("audit_log")}
    with store.engine.connect() as con:
        assert con.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0006"
    store.close()


def test_audit_writer_batches_and_flushes_everything(tmp_path):
    store = StateStore(sqlite_url_for_workspace(tmp_path))
    store.migrate()
    writer = AuditWriter(store, batch_size=7)
    for i in range(50):
        writer.record(
            AuditEntry(principal="ada", method="tools/call", target=f"t{i % 3}", latency_ms=1.0, outcome="ok")
        )
    assert writer.flush()
    assert store.audit_count() == 50
    assert {r["target"] for r in store.audit(target="t1")} == {"t1"}
    writer.record(AuditEntry(principal="ada", method="tools/list", latency_ms=1.0, outcome="ok"))
    writer.close()  # closing flushes what is queued
    assert store.audit_count() == 51
    store.close()


def test_manifests_round_trip_with_valid_2020_12_schemas(tmp_path):
    providers = [NotebooksProvider(tmp_path), SQLProvider({}), LogsProvider(LogBuffer())]
    manifests = [p.manifest().model_dump(mode="json") for p in providers]
    for manifest in manifests:
        for tool in manifest["tools"]:
            assert tool["name"].startswith(manifest["name"] + "__")
            assert tool["input_schema"]["$schema"] == "https://json-schema.org/draft/2020-12/schema"
            Draft202012Validator.check_schema(tool["input_schema"])
            assert tool["output_schema"] is not None, tool["name"]
            Draft202012Validator.check_schema(tool["output_schema"])
    store = StateStore(sqlite_url_for_workspace(tmp_path))
    store.migrate()
    store.save_manifests(manifests)
    store.save_manifests(manifests)  # replace, not duplicate
    assert [m["name"] for m in store.manifests()] == ["logs", "notebooks", "sql"]
    query_tool = next(t for t in store.manifests()[2]["tools"] if t["name"] == "sql__query")
    validator = Draft202012Validator(query_tool["input_schema"])
    assert list(validator.iter_errors({"sql": "SELECT 1"})) == []
    assert list(validator.iter_errors({"sql": 1}))
    store.close()
