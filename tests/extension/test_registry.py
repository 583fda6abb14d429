"""The upstream registry: manifest schema and parsing, secrets at rest, CRUD on a real store, and the OpenAPI doc."""

from __future__ import annotations

import ast
import json
import os
import re
import sqlite3
import stat
from pathlib import Path

import jsonschema
import pytest
import yaml

from contextlab.extension.registry import (
    Registry,
    RegistryError,
    SecretBox,
    UpstreamSpec,
    generate_manifest_schema,
    manifest_schema,
    parse_manifest,
)
from contextlab.state import StateStore

EXTENSION = Path(__file__).resolve().parents[2] / "extension"
SCHEMA_FILE = EXTENSION / "schemas" / "registry-manifest.schema.json"
OPENAPI_FILE = EXTENSION / "openapi.yaml"
APP_FILE = EXTENSION / "app.py"

ENV_SECRET = "env-s3cret-value-1f2e"
HEADER_SECRET = "header-s3cret-value-9a8b"
TOKEN_SECRET = "bearer-s3cret-token-7c6d"


# -- manifest schema ------------------------------------------------------------------------------
def test_shipped_schema_equals_the_generated_one():
    shipped = json.loads(SCHEMA_FILE.read_text())
    assert shipped == generate_manifest_schema(), (
        "extension/schemas/registry-manifest.schema.json is stale: regenerate it from generate_manifest_schema()"
    )
    assert manifest_schema() == shipped  # the packaged resource is the same file


def test_shipped_schema_is_a_valid_draft_2020_12_schema():
    schema = json.loads(SCHEMA_FILE.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = {"version": 1, "servers": [{"name": "files", "transport": "stdio", "command": ["mcp-files"]}]}
    assert list(validator.iter_errors(good)) == []
    assert list(validator.iter_errors({"version": 2, "servers": []}))
    assert list(validator.iter_errors({**good, "extra": True}))
    assert list(validator.iter_errors({"version": 1, "servers": [{"name": "files"}]}))  # transport is required


# -- parse_manifest -------------------------------------------------------------------------------
YAML_MANIFEST = """\
version: 1
servers:
  - name: files
    description: Local files
    transport: stdio
    command: [mcp-files, --root, /data]
    env: {FILES_TOKEN: abc}
    retries: 3
    cacheable_tools: ["read_*"]
  - name: github
    transport: http
    url: https://mcp.example.com/mcp
    headers: {X-Org: acme}
    auth: {type: bearer, token: t0k}
    attributes: {org: acme, sensitivity: confidential, team: platform}
    enabled: false
"""


def test_parse_manifest_yaml():
    specs = parse_manifest(YAML_MANIFEST, source="servers.yaml")
    assert [s.name for s in specs] == ["files", "github"]
    files, github = specs
    assert files.transport == "stdio"
    assert files.command == ["mcp-files", "--root", "/data"]
    assert files.env == {"FILES_TOKEN": "abc"}
    assert files.retries == 3
    assert files.cacheable_tools == ["read_*"]
    assert files.enabled is True
    assert files.timeout_seconds == 30.0
    assert github.url == "https://mcp.example.com/mcp"
    assert github.auth is not None and github.auth.token == "t0k"
    assert github.headers == {"X-Org": "acme"}
    assert github.attributes.sensitivity == "confidential"
    assert github.attributes.org == "acme"
    assert github.attributes.model_dump()["team"] == "platform"
    assert github.enabled is False


def test_parse_manifest_json():
    document = {
        "version": 1,
        "servers": [
            {"name": "time", "transport": "stdio", "command": ["mcp-server-time"], "timeout_seconds": 5},
            {"name": "remote-1", "transport": "http", "url": "http://127.0.0.1:9/mcp", "protocol": "legacy"},
        ],
    }
    specs = parse_manifest(json.dumps(document), source="servers.json")
    assert [(s.name, s.transport) for s in specs] == [("time", "stdio"), ("remote-1", "http")]
    assert specs[0].timeout_seconds == 5.0
    assert specs[1].protocol == "legacy"
    assert specs == parse_manifest(yaml.safe_dump(document), source="servers.yaml")


def _manifest_error(text: str, source: str = "team/servers.yaml") -> str:
    with pytest.raises(RegistryError) as info:
        parse_manifest(text, source=source)
    assert info.value.status == 400
    message = str(info.value)
    assert source in message, message
    return message


def _one(server: str) -> str:
    return f"version: 1\nservers:\n  - {server}\n"


def test_manifest_unknown_field_is_named_with_its_path():
    message = _manifest_error(_one("{name: a, transport: stdio, command: [x], colour: blue}"))
    assert "$.servers[0]" in message
    assert "colour" in message


def test_manifest_duplicate_names():
    text = (
        "version: 1\nservers:\n"
        "  - {name: dup, transport: stdio, command: [x]}\n"
        "  - {name: dup, transport: stdio, command: [y]}\n"
    )
    message = _manifest_error(text)
    assert "$.servers[1].name" in message
    assert "duplicate" in message and "'dup'" in message


def test_manifest_http_without_url():
    message = _manifest_error(_one("{name: a, transport: http}"))
    assert "$.servers[0]" in message
    assert "url" in message


def test_manifest_http_with_non_http_url():
    message = _manifest_error(_one("{name: a, transport: http, url: 'ftp://example.com/mcp'}"))
    assert "$.servers[0]" in message and "http://" in message


def test_manifest_stdio_with_url():
    message = _manifest_error(_one("{name: a, transport: stdio, command: [x], url: 'http://example.com/mcp'}"))
    assert "$.servers[0]" in message
    assert "url" in message


def test_manifest_stdio_without_command():
    message = _manifest_error(_one("{name: a, transport: stdio}"))
    assert "$.servers[0]" in message and "command" in message


@pytest.mark.parametrize("name", ["Upper", "a__b", "9lives", "-dash", "x" * 49, "with space"])
def test_manifest_bad_name(name):
    message = _manifest_error(_one(json.dumps({"name": name, "transport": "stdio", "command": ["x"]})))
    assert "$.servers[0].name" in message
    assert repr(name) in message


def test_manifest_name_pattern_accepts_the_documented_alphabet():
    longest = "a" + "-9" * 23 + "z"  # 48 characters
    specs = parse_manifest(_one(json.dumps({"name": longest, "transport": "stdio", "command": ["x"]})))
    assert specs[0].name == longest


def test_manifest_yaml_syntax_error():
    message = _manifest_error("version: 1\nservers: [\n  - {name: a\n", source="broken.yaml")
    assert message.startswith("broken.yaml: not valid YAML/JSON")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("version: 2\nservers: []\n", "$.version"),
        ("servers: []\n", "version"),
        ("- just a list\n", "$:"),
        ("", "$:"),
    ],
)
def test_manifest_document_shape_errors(text, fragment):
    message = _manifest_error(text, source="shape.yaml")
    assert fragment in message


