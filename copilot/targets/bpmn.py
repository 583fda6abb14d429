"""The `flow` target: a BPMN 2.0 process as XML, checked against the BPMN 2.0 XSD, checked as a graph (every
node reachable from a start event and able to reach an end event), parsed by SpiffWorkflow and dry-run to
an end event with every task auto-completed."""

from __future__ import annotations

import ast
import functools
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from contextlab.copilot.context import ContextClient
from contextlab.copilot.engine import ContextItem, Validation, extract_code

BPMN_NS = "http://www.omg.org/spec/BPMN/20100524/MODEL"
_Q = "{" + BPMN_NS + "}"

FLOW_TEMPLATE = """\
You model business processes in BPMN 2.0. Answer with one ```xml block holding a complete BPMN 2.0 XML
document and nothing else:
- root `<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" id="..." targetNamespace="...">`;
- one `<bpmn:process id="..." isExecutable="true">` with a startEvent, tasks (userTask, manualTask,
  serviceTask, scriptTask), gateways and at least one endEvent; every path must reach an endEvent;
- connect everything with `<bpmn:sequenceFlow id=".." sourceRef=".." targetRef=".."/>`;
- exclusive/inclusive gateway branches carry a Python `<bpmn:conditionExpression>` (e.g. `approved == True`)
  or are the gateway's `default` flow; scripts are Python;
- ids are XML names such as `StartEvent_1`, `Task_Review`, `Flow_1` (never `Start` or `End`);
- no diagram interchange (bpmndi) section.
{% for item in context %}

## {{ item.title }}
{{ item.text }}
{% endfor %}
"""

FLOW_NODES = {
    "startEvent",
    "endEvent",
    "task",
    "userTask",
    "manualTask",
    "serviceTask",
    "scriptTask",
    "sendTask",
    "receiveTask",
    "businessRuleTask",
    "callActivity",
    "subProcess",
    "transaction",
    "adHocSubProcess",
    "exclusiveGateway",
    "inclusiveGateway",
    "parallelGateway",
    "eventBasedGateway",
    "complexGateway",
    "intermediateCatchEvent",
    "intermediateThrowEvent",
    "boundaryEvent",
}
CONTAINERS = {"process", "subProcess", "transaction"}
RESERVED_IDS = {"Start", "End"}  # SpiffWorkflow's own task names


def _local(tag: Any) -> str:
    return tag.split("}", 1)[1] if isinstance(tag, str) and tag.startswith(_Q) else ""


@dataclass
class Node:
    id: str
    kind: str
    name: str
    line: int
    attached_to: str | None = None
    default: str | None = None
    compensation: bool = False
    event_subprocess: bool = False


@dataclass
class Flow:
    id: str
    source: str
    target: str
    condition: str | None
    line: int


@dataclass
class Container:
    id: str
    kind: str
    line: int
    nodes: dict[str, Node] = field(default_factory=dict)
    flows: list[Flow] = field(default_factory=list)

    def label(self) -> str:
        return f"{self.kind} `{self.id}`"


def _describe(node: Node) -> str:
    return f"`{node.id}` ({node.kind}{f' {node.name!r}' if node.name else ''}, line {node.line})"


def read_containers(root: Any) -> list[Container]:
    """Every process and sub-process with its direct flow nodes and sequence flows."""
    containers = []
    for element in root.iter():
        kind = _local(element.tag)
        if kind not in CONTAINERS:
            continue
        container = Container(element.get("id", "?"), kind, element.sourceline or 0)
        for child in element:
            child_kind = _local(child.tag)
            if child_kind in FLOW_NODES:
                node_id = child.get("id", "")
                container.nodes[node_id] = Node(
                    node_id,
                    child_kind,
                    child.get("name", ""),
                    child.sourceline or 0,
                    attached_to=child.get("attachedToRef"),
                    default=child.get("default"),
                    compensation=child.get("isForCompensation") == "true",
                    event_subprocess=child.get("triggeredByEvent") == "true",
                )
            elif child_kind == "sequenceFlow":
                condition = next((c.text or "" for c in child if _local(c.tag) == "conditionExpression"), None)
                container.flows.append(
                    Flow(
                        child.get("id", "?"),
                        child.get("sourceRef", ""),
                        child.get("targetRef", ""),
                        condition,
                        child.sourceline or 0,
                    )
                )
        containers.append(container)
    return containers


