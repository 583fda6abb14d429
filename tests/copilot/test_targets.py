"""The generation targets beyond `sql` (python, test, er, flow, api, alert): each validator accepts a correct
sample, rejects broken ones with a precise error, and feeds that error back through `Copilot.generate`
(the model is a local OpenAI-compatible server with scripted replies; no ContextLab server is needed)."""

from __future__ import annotations

import functools
import re

import pytest

from contextlab.copilot import engine
from contextlab.copilot.engine import ContextItem, Copilot
from contextlab.copilot.llm import LLMRouter, MemoryUsage, ModelSpec
from contextlab.copilot.targets import (
    BUILTIN_TARGETS,
    AlertTarget,
    APITarget,
    ERTarget,
    FlowTarget,
    PytestTarget,
    PythonTarget,
)
from contextlab.copilot.targets.mermaid import MermaidError, parse_er_diagram
from contextlab.copilot.targets.promql import PromQLError, parse_promql
from tests.support.fake_llm import FakeLLM


def repair(target: str, broken: str, fixed: str) -> tuple[engine.Suggestion, FakeLLM]:
    """Generate through the engine with a model that answers `broken`, then `fixed`."""
    with FakeLLM([broken, fixed]) as llm:
        router = LLMRouter(
            [ModelSpec(name="scripted", backend="openai", model="m", base_url=llm.base_url, timeout_s=10)],
            usage=MemoryUsage(),
        )
        suggestion = Copilot(router, None, max_tokens=2000).generate(target, f"write the {target}")
    return suggestion, llm


def assert_repaired(suggestion: engine.Suggestion, llm: FakeLLM, broken: str, fragment: str) -> None:
    assert suggestion.valid and suggestion.repaired and len(suggestion.attempts) == 2, suggestion.validation
    assert not suggestion.attempts[0].ok and fragment in suggestion.attempts[0].error
    second = llm.requests[1]["messages"]
    assert second[-2] == {"role": "assistant", "content": broken}
    assert second[-1]["role"] == "user" and "That failed:" in second[-1]["content"]
    assert fragment in second[-1]["content"]


def assert_error(result: engine.Validation, fragment: str | tuple[str, ...]) -> None:
    assert not result.ok, result.detail
    for part in fragment if isinstance(fragment, tuple) else (fragment,):
        assert part in result.error, result.error


def fenced(lang: str, body: str) -> str:
    return f"```{lang}\n{body}\n```"


class FakeClient:
    """Just enough of ContextClient for `gather`: a fixed tool list and canned results."""

    def __init__(self, results: dict[str, dict]) -> None:
        self.results = results
        self.calls: list[str] = []

    def list_tools(self) -> list[str]:
        return list(self.results)

    def call_tool(self, name: str, arguments: dict) -> dict:
        self.calls.append(name)
        return self.results[name]


SCHEMA = {
    "databases": [
        {
            "name": "shop",
            "tables": [
                {"name": "customers", "row_count": 3, "columns": [{"name": "customer_id", "type": "INTEGER"}]},
            ],
        }
    ]
}


def test_the_builtin_targets_are_registered_in_the_engine():
    assert set(BUILTIN_TARGETS) == {"python", "test", "er", "flow", "api", "alert", "page"}
    assert set(BUILTIN_TARGETS) | {"sql"} <= set(engine.TARGETS)
    for name, factory in BUILTIN_TARGETS.items():
        target = factory()
        assert target.name == name and target.template_name == f"copilot.{name}"
        rendered = engine._ENV.from_string(target.template).render(
            context=[ContextItem("kernel", "A title", "some text")], target=name
        )
        assert "```" in rendered and "## A title\nsome text" in rendered


@pytest.mark.parametrize("name", ["python", "test", "er", "flow", "api", "alert", "page"])
def test_gather_without_a_client_or_without_the_tools_gives_no_context(name):
    target = BUILTIN_TARGETS[name]()
    assert target.gather(None) == []
    client = FakeClient({})
    assert target.gather(client) == [] and client.calls == []


def test_python_and_er_take_the_schema_when_the_endpoint_offers_it():
    client = FakeClient({"sql__schema": SCHEMA})
    items = PythonTarget().gather(client)
    assert [i.source for i in items] == ["sql__schema"] and "customers(customer_id INTEGER)" in items[0].text
    assert ERTarget().gather(FakeClient({"sql__schema": SCHEMA}))[0].title.startswith("Existing database schema")


