"""`contextlab provider new --from-openapi`: precise errors for bad specs, readable ruff-clean code, and a
provider generated from JupyterLab's real OpenAPI spec (shipped in the jupyterlab_server wheel), registered with
a running ContextLab server and called through the official MCP client against that server's own REST API."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import jsonschema
import jupyterlab_server
import pytest
import yaml
from mcp.shared.exceptions import MCPError

from contextlab.cli import main as cli_main
from contextlab.providers.base import ProviderError
from contextlab.providers.generate import GenerationError, openapi, render
from contextlab.providers.generate.package import load as load_package
from tests.support.gateway import call_tool, listed_names
from tests.support.server import REPO, error_text, mcp_session, start_server, structured, wait_for

JUPYTERLAB_SPEC = Path(jupyterlab_server.__file__).parent / "rest-api.yml"
THEMES = "@jupyterlab/apputils-extension:themes"


def spec_file(tmp_path: Path, document: dict | str, name: str = "spec.yaml") -> str:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False))
    return str(path)


def minimal(paths: dict | None = None, **extra) -> dict:
    doc = {
        "openapi": "3.0.3",
        "info": {"title": "Pets", "version": "1.0"},
        "servers": [{"url": "https://pets.test/v1"}],
    }
    doc["paths"] = paths or {"/pets": {"get": {"responses": {"200": {"description": "ok"}}}}}
    doc.update(extra)
    return doc


def ruff(path: Path) -> subprocess.CompletedProcess:
    config = REPO / "pyproject.toml"
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(config), str(path)],
        capture_output=True,
        text=True,
    )


def generate(tmp_path: Path, source: str, name: str = "pets", **options) -> tuple[Path, str]:
    model, _text, _kind = openapi.load(source, name=name, **options)
    code = render.render_openapi(model, name=name, source_label=Path(source).name)
    package = tmp_path / name
    package.mkdir(exist_ok=True)
    (package / "provider.py").write_text(code)
    return package, code


# -- bad and unsupported specs --------------------------------------------------------------------
def test_a_ref_cycle_is_named_precisely_and_does_not_hang(tmp_path):
    body = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/A"}}}}
    doc = minimal(
        {"/pets": {"post": {"requestBody": body, "responses": {"200": {"description": "ok"}}}}},
        components={"schemas": {"A": {"$ref": "#/components/schemas/B"}, "B": {"$ref": "#/components/schemas/A"}}},
    )
    started = time.monotonic()
    with pytest.raises(GenerationError) as info:
        openapi.load(spec_file(tmp_path, doc), name="pets")
    assert time.monotonic() - started < 5
    assert "$ref cycle: #/components/schemas/A -> #/components/schemas/B -> #/components/schemas/A" in str(info.value)


def test_a_recursive_schema_is_expanded_once_with_a_warning(tmp_path):
    node = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
        },
    }
    body = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Node"}}}, "required": True}
    doc = minimal(
        {
            "/trees": {
                "post": {"operationId": "plantTree", "requestBody": body, "responses": {"201": {"description": "ok"}}}
            }
        },
        components={"schemas": {"Node": node}},
    )
    model, _, _ = openapi.load(spec_file(tmp_path, doc), name="pets")
    schema = model.operations[0].body.schema
    assert schema["properties"]["children"]["items"] == {"description": "Recursive Node (not expanded)."}
    assert model.warnings == [
        "POST /trees requestBody.children: recursive schema #/components/schemas/Node -> #/components/schemas/Node; "
        "its inner occurrence accepts any value."
    ]


def test_missing_operation_ids_get_stable_names_and_collisions_are_resolved(tmp_path):
    model, _, _ = openapi.load(str(JUPYTERLAB_SPEC), name="jlab", base_url="http://localhost:8888/")
    tools = [op.tool for op in model.operations]
    assert "get_lab_api_settings" in tools and "get_lab_api_settings_schema_name" in tools
    assert {"put_lab_api_settings_schema_name", "delete_lab_api_workspaces_space_name", "get_lab_api_licenses"} <= set(
        tools
    )
    assert all(op.operation_id is None for op in model.operations)
    assert [
        op.tool for op in openapi.load(str(JUPYTERLAB_SPEC), name="jlab", base_url="http://x/")[0].operations
    ] == tools
    assert max(len(t) for t in tools) <= 64  # the long listings path is shortened with a stable hash
    ok = {"200": {"description": "ok"}}
    doc = minimal(
        {
            "/pets": {
                "get": {"operationId": "listPets", "responses": ok},
                "post": {"operationId": "list_pets", "responses": ok},
            },
            "/pets/{id}": {"get": {"responses": ok}, "delete": {"operationId": "close", "responses": ok}},
            "/pets/{id}/": {"get": {"responses": ok}},
        }
    )
    model, _, _ = openapi.load(spec_file(tmp_path, doc), name="pets", check=False)
    assert [(op.tool, op.method_name) for op in model.operations] == [
        ("list_pets", "list_pets"),
        ("list_pets_2", "list_pets_2"),
        ("get_pets_id", "get_pets_id"),
        ("close", "op_close"),  # a method of the base class keeps its tool name, not its method name
        ("get_pets_id_2", "get_pets_id_2"),
    ]


@pytest.mark.parametrize(
    ("scheme", "phrase"),
    [
        ({"type": "oauth2", "flows": {"clientCredentials": {"tokenUrl": "https://x/t", "scopes": {}}}}, "oauth2"),
        ({"type": "openIdConnect", "openIdConnectUrl": "https://x/.well-known"}, "openIdConnect"),
        ({"type": "apiKey", "in": "cookie", "name": "sid"}, "apiKey in 'cookie'"),
        ({"type": "http", "scheme": "digest"}, "http scheme 'digest'"),
    ],
)
def test_unsupported_auth_schemes_are_refused_by_name_unless_ignored(tmp_path, scheme, phrase):
    doc = minimal(components={"securitySchemes": {"corp": scheme}}, security=[{"corp": []}])
    source = spec_file(tmp_path, doc)
    with pytest.raises(GenerationError) as info:
        openapi.load(source, name="pets", check=False)
    assert "GET /pets: unsupported security scheme 'corp': " + phrase in str(info.value)
    assert "--ignore-auth-scheme" in str(info.value)
    model, _, _ = openapi.load(source, name="pets", ignore_schemes=["corp"], check=False)
    assert model.operations[0].auth == [] and model.schemes == []


def test_a_supported_alternative_is_chosen_over_an_unsupported_one(tmp_path):
    schemes = {"oauth": {"type": "oauth2", "flows": {}}, "key": {"type": "apiKey", "in": "header", "name": "X-Key"}}
    doc = minimal(components={"securitySchemes": schemes}, security=[{"oauth": []}, {"key": []}, {}])
    model, _, _ = openapi.load(spec_file(tmp_path, doc), name="pets", check=False)
    assert model.operations[0].auth == [["key"], []]  # anonymous access last
    assert [(s.key, s.env) for s in model.schemes] == [("key", "PETS_AUTH_KEY")]


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        ('swagger: "2.0"\ninfo: {title: t, version: "1"}\npaths: {}\n', "Swagger 2.0 (OpenAPI 2.0) document"),
        ("openapi: 3.0.0\ninfo: [unclosed\n", "not valid YAML or JSON (line 3, column 1)"),
        ('{"openapi": "3.0.0", ', "not valid YAML or JSON"),
        ("name: my-app\nversion: 2\ndependencies: [a, b]\n", "no `openapi` field (top-level keys: name, version"),
        ("- just\n- a list\n", "the file holds a list"),
        ("", "the file holds empty"),
        ('openapi: "2.5"\ninfo: {title: t, version: "1"}\npaths: {}\n', "OpenAPI 2.5 is not supported"),
        ('openapi: "3.1.0"\ninfo: {title: t, version: "1"}\n', "has no `paths`"),
    ],
)
def test_files_that_are_not_openapi_3_get_a_precise_error(tmp_path, content, phrase):
    with pytest.raises(GenerationError) as info:
        openapi.load(spec_file(tmp_path, content), name="x")
    assert phrase in str(info.value)


def test_references_outside_the_file_or_to_nothing_and_invalid_documents_are_refused(tmp_path):
    ok = {"200": {"description": "ok"}}
    external = minimal({"/a": {"get": {"parameters": [{"$ref": "common.yaml#/Limit"}], "responses": ok}}})
    with pytest.raises(GenerationError, match=r"points outside this file; external references are not supported"):
        openapi.load(spec_file(tmp_path, external), name="x")
    dangling = minimal({"/a": {"get": {"parameters": [{"$ref": "#/components/parameters/Nope"}], "responses": ok}}})
    with pytest.raises(GenerationError, match=r"'#/components/parameters/Nope' points to nothing"):
        openapi.load(spec_file(tmp_path, dangling), name="x")
    invalid = minimal({"/a": {"get": {"responses": {}}}})
    del invalid["info"]["version"]
    with pytest.raises(GenerationError) as info:
        openapi.load(spec_file(tmp_path, invalid), name="x")
    assert "$.info: 'version' is a required property" in str(info.value)
    assert "$.paths./a.get.responses" in str(info.value)
    with pytest.raises(GenerationError, match="only local files are read"):
        openapi.load("https://example.com/openapi.yaml", name="x")
    with pytest.raises(GenerationError, match="no such file"):
        openapi.load(str(tmp_path / "missing.yaml"), name="x")
    no_server = minimal()
    no_server["servers"] = [{"url": "/api/v3"}]
    with pytest.raises(GenerationError, match=r"no absolute server URL \(servers: /api/v3\); pass --base-url"):
        openapi.load(spec_file(tmp_path, no_server), name="x")


def test_unsupported_bodies_and_parameters_are_listed_together(tmp_path):
    ok = {"200": {"description": "ok"}}
    upload = {"content": {"multipart/form-data": {"schema": {"type": "object"}}}}
    deep = {"name": "filter", "in": "query", "style": "deepObject", "schema": {"type": "object"}}
    doc = minimal(
        {
            "/files": {"post": {"requestBody": upload, "responses": ok}},
            "/search": {"get": {"parameters": [deep], "responses": ok}},
            "/pets": {"get": {"responses": ok}},
        }
    )
    source = spec_file(tmp_path, doc)
    with pytest.raises(GenerationError) as info:
        openapi.load(source, name="x")
    message = str(info.value)
    assert "POST /files: request body media type(s) multipart/form-data not supported" in message
    assert "GET /search: parameter 'filter' (query, style deepObject, type object) cannot be sent" in message
    model, _, _ = openapi.load(source, name="x", exclude=["post_files", "/search"])
    assert [op.tool for op in model.operations] == ["get_pets"]
    with pytest.raises(GenerationError, match="no operations left after --include/--exclude"):
        openapi.load(source, name="x", include=["GET /nothing*"])


# -- generated code -------------------------------------------------------------------------------
RICH = {
    "openapi": "3.0.3",
    "info": {"title": "Pet Store", "version": "2.1", "description": "Pets, owners and adoptions."},
    "servers": [{"url": "https://{region}.pets.test/v1", "variables": {"region": {"default": "eu"}}}],
    "security": [{"key": []}],
    "paths": {
        "/pets": {
            "parameters": [{"name": "X-Request-ID", "in": "header", "schema": {"type": "string"}}],
            "get": {
                "operationId": "listPets",
                "summary": "List pets",
                "description": "All pets, newest first. See https://pets.test/docs/a-very-long-link-that-does-not"
                "-fit-on-any-reasonable-line-of-python-source-code-at-all-really for details about paging. " * 2,
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                    {
                        "name": "tags",
                        "in": "query",
                        "explode": False,
                        "schema": {"type": "array", "items": {"type": "string"}},
                    },
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["available", "sold"]}},
                    {"name": "from", "in": "query", "schema": {"type": "string", "format": "date"}},
                    {"name": "include-owner", "in": "query", "schema": {"type": "boolean", "default": False}},
                ],
                "responses": {"200": {"description": "ok"}},
            },
            "post": {
                "operationId": "createPet",
                "summary": 'Create a "pet" \\ quickly',
                "security": [{"bearer": []}, {"basic": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NewPet"}}},
                },
                "responses": {"201": {"description": "created"}},
            },
        },
        "/pets/{petId}": {
            "parameters": [{"name": "petId", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "get": {"summary": "One pet", "responses": {"200": {"description": "ok"}}},
            "patch": {
                "operationId": "renamePet",
                "security": [],
                "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}}},
                "responses": {"200": {"description": "ok"}},
            },
            "put": {
                "operationId": "import",
                "deprecated": True,
                "requestBody": {"content": {"text/plain": {"schema": {"type": "string"}}}},
                "responses": {"200": {"description": "ok"}},
            },
        },
    },
    "components": {
        "securitySchemes": {
            "key": {"type": "apiKey", "in": "query", "name": "api_key"},
            "bearer": {"type": "http", "scheme": "bearer"},
            "basic": {"type": "http", "scheme": "basic"},
        },
        "schemas": {
            "NewPet": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "example": "Rex"},
                    "weight": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
                    "nickname": {"type": "string", "nullable": True},
                },
            }
        },
    },
}


def test_generated_code_is_readable_ruff_clean_and_its_schemas_are_json_schema_2020_12(tmp_path):
    for name, source, options in [
        ("jlab", str(JUPYTERLAB_SPEC), {"base_url": "http://localhost:8888/"}),
        ("petstore", spec_file(tmp_path, RICH), {}),
    ]:
        package, code = generate(tmp_path, source, name, **options)
        result = ruff(package)
        assert result.returncode == 0, result.stdout + code
        subprocess.run([sys.executable, "-m", "py_compile", str(package / "provider.py")], check=True)
        provider = load_package(package, f"{name.capitalize()}Provider")
        for tool in provider.manifest().tools:
            jsonschema.Draft202012Validator.check_schema(tool.input_schema)
            assert tool.output_schema["properties"]["status"]["type"] == "integer"  # a SaaSRecord
    # Readable: one method per operation, docstring = summary + description, explicit typed parameters.
    assert '    @operation("GET", "/pets", auth=[["key"]])\n    async def list_pets(' in code
    assert 'WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1, "maximum": 100}, {"type": "null"}]})' in code
    assert 'status: Literal["available", "sold"] | None = None,' in code
    assert 'WithJsonSchema({"anyOf": [{"type": "string", "format": "date"}' in code and '"from": from_' in code
    assert '"tags": comma(tags)' in code
    assert '"X-Request-ID": x_request_id' in code
    assert '@operation("PUT", "/pets/{petId}", name="import", auth=[["key"]], content_type="text/plain")' in code
    assert "async def op_import(" in code and '"""Deprecated. PUT /pets/{petId}"""' in code
    assert '"""Create a "pet" \\\\ quickly"""' in code
    assert 'base_url = "https://eu.pets.test/v1"' in code
    assert '"key": ApiKey(name="api_key", location="query", env="PETSTORE_AUTH_KEY")' in code
    assert 'return await self.call(path={"petId": pet_id}, form=body)' in code
    provider = load_package(tmp_path / "petstore", "PetstoreProvider")
    schemas = {t.name: t.input_schema for t in provider.manifest().tools}
    body = schemas["petstore__create_pet"]["properties"]["body"]
    assert body["required"] == ["name"] and body["properties"]["weight"]["exclusiveMinimum"] == 0
    assert body["properties"]["nickname"]["type"] == ["string", "null"]
    assert schemas["petstore__create_pet"]["required"] == ["body"]
    annotations = {t.name: t.annotations for t in provider.manifest().tools}
    assert annotations["petstore__list_pets"]["readOnlyHint"] is True
    assert annotations["petstore__create_pet"]["readOnlyHint"] is False
    assert annotations["petstore__create_pet"]["openWorldHint"] is True


def test_requests_carry_parameters_bodies_and_the_credentials_of_the_chosen_scheme(tmp_path, monkeypatch):
    generate(tmp_path, spec_file(tmp_path, RICH), "petstore")
    provider = load_package(tmp_path / "petstore", "PetstoreProvider")
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/404"):
            return httpx.Response(404, json={"message": "no such pet"})
        return httpx.Response(200, json={"ok": True, "path": request.url.path})

    provider._client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    monkeypatch.setenv("PETSTORE_AUTH_KEY", "k-123")
    monkeypatch.setenv("PETSTORE_AUTH_BASIC", "ada:s3cret")

    async def run():
        listed = await provider.list_pets(
            limit=5, tags=["a", "b"], status="sold", include_owner=True, x_request_id="r1"
        )
        created = await provider.create_pet(body={"name": "Rex"})
        renamed = await provider.rename_pet(pet_id=7, body={"name": "Max"})
        with pytest.raises(ProviderError) as missing:
            await provider.get_pets_pet_id(pet_id=404)
        return listed, created, renamed, missing.value

    listed, created, renamed, missing = asyncio.run(run())
    first, second, third, fourth = seen
    assert first.url.params.multi_items() == [
        ("limit", "5"),
        ("tags", "a,b"),
        ("status", "sold"),
        ("include-owner", "true"),
        ("api_key", "k-123"),
    ]
    assert first.headers["X-Request-ID"] == "r1"
    assert listed.operation == "list_pets" and listed.status == 200 and listed.data["ok"] is True
    assert "k-123" not in listed.url  # credentials in the query string stay out of the record
    assert second.headers["Authorization"] == "Basic " + base64.b64encode(b"ada:s3cret").decode()
    assert json.loads(second.content) == {"name": "Rex"} and created.method == "POST"
    assert third.content == b"name=Max" and "api_key" not in str(third.url)  # security: [] means anonymous
    assert renamed.path == "/pets/{petId}" and renamed.url == "https://eu.pets.test/v1/pets/7"
    assert str(missing) == 'GET https://eu.pets.test/v1/pets/404 answered HTTP 404 Not Found: {"message":"no such pet"}'
    assert fourth.url.params["api_key"] == "k-123"
    monkeypatch.delenv("PETSTORE_AUTH_KEY")
    with pytest.raises(ProviderError, match=r"list_pets needs credentials: set PETSTORE_AUTH_KEY \(scheme key\)"):
        asyncio.run(provider.list_pets())


def test_regenerating_refuses_to_overwrite_edited_code_unless_forced(tmp_path, capsys):
    source = spec_file(tmp_path, RICH)
    out = tmp_path / "ws" / "providers" / "pets"
    common = ["--no-register", "--url", "http://127.0.0.1:9/", "--token", "x"]
    assert cli_main(["provider", "new", "--from-openapi", source, "--name", "pets", "--out", str(out), *common]) == 0
    assert {p.name for p in out.iterdir()} >= {
        "__init__.py",
        "provider.py",
        "manifest.json",
        "openapi.yaml",
        "README.md",
    }
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["context_types"] == ["SaaSRecord"] and len(manifest["tools"]) == 5
    with pytest.raises(SystemExit, match="already holds a generated provider"):
        cli_main(["provider", "new", "--from-openapi", source, "--name", "pets", "--out", str(out), *common])
    assert cli_main(["provider", "regenerate", str(out), *common]) == 0  # unedited: regenerated
    edited = (out / "provider.py").read_text().replace("List pets", "List every pet")
    (out / "provider.py").write_text(edited)
    with pytest.raises(SystemExit, match="was edited since it was generated"):
        cli_main(["provider", "regenerate", str(out), *common])
    assert (out / "provider.py").read_text() == edited
    assert cli_main(["provider", "regenerate", str(out), "--force", *common]) == 0
    assert (out / "provider.py.bak").read_text() == edited
    assert "List every pet" not in (out / "provider.py").read_text()
    capsys.readouterr()
    assert cli_main(["provider", "new", "--from-openapi", source, "--dry-run", *common]) == 0
    dry = capsys.readouterr().out
    assert "pet_store__list_pets(limit, tags, status, from_, include_owner, x_request_id)  GET /pets" in dry
    assert "PET_STORE_AUTH_KEY" in dry
    with pytest.raises(SystemExit, match="--auth nope=…: no operation uses a scheme 'nope'"):
        cli_main(["provider", "new", "--from-openapi", source, "--auth", "nope=1", "--dry-run", *common])


def test_the_commands_have_help():
    for command in (["provider"], ["provider", "new"], ["provider", "regenerate"]):
        result = subprocess.run(
            [sys.executable, "-m", "contextlab", *command, "--help"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and "usage: contextlab provider" in result.stdout
    text = " ".join(result.stdout.split())
    assert "--from-openapi SPEC" in text and "edited by hand is only overwritten with --force" in text


# -- end to end: JupyterLab's own REST API --------------------------------------------------------
@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One Jupyter server: it runs ContextLab (the gateway) and JupyterLab's REST API (the SaaS being wrapped)."""
    root = tmp_path_factory.mktemp("openapi-root")
    home = tmp_path_factory.mktemp("openapi-home")
    server = start_server(root, home, extra_args=["--ContextLab.providers=logs"])
    server.work = tmp_path_factory.mktemp("openapi-work")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def jlab(lab):
    """The provider generated by the real CLI (a subprocess) and registered with the running server."""
    out = lab.work / "providers" / "jlab"
    command = [
        sys.executable, "-m", "contextlab", "provider", "new",
        "--from-openapi", JUPYTERLAB_SPEC.as_uri(),
        "--name", "jlab",
        "--base-url", lab.url,
        "--header-env", "Authorization=JLAB_TEST_AUTH",
        "--out", str(out),
        "--url", lab.url, "--token", lab.token,
    ]  # fmt: skip
    env = {**lab.env, "JLAB_TEST_AUTH": f"token {lab.token}"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=lab.work)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Registered as jlab" in result.stdout
    assert wait_for(lambda: "jlab__get_lab_api_settings" in tool_names(lab), timeout=60), lab.log_text()[-3000:]
    return out


