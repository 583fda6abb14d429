"""Worked examples: accepted suggestions from a real state store and pairs generated from a real DuckDB file."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from contextlab.extension.copilot_records import CopilotRecords
from contextlab.providers.base import ProviderError
from contextlab.providers.examples import ExamplesProvider
from contextlab.state import StateStore
from contextlab.workspace import create_demo_workspace


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_demo_workspace(tmp_path_factory.mktemp("ws")) / "data" / "shop.duckdb"


@pytest.fixture()
def records(tmp_path: Path) -> CopilotRecords:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    return CopilotRecords(store)


def _suggest(records: CopilotRecords, request: str, code: str, *feedback: dict) -> str:
    sid = uuid.uuid4().hex
    records.add_suggestion(
        {
            "id": sid,
            "target": "sql",
            "request": request,
            "code": code,
            "valid": True,
            "model": "m",
            "prompt_version": "builtin",
        },
        "ada",
    )
    for item in feedback:
        records.add_feedback({"suggestion_id": sid, **item}, "ada")
    return sid


def test_generated_examples_match_the_request(shop: Path) -> None:
    provider = ExamplesProvider(None, {"shop": shop})
    page = provider.search("How many customers are from France?", k=3)
    assert page.pool >= 80
    assert page.examples[0].source == "workspace" and page.examples[0].database == "shop"
    assert all("FROM customers" in e.code for e in page.examples)
    grouped = provider.search("customers in each country", k=1).examples[0]
    assert grouped.code == "SELECT country, count(*) AS n FROM customers GROUP BY country ORDER BY n DESC"
    scores = [e.score for e in page.examples]
    assert scores == sorted(scores, reverse=True)
    revenue = provider.search("revenue by customer country", k=1).examples[0]
    assert "JOIN customers g" in revenue.code and "country" in revenue.code


def test_accepted_edited_rejected_and_deleted(shop: Path, records: CopilotRecords) -> None:
    _suggest(records, "orders shipped to each country", "SELECT 1 AS accepted", {"kind": "accepted"})
    _suggest(
        records,
        "count orders per status please",
        "SELECT status FROM orders",
        {"kind": "edited", "executed_code": "SELECT status, count(*) FROM orders GROUP BY status"},
    )
    _suggest(records, "orders per status rejected", "SELECT 'rejected'", {"kind": "rejected"})
    _suggest(records, "orders per status deleted", "SELECT 'deleted'", {"kind": "accepted"}, {"kind": "deleted"})
    provider = ExamplesProvider(records.store, {"shop": shop})
    accepted = provider.search("orders per status", k=10, source="accepted").examples
    codes = {e.code for e in accepted}
    assert codes == {"SELECT 1 AS accepted", "SELECT status, count(*) FROM orders GROUP BY status"}
    # New feedback is seen on the next search (the pool is keyed by the newest feedback id).
    _suggest(records, "orders per status later", "SELECT 'later'", {"kind": "ran", "succeeded": True})
    assert "SELECT 'later'" in {e.code for e in provider.search("orders per status", k=10, source="accepted").examples}
    mixed = provider.search("count orders per status please", k=1).examples[0]
    assert mixed.source == "accepted"  # the team's own answer beats a generated one


def test_bad_input(shop: Path) -> None:
    provider = ExamplesProvider(None, {"shop": shop})
    with pytest.raises(ProviderError, match="unknown database 'nope'"):
        provider.search("x", database="nope")
    with pytest.raises(ProviderError, match="query is empty"):
        provider.search("   ")
    assert provider.search("anything", target="python").examples == []
    assert ExamplesProvider(None, {"gone": shop.parent / "missing.duckdb"}).search("count").examples == []
