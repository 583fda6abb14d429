"""BPMN flows: real SpiffWorkflow, real SQLite state store, a recording stand-in for the MCP tool gateway."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from contextlab.apps.flows import (
    BPMNParseError,
    FlowConflict,
    FlowDefinition,
    FlowEngine,
    FlowError,
    FlowForbidden,
    FlowNotFound,
    ScriptRejected,
    check_script,
    render_arguments,
)
from contextlab.state.models import FlowInstanceRow
from contextlab.state.store import StateStore

EXAMPLE = Path(__file__).resolve().parents[2] / "apps" / "examples" / "expense_approval.bpmn"
SERVICES = {
    "Task_Record": {
        "tool": "expenses.record",
        "arguments": {
            "employee": "{{ employee }}",
            "amount": "{{ amount }}",
            "note": "by {{ employee }}: {{ comment }}",
        },
    },
    "Task_RecordRejection": {"tool": "expenses.reject", "arguments": {"employee": "{{ employee }}"}},
}
FORMS = {
    "Task_Approve": [
        {"name": "approved", "type": "boolean", "label": "Approve?", "required": True},
        {"name": "comment", "type": "string", "label": "Comment"},
    ]
}

BPMN_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="D" targetNamespace="t">\n'
)


def script_flow(script: str, process_id: str = "scripted") -> str:
    """A start → script task → end process."""
    return (
        BPMN_HEAD + f'  <bpmn:process id="{process_id}" isExecutable="true">\n'
        '    <bpmn:startEvent id="StartEvent_1"/>\n'
        '    <bpmn:sequenceFlow id="F1" sourceRef="StartEvent_1" targetRef="Task_Script"/>\n'
        '    <bpmn:scriptTask id="Task_Script" name="Compute"><bpmn:script>'
        + script.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        + "</bpmn:script></bpmn:scriptTask>\n"
        '    <bpmn:sequenceFlow id="F2" sourceRef="Task_Script" targetRef="EndEvent_1"/>\n'
        '    <bpmn:endEvent id="EndEvent_1"/>\n'
        "  </bpmn:process>\n</bpmn:definitions>\n"
    )


class Recorder:
    """Stands in for the MCP gateway: records calls, can be made to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.fail_with: str | None = None

    def __call__(self, tool: str, arguments: dict) -> dict:
        self.calls.append((tool, arguments))
        if self.fail_with:
            raise RuntimeError(self.fail_with)
        return {"recorded": True, "id": len(self.calls)}


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    StateStore(url).migrate()
    return url


@pytest.fixture
def defn() -> FlowDefinition:
    return FlowDefinition.from_xml(EXAMPLE.read_text(), name="expenses", services=SERVICES, forms=FORMS)


def stored_row(url: str, instance_id: str) -> FlowInstanceRow:
    with Session(StateStore(url).engine) as session:
        row = session.scalars(select(FlowInstanceRow).where(FlowInstanceRow.id == instance_id)).one()
        session.expunge(row)
        return row


def test_example_parses_with_lanes_and_sha(defn: FlowDefinition) -> None:
    assert defn.process_id == "expense_approval"
    assert len(defn.sha256) == 64
    lanes = {s.bpmn_id: s.lane for s in defn.spec.task_specs.values() if getattr(s, "bpmn_id", None)}
    assert lanes["Task_Approve"] == "manager"
    assert lanes["Task_Assess"] == "employee"


def test_small_expense_is_auto_approved_and_recorded(db_url: str, defn: FlowDefinition) -> None:
    tool, events = Recorder(), []
    engine = FlowEngine(StateStore(db_url), tool, publish=lambda topic, payload: events.append((topic, payload)))
    instance = engine.start(defn, {"amount": 120, "employee": "ann"}, started_by="ann", app="expenses")
    assert instance.status == "completed", instance.error
    assert instance.waiting == []
    assert tool.calls == [
        ("expenses.record", {"employee": "ann", "amount": 120, "note": "by ann: auto-approved (500 or less)"})
    ]
    assert instance.data["needs_approval"] is False
    assert instance.data["approved"] is True
    assert instance.data["Task_Record_result"] == {"recorded": True, "id": 1}
    assert [t for t, _ in events] == ["flow.started", "flow.completed"]
    assert engine.list(app="expenses", status="completed")[0].id == instance.id
    assert engine.list(app="other") == []