tool_names = listed_names
call = call_tool


def test_the_provider_is_registered_from_its_manifest_with_encrypted_secrets(lab, jlab):
    record = lab.api("GET", "contextlab/api/registry/jlab").json()
    assert record["source"] == "provider" and record["transport"] == "stdio"
    assert record["command"][1:] == ["-m", "contextlab.providers.serve", "jlab.provider:JlabProvider"]
    assert record["secrets"]["env"] == ["JLAB_HEADER_AUTHORIZATION"]
    assert lab.token not in json.dumps(record)  # only secret names leave the registry
    assert "context: SaaSRecord" in record["description"]
    code = (jlab / "provider.py").read_text()
    assert lab.token not in code and 'secret_headers = {"Authorization": "JLAB_HEADER_AUTHORIZATION"}' in code
    assert ruff(jlab).returncode == 0


def test_tools_are_listed_with_schemas_from_parameters_and_bodies(lab, jlab):
    async def run():
        async with mcp_session(lab.mcp_url, lab.token) as client:
            return {t.name: t for t in (await client.list_tools()).tools if t.name.startswith("jlab__")}

    tools = anyio.run(run)
    assert len(tools) == 12
    put = tools["jlab__put_lab_api_settings_schema_name"]
    assert put.description.startswith("Override the settings data for a given schema")
    assert put.input_schema["required"] == ["schema_name", "body"]
    assert put.input_schema["properties"]["body"]["properties"] == {"raw": {"type": "string"}}
    licenses = tools["jlab__get_lab_api_licenses"].input_schema["properties"]
    assert licenses["format"]["anyOf"][0]["enum"] == ["csv", "json", "markdown"]
    assert tools["jlab__get_lab_api_settings"].annotations.read_only_hint is True
    assert tools["jlab__put_lab_api_settings_schema_name"].annotations.read_only_hint is False


