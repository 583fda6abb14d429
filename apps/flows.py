"""BPMN approval/process flows run in-process with SpiffWorkflow, persisted in the state store.

A `FlowDefinition` is a parsed BPMN process plus ContextLab's mappings (user-task roles and form fields, service
tasks as MCP tool calls). A `FlowEngine` starts instances, runs engine steps until the process waits on a user
task or ends, and saves SpiffWorkflow's serialised workflow into `flow_instances` after every change (one UPDATE
that also sets status, waiting tasks and revision, guarded by the revision it loaded). The definition's mappings
are saved inside the instance's `state`, so a fresh `FlowEngine` on the same store continues any instance.

Scripts and gateway conditions are Python, run by a restricted script engine: every script/expression is
checked by AST (no imports, no dunder names or attributes, no frame/code introspection, no `open`, `eval`,
`exec`, `compile`, `getattr`, ...) before it runs, and runs with only a small set of safe builtins.
`FlowDefinition.from_xml` rejects such a script up front (`ScriptRejected`, nothing stored); if one still
reaches the engine at run time it is not run: the instance is saved as `failed` with the error text, the
offending task left in ERROR with its data unchanged (so `retry` rejects it again). Limits: scripts can still loop
forever or allocate a lot of memory; tool calls are not transactional with the save (a tool that succeeded
before a failed save is not undone).
"""

from __future__ import annotations

import ast
import builtins
import copy
import datetime as _dt
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from lxml import etree
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from contextlab.state.models import FlowInstanceRow
from contextlab.state.store import StateStore

log = logging.getLogger(__name__)

SPIFF_NS = "http://spiffworkflow.org/bpmn/schema/1.0/core"
BPMN_NS = "http://www.omg.org/spec/BPMN/20100524/MODEL"
STATUSES = ("running", "waiting", "completed", "failed", "cancelled")
FIELD_TYPES = ("boolean", "string", "number", "integer", "select")
_TEMPLATE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*\}\}")


class FlowError(ValueError):
    """A flow request that cannot be done as asked."""


class BPMNParseError(FlowError):
    """BPMN text that does not parse, or has no (such) executable process."""


class ScriptRejected(FlowError):
    """A script or condition using something the restricted script engine does not allow."""


class FlowForbidden(FlowError):
    """Completing a user task without the task's role."""


class FlowConflict(FlowError):
    """A change based on a revision that is no longer current; nothing was written."""


class FlowNotFound(FlowError, LookupError):
    """No flow instance (or no such waiting task) with that id."""


# --- restricted scripts ----------------------------------------------------------------------------------------

SAFE_BUILTINS: dict[str, Any] = {
    name: getattr(builtins, name)
    for name in (
        "len", "min", "max", "sum", "round", "abs", "sorted", "str", "int", "float", "bool", "dict", "list",
        "set", "tuple", "any", "all", "range", "enumerate", "zip", "isinstance",
    )
}  # fmt: skip
SAFE_BUILTINS.update({"True": True, "False": False, "None": None})
SCRIPT_GLOBALS: dict[str, Any] = {
    "datetime": _dt.datetime,
    "date": _dt.date,
    "timedelta": _dt.timedelta,
    "Decimal": Decimal,
}
FORBIDDEN_NAMES = frozenset(
    {
        "__import__", "open", "eval", "exec", "compile", "getattr", "setattr", "delattr", "globals", "locals",
        "vars", "input", "breakpoint", "help", "exit", "quit", "memoryview", "type", "object", "super",
        "classmethod", "staticmethod", "property", "dir", "id", "print",
    }
)  # fmt: skip
# Attributes that reach frames, code objects or class hierarchies without a leading underscore.
FORBIDDEN_ATTR_PREFIXES = ("gi_", "f_", "tb_", "cr_", "ag_", "co_", "func_")
FORBIDDEN_ATTRS = frozenset({"mro", "format", "format_map"})