# -- python --------------------------------------------------------------------------------------

GOOD_CELL = """\
import polars as pl

sales = pl.DataFrame({"region": ["n", "s", "n"], "amount": [1, 2, 3]})
by_region = sales.group_by("region").agg(pl.col("amount").sum())
by_region
"""


def test_python_accepts_a_clean_polars_cell():
    result = PythonTarget().validate(GOOD_CELL, None)
    assert result.ok, result.error
    assert result.detail["lint"].endswith("clean") and result.detail["execution"] == "not run (execute=False)"


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        ("x = (1,\nprint(x)\n", "SyntaxError at line 1, column 5: '(' was never closed"),
        ("import os\nimport json\nprint(json.dumps({}))\n", "F401 at line 1, column 8: `os` imported but unused"),
        ("def f():\n    unused = 1\n    return 2\n", "F841 at line 2, column 5: Local variable `unused`"),
        ("print(frame.head())\n", "F821 at line 1, column 7: Undefined name `frame`"),
        ("%timeit sum(range(10))\n", "Line 1 is an IPython magic"),
        (
            "import polars as pl\n\ndf = pl.read_csv('x.csv')\ndf.groupby('a').sum()\n",
            "Line 4, column 1: `df` is a polars.DataFrame, which has no `groupby`; use `group_by`.",
        ),
        (
            "import pandas as pd\n\ndf = pd.read_csv('x.csv')\ndf.with_columns(1)\n",
            "`df` is a pandas.DataFrame, which has no `with_columns`; use `assign`.",
        ),
    ],
    ids=["syntax", "F401", "F841", "F821", "magic", "polars-groupby", "pandas-with_columns"],
)
def test_python_rejects_broken_cells_precisely(code, fragment):
    assert_error(PythonTarget().validate(code, None), fragment)


def test_python_knows_the_kernel_names_and_frames():
    cell = "summary = df.group_by('a').len()\nsummary\n"
    assert not PythonTarget().validate(cell, None).ok  # `df` undefined without a kernel
    target = PythonTarget(namespace={"df": __import__("polars").DataFrame({"a": [1]})})
    assert target.validate(cell, None).ok
    pandas_df = PythonTarget(namespace={"df": __import__("pandas").DataFrame({"a": [1]})})
    error = pandas_df.validate(cell, None).error
    assert "`df` is a pandas.DataFrame, which has no `group_by`; use `groupby`." in error


def test_python_execution_runs_in_a_subprocess_after_the_preamble():
    target = PythonTarget(execute=True, preamble="import pandas as pd\nsales = pd.DataFrame({'x': [1, 2]})\n")
    ok = target.validate("total = sales['x'].sum()\nprint(total)\n", None)
    assert ok.ok and ok.detail["execution"]["stdout_tail"] == "3\n"
    failed = target.validate("total = sales['x'].sum()\nratio = total / sales['y'].sum()\n", None)
    assert not failed.ok
    assert failed.error.startswith("Running the cell raised KeyError at line 2: 'y'")
    slow = PythonTarget(execute=True, timeout_s=2).validate("while True:\n    pass\n", None)
    assert not slow.ok and "did not finish within 2 s" in slow.error


def test_python_repair_through_the_engine():
    broken = fenced("python", "import os\nimport pandas as pd\n\npd.DataFrame({'a': [1]})")
    fixed = fenced("python", "import pandas as pd\n\npd.DataFrame({'a': [1]})")
    suggestion, llm = repair("python", broken, fixed)
    assert_repaired(suggestion, llm, broken, "F401 at line 1, column 8: `os` imported but unused")
    assert suggestion.code.startswith("import pandas as pd")


# -- test ----------------------------------------------------------------------------------------

SLUGIFY = '''\
import re


def slugify(text):
    """Lower-case words joined by dashes."""
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))
'''

GOOD_TESTS = """\
import pytest

from subject import slugify


@pytest.mark.parametrize(("text", "slug"), [("Hello World", "hello-world"), ("  a--b ", "a-b")])
def test_slugify(text, slug):
    assert slugify(text) == slug


def test_empty_text_gives_an_empty_slug():
    assert slugify("") == ""
"""