def test_large_expense_waits_for_manager_and_survives_restart(db_url: str, defn: FlowDefinition) -> None:
    tool, events = Recorder(), []
    store = StateStore(db_url)
    engine = FlowEngine(store, tool, publish=lambda topic, payload: events.append((topic, payload)))
    instance = engine.start(defn, {"amount": 900, "employee": "bob"}, started_by="bob")
    assert instance.status == "waiting"
    assert tool.calls == []
    [waiting] = instance.waiting
    assert (waiting["name"], waiting["role"], waiting["title"]) == ("Task_Approve", "manager", "Approve expense")
    assert [f["name"] for f in waiting["fields"]] == ["approved", "comment"]
    approval_events = [p for t, p in events if t == "flow.task_waiting"]
    assert approval_events and approval_events[0]["task"]["role"] == "manager"

    assert engine.pending_tasks({"employee"}) == []
    [task] = engine.pending_tasks({"manager"})
    assert task.instance_id == instance.id and task.data["amount"] == 900

    before = stored_row(db_url, instance.id)
    with pytest.raises(FlowForbidden, match="manager"):
        engine.complete(instance.id, task.task_id, {"approved": True}, user="bob", roles={"employee"})
    after = stored_row(db_url, instance.id)
    assert (after.revision, after.status, after.state) == (before.revision, before.status, before.state)

    # "restart": drop the engine and the store object, open the same file again
    del engine, store
    engine2 = FlowEngine(StateStore(db_url), tool)
    [task] = engine2.pending_tasks({"manager"})
    done = engine2.complete(
        instance.id, task.task_id, {"approved": True, "comment": "fine"}, user="carol", roles={"manager"}, revision=0
    )
    assert done.status == "completed", done.error
    assert done.revision == 1
    assert tool.calls == [("expenses.record", {"employee": "bob", "amount": 900, "note": "by bob: fine"})]
    assert done.data["completed_by"] == {"Task_Approve": "carol"}
    assert engine2.pending_tasks() == []


def test_rejection_is_recorded_by_its_own_task(db_url: str, defn: FlowDefinition) -> None:
    tool = Recorder()
    engine = FlowEngine(StateStore(db_url), tool)
    instance = engine.start(defn, {"amount": 5000, "employee": "dan"}, started_by="dan")
    [task] = engine.pending_tasks({"manager"})
    done = engine.complete(instance.id, task.task_id, {"approved": "false"}, user="m", roles={"manager"})
    assert done.status == "completed"
    assert done.data["approved"] is False and done.data["comment"] is None
    assert tool.calls == [("expenses.reject", {"employee": "dan"})]
    assert "Task_Record_result" not in done.data


def test_stale_revision_is_a_conflict(db_url: str, defn: FlowDefinition) -> None:
    engine = FlowEngine(StateStore(db_url), Recorder())
    instance = engine.start(defn, {"amount": 800, "employee": "eve"}, started_by="eve")
    [task] = engine.pending_tasks()
    with pytest.raises(FlowConflict):
        engine.complete(instance.id, task.task_id, {"approved": True}, user="m", roles={"manager"}, revision=7)
    assert engine.get(instance.id).status == "waiting"
    engine.complete(instance.id, task.task_id, {"approved": True}, user="m", roles={"manager"}, revision=0)
    with pytest.raises(FlowConflict):  # a second approval based on the old revision
        engine.complete(instance.id, task.task_id, {"approved": True}, user="m", roles={"manager"}, revision=0)


def test_concurrent_save_is_a_conflict(db_url: str, defn: FlowDefinition) -> None:
    engine = FlowEngine(StateStore(db_url), Recorder())
    instance = engine.start(defn, {"amount": 800, "employee": "eve"}, started_by="eve")
    row = engine._row(instance.id)
    engine.cancel(instance.id)  # someone else changed it after `row` was loaded
    workflow = engine._load(row.state, row.state["definition"])
    with pytest.raises(FlowConflict):
        engine._save(row, workflow, row.state["definition"], None)
    assert engine.get(instance.id).status == "cancelled"


def test_form_validation_names_the_field(db_url: str, defn: FlowDefinition) -> None:
    engine = FlowEngine(StateStore(db_url), Recorder())
    instance = engine.start(defn, {"amount": 700, "employee": "fay"}, started_by="fay")
    [task] = engine.pending_tasks({"manager"})
    with pytest.raises(FlowError, match="`approved`.*required"):
        engine.complete(instance.id, task.task_id, {"comment": "?"}, user="m", roles={"manager"})
    with pytest.raises(FlowError, match="`approved`.*boolean"):
        engine.complete(instance.id, task.task_id, {"approved": "maybe"}, user="m", roles={"manager"})
    with pytest.raises(FlowError, match="no field `needs_approval`"):
        engine.complete(instance.id, task.task_id, {"approved": True, "needs_approval": False}, "m", {"manager"})
    assert engine.get(instance.id).revision == 0


