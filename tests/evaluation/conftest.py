"""Shared BFCL data for the evaluation tests, loaded once per session (the files are read, never imported)."""

import collections
import importlib
import importlib.util
import json
import sys
import types

import pytest

from contextlab.evaluation import (
    DEFAULT_CATEGORIES,
    bfcl_data_dir,
    language_for_category,
    load_bfcl_suite,
    load_bfcl_tool_pool,
)

BFCL_MISSING = "bfcl-eval is not installed: pip install --no-deps bfcl-eval"


def _require_bfcl():
    if importlib.util.find_spec("bfcl_eval") is None:
        pytest.skip(BFCL_MISSING)


@pytest.fixture(scope="session")
def bfcl_suite():
    _require_bfcl()
    return load_bfcl_suite()


@pytest.fixture(scope="session")
def bfcl_pool():
    _require_bfcl()
    return load_bfcl_tool_pool()


@pytest.fixture(scope="session")
def bfcl_entries():
    """The raw BFCL question entries of the default categories, by id."""
    _require_bfcl()
    entries = {}
    for category in DEFAULT_CATEGORIES:
        with open(bfcl_data_dir() / f"BFCL_v4_{category}.json", encoding="utf-8") as handle:
            for line in handle:
                entry = json.loads(line)
                entries[entry["id"]] = entry
    return entries


@pytest.fixture(scope="session")
def bfcl_function_docs():
    """(language, function doc) for every function in every BFCL data file, read independently of the loader."""
    _require_bfcl()
    data = bfcl_data_dir()
    docs = []
    for path in sorted(data.glob("BFCL_v4_*.json")):
        if path.name == "BFCL_v4_format_sensitivity.json":
            continue  # lists other categories' case ids
        language = language_for_category(path.stem)
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                docs.extend((language, fn) for fn in json.loads(line).get("function", []))
    for path in sorted((data / "multi_turn_func_doc").glob("*.json")):
        with open(path, encoding="utf-8") as handle:
            docs.extend(("python", json.loads(line)) for line in handle)
    return docs


@pytest.fixture(scope="session")
def bfcl_ast_checker():
    """BFCL's own `ast_checker` function and its `Language` enum, loaded with one stub module.

    `ast_checker.py` imports `constants.model_config` only to read
    `MODEL_CONFIG_MAPPING[model].underscore_to_dot` (whether a model's handler turned "." in
    function names into "_"); that module imports every vendor's model handler and SDK
    (anthropic, openai, ...), which `pip install --no-deps` leaves out. The stub answers "no
    renaming" for every model. Everything else it imports (enums, type mappings, the Java and
    JavaScript type converters) is BFCL's real code.
    """
    _require_bfcl()
    before = set(sys.modules)
    stub = types.ModuleType("bfcl_eval.constants.model_config")
    stub.MODEL_CONFIG_MAPPING = collections.defaultdict(lambda: types.SimpleNamespace(underscore_to_dot=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "bfcl_eval.constants.model_config", stub)
        module = importlib.import_module("bfcl_eval.eval_checker.ast_eval.ast_checker")
        language = importlib.import_module("bfcl_eval.constants.enums").Language
        yield module.ast_checker, language
    for name in set(sys.modules) - before:
        if name.startswith("bfcl_eval"):
            del sys.modules[name]