def check_structure(root: Any) -> tuple[list[str], dict[str, dict[str, int]], list[Container]]:
    """Graph problems; per container the distance (in flows) from each node to the nearest end event."""
    problems: list[str] = []
    distances: dict[str, dict[str, int]] = {}
    containers = read_containers(root)
    if not any(c.kind == "process" for c in containers):
        return [f"The document has no `<bpmn:process>` (in namespace {BPMN_NS})."], {}, containers
    for element in root.iter():
        if _local(element.tag) in FLOW_NODES | CONTAINERS | {"sequenceFlow"} and element.get("id") in RESERVED_IDS:
            problems.append(
                f"id `{element.get('id')}` (line {element.sourceline}) is reserved by the workflow engine; "
                f"use e.g. `{element.get('id')}Event_1`."
            )
        kind = _local(element.tag)
        if kind == "conditionExpression" and (element.get("language") in (None, "", "python")):
            text = (element.text or "").strip()
            try:
                ast.parse(text, mode="eval")
            except SyntaxError as exc:
                flow = element.getparent().get("id")
                problems.append(
                    f"The condition `{text}` of sequenceFlow `{flow}` (line {element.sourceline}) is not a Python "
                    f"expression ({exc.msg}); write e.g. `approved == True`."
                )
        if kind == "script" and _local(element.getparent().tag) == "scriptTask":
            fmt = (element.getparent().get("scriptFormat") or "python").lower()
            if "python" in fmt:
                try:
                    ast.parse(element.text or "")
                except SyntaxError as exc:
                    problems.append(
                        f"The script of scriptTask `{element.getparent().get('id')}` (line {element.sourceline}) "
                        f"has a SyntaxError at script line {exc.lineno}: {exc.msg}."
                    )
    for container in containers:
        problems.extend(_check_container(container, distances))
    return problems, distances, containers


def _check_container(container: Container, distances: dict[str, dict[str, int]]) -> list[str]:
    problems: list[str] = []
    nodes = container.nodes
    outgoing: dict[str, list[Flow]] = {n: [] for n in nodes}
    incoming: dict[str, list[str]] = {n: [] for n in nodes}
    for flow in container.flows:
        bad = [ref for ref in (flow.source, flow.target) if ref not in nodes]
        if bad:
            problems.append(
                f"sequenceFlow `{flow.id}` (line {flow.line}) refers to `{bad[0]}`, which is not a flow node of "
                f"{container.label()}."
            )
            continue
        outgoing[flow.source].append(flow)
        incoming[flow.target].append(flow.source)
    if problems:  # reachability would only repeat the dangling references
        return problems
    edges: dict[str, list[str]] = {n: [f.target for f in outgoing[n]] for n in nodes}
    for node in nodes.values():
        if node.attached_to in nodes:
            edges[node.attached_to].append(node.id)
            incoming[node.id].append(node.attached_to)
        elif node.kind == "boundaryEvent":
            problems.append(f"boundaryEvent {_describe(node)} is attached to `{node.attached_to}`, which is not here.")
    if container.kind == "adHocSubProcess":
        return problems
    skip = {n.id for n in nodes.values() if n.compensation or n.event_subprocess}
    starts = [n for n in nodes.values() if n.kind == "startEvent"]
    ends = [n for n in nodes.values() if n.kind == "endEvent"]
    if not starts:
        problems.append(f"{container.label()} (line {container.line}) has no startEvent.")
    if not ends:
        problems.append(
            f'{container.label()} (line {container.line}) has no endEvent: add `<bpmn:endEvent id="EndEvent_1"/>` '
            "and a sequenceFlow into it from the last step."
        )
    for node in nodes.values():
        if node.kind != "endEvent" and node.id not in skip and not outgoing[node.id]:
            if node.kind == "boundaryEvent" and "compensat" in node.name.lower():
                continue
            problems.append(f"{_describe(node)} has no outgoing sequenceFlow, so it cannot reach an end event.")
    reachable = _walk([s.id for s in starts], edges)
    for node in nodes.values():
        if node.id not in reachable and node.id not in skip and starts:
            problems.append(f"{_describe(node)} cannot be reached from the start event.")
    reverse: dict[str, list[str]] = {n: [] for n in nodes}
    for source, targets in edges.items():
        for target in targets:
            reverse[target].append(source)
    distance = _distances([e.id for e in ends], reverse)
    distances[container.id] = distance
    if ends:
        stuck = [n for n in nodes.values() if n.id in reachable and n.id not in distance and outgoing[n.id]]
        if stuck:
            problems.append(
                "No path leads from " + ", ".join(_describe(n) for n in stuck[:4]) + " to an end event (a loop "
                "without an exit?)."
            )
    for node in nodes.values():
        if node.default and node.default not in {f.id for f in outgoing[node.id]}:
            problems.append(f"The default flow `{node.default}` of {_describe(node)} is not one of its outgoing flows.")
    return problems


