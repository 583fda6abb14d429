"""Edit distances, markers and DataFrame descriptions."""

from __future__ import annotations

import pandas as pd
import polars as pl
import pytest

from contextlab.kernels.edits import distance, find_marker, levenshtein, normalise
from contextlab.kernels.frames import describe_frame, frame_context, live_frames
from contextlab.kernels.session import cell_for

ID = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("a", "b", "edits"),
    [("", "", 0), ("abc", "abc", 0), ("kitten", "sitting", 3), ("", "abc", 3), ("flaw", "lawn", 2)],
)
def test_levenshtein(a, b, edits):
    assert levenshtein(a, b) == edits == levenshtein(b, a)


def test_distance_is_zero_for_equal_code_and_grows_with_edits():
    sql = "SELECT name FROM customers LIMIT 5"
    assert distance(sql, sql) == 0.0
    small, large = distance(sql, sql.replace("5", "3")), distance(sql, "SELECT 1")
    assert 0 < small < large <= 1
    assert levenshtein("a" * 3000, "b" * 3000) is None  # too long to count cheaply


def test_markers_and_normalisation():
    cell = f"%%duckdb\n-- copilot:{ID}\n-- COPILOT WARNING: nope\nSELECT 1;  \n"
    assert find_marker(cell) == ID and find_marker(f"# copilot:{ID}\nx = 1") == ID
    assert find_marker("SELECT 'copilot:abc'") is None
    assert normalise(cell, drop_lines=("-- COPILOT WARNING: nope",)) == "SELECT 1"


def test_cells_for_valid_and_invalid_suggestions():
    from contextlab.copilot.engine import Suggestion

    valid = Suggestion(ID, "sql", "q", "SELECT 1", True, "m", "p", [], [])
    assert cell_for(valid) == (f"%%duckdb\n-- copilot:{ID}\nSELECT 1", ("%%duckdb", f"-- copilot:{ID}"))
    invalid = Suggestion(ID, "sql", "q", "SELECT x", False, "m", "p", [], [], {"error": 'column "x"\nnot found'})
    cell, header = cell_for(invalid)
    assert header[2] == '-- COPILOT WARNING: this code did not pass validation: column "x" not found'
    assert cell.endswith("\nSELECT x") and normalise(cell, drop_lines=header) == "SELECT x"
    assert cell_for(Suggestion(ID, "sql", "q", "", False, "m", "p", [], [])) == (None, ())


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("python", f"# copilot:{ID}\nx = 1"),
        ("markdown", f"%%markdown\n<!-- copilot:{ID} -->\nx = 1"),
        ("yaml", f"%%markdown\n<!-- copilot:{ID} -->\n```yaml\nx = 1\n```"),
    ],
)
def test_other_languages_get_a_cell_that_runs_harmlessly(monkeypatch, language, expected):
    from contextlab.copilot import engine

    target = type("T", (), {"language": language})
    monkeypatch.setitem(engine.TARGETS, "demo", target)
    cell, header = cell_for(engine.Suggestion(ID, "demo", "q", "x = 1", True, "m", "p", [], []))
    assert cell == expected and find_marker(cell) == ID
    assert normalise(cell, drop_lines=header) == "x = 1"


def test_pandas_and_polars_frames_are_described_with_dtypes_shape_and_rows():
    pandas_frame = pd.DataFrame({"city": ["Oslo", "Lima", "Pune", "Kobe"], "pop": [1, 2, 3, 4]})
    text = describe_frame("cities", pandas_frame)
    assert text.startswith("pandas DataFrame `cities` in the notebook's kernel: 4 rows x 2 columns")
    assert "pop int64" in text and "Pune" in text and "Kobe" not in text  # 3 sample rows
    polars_frame = pl.DataFrame({"city": ["Oslo", "Lima"], "pop": [1, 2]})
    text = describe_frame("pl_cities", polars_frame)
    assert "polars DataFrame `pl_cities`" in text and "city String, pop Int64" in text and "'Lima'" in text
    wide = pd.DataFrame({f"c{i}": [i] for i in range(60)})
    assert "… (20 more)" in describe_frame("wide", wide)


def test_frames_named_in_the_request_come_first_and_private_names_are_skipped():
    namespace = {"a": pd.DataFrame({"x": [1]}), "b": pl.DataFrame({"y": [1]}), "_c": pd.DataFrame(), "n": 3}
    assert [name for name, _ in live_frames(namespace, request="totals of b", limit=5)] == ["b", "a"]
    assert [name for name, _ in live_frames(namespace, limit=1)] == ["a"]
    assert [i.title for i in frame_context(namespace)] == ["DataFrame a", "DataFrame b"]