FAILING_TESTS = """\
from subject import slugify


def test_keeps_case():
    assert slugify("Hello") == "Hello"


def test_joins_words():
    assert slugify("a b") == "a-b"
"""


def test_tests_that_pass_against_the_definition_are_accepted():
    result = PytestTarget(SLUGIFY).validate(GOOD_TESTS, None)
    assert result.ok, result.error
    assert result.detail["tests"] == 3 and "test_empty_text_gives_an_empty_slug" in result.detail["passed"]


@pytest.mark.parametrize(
    ("tests", "fragment"),
    [
        (FAILING_TESTS, "1 of 2 tests failed:\ntest_keeps_case failed: AssertionError: assert 'hello' == 'Hello'"),
        (
            "from subject import slugify\nimport not_a_module\n\n\ndef test_x():\n    assert slugify('a')\n",
            "Collecting test_subject.py failed: ModuleNotFoundError: No module named 'not_a_module'",
        ),
        ("from subject import slugfy\n", "`subject` has no `slugfy`; it defines `slugify`."),
        ("from subject import slugify\n\ndef test_x(:\n    pass\n", "test_subject.py: SyntaxError at line 3"),
        ("from subject import slugify\n\n\ndef check():\n    assert slugify('a') == 'a'\n", "No tests were collected"),
        ("def test_x():\n    assert True\n", "never import the code under test: add `from subject import slugify`"),
        (
            "from subject import slugify\n\n\ndef slugify(t):\n    return t\n\n\n"
            "def test_x():\n    assert slugify('a')\n",
            "The tests redefine `slugify` (line 4)",
        ),
    ],
    ids=["failing", "collect-error", "bad-import", "syntax", "no-tests", "no-import", "redefined"],
)
def test_broken_tests_are_reported_by_name(tests, fragment):
    assert_error(PytestTarget(SLUGIFY).validate(tests, None), fragment)


def test_a_hanging_test_is_stopped_by_the_timeout():
    tests = "import time\n\nfrom subject import slugify\n\n\ndef test_slow():\n    time.sleep(60)\n    assert slugify\n"
    result = PytestTarget(SLUGIFY, timeout_s=3).validate(tests, None)
    assert not result.ok and "did not finish within 3 s" in result.error


def notebook_double(x):
    return 2 * x


def test_the_function_source_comes_from_context_items_or_the_kernel_namespace():
    target = PytestTarget()
    target.use_context([ContextItem("kernel", "DataFrame df", "df: 3 rows"), ContextItem("kernel", "f", SLUGIFY)])
    assert target.function_source == SLUGIFY
    assert target.gather(None)[0].title == "Code under test (import slugify from subject)"
    from_kernel = PytestTarget(namespace={"notebook_double": notebook_double, "re": re})
    [offered] = from_kernel.gather(None)
    assert offered.title == "Functions defined in the notebook (import from subject: notebook_double)"
    assert offered.text.startswith("def notebook_double(x):")
    tests = "from subject import notebook_double\n\n\ndef test_double():\n    assert notebook_double(4) == 8\n"
    assert from_kernel.validate(tests, None).ok
    missing = PytestTarget(namespace={}).validate(tests, None)
    assert not missing.ok and "No definition of `notebook_double` was found in the notebook" in missing.error


def test_test_repair_through_the_engine(monkeypatch):
    monkeypatch.setitem(engine.TARGETS, "test", functools.partial(PytestTarget, SLUGIFY))
    broken, fixed = fenced("python", FAILING_TESTS), fenced("python", GOOD_TESTS)
    suggestion, llm = repair("test", broken, fixed)
    assert_repaired(suggestion, llm, broken, "test_keeps_case failed: AssertionError: assert 'hello' == 'Hello'")
    assert "def slugify(text):" in llm.requests[0]["messages"][0]["content"]


# -- er ------------------------------------------------------------------------------------------

DDL = """\
CREATE TABLE customers (customer_id INTEGER PRIMARY KEY, name VARCHAR NOT NULL);
CREATE TABLE orders (
  order_id INTEGER PRIMARY KEY,
  customer_id INTEGER NOT NULL REFERENCES customers (customer_id),
  total DECIMAL(10, 2)
);
CREATE TABLE order_items (
  order_id INTEGER REFERENCES orders (order_id),
  sku VARCHAR,
  quantity INTEGER,
  PRIMARY KEY (order_id, sku)
);"""