# -- SecretBox ------------------------------------------------------------------------------------
def test_secretbox_creates_a_private_key_file_and_round_trips(tmp_path):
    key_file = tmp_path / "outside" / "workspace" / "secret.key"
    box = SecretBox(key_file)
    assert key_file.is_file()
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    values = {"env": {"API_KEY": ENV_SECRET}, "headers": {}, "auth": TOKEN_SECRET}
    sealed = box.seal(values)
    assert ENV_SECRET not in sealed and TOKEN_SECRET not in sealed
    assert box.open(sealed) == values

    key = key_file.read_bytes()
    again = SecretBox(key_file)  # reuses the existing key, does not overwrite it
    assert key_file.read_bytes() == key
    assert again.open(sealed) == values


def test_secretbox_with_another_key_fails_with_advice(tmp_path):
    sealed = SecretBox(tmp_path / "a" / "secret.key").seal({"auth": TOKEN_SECRET})
    other_file = tmp_path / "b" / "secret.key"
    other = SecretBox(other_file)
    with pytest.raises(RegistryError) as info:
        other.open(sealed)
    assert info.value.status == 500
    message = str(info.value)
    assert str(other_file) in message
    assert "Restore the old key" in message and "re-register" in message
    assert TOKEN_SECRET not in message


# -- Registry on a real store ---------------------------------------------------------------------
@pytest.fixture
def registry(store, tmp_path):
    return Registry(store, SecretBox(tmp_path / "keys" / "nested" / "secret.key"))


@pytest.fixture
def events(registry):
    seen: list[tuple[str, str]] = []
    registry.listeners.append(lambda name, action: seen.append((name, action)))
    return seen


def http_spec(name: str = "remote", **extra) -> UpstreamSpec:
    return UpstreamSpec(
        name=name,
        transport="http",
        url="https://mcp.example.com/mcp",
        headers={"X-Api-Key": HEADER_SECRET},
        auth={"token": TOKEN_SECRET},
        **extra,
    )


def stdio_spec(name: str = "local", **extra) -> UpstreamSpec:
    return UpstreamSpec(
        name=name, transport="stdio", command=["mcp-local", "--flag"], env={"LOCAL_KEY": ENV_SECRET}, **extra
    )