def test_operations_return_real_results_as_saas_records(lab, jlab):
    listed = structured(call(lab, "jlab__get_lab_api_settings", {}))
    assert listed["source"] == "jlab" and listed["operation"] == "get_lab_api_settings"
    assert listed["method"] == "GET" and listed["status"] == 200 and listed["encoding"] == "json"
    assert listed["url"] == f"{lab.url}lab/api/settings/" and listed["fetched_at"]
    ids = {entry["id"] for entry in listed["data"]["settings"]}
    assert THEMES in ids and len(ids) > 20
    one = structured(call(lab, "jlab__get_lab_api_settings_schema_name", {"schema_name": THEMES}))
    assert one["data"]["id"] == THEMES and one["path"] == "/lab/api/settings/{schema_name}"
    translations = structured(call(lab, "jlab__get_lab_api_translations", {}))
    assert translations["data"]["data"]["en"]["displayName"] == "English"


def test_a_write_passes_its_body_and_is_read_back(lab, jlab):
    raw = json.dumps({"theme-scrollbars": True, "adaptive-theme": False})
    written = structured(
        call(lab, "jlab__put_lab_api_settings_schema_name", {"schema_name": THEMES, "body": {"raw": raw}})
    )
    assert written["status"] == 204 and written["encoding"] == "empty" and written["data"] is None
    read = structured(call(lab, "jlab__get_lab_api_settings_schema_name", {"schema_name": THEMES}))
    assert read["data"]["raw"] == raw and read["data"]["settings"]["theme-scrollbars"] is True
    space = {"data": {"layout-restorer:data": {"main": {"current": "notebook:a.ipynb"}}}, "metadata": {"id": "review"}}
    assert (
        structured(call(lab, "jlab__put_lab_api_workspaces_space_name", {"space_name": "review", "body": space}))[
            "status"
        ]
        == 204
    )
    workspace = structured(call(lab, "jlab__get_lab_api_workspaces_space_name", {"space_name": "review"}))
    assert workspace["data"]["data"] == space["data"]
    assert (
        structured(call(lab, "jlab__delete_lab_api_workspaces_space_name", {"space_name": "review"}))["status"] == 204
    )