DIAGRAM = """\
erDiagram
    customers ||--o{ orders : places
    orders ||--|{ order_items : contains
    customers {
        int customer_id PK
        varchar name
    }
    orders {
        int order_id PK
        int customer_id FK "who ordered"
        decimal total
    }
    order_items {
        int order_id PK, FK
        varchar sku PK
        int quantity
    }"""

GOOD_ER = f"The model:\n\n{fenced('sql', DDL)}\n\n{fenced('mermaid', DIAGRAM)}\n"


def er(ddl: str = DDL, diagram: str = DIAGRAM) -> str:
    return ERTarget().extract(f"{fenced('sql', ddl)}\n{fenced('mermaid', diagram)}")


def test_er_extract_keeps_both_blocks_and_a_matching_model_validates():
    code = ERTarget().extract(GOOD_ER)
    assert code == f"{fenced('sql', DDL)}\n\n{fenced('mermaid', DIAGRAM)}"
    result = ERTarget().validate(code, None)
    assert result.ok, result.error
    assert result.detail == {"tables": ["customers", "orders", "order_items"], "foreign_keys": 2, "relationships": 2}


@pytest.mark.parametrize(
    ("code", "fragment"),
    [
        (
            er(diagram=DIAGRAM.replace("    orders ||--|{ order_items : contains\n", "")),
            "FOREIGN KEY order_items(order_id) REFERENCES orders(order_id) has no relationship in the diagram",
        ),
        (
            er(ddl=DDL.replace("REFERENCES orders (order_id)", "REFERENCES purchases (order_id)")),
            ("DDL statement 3 (line 7: `CREATE TABLE order_items", "Catalog Error: Table with name purchases does not"),
        ),
        (
            er(ddl=DDL.replace("sku VARCHAR,", "sku VARCHAR,,")),
            'The DDL does not parse: Parser Error: syntax error at or near ","',
        ),
        (
            er(ddl=DDL + "\nINSERT INTO customers VALUES (1, 'Ada');"),
            "DDL statement 4 (line 13: `INSERT INTO customers",
        ),
        (
            er(diagram=DIAGRAM.replace("customers ||--o{ orders", "CUSTOMER ||--o{ orders")),
            "Entity `CUSTOMER` (Mermaid line 2) has no table in the DDL",
        ),
        (
            er(
                diagram=DIAGRAM.replace(
                    "  customers {\n        int customer_id PK\n        varchar name\n    }\n", ""
                ).replace("customers ||--o{ orders : places", "orders ||--|{ order_items : again")
            ),
            "Table `customers` in the DDL has no entity in the diagram",
        ),
        (
            er(diagram=DIAGRAM.replace("customers ||--o{ orders", "customers }o--o{ orders")),
            "puts 'zero or more' on the `customers` end",
        ),
        (
            er(diagram=DIAGRAM.replace("varchar name", "varchar full_name")),
            "Entity `customers` lists `full_name` (Mermaid line 6), but table `customers` has no such column",
        ),
        (
            er(diagram=DIAGRAM.replace("customers ||--o{ orders : places", "customers |--o{ orders : places")),
            "The erDiagram does not parse: Mermaid line 2: cannot parse relationship `customers |--o{ orders : places`",
        ),
        (
            er(diagram=DIAGRAM.replace("decimal total", "decimal(10,2) total")),
            "Mermaid line 11: attribute type `decimal(10,2)` may not contain `,`",
        ),
        (fenced("sql", DDL), "missing: ```mermaid"),
        (er(ddl="CREATE TABLE leak AS SELECT * FROM read_csv('/etc/passwd');"), "file system operations are disabled"),
    ],
    ids=[
        "missing-relationship",
        "ddl-catalog",
        "ddl-syntax",
        "insert",
        "entity-name",
        "missing-entity",
        "many-end",
        "bad-attribute",
        "mermaid-syntax",
        "mermaid-type",
        "no-mermaid",
        "file-access",
    ],
)
def test_er_rejects_mismatches_precisely(code, fragment):
    assert_error(ERTarget().validate(code, None), fragment)