def check_script(source: str, where: str, *, mode: str = "exec") -> None:
    """Raise `ScriptRejected` (naming `where` and the construct) unless `source` is allowed to run."""
    try:
        tree = ast.parse(source or "", mode=mode)
    except SyntaxError as exc:
        raise ScriptRejected(f"{where}: Python syntax error at line {exc.lineno}: {exc.msg}") from None

    def position(node: ast.AST) -> tuple[int, int, int, int]:
        return tuple(getattr(node, k, None) or 0 for k in ("lineno", "col_offset", "end_lineno", "end_col_offset"))

    for node in sorted(ast.walk(tree), key=position):  # report the first offending construct in reading order
        line = getattr(node, "lineno", "?")
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = ", ".join(a.name for a in node.names)
            raise ScriptRejected(f"{where}: imports are not allowed (`import {names}`, line {line})")
        if isinstance(node, ast.Name) and (node.id in FORBIDDEN_NAMES or node.id.startswith("__")):
            raise ScriptRejected(f"{where}: `{node.id}` is not allowed (line {line})")
        if isinstance(node, ast.Attribute):
            attr = node.attr
            if attr.startswith("_") or attr in FORBIDDEN_ATTRS or attr.startswith(FORBIDDEN_ATTR_PREFIXES):
                raise ScriptRejected(f"{where}: attribute `.{attr}` is not allowed (line {line})")
        if isinstance(node, ast.Global | ast.Nonlocal):
            raise ScriptRejected(f"{where}: `global`/`nonlocal` is not allowed (line {line})")
        if isinstance(node, ast.ClassDef | ast.AsyncFunctionDef | ast.Await | ast.Yield | ast.YieldFrom):
            raise ScriptRejected(f"{where}: `{type(node).__name__}` is not allowed (line {line})")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "__" in node.value:
            raise ScriptRejected(f"{where}: strings containing `__` are not allowed (line {line})")


def _make_environment() -> Any:
    from SpiffWorkflow.bpmn.script_engine import TaskDataEnvironment

    class RestrictedEnvironment(TaskDataEnvironment):
        """TaskDataEnvironment whose scripts see only safe builtins and are AST-checked before running."""

        def __init__(self) -> None:
            super().__init__({"__builtins__": dict(SAFE_BUILTINS), **SCRIPT_GLOBALS})

        def evaluate(self, expression: str, context: dict, external_context: dict | None = None) -> Any:
            check_script(expression, f"expression `{expression}`", mode="eval")
            return super().evaluate(expression, context, external_context)

        def execute(self, script: str, context: dict, external_context: dict | None = None) -> bool:
            check_script(script, "script")
            return super().execute(script, context, external_context)

    return RestrictedEnvironment()


def restricted_script_engine(call_service: Callable[[Any, str, dict], Any] | None = None) -> Any:
    """A SpiffWorkflow PythonScriptEngine that AST-checks every script/expression and runs it with safe builtins
    only; service tasks call `call_service(task, operation_name, operation_params)` (refused without one)."""
    from SpiffWorkflow.bpmn.script_engine import PythonScriptEngine

    if call_service is None:

        def call_service(task: Any, operation: str, params: Mapping[str, Any]) -> Any:
            raise FlowError(f"{_task_label(task)} calls `{operation}`, but no service caller is configured")

    class RestrictedScriptEngine(PythonScriptEngine):
        """PythonScriptEngine with the restricted environment; service tasks go to `call_service`."""

        def evaluate(self, task: Any, expression: str, external_context: dict | None = None) -> Any:
            check_script(expression, f"{_task_label(task)}: expression `{expression}`", mode="eval")
            return super().evaluate(task, expression, external_context)

        def execute(self, task: Any, script: str, external_context: dict | None = None) -> bool:
            check_script(script, f"script of {_task_label(task)}")
            return super().execute(task, script, external_context)

        def call_service(self, task: Any, **kwargs: Any) -> str:
            result = call_service(task, kwargs.get("operation_name") or "", kwargs.get("operation_params") or {})
            return json.dumps(result, default=str)

    return RestrictedScriptEngine(environment=_make_environment())


def _task_label(task: Any) -> str:
    spec = task.task_spec
    bpmn_id = getattr(spec, "bpmn_id", None) or spec.name
    name = getattr(spec, "bpmn_name", None)
    return f"task `{bpmn_id}`" + (f" ({name!r})" if name else "")


# --- definitions -----------------------------------------------------------------------------------------------