def test_failing_tool_marks_failed_and_retry_resumes(db_url: str, defn: FlowDefinition) -> None:
    tool, events = Recorder(), []
    tool.fail_with = "gateway unavailable"
    engine = FlowEngine(StateStore(db_url), tool, publish=lambda topic, payload: events.append(topic))
    instance = engine.start(defn, {"amount": 50, "employee": "gus"}, started_by="gus")
    assert instance.status == "failed"
    assert "gateway unavailable" in instance.error
    assert "flow.failed" in events

    tool.fail_with = None
    engine2 = FlowEngine(StateStore(db_url), tool)  # retry after a restart, too
    resumed = engine2.retry(instance.id)
    assert resumed.status == "completed", resumed.error
    assert resumed.error is None
    assert resumed.data["Task_Record_result"] == {"recorded": True, "id": 2}
    assert len(tool.calls) == 2
    with pytest.raises(FlowError, match="only failed"):
        engine2.retry(instance.id)


def test_cancel_and_not_found(db_url: str, defn: FlowDefinition) -> None:
    engine = FlowEngine(StateStore(db_url), Recorder())
    instance = engine.start(defn, {"amount": 999, "employee": "hal"}, started_by="hal")
    cancelled = engine.cancel(instance.id)
    assert cancelled.status == "cancelled" and cancelled.waiting == []
    assert engine.pending_tasks() == []
    with pytest.raises(FlowError):
        engine.cancel(instance.id)
    with pytest.raises(FlowNotFound):
        engine.get("nope")


def test_malformed_bpmn_reports_line() -> None:
    xml = EXAMPLE.read_text().replace('<bpmn:endEvent id="EndEvent_Rejected" name="Rejected"/>', "<bpmn:endEvent>")
    with pytest.raises(BPMNParseError, match=r"line \d+, column \d+"):
        FlowDefinition.from_xml(xml)


def test_unknown_or_missing_process_lists_ids() -> None:
    with pytest.raises(BPMNParseError, match="expense_approval"):
        FlowDefinition.from_xml(EXAMPLE.read_text(), process_id="nope", services=SERVICES)
    not_executable = script_flow("x = 1").replace('isExecutable="true"', 'isExecutable="false"')
    with pytest.raises(BPMNParseError, match="scripted"):
        FlowDefinition.from_xml(not_executable)


def test_mappings_must_name_real_tasks() -> None:
    with pytest.raises(FlowError, match="Task_Nope"):
        FlowDefinition.from_xml(EXAMPLE.read_text(), services={**SERVICES, "Task_Nope": {"tool": "x"}})
    with pytest.raises(FlowError, match="Task_Record"):  # a service task with no tool at all
        FlowDefinition.from_xml(EXAMPLE.read_text())


@pytest.mark.parametrize(
    ("script", "construct"),
    [
        ("import os", "import os"),
        ("from os import path", "import path"),
        ("data = open('/etc/passwd').read()", "open"),
        ("m = __import__('os')", "__import__"),
        ("x = ().__class__.__bases__", "__class__"),
        ("x = getattr((), 'x')", "getattr"),
        ("x = eval('1')", "eval"),
        ("g = (i for i in []).gi_frame", "gi_frame"),
    ],
)
def test_unsafe_scripts_are_rejected_before_running(script: str, construct: str) -> None:
    with pytest.raises(ScriptRejected, match="Task_Script") as info:
        FlowDefinition.from_xml(script_flow(script))
    assert construct in str(info.value)


def test_unsafe_condition_is_rejected() -> None:
    xml = EXAMPLE.read_text().replace("approved == True</", "approved == ().__class__</")
    with pytest.raises(ScriptRejected, match="Flow_Approved"):
        FlowDefinition.from_xml(xml, services=SERVICES)