def test_the_mermaid_parser_reads_the_er_grammar_subset():
    diagram = parse_er_diagram(
        "---\ntitle: shop\n---\nerDiagram\n  %% comment\n  direction LR\n"
        '  a[Alpha] |o..|{ "b c" : "owns"\n  a only one to zero or many d : x\n  "b c" { string id PK "key" }\n'
    )
    assert set(diagram.entities) == {"a", "b c", "d"} and diagram.entities["a"].alias == "Alpha"
    first, second = diagram.relationships
    assert (first.left_cardinality, first.right_cardinality, first.identifying) == ("zero or one", "one or more", False)
    assert (second.left_cardinality, second.right_cardinality) == ("exactly one", "zero or more")
    assert diagram.entities["b c"].attributes[0].keys == ["PK"] and diagram.direction == "LR"
    for text, message in [
        ("graph TD\n a-->b", "Mermaid line 1: expected `erDiagram`"),
        ("erDiagram\n a ||--o{ b", "Mermaid line 2: relationship `a ||--o{ b` needs a label"),
        ("erDiagram\n a {\n int x\n", "Mermaid line 2: the attribute block of `a` is never closed"),
        ("erDiagram\n a {\n price\n }", "Mermaid line 3: attribute `price` in `a` needs a type and a name"),
    ]:
        with pytest.raises(MermaidError, match=re.escape(message)):
            parse_er_diagram(text)


def test_er_repair_through_the_engine():
    broken = (
        f"{fenced('sql', DDL)}\n\n{fenced('mermaid', DIAGRAM.replace('    orders ||--|{ order_items : contains', ''))}"
    )
    suggestion, llm = repair("er", broken, GOOD_ER)
    assert_repaired(suggestion, llm, broken, "REFERENCES orders(order_id) has no relationship in the diagram")
    assert suggestion.code.startswith("```sql\nCREATE TABLE customers") and "```mermaid\nerDiagram" in suggestion.code


# -- flow ----------------------------------------------------------------------------------------

BPMN = """\
<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="Defs" targetNamespace="http://x">
  <bpmn:process id="order" name="Order handling" isExecutable="true">
    <bpmn:startEvent id="StartEvent_1"/>
    <bpmn:userTask id="Task_Review" name="Review order"/>
    <bpmn:exclusiveGateway id="Gateway_Approved" name="Approved?"/>
    <bpmn:scriptTask id="Task_Price" scriptFormat="python">
      <bpmn:script>total = sum(items)</bpmn:script>
    </bpmn:scriptTask>
    <bpmn:parallelGateway id="Gateway_Split"/>
    <bpmn:manualTask id="Task_Pack"/>
    <bpmn:intermediateCatchEvent id="Event_Wait">
      <bpmn:timerEventDefinition><bpmn:timeDuration>"PT1H"</bpmn:timeDuration></bpmn:timerEventDefinition>
    </bpmn:intermediateCatchEvent>
    <bpmn:parallelGateway id="Gateway_Join"/>
    <bpmn:endEvent id="EndEvent_1"/>
    <bpmn:sequenceFlow id="Flow_1" sourceRef="StartEvent_1" targetRef="Task_Review"/>
    <bpmn:sequenceFlow id="Flow_2" sourceRef="Task_Review" targetRef="Gateway_Approved"/>
    <bpmn:sequenceFlow id="Flow_Retry" sourceRef="Gateway_Approved" targetRef="Task_Review">
      <bpmn:conditionExpression>approved == False</bpmn:conditionExpression>
    </bpmn:sequenceFlow>
    <bpmn:sequenceFlow id="Flow_3" sourceRef="Gateway_Approved" targetRef="Task_Price">
      <bpmn:conditionExpression>approved == True</bpmn:conditionExpression>
    </bpmn:sequenceFlow>
    <bpmn:sequenceFlow id="Flow_4" sourceRef="Task_Price" targetRef="Gateway_Split"/>
    <bpmn:sequenceFlow id="Flow_5" sourceRef="Gateway_Split" targetRef="Task_Pack"/>
    <bpmn:sequenceFlow id="Flow_6" sourceRef="Gateway_Split" targetRef="Event_Wait"/>
    <bpmn:sequenceFlow id="Flow_7" sourceRef="Task_Pack" targetRef="Gateway_Join"/>
    <bpmn:sequenceFlow id="Flow_8" sourceRef="Event_Wait" targetRef="Gateway_Join"/>
    <bpmn:sequenceFlow id="Flow_9" sourceRef="Gateway_Join" targetRef="EndEvent_1"/>
  </bpmn:process>
</bpmn:definitions>"""