@dataclass
class FlowDefinition:
    """A parsed BPMN process with ContextLab's roles, forms and service mappings."""

    name: str
    process_id: str
    xml: str
    sha256: str
    spec: Any
    subprocess_specs: dict[str, Any]
    roles: dict[str, str] = field(default_factory=dict)
    forms: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_xml(
        cls,
        xml: str | bytes,
        process_id: str | None = None,
        name: str | None = None,
        *,
        roles: Mapping[str, str] | None = None,
        forms: Mapping[str, list[dict[str, Any]]] | None = None,
        services: Mapping[str, dict[str, Any]] | None = None,
    ) -> FlowDefinition:
        """Parse BPMN XML (raising `BPMNParseError`/`ScriptRejected`/`FlowError`) into a runnable definition."""
        from SpiffWorkflow.bpmn.parser.ValidationException import ValidationException
        from SpiffWorkflow.exceptions import SpiffWorkflowException

        text = xml.decode("utf-8") if isinstance(xml, bytes) else xml
        parser_opts = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
        try:
            root = etree.fromstring(text.strip().encode("utf-8"), parser=parser_opts)
        except etree.XMLSyntaxError as exc:
            line, column = exc.position if exc.position else (exc.lineno, 0)
            raise BPMNParseError(f"malformed BPMN XML at line {line}, column {column}: {exc.msg}") from None
        _check_xml_scripts(root)
        parser = _parser_class()()
        try:
            parser.add_bpmn_xml(root, f"{name or process_id or 'flow'}.bpmn")
            present = parser.get_process_ids()
            all_ids = [p.get("id") for p in root.iter(f"{{{BPMN_NS}}}process")]
            if process_id is None:
                top = [p for p in present if p not in parser.get_process_dependencies()]
                if len(top) != 1:
                    raise BPMNParseError(
                        f"expected exactly one executable process, found {top or 'none'} "
                        f"(processes present: {all_ids or 'none'}); pass process_id"
                    )
                process_id = top[0]
            elif process_id not in present:
                raise BPMNParseError(
                    f"no executable process `{process_id}`; executable processes present: {present or 'none'} "
                    f"(all processes: {all_ids or 'none'})"
                )
            spec = parser.get_spec(process_id)
            subprocess_specs = parser.get_subprocess_specs(process_id)
        except BPMNParseError:
            raise
        except ValidationException as exc:
            raise BPMNParseError(f"SpiffWorkflow cannot parse the process: {exc}") from None
        except SpiffWorkflowException as exc:
            raise BPMNParseError(f"SpiffWorkflow cannot parse the process: {exc}") from None
        defn = cls(
            name=name or process_id,
            process_id=process_id,
            xml=text,
            sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
            spec=spec,
            subprocess_specs=subprocess_specs,
            roles={k: str(v).lower() for k, v in (roles or {}).items()},
            forms={k: [dict(f) for f in v] for k, v in (forms or {}).items()},
            services={k: dict(v) for k, v in (services or {}).items()},
        )
        defn._check_mappings()
        return defn

    @classmethod
    def from_file(cls, path: str | Path, process_id: str | None = None, **kwargs: Any) -> FlowDefinition:
        """`from_xml` on a file's text; the name defaults to the file's stem."""
        path = Path(path)
        kwargs.setdefault("name", path.stem)
        return cls.from_xml(path.read_text(encoding="utf-8"), process_id, **kwargs)

    def _task_specs(self) -> list[Any]:
        specs = list(self.spec.task_specs.values())
        for sub in self.subprocess_specs.values():
            specs.extend(sub.task_specs.values())
        return specs

    def _check_mappings(self) -> None:
        from SpiffWorkflow.bpmn.specs.mixins.service_task import ServiceTask
        from SpiffWorkflow.bpmn.specs.mixins.user_task import UserTask

        by_id = {getattr(s, "bpmn_id", None): s for s in self._task_specs()}
        for mapping, label in ((self.roles, "roles"), (self.forms, "forms"), (self.services, "services")):
            for task_id in mapping:
                if task_id not in by_id:
                    raise FlowError(f"{label}: no task `{task_id}` in process `{self.process_id}`")
        for task_id, fields in self.forms.items():
            if not isinstance(by_id[task_id], UserTask):
                raise FlowError(f"forms: `{task_id}` is not a user task")
            for fld in fields:
                fname = fld.get("name")
                if not isinstance(fname, str) or not fname.isidentifier() or fname.startswith("_"):
                    raise FlowError(f"forms: `{task_id}` has a field with an invalid name {fname!r}")
                if fname in SAFE_BUILTINS or fname in SCRIPT_GLOBALS:
                    raise FlowError(f"forms: field `{fname}` of `{task_id}` shadows a script builtin")
                if fld.get("type", "string") not in FIELD_TYPES:
                    raise FlowError(f"forms: field `{fname}` of `{task_id}` has unknown type {fld.get('type')!r}")
                if fld.get("type") == "select" and not fld.get("options"):
                    raise FlowError(f"forms: select field `{fname}` of `{task_id}` has no options")
        for spec in self._task_specs():
            if not isinstance(spec, ServiceTask):
                continue
            mapped = self.services.get(spec.bpmn_id)
            if mapped is not None:
                if not isinstance(mapped.get("tool"), str) or not mapped["tool"]:
                    raise FlowError(f"services: `{spec.bpmn_id}` needs a `tool` name")
                spec.operation_name = mapped["tool"]
                spec.operation_params = {}
                spec.result_variable = mapped.get("result_var") or f"{spec.bpmn_id}_result"
            elif not getattr(spec, "operation_name", None):
                raise FlowError(
                    f"service task `{spec.bpmn_id}` has no tool: add it to `services` or give it a "
                    "spiffworkflow:serviceTaskOperator"
                )

    def config(self) -> dict[str, Any]:
        """The JSON-able mappings saved with each instance (so a restarted engine can continue it)."""
        return {
            "name": self.name,
            "process_id": self.process_id,
            "sha256": self.sha256,
            "roles": self.roles,
            "forms": self.forms,
            "services": self.services,
        }