@pytest.mark.parametrize(
    ("script", "construct"),
    [
        ("import os\nx = os.getcwd()", "import os"),
        ("x = open('/etc/passwd').read()", "open"),
        ("x = __import__('os').getcwd()", "__import__"),
        ("x = ().__class__.__bases__", "__class__"),
    ],
)
def test_runtime_rejection_marks_instance_failed(db_url: str, script: str, construct: str) -> None:
    """A script that slips past parsing (here: swapped into the parsed spec) fails the instance, unrun."""
    defn = FlowDefinition.from_xml(script_flow("x = 1"))
    task_spec = next(s for s in defn.spec.task_specs.values() if getattr(s, "bpmn_id", None) == "Task_Script")
    task_spec.script = script
    engine = FlowEngine(StateStore(db_url))
    instance = engine.start(defn, {"y": 1}, started_by="t")
    assert instance.status == "failed"
    assert "ScriptRejected" in instance.error and construct in instance.error and "Task_Script" in instance.error
    assert instance.data == {"y": 1}
    assert engine.retry(instance.id).status == "failed"  # still rejected on retry


def test_scripts_get_safe_builtins_only(db_url: str) -> None:
    script = "total = sum([1, 2, 3]) + len('ab')\nwhen = str(datetime(2024, 1, 2).date())\nd = str(Decimal('1.5'))"
    engine = FlowEngine(StateStore(db_url))
    instance = engine.start(FlowDefinition.from_xml(script_flow(script)), started_by="t")
    assert instance.status == "completed", instance.error
    assert (instance.data["total"], instance.data["when"], instance.data["d"]) == (8, "2024-01-02", "1.5")

    for script, needle in [("x = print", "print"), ("x = type(1)", "type")]:
        with pytest.raises(ScriptRejected, match=needle):
            FlowDefinition.from_xml(script_flow(script))
    # a name that is simply not provided fails at run time (NameError) and marks the instance failed
    failed = engine.start(FlowDefinition.from_xml(script_flow("x = hex(1)")), started_by="t")
    assert failed.status == "failed" and "hex" in failed.error


def test_check_script_and_render_arguments() -> None:
    check_script("x = [i * 2 for i in range(3)]", "ok")
    with pytest.raises(ScriptRejected, match="strings containing"):
        check_script("x = '{0.__class__}'", "fmt")
    data = {"a": 1, "b": {"c": "deep"}}
    assert render_arguments({"n": "{{ a }}", "s": "v{{ a }}-{{ b.c }}", "l": ["{{b.c}}", 3]}, data) == {
        "n": 1,
        "s": "v1-deep",
        "l": ["deep", 3],
    }
    with pytest.raises(FlowError, match="missing"):
        render_arguments("{{ missing }}", data)
    with pytest.raises(FlowError, match="a.__class__"):  # only mapping keys are looked up, never attributes
        render_arguments("{{ a.__class__ }}", data)


def test_spiff_service_task_operator(db_url: str) -> None:
    xml = (
        BPMN_HEAD.replace('id="D"', 'xmlns:spiffworkflow="http://spiffworkflow.org/bpmn/schema/1.0/core" id="D"')
        + '  <bpmn:process id="svc" isExecutable="true">\n'
        '    <bpmn:startEvent id="StartEvent_1"/>\n'
        '    <bpmn:sequenceFlow id="F1" sourceRef="StartEvent_1" targetRef="Task_Call"/>\n'
        '    <bpmn:serviceTask id="Task_Call"><bpmn:extensionElements>\n'
        '      <spiffworkflow:serviceTaskOperator id="crm.lookup" resultVariable="customer">\n'
        "        <spiffworkflow:parameters>\n"
        '          <spiffworkflow:parameter id="email" type="str" value="email.lower()"/>\n'
        "        </spiffworkflow:parameters>\n"
        "      </spiffworkflow:serviceTaskOperator></bpmn:extensionElements></bpmn:serviceTask>\n"
        '    <bpmn:sequenceFlow id="F2" sourceRef="Task_Call" targetRef="EndEvent_1"/>\n'
        '    <bpmn:endEvent id="EndEvent_1"/>\n'
        "  </bpmn:process>\n</bpmn:definitions>\n"
    )
    tool = Recorder()
    instance = FlowEngine(StateStore(db_url), tool).start(
        FlowDefinition.from_xml(xml), {"email": "A@B.C"}, started_by="t"
    )
    assert instance.status == "completed", instance.error
    assert tool.calls == [("crm.lookup", {"email": "a@b.c"})]
    assert instance.data["customer"] == {"recorded": True, "id": 1}