# The split became an exclusive gateway, so only one branch reaches the parallel join: it waits forever.
STUCK_JOIN = BPMN.replace(
    '<bpmn:parallelGateway id="Gateway_Split"/>', '<bpmn:exclusiveGateway id="Gateway_Split" default="Flow_5"/>'
).replace(
    '<bpmn:sequenceFlow id="Flow_6" sourceRef="Gateway_Split" targetRef="Event_Wait"/>',
    '<bpmn:sequenceFlow id="Flow_6" sourceRef="Gateway_Split" targetRef="Event_Wait">'
    "<bpmn:conditionExpression>rush == True</bpmn:conditionExpression></bpmn:sequenceFlow>",
)
NO_END = BPMN.replace('    <bpmn:endEvent id="EndEvent_1"/>\n', "").replace(
    '    <bpmn:sequenceFlow id="Flow_9" sourceRef="Gateway_Join" targetRef="EndEvent_1"/>\n', ""
)


def test_flow_dry_runs_a_process_to_its_end_event():
    result = FlowTarget().validate(BPMN, None)
    assert result.ok, result.error
    assert result.detail["processes"] == ["order"] and result.detail["ended"] == ["EndEvent_1"]
    assert result.detail["visited"][0] == "Task_Review" and "Task_Pack" in result.detail["visited"]


@pytest.mark.parametrize(
    ("xml", "fragment"),
    [
        (NO_END, "process `order` (line 3) has no endEvent"),
        (
            BPMN.replace('name="Review order"/>', 'name="Review order">'),
            "The XML does not parse (line 31, column 18): Opening and ending tag mismatch: userTask line 5 and process",
        ),
        ("<root/>", "The root element is `root`; it must be `definitions` in the BPMN namespace"),
        (
            BPMN.replace(' targetRef="Task_Review"/>', "/>"),
            "not valid BPMN 2.0 (XSD) at line 17: Element 'bpmn:sequenceFlow': The attribute 'targetRef' is required",
        ),
        (
            BPMN.replace("approved == True", "${approved}"),
            "The condition `${approved}` of sequenceFlow `Flow_3` (line 23) is not a Python expression",
        ),
        (
            BPMN.replace('targetRef="Task_Price"', 'targetRef="Task_Missing"'),
            "sequenceFlow `Flow_3` (line 22) refers to `Task_Missing`, which is not a flow node of process `order`",
        ),
        (
            BPMN.replace('id="StartEvent_1"', 'id="Start"').replace('sourceRef="StartEvent_1"', 'sourceRef="Start"'),
            "id `Start` (line 4) is reserved by the workflow engine",
        ),
        (STUCK_JOIN, "The dry run of `order` stopped before an end event; waiting at `Gateway_Join`"),
        (
            BPMN.replace("<bpmn:conditionExpression>approved == False</bpmn:conditionExpression>", ""),
            "SpiffWorkflow cannot parse the process at bpmn:sequenceFlow `Flow_Retry`: Non-default exclusive outgoing",
        ),
        (BPMN.replace('isExecutable="true"', 'isExecutable="false"'), "No process is executable"),
    ],
    ids=[
        "no-end-event",
        "bad-xml",
        "not-bpmn",
        "xsd",
        "condition",
        "dangling-flow",
        "reserved-id",
        "stuck-join",
        "spiff-parse",
        "not-executable",
    ],
)
def test_flow_rejects_broken_processes_precisely(xml, fragment):
    assert_error(FlowTarget().validate(xml, None), fragment)


def test_flow_repair_through_the_engine():
    broken, fixed = fenced("xml", NO_END), f"Here it is:\n{fenced('xml', BPMN)}"
    suggestion, llm = repair("flow", broken, fixed)
    assert_repaired(suggestion, llm, broken, "has no endEvent")
    assert suggestion.code.startswith('<?xml version="1.0"')


# -- api -----------------------------------------------------------------------------------------

OPENAPI = """\
openapi: 3.1.0
info:
  title: Shop
  version: 1.0.0
paths:
  /customers/{customerId}:
    get:
      operationId: getCustomer
      parameters:
        - name: customerId
          in: path
          required: true
          schema: {type: integer}
      responses:
        "200":
          description: The customer
          content:
            application/json:
              schema: {$ref: "#/components/schemas/Customer"}
components:
  schemas:
    Customer:
      type: object
      required: [id, name]
      properties:
        id: {type: integer}
        name: {type: string}
"""
NO_INFO = OPENAPI.replace("info:\n  title: Shop\n  version: 1.0.0\n", "")