def test_api_errors_and_bad_arguments_are_tool_errors(lab, jlab):
    missing = error_text(call(lab, "jlab__get_lab_api_settings_schema_name", {"schema_name": "no-such:plugin"}))
    assert "GET " in missing and "answered HTTP 404" in missing
    bad = error_text(call(lab, "jlab__get_lab_api_licenses", {"format": "pdf"}))
    assert "format" in bad

    async def unknown():
        async with mcp_session(lab.mcp_url, lab.token) as client:
            with pytest.raises(MCPError) as info:
                await client.call_tool("jlab__no_such_operation", {})
            return info.value

    assert "Unknown tool 'jlab__no_such_operation'" in str(anyio.run(unknown))


def test_regenerate_updates_the_registration_and_keeps_the_secrets(lab, jlab, capsys):
    args = ["--url", lab.url, "--token", lab.token]
    assert cli_main(["provider", "regenerate", str(jlab), "--exclude", "*licenses*", *args]) == 0
    assert "Regenerated provider jlab (11 tools)" in capsys.readouterr().out
    assert wait_for(lambda: "jlab__get_lab_api_licenses" not in tool_names(lab), timeout=60)
    record = lab.api("GET", "contextlab/api/registry/jlab").json()
    assert record["secrets"]["env"] == ["JLAB_HEADER_AUTHORIZATION"]
    assert structured(call(lab, "jlab__get_lab_api_translations", {}))["status"] == 200  # still authenticated