def _walk(starts: list[str], edges: dict[str, list[str]]) -> set[str]:
    seen = set(starts)
    queue = deque(starts)
    while queue:
        for target in edges.get(queue.popleft(), []):
            if target not in seen:
                seen.add(target)
                queue.append(target)
    return seen


def _distances(ends: list[str], reverse: dict[str, list[str]]) -> dict[str, int]:
    distance = {e: 0 for e in ends}
    queue = deque(ends)
    while queue:
        current = queue.popleft()
        for source in reverse.get(current, []):
            if source not in distance:
                distance[source] = distance[current] + 1
                queue.append(source)
    return distance


_XSD_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _xsd_validator() -> Any:
    from SpiffWorkflow.bpmn.parser.BpmnParser import BpmnValidator

    return BpmnValidator()  # parsing the BPMN 2.0 XSD takes a moment: once per process


def _preferred_conditions(containers: list[Container], distances: dict[str, dict[str, int]]) -> dict[str, set[str]]:
    """For each conditional gateway, the condition of its flow nearest to an end event (the dry run's choice)."""
    preferred: dict[str, set[str]] = {}
    for container in containers:
        distance = distances.get(container.id, {})
        for node in container.nodes.values():
            if node.kind not in ("exclusiveGateway", "inclusiveGateway"):
                continue
            flows = [f for f in container.flows if f.source == node.id]
            if not flows:
                continue
            best = min(flows, key=lambda f: distance.get(f.target, 10**6))
            preferred[node.id] = {" ".join(best.condition.split())} if best.condition else set()
    return preferred


def dry_run_engine(preferred: dict[str, set[str]]) -> Any:
    """A SpiffWorkflow script engine for dry runs: scripts and services do nothing, each conditional gateway
    takes the branch nearest to an end event (`preferred`: gateway id -> the condition to hold), catching
    timers fire at once, boundary timers never do, and other expressions are read as Python literals
    (nothing the model wrote is evaluated)."""
    # SpiffWorkflow is imported here so that it loads only when a flow is validated.
    from SpiffWorkflow.bpmn.script_engine import PythonScriptEngine
    from SpiffWorkflow.bpmn.specs.event_definitions.timer import (
        CycleTimerEventDefinition,
        DurationTimerEventDefinition,
    )

    class _Engine(PythonScriptEngine):
        def evaluate(self, task: Any, expression: str, external_context: Any = None) -> Any:
            spec = task.task_spec
            definition = getattr(spec, "event_definition", None)
            boundary = any(c.__name__ == "BoundaryEvent" for c in type(spec).__mro__)
            if definition is not None and "Timer" in type(definition).__name__:
                if isinstance(definition, DurationTimerEventDefinition):
                    return "P100Y" if boundary else "PT0S"
                if isinstance(definition, CycleTimerEventDefinition):
                    return "R1/P100Y" if boundary else "R1/PT0S"
                return "2999-01-01T00:00:00+00:00" if boundary else "2000-01-01T00:00:00+00:00"
            bpmn_id = getattr(spec, "bpmn_id", None)
            if bpmn_id in preferred:
                return " ".join(expression.split()) in preferred[bpmn_id]
            try:
                return ast.literal_eval(expression.strip())
            except (ValueError, SyntaxError):
                return True

        def execute(self, task: Any, script: str, external_context: Any = None) -> bool:
            return True

        def call_service(self, task: Any, **kwargs: Any) -> str:
            return "{}"

    return _Engine()