def _check_xml_scripts(root: Any) -> None:
    """Reject disallowed scripts, conditions, pre/post scripts and operator parameters before parsing."""
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        tag = etree.QName(element).localname
        ns = etree.QName(element).namespace
        parent = element.getparent()
        owner = parent.get("id") if parent is not None else None
        if ns == BPMN_NS and tag == "script":
            fmt = (parent.get("scriptFormat") or "python").lower() if parent is not None else "python"
            if "python" in fmt:
                name = f" ({parent.get('name')!r})" if parent is not None and parent.get("name") else ""
                check_script(element.text or "", f"script of task `{owner}`{name}")
        elif ns == BPMN_NS and tag in ("conditionExpression", "completionCondition"):
            text = (element.text or "").strip()
            if text:
                check_script(text, f"condition of `{owner}`", mode="eval")
        elif ns == SPIFF_NS and tag in ("preScript", "postScript"):
            task = parent.getparent() if parent is not None else None
            check_script(element.text or "", f"{tag} of task `{task.get('id') if task is not None else '?'}`")
        elif ns == SPIFF_NS and tag == "parameter" and element.get("value") is not None:
            check_script(element.get("value"), f"service parameter `{element.get('id')}`", mode="eval")


def _parser_class() -> Any:
    from SpiffWorkflow.bpmn.parser.BpmnParser import full_tag
    from SpiffWorkflow.spiff.parser.process import SpiffBpmnParser
    from SpiffWorkflow.spiff.parser.task_spec import ServiceTaskParser
    from SpiffWorkflow.spiff.specs.defaults import ServiceTask

    class LenientServiceTaskParser(ServiceTaskParser):
        """A service task without a spiffworkflow operator gets an empty one (filled from `services`)."""

        def create_task(self) -> Any:
            extensions = self.parse_extensions()
            if extensions.get("serviceTaskOperator") is not None:
                return super().create_task()
            return self.spec_class(
                self.spec,
                self.bpmn_id,
                operation_name="",
                operation_params={},
                result_variable=f"{self.bpmn_id}_result",
                prescript=extensions.get("preScript"),
                postscript=extensions.get("postScript"),
                **self.bpmn_attributes,
            )

    class FlowParser(SpiffBpmnParser):
        OVERRIDE_PARSER_CLASSES = {
            **SpiffBpmnParser.OVERRIDE_PARSER_CLASSES,
            full_tag("serviceTask"): (LenientServiceTaskParser, ServiceTask),
        }

    return FlowParser


# --- instances -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowInstance:
    """One flow instance as stored (without SpiffWorkflow's serialised state)."""

    id: str
    app: str | None
    flow: str
    process_id: str
    bpmn_sha256: str
    status: str
    data: dict[str, Any]
    waiting: list[dict[str, Any]]
    started_by: str
    error: str | None
    revision: int
    created_at: _dt.datetime
    updated_at: _dt.datetime


@dataclass(frozen=True)
class TaskView:
    """A user task some instance waits on."""

    instance_id: str
    task_id: str
    name: str
    title: str
    role: str | None
    fields: list[dict[str, Any]]
    data: dict[str, Any]
    app: str | None = None
    flow: str | None = None
    revision: int = 0