SECRETS = (ENV_SECRET, HEADER_SECRET, TOKEN_SECRET)


def _assert_no_secrets(value) -> None:
    dump = json.dumps(value, default=str)
    for secret in SECRETS:
        assert secret not in dump, f"secret value leaked: {dump}"


def test_add_get_list_show_secret_names_never_values(registry, store, events):
    record = registry.add(http_spec(description="Remote"), source="cli")
    registry.add(stdio_spec())
    _assert_no_secrets(record)
    assert record["name"] == "remote"
    assert record["source"] == "cli"
    assert record["secrets"] == {"env": [], "headers": ["X-Api-Key"], "auth": "bearer"}

    got = registry.get("local")
    _assert_no_secrets(got)
    assert got["secrets"] == {"env": ["LOCAL_KEY"], "headers": [], "auth": None}
    assert got["command"] == ["mcp-local", "--flag"]
    assert got["source"] == "api"

    listed = registry.list()
    _assert_no_secrets(listed)
    assert [r["name"] for r in listed] == ["local", "remote"]
    assert events == [("remote", "added"), ("local", "added")]

    # The raw row holds ciphertext only.
    with sqlite3.connect(store.url.removeprefix("sqlite:///")) as db:
        rows = db.execute("SELECT * FROM upstream_servers").fetchall()
    assert len(rows) == 2
    _assert_no_secrets([list(row) for row in rows])


def test_connection_decrypts_and_builds_the_bearer_header(registry):
    registry.add(http_spec(timeout_seconds=7, protocol="legacy"))
    registry.add(stdio_spec(cwd="/srv"))
    remote = registry.connection("remote")
    assert remote.transport == "http"
    assert remote.url == "https://mcp.example.com/mcp"
    assert remote.headers == {"X-Api-Key": HEADER_SECRET, "Authorization": f"Bearer {TOKEN_SECRET}"}
    assert remote.protocol == "legacy"
    assert remote.timeout_seconds == 7
    local = registry.connection("local")
    assert local.command == ["mcp-local", "--flag"]
    assert local.env == {"LOCAL_KEY": ENV_SECRET}
    assert local.cwd == "/srv"
    assert local.headers == {}


def test_duplicate_add_is_a_conflict(registry, events):
    registry.add(stdio_spec())
    with pytest.raises(RegistryError) as info:
        registry.add(stdio_spec(description="again"))
    assert info.value.status == 409
    assert "'local'" in str(info.value)
    assert registry.get("local")["description"] == ""
    assert events == [("local", "added")]


def test_partial_update_keeps_secrets_unless_given(registry, events):
    registry.add(http_spec())
    record = registry.update("remote", {"description": "now described", "retries": 5})
    _assert_no_secrets(record)
    assert record["description"] == "now described"
    assert record["retries"] == 5
    assert record["secrets"] == {"env": [], "headers": ["X-Api-Key"], "auth": "bearer"}
    conn = registry.connection("remote")
    assert conn.headers == {"X-Api-Key": HEADER_SECRET, "Authorization": f"Bearer {TOKEN_SECRET}"}

    # A secret map given in the changes replaces the stored one; the others are kept.
    registry.update("remote", {"headers": {"X-Other": "o"}})
    assert registry.connection("remote").headers == {"X-Other": "o", "Authorization": f"Bearer {TOKEN_SECRET}"}
    registry.update("remote", {"auth": {"token": "rotated"}})
    assert registry.connection("remote").headers == {"X-Other": "o", "Authorization": "Bearer rotated"}
    registry.update("remote", {"auth": None})
    assert registry.connection("remote").headers == {"X-Other": "o"}
    assert registry.get("remote")["secrets"]["auth"] is None
    assert events == [("remote", "added")] + [("remote", "updated")] * 4


def test_update_without_changes_emits_nothing(registry, events):
    registry.add(stdio_spec())
    record = registry.update("local", {"description": ""})
    assert record["name"] == "local"
    assert events == [("local", "added")]


def test_update_validation_errors(registry):
    registry.add(stdio_spec())
    with pytest.raises(RegistryError) as info:
        registry.update("local", {"retries": 99})
    assert info.value.status == 400 and "retries" in str(info.value)
    with pytest.raises(RegistryError) as info:
        registry.update("local", {"url": "https://example.com/mcp"})
    assert info.value.status == 400
    assert registry.get("local")["retries"] == 2