def test_unassigned_task_and_typed_data_survive_restart(db_url: str) -> None:
    """No lane → anyone may complete; datetime/Decimal task data round-trips through the stored state."""
    xml = (
        BPMN_HEAD + '  <bpmn:process id="typed" isExecutable="true">\n'
        '    <bpmn:startEvent id="StartEvent_1"/>\n'
        '    <bpmn:sequenceFlow id="F1" sourceRef="StartEvent_1" targetRef="Task_Before"/>\n'
        '    <bpmn:scriptTask id="Task_Before"><bpmn:script>when = datetime(2024, 1, 2)\n'
        "d = Decimal('1.5')</bpmn:script></bpmn:scriptTask>\n"
        '    <bpmn:sequenceFlow id="F2" sourceRef="Task_Before" targetRef="Task_Check"/>\n'
        '    <bpmn:userTask id="Task_Check" name="Check"/>\n'
        '    <bpmn:sequenceFlow id="F3" sourceRef="Task_Check" targetRef="Task_After"/>\n'
        '    <bpmn:scriptTask id="Task_After"><bpmn:script>later = str((when + timedelta(days=1)).date())\n'
        "doubled = str(d * count)</bpmn:script></bpmn:scriptTask>\n"
        '    <bpmn:sequenceFlow id="F4" sourceRef="Task_After" targetRef="EndEvent_1"/>\n'
        '    <bpmn:endEvent id="EndEvent_1"/>\n'
        "  </bpmn:process>\n</bpmn:definitions>\n"
    )
    defn = FlowDefinition.from_xml(xml, forms={"Task_Check": [{"name": "count", "type": "integer", "required": True}]})
    instance = FlowEngine(StateStore(db_url)).start(defn, started_by="t")
    assert instance.status == "waiting" and instance.waiting[0]["role"] is None
    engine = FlowEngine(StateStore(db_url))
    [task] = engine.pending_tasks({"anyone"})
    done = engine.complete(instance.id, task.task_id, {"count": "3"}, user="u", roles=set())
    assert done.status == "completed", done.error
    assert (done.data["later"], done.data["doubled"]) == ("2024-01-03", "4.5")


def test_start_data_may_not_shadow_script_builtins(db_url: str, defn: FlowDefinition) -> None:
    engine = FlowEngine(StateStore(db_url), Recorder())
    with pytest.raises(FlowError, match="len"):
        engine.start(defn, {"amount": 1, "len": 3}, started_by="x")
    assert engine.list() == []


def test_lane_role_can_be_overridden(db_url: str) -> None:
    defn = FlowDefinition.from_xml(
        EXAMPLE.read_text(), services=SERVICES, forms=FORMS, roles={"Task_Approve": "Finance"}
    )
    engine = FlowEngine(StateStore(db_url), Recorder())
    engine.start(defn, {"amount": 600, "employee": "ivy"}, started_by="ivy")
    assert engine.pending_tasks({"manager"}) == []
    [task] = engine.pending_tasks({"finance"})
    assert task.role == "finance"


def timer_flow(duration: str) -> str:
    return (
        BPMN_HEAD + '  <bpmn:process id="timed" isExecutable="true">\n'
        '    <bpmn:startEvent id="StartEvent_1"/>\n'
        '    <bpmn:sequenceFlow id="F1" sourceRef="StartEvent_1" targetRef="Event_Wait"/>\n'
        '    <bpmn:intermediateCatchEvent id="Event_Wait"><bpmn:timerEventDefinition>'
        f"<bpmn:timeDuration>'{duration}'</bpmn:timeDuration></bpmn:timerEventDefinition>"
        "</bpmn:intermediateCatchEvent>\n"
        '    <bpmn:sequenceFlow id="F2" sourceRef="Event_Wait" targetRef="EndEvent_1"/>\n'
        '    <bpmn:endEvent id="EndEvent_1"/>\n'
        "  </bpmn:process>\n</bpmn:definitions>\n"
    )


def test_timers_run_now_or_stay_running_until_refreshed(db_url: str) -> None:
    engine = FlowEngine(StateStore(db_url))
    assert engine.start(FlowDefinition.from_xml(timer_flow("PT0S")), started_by="t").status == "completed"
    waiting = engine.start(FlowDefinition.from_xml(timer_flow("PT1H")), started_by="t")
    assert waiting.status == "running" and waiting.waiting == []
    assert engine.refresh(waiting.id).status == "running"  # not due yet
    with pytest.raises(FlowError, match="not running"):
        engine.refresh(engine.list(status="completed")[0].id)