def test_api_accepts_a_valid_openapi_31_document():
    result = APITarget().validate(OPENAPI, None)
    assert result.ok, result.error
    assert result.detail == {"title": "Shop", "operations": ["GET /customers/{customerId}"]}


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        (NO_INFO, "at (document root): 'info' is a required property"),
        (OPENAPI.replace("3.1.0", "3.0.3"), "`openapi` is '3.0.3'; this target writes OpenAPI 3.1"),
        (OPENAPI.replace("openapi: 3.1.0\n", ""), "The document has no `openapi` field"),
        (
            OPENAPI.replace("required: true", "required: maybe"),
            "at paths./customers/{customerId}.get.parameters[0].required (line 12): 'maybe' is not of type 'boolean'",
        ),
        (
            OPENAPI.replace(
                "        - name: customerId\n          in: path\n          required: true\n"
                "          schema: {type: integer}\n",
                "        - $ref: '#/components/parameters/Id'\n",
            ),
            "`$ref: #/components/parameters/Id` (line 10) points at nothing in the document",
        ),
        (
            OPENAPI.replace("#/components/schemas/Customer", "https://example.com/customer.yaml"),
            "`$ref: https://example.com/customer.yaml` at paths./customers/{customerId}.get.responses.200.content.",
        ),
        (
            OPENAPI.replace("  /customers/{customerId}:", "  /customers/{id}:"),
            "Path parameter 'id' for 'get' operation in '/customers/{id}' was not resolved",
        ),
        (OPENAPI.replace("info:\n", "info: [\n"), "The YAML does not parse at line"),
    ],
    ids=["no-info", "openapi-3.0", "no-openapi", "bad-type", "unresolved-ref", "external-ref", "path-param", "yaml"],
)
def test_api_rejects_invalid_documents_precisely(document, fragment):
    assert_error(APITarget().validate(document, None), fragment)


def test_api_repair_through_the_engine():
    broken, fixed = fenced("yaml", NO_INFO), fenced("yaml", OPENAPI)
    suggestion, llm = repair("api", broken, fixed)
    assert_repaired(suggestion, llm, broken, "'info' is a required property")


# -- alert ---------------------------------------------------------------------------------------

RULES = """\
groups:
  - name: api
    rules:
      - alert: HighErrorRate
        expr: |
          sum by (job) (rate(http_requests_total{code=~"5.."}[5m]))
            / sum by (job) (rate(http_requests_total[5m])) > 0.05
        for: 10m
        labels:
          severity: critical
        annotations:
          summary: "High 5xx rate on {{ $labels.job }}"
          description: "{{ $value | humanizePercentage }} of requests fail."
      - record: job:http_requests:rate5m
        expr: sum by (job) (rate(http_requests_total[5m]))
"""
BAD_PROMQL = RULES.replace('{code=~"5.."}[5m]))\n', '{code=~"5.."}[5m])\n')


def test_alert_accepts_a_valid_rule_file():
    result = AlertTarget().validate(RULES, None)
    assert result.ok, result.error
    assert result.detail == {"alerts": ["HighErrorRate"], "groups": ["api"]}