def test_rename_is_refused(registry, events):
    registry.add(stdio_spec())
    with pytest.raises(RegistryError) as info:
        registry.update("local", {"name": "renamed"})
    assert info.value.status == 400
    assert "renamed" in str(info.value)
    assert [r["name"] for r in registry.list()] == ["local"]
    registry.update("local", {"name": "local", "description": "same name is fine"})
    assert registry.get("local")["description"] == "same name is fine"
    assert events == [("local", "added"), ("local", "updated")]


def test_set_enabled_toggles_and_filters_enabled_connections(registry, events):
    registry.add(stdio_spec())
    registry.add(http_spec())
    assert sorted(spec.name for spec, _ in registry.enabled_connections()) == ["local", "remote"]

    record = registry.set_enabled("local", False)
    assert record["enabled"] is False
    assert registry.get("local")["enabled"] is False
    enabled = registry.enabled_connections()
    assert [spec.name for spec, _ in enabled] == ["remote"]
    spec, public = enabled[0]
    assert spec.headers["Authorization"] == f"Bearer {TOKEN_SECRET}"  # decrypted for the router
    _assert_no_secrets(public)  # the record alongside it is the public one

    assert registry.set_enabled("local", True)["enabled"] is True
    assert sorted(spec.name for spec, _ in registry.enabled_connections()) == ["local", "remote"]
    assert events == [("local", "added"), ("remote", "added"), ("local", "disabled"), ("local", "enabled")]


def test_remove_then_404(registry, events):
    registry.add(stdio_spec())
    registry.remove("local")
    assert registry.list() == []
    for call in (
        lambda: registry.get("local"),
        lambda: registry.connection("local"),
        lambda: registry.remove("local"),
        lambda: registry.update("local", {"description": "x"}),
        lambda: registry.set_enabled("local", True),
    ):
        with pytest.raises(RegistryError) as info:
            call()
        assert info.value.status == 404
        assert "'local'" in str(info.value)
    assert events == [("local", "added"), ("local", "removed")]


def test_record_health_is_shown_and_ignores_unknown_servers(registry):
    registry.add(stdio_spec())
    registry.record_health("local", {"status": "up", "latency_ms": 1.5})
    registry.record_health("ghost", {"status": "down"})
    assert registry.get("local")["health"] == {"status": "up", "latency_ms": 1.5}
    assert [r["name"] for r in registry.list()] == ["local"]


def test_apply_manifest_reports_added_updated_unchanged(registry, events):
    first = parse_manifest(YAML_MANIFEST, source="servers.yaml")
    assert registry.apply_manifest(first) == {"added": ["files", "github"], "updated": [], "unchanged": []}
    assert registry.get("files")["source"] == "manifest"
    assert registry.get("github")["enabled"] is False

    assert registry.apply_manifest(parse_manifest(YAML_MANIFEST)) == {
        "added": [],
        "updated": [],
        "unchanged": ["files", "github"],
    }

    changed = YAML_MANIFEST.replace("token: t0k", "token: t0k-rotated")
    summary = registry.apply_manifest(parse_manifest(changed), source="gitops")
    assert summary == {"added": [], "updated": ["github"], "unchanged": ["files"]}
    assert registry.connection("github").headers["Authorization"] == "Bearer t0k-rotated"
    assert registry.get("github")["source"] == "gitops"
    assert registry.get("files")["source"] == "manifest"
    assert events == [("files", "added"), ("github", "added"), ("github", "updated")]


def test_apply_manifest_leaves_servers_missing_from_it_alone(registry):
    registry.add(stdio_spec())
    summary = registry.apply_manifest(parse_manifest(YAML_MANIFEST))
    assert summary["added"] == ["files", "github"]
    assert [r["name"] for r in registry.list()] == ["files", "github", "local"]


def test_secrets_survive_a_new_registry_on_the_same_key(registry, store, tmp_path):
    registry.add(http_spec())
    reopened = Registry(store, SecretBox(tmp_path / "keys" / "nested" / "secret.key"))
    assert reopened.connection("remote").headers["Authorization"] == f"Bearer {TOKEN_SECRET}"
    wrong_key = Registry(store, SecretBox(tmp_path / "other.key"))
    assert wrong_key.get("remote")["name"] == "remote"  # reads of public fields still work
    with pytest.raises(RegistryError) as info:
        wrong_key.connection("remote")
    assert info.value.status == 500


# -- OpenAPI ----------------------------------------------------------------------------------------
API_PREFIX = "/contextlab/api"