def dry_run(root: Any, preferred: dict[str, set[str]], distances: dict[str, dict[str, int]], max_steps: int) -> Any:
    """Parse with SpiffWorkflow and run each top-level executable process; a Validation."""
    from SpiffWorkflow.bpmn.parser.BpmnParser import BpmnParser
    from SpiffWorkflow.bpmn.parser.ValidationException import ValidationException
    from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
    from SpiffWorkflow.exceptions import SpiffWorkflowException
    from SpiffWorkflow.util.task import TaskState

    parser = BpmnParser()
    try:
        parser.add_bpmn_xml(root, "flow.bpmn")
        process_ids = parser.get_process_ids()
        if not process_ids:
            return Validation(False, 'No process is executable: set isExecutable="true" on the <bpmn:process>.')
        top = [p for p in process_ids if p not in parser.get_process_dependencies()]
        runs = []
        for name in parser.collaborations or []:
            spec, subprocesses = parser.get_collaboration(name)
            runs.append((name, spec, subprocesses))
        if not runs:
            for pid in top:
                runs.append((pid, parser.get_spec(pid), parser.get_subprocess_specs(pid)))
    except ValidationException as exc:
        where = f" (line {exc.line_number})" if getattr(exc, "line_number", "") else ""
        element = f" at {exc.tag} `{exc.id}`" if getattr(exc, "id", "") else ""
        return Validation(False, f"SpiffWorkflow cannot parse the process{element}{where}: {exc}")
    except SpiffWorkflowException as exc:
        return Validation(False, f"SpiffWorkflow cannot parse the process: {exc}")
    if not runs:
        return Validation(False, "Every executable process is only called by another one: nothing to start.")
    ended: list[str] = []
    all_distance: dict[str, int] = {}
    for distance in distances.values():
        all_distance.update(distance)
    visited: list[str] = []
    for name, spec, subprocesses in runs:
        try:
            workflow = BpmnWorkflow(spec, subprocesses, script_engine=dry_run_engine(preferred))
            for _ in range(max_steps):
                workflow.do_engine_steps()
                if workflow.is_completed():
                    break
                ready = workflow.get_tasks(state=TaskState.READY, manual=True)
                if ready:
                    ready[0].run()
                    visited.append(ready[0].task_spec.bpmn_id or ready[0].task_spec.name)
                    continue
                waiting = [
                    t
                    for t in workflow.get_tasks(state=TaskState.WAITING)
                    if getattr(t.task_spec, "event_definition", None) is not None
                    and not any(c.__name__ == "BoundaryEvent" for c in type(t.task_spec).__mro__)
                ]
                if not waiting:
                    stuck = [
                        f"`{t.task_spec.bpmn_id or t.task_spec.name}`"
                        for t in workflow.get_tasks(state=TaskState.WAITING | TaskState.STARTED)
                    ]
                    return Validation(
                        False,
                        f"The dry run of `{name}` stopped before an end event; waiting at "
                        f"{', '.join(stuck) or 'nothing'} with no task left to complete (a parallel join "
                        "missing a branch, or a wait for an event that never comes?).",
                        {"visited": visited},
                    )
                waiting.sort(key=lambda t: all_distance.get(t.task_spec.bpmn_id or "", 10**6))
                event = waiting[0]
                event._set_internal_data(event_fired=True)
                event.task_spec._update(event)
                visited.append(event.task_spec.bpmn_id or event.task_spec.name)
            else:
                return Validation(
                    False,
                    f"The dry run of `{name}` did not reach an end event within {max_steps} steps (a loop?); "
                    f"last steps: {' -> '.join(visited[-8:])}.",
                    {"visited": visited},
                )
        except SpiffWorkflowException as exc:
            task = getattr(exc, "task", None)
            task_spec = getattr(exc, "task_spec", None) or getattr(task, "task_spec", None)
            at = f" at `{getattr(task_spec, 'bpmn_id', None) or getattr(task_spec, 'name', '?')}`" if task_spec else ""
            return Validation(False, f"The dry run of `{name}` failed{at}: {exc}", {"visited": visited})
        ended = [
            t.task_spec.bpmn_id
            for t in workflow.get_tasks(state=TaskState.COMPLETED)
            if type(t.task_spec).__name__ == "EndEvent"
        ]
        if not ended:
            return Validation(False, f"The dry run of `{name}` finished without reaching an end event.")
    return Validation(True, detail={"processes": [r[0] for r in runs], "visited": visited, "ended": ended})