def _instance(row: FlowInstanceRow) -> FlowInstance:
    return FlowInstance(
        id=row.id,
        app=row.app,
        flow=row.flow,
        process_id=row.process_id,
        bpmn_sha256=row.bpmn_sha256,
        status=row.status,
        data=dict(row.data or {}),
        waiting=list(row.waiting or []),
        started_by=row.started_by,
        error=row.error,
        revision=row.revision,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _jsonable(value: Any) -> Any:
    """Task data as plain JSON (dates and decimals become strings)."""
    return json.loads(json.dumps(value, default=str))


def render_arguments(arguments: Any, data: Mapping[str, Any]) -> Any:
    """Fill `{{ field }}` references from task data: a string that is exactly one reference keeps the value's
    type; other strings get each reference's text. Only (dotted) names are looked up, nothing is evaluated."""
    if isinstance(arguments, dict):
        return {k: render_arguments(v, data) for k, v in arguments.items()}
    if isinstance(arguments, list):
        return [render_arguments(v, data) for v in arguments]
    if not isinstance(arguments, str):
        return arguments
    whole = _TEMPLATE.fullmatch(arguments.strip())
    if whole:
        return _lookup(data, whole.group(1))
    return _TEMPLATE.sub(lambda m: str(_lookup(data, m.group(1))), arguments)


def _lookup(data: Mapping[str, Any], path: str) -> Any:
    value: Any = data
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        else:
            raise FlowError(f"argument template refers to `{path}`, which is not in the task data")
    return value


class _LenientEncoder(json.JSONEncoder):
    """Task data the serializer has no rule for is stored as its text rather than failing the save."""

    def default(self, o: Any) -> Any:
        return str(o)


class FlowEngine:
    """Runs flow instances in-process and keeps each one's state in the store."""

    def __init__(
        self,
        store: StateStore,
        call_tool: Callable[[str, dict], Any] | None = None,
        publish: Callable[[str, dict], Any] | None = None,
    ) -> None:
        from SpiffWorkflow.bpmn.serializer.workflow import BpmnWorkflowSerializer
        from SpiffWorkflow.spiff.serializer.config import SPIFF_CONFIG

        self.store = store
        self.call_tool = call_tool
        self.publish = publish
        registry = BpmnWorkflowSerializer.configure(SPIFF_CONFIG)
        registry.register(Decimal, lambda v: {"value": str(v)}, lambda v: Decimal(v["value"]))
        registry.register(_dt.date, lambda v: {"value": v.isoformat()}, lambda v: _dt.date.fromisoformat(v["value"]))
        self.serializer = BpmnWorkflowSerializer(registry, json_encoder_cls=_LenientEncoder)

    # -- public API --

    def start(
        self,
        defn: FlowDefinition,
        data: Mapping[str, Any] | None = None,
        started_by: str = "anonymous",
        app: str | None = None,
    ) -> FlowInstance:
        """Create an instance, run it until it waits on a user task, completes or fails, and save it."""
        from SpiffWorkflow.bpmn.workflow import BpmnWorkflow

        initial = _jsonable(dict(data or {}))
        for key in initial:
            if not str(key).isidentifier() or key in SAFE_BUILTINS or key in SCRIPT_GLOBALS or key.startswith("_"):
                raise FlowError(f"data key {key!r} is not allowed (not a name, or shadows a script builtin)")
        config = defn.config()
        workflow = BpmnWorkflow(
            copy.deepcopy(defn.spec),
            copy.deepcopy(defn.subprocess_specs),
            script_engine=self._script_engine(config),
        )
        for ready in workflow.get_tasks(state=_state().READY):  # the Start task: its data flows to every task
            ready.data.update(copy.deepcopy(initial))
        instance_id = uuid.uuid4().hex
        now = _now()
        error = self._advance(workflow)
        state, status, snapshot, waiting = self._capture(workflow, config, error)
        row = FlowInstanceRow(
            id=instance_id,
            app=app,
            flow=defn.name,
            process_id=defn.process_id,
            bpmn_sha256=defn.sha256,
            status=status,
            state=state,
            data=snapshot,
            waiting=waiting,
            started_by=started_by,
            error=error,
            revision=0,
            created_at=now,
            updated_at=now,
        )
        with Session(self.store.engine) as session, session.begin():
            session.add(row)
        instance = self.get(instance_id)
        self._emit("flow.started", instance)
        self._emit_status(instance, [])
        return instance

    def refresh(self, instance_id: str) -> FlowInstance:
        """Run engine steps of a `running` instance again (e.g. after a timer event became due) and save."""
        row = self._row(instance_id)
        if row.status != "running":
            raise FlowError(f"flow instance {instance_id} is {row.status}, not running")
        config = row.state["definition"]
        workflow = self._load(row.state, config)
        workflow.refresh_timers()
        instance = self._save(row, workflow, config, self._advance(workflow))
        self._emit_status(instance, [])
        return instance

    def get(self, instance_id: str) -> FlowInstance:
        """The stored instance; `FlowNotFound` if there is none."""
        return _instance(self._row(instance_id))

    def list(self, app: str | None = None, status: str | None = None) -> list[FlowInstance]:
        """Instances, newest first, optionally only of one app and/or status."""
        query = select(FlowInstanceRow).order_by(FlowInstanceRow.created_at.desc())
        if app is not None:
            query = query.where(FlowInstanceRow.app == app)
        if status is not None:
            query = query.where(FlowInstanceRow.status == status)
        with Session(self.store.engine) as session:
            return [_instance(row) for row in session.scalars(query)]

    def pending_tasks(self, roles: set[str] | None = None) -> list[TaskView]:
        """User tasks of waiting instances; with `roles`, only those whose role is one of them (or unassigned)."""
        wanted = {r.lower() for r in roles} if roles is not None else None
        views = []
        for instance in self.list(status="waiting"):
            for entry in instance.waiting:
                role = entry.get("role")
                if wanted is not None and role is not None and role not in wanted:
                    continue
                views.append(
                    TaskView(
                        instance_id=instance.id,
                        task_id=entry["id"],
                        name=entry["name"],
                        title=entry["title"],
                        role=role,
                        fields=list(entry.get("fields") or []),
                        data=dict(entry.get("data") or instance.data),
                        app=instance.app,
                        flow=instance.flow,
                        revision=instance.revision,
                    )
                )
        return views

    def complete(
        self,
        instance_id: str,
        task_id: str,
        values: Mapping[str, Any] | None,
        user: str,
        roles: set[str],
        revision: int | None = None,
    ) -> FlowInstance:
        """Complete a waiting user task with validated form `values`, run on, and save with revision+1.

        `task_id` is the Spiff task UUID (or the task's BPMN id). A task whose role is None (no lane, no mapping)
        may be completed by anyone; otherwise `roles` must contain it (`FlowForbidden`). Values must match the
        task's form fields (`FlowError` naming the field; unknown fields are refused). A `revision` other than the
        stored one, or a concurrent change while running, is a `FlowConflict` and nothing is written."""
        row = self._row(instance_id)
        if revision is not None and revision != row.revision:
            raise FlowConflict(f"flow instance {instance_id} is at revision {row.revision}, not {revision}")
        if row.status != "waiting":
            raise FlowError(f"flow instance {instance_id} is {row.status}, not waiting for a task")
        entry = next((w for w in row.waiting or [] if w.get("id") == task_id or w.get("name") == task_id), None)
        if entry is None:
            raise FlowNotFound(f"flow instance {instance_id} is not waiting for task {task_id}")
        role = entry.get("role")
        if role is not None and role not in {r.lower() for r in roles}:
            raise FlowForbidden(f"task `{entry['name']}` needs role `{role}`; {user} has {sorted(roles) or 'none'}")
        clean = validate_values(entry.get("fields") or [], values or {}, entry["name"])
        config = row.state["definition"]
        workflow = self._load(row.state, config)
        task = workflow.get_task_from_id(uuid.UUID(entry["id"]))
        if task is None or task.state != _state().READY:
            raise FlowConflict(f"task {task_id} of flow instance {instance_id} is no longer ready")
        task.data.update(clean)
        task.data.setdefault("completed_by", {})
        if isinstance(task.data["completed_by"], dict):
            task.data["completed_by"][entry["name"]] = user
        error = None
        try:
            task.run()
        except Exception as exc:  # noqa: BLE001 - recorded on the instance
            error = _describe_error(exc)
        if error is None:
            error = self._advance(workflow)
        instance = self._save(row, workflow, config, error)
        self._emit_status(instance, row.waiting or [])
        return instance

    def retry(self, instance_id: str, revision: int | None = None) -> FlowInstance:
        """Run a failed instance's failed task(s) again (e.g. after the tool was fixed) and save."""
        from SpiffWorkflow.util.task import TaskState

        row = self._row(instance_id)
        if revision is not None and revision != row.revision:
            raise FlowConflict(f"flow instance {instance_id} is at revision {row.revision}, not {revision}")
        if row.status != "failed":
            raise FlowError(f"flow instance {instance_id} is {row.status}; only failed instances can be retried")
        config = row.state["definition"]
        workflow = self._load(row.state, config)
        for task in workflow.get_tasks(state=TaskState.ERROR):
            task._set_state(TaskState.READY)
        error = self._advance(workflow)
        instance = self._save(row, workflow, config, error)
        self._emit_status(instance, [])
        return instance

    def cancel(self, instance_id: str, revision: int | None = None) -> FlowInstance:
        """Cancel an unfinished instance (its workflow is cancelled too) and save."""
        row = self._row(instance_id)
        if revision is not None and revision != row.revision:
            raise FlowConflict(f"flow instance {instance_id} is at revision {row.revision}, not {revision}")
        if row.status in ("completed", "cancelled"):
            raise FlowError(f"flow instance {instance_id} is already {row.status}")
        config = row.state["definition"]
        workflow = self._load(row.state, config)
        workflow.cancel()
        instance = self._save(row, workflow, config, None, status="cancelled")
        self._emit("flow.cancelled", instance)
        return instance

    # -- internals --

    def _row(self, instance_id: str) -> FlowInstanceRow:
        with Session(self.store.engine) as session:
            row = session.get(FlowInstanceRow, instance_id)
            if row is None:
                raise FlowNotFound(f"no flow instance {instance_id}")
            session.expunge(row)
            return row

    def _script_engine(self, config: Mapping[str, Any]) -> Any:
        services = config.get("services") or {}

        def call_service(task: Any, operation: str, params: Mapping[str, Any]) -> Any:
            mapped = services.get(task.task_spec.bpmn_id)
            if mapped is not None:
                tool = mapped["tool"]
                arguments = render_arguments(mapped.get("arguments") or {}, task.data)
            else:  # spiffworkflow:serviceTaskOperator: parameters are already-evaluated expressions
                tool = operation
                arguments = {k: (v.get("value") if isinstance(v, dict) else v) for k, v in params.items()}
            if self.call_tool is None:
                raise FlowError(f"{_task_label(task)} calls tool `{tool}`, but this engine has no call_tool")
            return self.call_tool(tool, _jsonable(arguments))

        return restricted_script_engine(call_service)

    def _load(self, state: Mapping[str, Any], config: Mapping[str, Any]) -> Any:
        workflow = self.serializer.deserialize_json(json.dumps(state["workflow"]))  # migrates older versions
        engine = self._script_engine(config)
        workflow.script_engine = engine
        for sub in workflow.subprocesses.values():
            sub.script_engine = engine
        return workflow

    def _advance(self, workflow: Any) -> str | None:
        """Run engine steps; the error text if a task failed (the workflow keeps the failed task in ERROR)."""
        from SpiffWorkflow.util.task import TaskState

        try:
            for _ in range(100):  # a timer that fired during refresh_timers leaves an engine task READY
                workflow.do_engine_steps()
                if not any(not t.task_spec.manual for t in workflow.get_tasks(state=TaskState.READY)):
                    break
        except Exception as exc:  # noqa: BLE001 - recorded on the instance
            log.info("flow step failed: %s", exc)
            return _describe_error(exc)
        return None

    def _capture(
        self, workflow: Any, config: Mapping[str, Any], error: str | None, status: str | None = None
    ) -> tuple[dict[str, Any], str, dict[str, Any], list[dict[str, Any]]]:
        from SpiffWorkflow.util.task import TaskState

        serialised = json.loads(self.serializer.serialize_json(workflow))
        waiting = []
        if error is None and status is None:
            for task in workflow.get_tasks(state=TaskState.READY, manual=True):
                spec = task.task_spec
                bpmn_id = getattr(spec, "bpmn_id", None) or spec.name
                lane = getattr(spec, "lane", None)
                role = config["roles"].get(bpmn_id) or (lane.lower() if lane else None)
                waiting.append(
                    {
                        "id": str(task.id),
                        "name": bpmn_id,
                        "title": getattr(spec, "bpmn_name", None) or bpmn_id,
                        "role": role,
                        "fields": config["forms"].get(bpmn_id, []),
                        "data": _jsonable(task.data),
                    }
                )
        if status is None:
            if error is not None:
                status = "failed"
            elif workflow.is_completed():
                status = "completed"
            elif waiting:
                status = "waiting"
            else:
                status = "running"
        snapshot = _snapshot(workflow)
        return {"workflow": serialised, "definition": dict(config)}, status, snapshot, waiting

    def _save(
        self,
        row: FlowInstanceRow,
        workflow: Any,
        config: Mapping[str, Any],
        error: str | None,
        status: str | None = None,
    ) -> FlowInstance:
        state, status, snapshot, waiting = self._capture(workflow, config, error, status)
        with Session(self.store.engine) as session, session.begin():
            result = session.execute(
                update(FlowInstanceRow)
                .where(FlowInstanceRow.id == row.id, FlowInstanceRow.revision == row.revision)
                .values(
                    state=state,
                    status=status,
                    data=snapshot,
                    waiting=waiting,
                    error=error,
                    revision=row.revision + 1,
                    updated_at=_now(),
                )
            )
            if result.rowcount != 1:
                raise FlowConflict(f"flow instance {row.id} changed since revision {row.revision}; reload and retry")
        return self.get(row.id)

    def _emit(self, topic: str, instance: FlowInstance, **extra: Any) -> None:
        if self.publish is None:
            return
        payload = {
            "instance_id": instance.id,
            "app": instance.app,
            "flow": instance.flow,
            "status": instance.status,
            "revision": instance.revision,
            **extra,
        }
        try:
            self.publish(topic, payload)
        except Exception:  # noqa: BLE001 - a broken subscriber must not break the flow
            log.exception("publishing %s failed", topic)

    def _emit_status(self, instance: FlowInstance, before: Iterable[Mapping[str, Any]]) -> None:
        old = {w.get("id") for w in before}
        for entry in instance.waiting:
            if entry["id"] not in old:
                task = {k: entry[k] for k in ("id", "name", "title", "role", "fields")}
                self._emit("flow.task_waiting", instance, task=task)
        if instance.status == "completed":
            self._emit("flow.completed", instance, data=instance.data)
        elif instance.status == "failed":
            self._emit("flow.failed", instance, error=instance.error)


def validate_values(fields: list[Mapping[str, Any]], values: Mapping[str, Any], task: str) -> dict[str, Any]:
    """Check submitted values against a task's form fields; the cleaned values, or `FlowError` naming the field."""
    known = {f["name"]: f for f in fields}
    for key in values:
        if key not in known:
            raise FlowError(f"task `{task}` has no field `{key}`" + (f" (fields: {sorted(known)})" if known else ""))
    clean: dict[str, Any] = {}
    for name, fld in known.items():
        value = values.get(name)
        if value is None or value == "":
            if fld.get("required"):
                raise FlowError(f"field `{name}` of task `{task}` is required")
            clean[name] = None
            continue
        clean[name] = _coerce(fld, value, task)
    return clean


def _coerce(fld: Mapping[str, Any], value: Any, task: str) -> Any:
    name, kind = fld["name"], fld.get("type", "string")
    bad = FlowError(f"field `{name}` of task `{task}` must be {kind}, got {value!r}")
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise bad
    if kind == "string":
        if isinstance(value, str):
            return value
        raise bad
    if kind in ("number", "integer"):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                value = float(value) if kind == "number" else int(value)
            except ValueError:
                raise bad from None
        if kind == "integer":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int):
                raise bad
        elif not isinstance(value, int | float):
            raise bad
        return value
    options = [o.get("value") if isinstance(o, Mapping) else o for o in fld.get("options") or []]
    if value not in options:
        raise FlowError(f"field `{name}` of task `{task}` must be one of {options}, got {value!r}")
    return value


def _snapshot(workflow: Any) -> dict[str, Any]:
    """The data the process holds now: workflow data at the end, else the data of the latest task."""
    from SpiffWorkflow.util.task import TaskState

    if workflow.is_completed() and workflow.data:
        return _jsonable(workflow.data)
    for state in (TaskState.READY, TaskState.ERROR, TaskState.COMPLETED):
        tasks = workflow.get_tasks(state=state)
        if tasks:
            latest = max(tasks, key=lambda t: t.last_state_change)
            return _jsonable(latest.data)
    return _jsonable(workflow.data)


def _describe_error(exc: BaseException) -> str:
    cause = exc
    while not isinstance(cause, ScriptRejected | FlowError) and cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(exc)
    if cause is not exc and str(cause) not in text:
        text = f"{text}: {cause}"
    return f"{type(cause).__name__}: {text}"


def _state() -> Any:
    from SpiffWorkflow.util.task import TaskState

    return TaskState


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)