def _handler_routes() -> list[str]:
    """The route regexes `initialize_handlers` registers under /contextlab/api (read from the source)."""
    tree = ast.parse(APP_FILE.read_text())
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "initialize_handlers"]
    assert len(functions) == 1
    return [
        node.value
        for node in ast.walk(functions[0])
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(API_PREFIX)
    ]


def _split_groups(pattern: str) -> tuple[str, list[str]]:
    """`/registry/([a-z]+)/(enable|disable)` → ("/registry/{}/{}", ["[a-z]+", "enable|disable"])."""
    shape, groups, depth, current = "", [], 0, ""
    for char in pattern:
        if char == "(":
            depth += 1
            if depth == 1:
                current = ""
                continue
        elif char == ")":
            depth -= 1
            if depth == 0:
                shape += "{}"
                groups.append(current)
                continue
        if depth:
            current += char
        else:
            shape += char
    assert depth == 0, pattern
    return shape.removesuffix("/?"), groups


def _openapi() -> dict:
    return yaml.safe_load(OPENAPI_FILE.read_text())


def _path_shape(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def test_openapi_document_parses():
    document = _openapi()
    assert re.fullmatch(r"3\.1\.\d+", str(document["openapi"]))
    assert document["info"]["title"]
    assert isinstance(document["paths"], dict) and document["paths"]


def test_route_scan_finds_every_api_route_in_the_app():
    """The AST scan and a plain text scan of app.py agree, so a route added anywhere is seen."""
    scanned = set(re.findall(r"""r?["'](/contextlab/api[^"']*)["']""", APP_FILE.read_text()))
    routes = _handler_routes()
    assert len(routes) == len(set(routes)), "a route is registered twice"
    assert set(routes) == scanned
    assert len(routes) >= 14


def test_openapi_documents_every_rest_route():
    paths = _openapi()["paths"]
    documented = {_path_shape(path): path for path in paths}
    missing = []
    for route in _handler_routes():
        shape, _groups = _split_groups(route.removeprefix(API_PREFIX))
        if shape not in documented:
            missing.append(route)
    assert not missing, f"routes without an entry under `paths` in extension/openapi.yaml: {missing}"


def test_openapi_documents_no_route_the_app_does_not_serve():
    served = {_split_groups(route.removeprefix(API_PREFIX))[0] for route in _handler_routes()}
    extra = [path for path in _openapi()["paths"] if _path_shape(path) not in served]
    assert not extra, f"documented but not served: {extra}"


def _path_parameters(item: dict) -> dict[str, dict]:
    params = {}
    for source in [item, *(op for key, op in item.items() if isinstance(op, dict) and key != "parameters")]:
        for param in source.get("parameters") or []:
            if param.get("in") == "path":
                params[param["name"]] = param
    return params


def test_openapi_path_parameters_match_the_route_groups():
    paths = _openapi()["paths"]
    documented = {_path_shape(path): path for path in paths}
    for route in _handler_routes():
        shape, groups = _split_groups(route.removeprefix(API_PREFIX))
        path = documented[shape]
        names = re.findall(r"\{([^}]+)\}", path)
        assert len(names) == len(groups), route
        params = _path_parameters(paths[path])
        for name, group in zip(names, groups, strict=True):
            assert name in params, f"{path}: path parameter {name!r} is not declared"
            assert params[name].get("required") is True, f"{path}: {name!r} must be required"
            if re.fullmatch(r"[a-z]+(\|[a-z]+)+", group):  # a fixed choice: the doc must list the same values
                assert set(params[name]["schema"]["enum"]) == set(group.split("|")), path


def test_openapi_refs_resolve():
    document = _openapi()
    refs: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    assert refs
    for ref in refs:
        if not ref.startswith("#/"):  # a file shipped next to the document, e.g. the manifest schema
            assert (OPENAPI_FILE.parent / ref.split("#")[0]).is_file(), f"unresolved $ref {ref}"
            continue
        target = document
        for part in ref[2:].split("/"):
            assert isinstance(target, dict) and part in target, f"unresolved $ref {ref}"
            target = target[part]


def test_null_attributes_do_not_make_a_manifest_look_changed(tmp_path):
    store = StateStore(f"sqlite:///{tmp_path / 'nulls.db'}")
    store.migrate()
    registry = Registry(store, SecretBox(tmp_path / "keys" / "secret.key"))
    text = "version: 1\nservers:\n  - {name: a, transport: stdio, command: [x], attributes: {team: null}}\n"
    assert registry.apply_manifest(parse_manifest(text))["added"] == ["a"]
    assert registry.apply_manifest(parse_manifest(text)) == {"added": [], "updated": [], "unchanged": ["a"]}