@pytest.mark.parametrize(
    ("rules", "fragment"),
    [
        (
            BAD_PROMQL,
            "groups[0].rules[0].expr of `HighErrorRate` (line 5): PromQL error at column 56 of expression "
            "line 2: missing `)` to close the `(` at line 1, column 14",
        ),
        (
            RULES.replace("rate(http_requests_total[5m]))\n", "rate(http_requests_total{job=api}[5m]))\n"),
            "groups[0].rules[1].expr of `job:http_requests:rate5m` (line 15): PromQL error at column 44: "
            'the value of a label matcher must be a quoted string: write job="api"',
        ),
        (
            RULES.replace("        expr: sum by (job) (rate(http_requests_total[5m]))\n", ""),
            "groups[0].rules[1] (line 14): 'expr' is a required property",
        ),
        (
            RULES.replace("for: 10m", "for: 10 minutes"),
            "groups[0].rules[0].for (line 8): '10 minutes' is not a Prometheus duration",
        ),
        (
            RULES.replace("for: 10m", "for: 10m\n        severity: high"),
            "groups[0].rules[0] (line 4): Additional properties are not allowed ('severity' was unexpected)",
        ),
        (
            RULES.replace("{{ $labels.job }}", "{{ $labels.job }"),
            "groups[0].rules[0].annotations.summary (line 12): the template `{{` at column 18 is never closed",
        ),
        (
            RULES.replace("expr: sum by (job) (rate(http_requests_total[5m]))", "expr: http_requests_total[5m]"),
            "must return an instant vector or a scalar, not a range vector",
        ),
        (RULES.replace("> 0.05", "&& up"), "PromQL error at column 50 of expression line 2: unknown operator `&&`"),
        ("groups:\n  - name: x\n    rules:\n      - record: a:b\n        expr: up\n", "the file has no alerting rule"),
        ("groups: [\n", "The YAML does not parse at line"),
    ],
    ids=[
        "unbalanced",
        "bad-matcher",
        "missing-expr",
        "bad-for",
        "unknown-key",
        "template",
        "range-vector",
        "unknown-operator",
        "no-alert",
        "yaml",
    ],
)
def test_alert_rejects_broken_rules_precisely(rules, fragment):
    assert_error(AlertTarget().validate(rules, None), fragment)


@pytest.mark.parametrize(
    "expr",
    [
        "up == 0",
        'histogram_quantile(0.99, sum(rate(http_request_duration_seconds_bucket{job="api"}[5m])) by (le)) > 1',
        "max_over_time(rate(x[5m])[1h:1m] offset -5m)",
        "x @ start()",
        'count_values("version", build_info)',
        "a * on(instance) group_left(node) b",
        "up > bool 0",
        '{__name__=~"job:.*", env!=""}',
        "predict_linear(node_filesystem_free_bytes[6h], 4 * 3600) < 0  # four hours",
        '-x ^ 2 + label_replace(up, "a", "$1", "instance", `(.*):\\d+`)',
    ],
)
def test_promql_parser_accepts_rule_expressions(expr):
    assert parse_promql(expr).type == "vector"


@pytest.mark.parametrize(
    ("expr", "message", "column"),
    [
        ("sum(rate(x[5m])", "missing `)` to close the `(` at line 1, column 4", 16),
        ("rate(x[5m]))", "unexpected `)`: no matching opening bracket", 12),
        ('x{job="a"', "missing `}` to close the `{` at line 1, column 2", 10),
        ('x{job=="a"}', "unexpected `==` in a label matcher; use =, !=, =~ or !~", 6),
        ("x{job=a}", 'the value of a label matcher must be a quoted string: write job="a"', 7),
        ('x{job=~"("}', "invalid regular expression", 8),
        ('x{path="\\d+"}', "invalid escape sequence `\\d`", 9),
        ("x <> y", "unknown operator `<>`; PromQL uses `!=`", 3),
        ("x === 1", "unknown operator `===`", 3),
        ("rat(x[5m])", "unknown function `rat` (did you mean rate?)", 1),
        ("rate(x)", "argument 1 of `rate` must be a range vector, got an instant vector", 6),
        ("topk(x, 5)", "argument 1 of `topk` must be a scalar", 6),
        ("1 > 2", "comparisons between scalars must use `bool`", 3),
        ("1 and x", "set operator `and` needs instant vectors on both sides", 3),
        ('{job=""}', "a selector needs a metric name or at least one matcher", 1),
        ("(x)[5m]", "ranges are only allowed on metric selectors", 4),
        ("x[5]", "expected a duration with a unit", 3),
        ("x[1m5h]", "`1m5h` is not a valid duration", 3),
        ("rate(x[5m]) 1", "unexpected `1` after a complete expression", 13),
        ("x = 1", "unexpected `=`; compare with `==`", 3),
    ],
)
def test_promql_parser_rejects_with_a_position(expr, message, column):
    with pytest.raises(PromQLError) as caught:
        parse_promql(expr)
    assert message in caught.value.message and caught.value.column == column, str(caught.value)


def test_alert_repair_through_the_engine():
    broken, fixed = fenced("yaml", BAD_PROMQL), fenced("yaml", RULES)
    suggestion, llm = repair("alert", broken, fixed)
    assert_repaired(suggestion, llm, broken, "PromQL error at column 56 of expression line 2: missing `)`")