class FlowTarget:
    """A BPMN 2.0 process (XML). Checked in order: the XML parses; it is valid against the BPMN 2.0 XSD; as a
    graph every node is reachable from a start event and reaches an end event (conditions and scripts are
    Python); SpiffWorkflow parses it; a dry run with user/manual tasks completed with empty data, scripts as
    no-ops and gateways taking the branch nearest to an end event reaches an end event in bounded steps."""

    name = "flow"
    template_name = "copilot.flow"
    template = FLOW_TEMPLATE
    language = "xml"
    max_tokens = 2000  # answers of this target run long

    def __init__(self, *, max_steps: int = 200, xsd: bool = True) -> None:
        self.max_steps = max_steps
        self.xsd = xsd

    def gather(self, client: ContextClient | None) -> list[ContextItem]:
        return []

    def extract(self, text: str) -> str:
        return extract_code(text, ("xml", "bpmn"))

    def validate(self, code: str, client: ContextClient | None) -> Validation:
        from lxml import etree

        if not code.strip():
            return Validation(False, "The answer holds no BPMN XML.")
        parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
        try:
            root = etree.fromstring(code.strip().encode("utf-8"), parser=parser)
        except etree.XMLSyntaxError as exc:
            line, column = exc.position if exc.position else (exc.lineno, 0)
            message = re.sub(r", line \d+, column \d+$", "", exc.msg or str(exc))
            return Validation(False, f"The XML does not parse (line {line}, column {column}): {message}")
        if root.tag != _Q + "definitions":
            return Validation(
                False,
                f"The root element is `{root.tag}`; it must be `definitions` in the BPMN namespace {BPMN_NS} "
                '(`<bpmn:definitions xmlns:bpmn="...">`).',
            )
        if self.xsd:
            from SpiffWorkflow.bpmn.parser.ValidationException import ValidationException

            try:
                with _XSD_LOCK:  # lxml schema objects are not meant to be shared between threads
                    _xsd_validator().validate(root)
            except ValidationException as exc:
                line = getattr(exc, "line_number", "")
                message = str(exc).strip().rstrip(".").replace("{" + BPMN_NS + "}", "bpmn:")
                at = f" at line {line}" if line else ""
                return Validation(False, f"The XML is not valid BPMN 2.0 (XSD){at}: {message}.")
        problems, distances, containers = check_structure(root)
        if problems:
            return Validation(False, "The process graph is broken:\n" + "\n".join(f"- {p}" for p in problems[:8]))
        return dry_run(root, _preferred_conditions(containers, distances), distances, self.max_steps)
