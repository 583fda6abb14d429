"""The gateway's access policy: who may list and call which tools, rate limits and DLP settings.

The policy is a YAML file (by default `<workspace>/.contextlab/policy.yaml`, set by
`ContextLab.policy_file`) validated against `schemas/policy.schema.json`; docs/policy.md explains it.

Evaluation: rules are tried in file order and the first rule whose `actions`, `caller` and `target` all
match decides; when none matches, `default` decides (deny unless the file says `default: allow`).

Matching:

- Every key of `caller:` and `target:` must match. A list means "any of"; strings are case-sensitive
  globs (`*`, `?`, `[...]`). When the attribute itself is a list (a caller's roles), any item may match.
- A missing attribute never matches, not even `"*"`: `"*"` means "present and not empty". So
  `roles: "*"` means "has at least one role"; leave `caller:` out to match every caller.
- A target value `${caller.<attribute>}` matches when the target's attribute equals the caller's,
  compared literally (never as a glob); it does not match when either side is missing or empty.
- `sensitivity` takes levels, a list of levels, or `{at_least: ..., at_most: ...}` on the order of
  `SENSITIVITY_LEVELS`. A target without a sensitivity is `internal`; an unknown level counts as `secret`.
- Caller keys `name`, `kind`, `roles` and `tenant` read the `Caller` fields (`tenant` falls back to `org`);
  target keys `name` (namespaced tool name), `server`, `tool`, `upstream` and `sensitivity` read the
  `ToolTarget` fields. Any other key reads `attributes[key]`.

The built-in policy (`DEFAULT_POLICY_YAML`) is in force when there is no policy file: Owners, Admins and
Operators may list and call everything; Viewers may not list or call tools on confidential or secret
targets; any other caller with at least one role is allowed; callers without roles are denied.

`PolicyEngine` keeps the policy in force and reloads the file when it changes. A file that fails to
load never replaces a working policy; if there is none yet (the file was bad at start), everything is
denied until the file is fixed (`deny:policy-file-invalid`).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import translate
from functools import cache
from importlib import resources
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple

import jsonschema
import yaml
from jsonschema.exceptions import ValidationError, best_match

from contextlab.extension.principals import SENSITIVITY_LEVELS, Caller, ToolTarget
from contextlab.extension.ratelimit import RateLimitRule

ACTIONS = ("list", "call")
DLP_DETECTORS = ("email", "phone", "national_id", "credit_card", "secret")
DLP_TARGETS = ("arguments", "results")
MAX_POLICY_BYTES = 1024 * 1024

DEFAULT_POLICY_YAML = """\
# ContextLab's built-in policy, in force when there is no policy file.
version: 1
default: deny                 # callers without roles
rules:
  - name: admins
    description: Owners and Admins may list and call every tool.
    effect: allow
    caller: {roles: [Owner, Admin]}
  - name: operators
    description: Operators may list and call every tool.
    effect: allow
    caller: {roles: Operator}
  - name: viewers-no-confidential
    description: Viewers may not list or call tools on confidential or secret servers.
    effect: deny
    caller: {roles: Viewer}
    target: {sensitivity: {at_least: confidential}}
  - name: any-role
    description: Any other caller with a role may list and call tools.
    effect: allow
    caller: {roles: "*"}
"""

_DENY_ALL_YAML = """\
version: 1
default: deny
rules:
  - name: policy-file-invalid
    description: The policy file could not be loaded; everything is denied until it is fixed.
    effect: deny
"""

_CALLER_KEYS = ("name", "kind", "roles", "org", "project", "tenant")
_TARGET_KEYS = ("name", "server", "tool", "upstream", "sensitivity", "org", "project", "owner")
_REF_RE = re.compile(r"^\$\{caller\.([A-Za-z_][A-Za-z0-9_.-]*)\}$")
_LEVEL_RANK = {level: rank for rank, level in enumerate(SENSITIVITY_LEVELS)}
_COLLECTIONS = (list, tuple, set, frozenset)

log = logging.getLogger(__name__)


class PolicyError(ValueError):
    """A policy file that cannot be used: says where (file, line, JSON path) and what to fix."""

    def __init__(
        self,
        detail: str,
        *,
        source: str = "<policy>",
        path: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.detail = detail
        self.source = source
        self.path = path
        self.line = line
        self.column = column
        where = source
        if line is not None:
            where += f", line {line}" + (f", column {column}" if column is not None else "")
        if path:
            where += f", at {path}"
        super().__init__(f"{where}: {detail}")


@dataclass(frozen=True)
class Decision:
    """The outcome of one policy decision; `label` (`allow:same-org`, `deny:default`) goes in audit rows."""

    allowed: bool
    rule: str
    reason: str

    @property
    def label(self) -> str:
        return f"{'allow' if self.allowed else 'deny'}:{self.rule}"


class CustomDetector(NamedTuple):
    name: str
    pattern: re.Pattern[str]
    replacement: str


@dataclass(frozen=True)
class DLPSettings:
    """Which detectors run and on what: `detectors` are built-in detector names (see `DLP_DETECTORS`)."""

    detectors: tuple[str, ...] = DLP_DETECTORS
    custom: tuple[CustomDetector, ...] = ()
    apply_to: tuple[str, ...] = DLP_TARGETS

    @property
    def arguments(self) -> bool:
        """Whether tool-call arguments are scanned."""
        return "arguments" in self.apply_to and self.enabled

    @property
    def results(self) -> bool:
        """Whether tool results are scanned."""
        return "results" in self.apply_to and self.enabled

    @property
    def enabled(self) -> bool:
        return bool(self.detectors or self.custom) and bool(self.apply_to)


CallerCondition = Callable[[Caller], bool]
TargetCondition = Callable[[Caller, ToolTarget], bool]


@dataclass(frozen=True, eq=False)
class PolicyRule:
    """One parsed rule; its conditions are compiled closures, all of which must hold."""

    name: str
    effect: str
    actions: frozenset[str]
    description: str
    decision: Decision
    caller_conditions: tuple[CallerCondition, ...] = field(repr=False)
    target_conditions: tuple[TargetCondition, ...] = field(repr=False)

    @property
    def unconditional(self) -> bool:
        return not self.caller_conditions and not self.target_conditions

    def matches_caller(self, caller: Caller) -> bool:
        return all(condition(caller) for condition in self.caller_conditions)

    def matches(self, caller: Caller, target: ToolTarget) -> bool:
        return self.matches_caller(caller) and all(condition(caller, target) for condition in self.target_conditions)


@dataclass(frozen=True, eq=False)
class Policy:
    """A parsed, immutable policy. Build it with `Policy.parse` or `Policy.default`."""

    source: str
    sha256: str
    default_effect: str
    rules: tuple[PolicyRule, ...]
    rate_limits: tuple[RateLimitRule, ...] = ()
    dlp: DLPSettings = field(default_factory=DLPSettings)
    warnings: tuple[str, ...] = ()
    _by_action: Mapping[str, tuple[PolicyRule, ...]] = field(init=False, repr=False)
    _default_decision: Decision = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_action = {action: tuple(r for r in self.rules if action in r.actions) for action in ACTIONS}
        object.__setattr__(self, "_by_action", by_action)
        default = Decision(
            self.default_effect == "allow", "default", f"no rule matched; the default is {self.default_effect}"
        )
        object.__setattr__(self, "_default_decision", default)

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, *, source: str = "<policy>") -> Policy:
        """Parse and validate a policy file's text; raises PolicyError naming the line and what to fix."""
        document, root = _load_yaml(text, source)
        _validate(document, root, source)
        return _build(document, root, text, source)

    @classmethod
    def default(cls) -> Policy:
        """The built-in policy (see the module docstring); in force when no policy file exists."""
        return _builtin(DEFAULT_POLICY_YAML, "<built-in default policy>")

    @classmethod
    def deny_all(cls) -> Policy:
        """Denies everything with `deny:policy-file-invalid`; in force while a bad file has nothing to fall back to."""
        return _builtin(_DENY_ALL_YAML, "<deny-all policy>")

    # -- decisions ---------------------------------------------------------------------------------
    def decide(self, caller: Caller, target: ToolTarget, action: str) -> Decision:
        """The first matching rule's decision for `action` ("list" or "call"), else the default."""
        try:
            rules = self._by_action[action]
        except KeyError:
            raise ValueError(f"unknown policy action {action!r}; expected one of {ACTIONS}") from None
        for rule in rules:
            if _holds(rule, caller, target):
                return rule.decision
        return self._default_decision

    def allows_list(self, caller: Caller, targets: Iterable[ToolTarget]) -> list[ToolTarget]:
        """The targets `caller` may list, in their order. Caller conditions are evaluated once, not per target."""
        rules = [rule for rule in self._by_action["list"] if rule.matches_caller(caller)]
        default = self._default_decision.allowed
        listed = []
        for target in targets:
            allowed = default
            for rule in rules:
                for condition in rule.target_conditions:
                    if not condition(caller, target):
                        break
                else:
                    allowed = rule.decision.allowed
                    break
            if allowed:
                listed.append(target)
        return listed


def _holds(rule: PolicyRule, caller: Caller, target: ToolTarget) -> bool:
    # Plain loops: this runs for every listed tool and every call.
    for condition in rule.caller_conditions:
        if not condition(caller):
            return False
    for target_condition in rule.target_conditions:
        if not target_condition(caller, target):
            return False
    return True


@cache
def _builtin(text: str, source: str) -> Policy:
    return Policy.parse(text, source=source)


# -- the engine: the policy in force -------------------------------------------------------------------
class PolicyEngine:
    """Holds the policy in force and reloads its file when it changes.

    Without a path, or while the file does not exist, `Policy.default()` is in force. A file that fails
    to load leaves the previous policy in force and sets `error`; a bad file at start leaves
    `Policy.deny_all()` in force. Readers take `engine.policy` once per request: swapping it is atomic.
    """

    def __init__(self, path: Path | None, *, logger: logging.Logger | None = None) -> None:
        self._path = Path(path) if path is not None else None
        self._log = logger or log
        self._lock = threading.Lock()
        self._policy = Policy.default()
        self._loaded_at = datetime.now(UTC)
        self._stamp: tuple[int, int, int] | None = None  # (mtime_ns, size, inode) of the file last read
        self._from_file = False
        self.error: str | None = None
        self.error_at: datetime | None = None
        if self._path is not None and self._path.exists():
            self._policy = Policy.deny_all()  # until the file loads
            self.reload(force=True)

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def loaded_at(self) -> datetime:
        return self._loaded_at

    def reload(self, *, force: bool = False) -> bool:
        """Re-read the file if it changed (or always, when `force`); True if a new policy came into force.

        On failure the policy in force stays, `error` and `error_at` say why and since when, and the
        error is logged (once, until it changes).
        """
        if self._path is None:
            return False
        with self._lock:
            try:
                info = self._path.stat()
            except FileNotFoundError:
                return self._file_missing()
            except OSError as exc:
                return self._fail(f"{self._path}: cannot read the policy file: {exc.strerror or exc}")
            stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
            if stamp == self._stamp and not force:
                return False
            self._stamp = stamp
            if info.st_size > MAX_POLICY_BYTES:
                return self._fail(f"{self._path}: the policy file is larger than {MAX_POLICY_BYTES} bytes")
            try:
                text = self._path.read_bytes().decode("utf-8-sig")
            except (OSError, UnicodeDecodeError) as exc:
                return self._fail(f"{self._path}: cannot read the policy file: {exc}")
            try:
                policy = Policy.parse(text, source=str(self._path))
            except PolicyError as exc:
                return self._fail(str(exc))
            self._policy = policy
            self._from_file = True
            self._loaded_at = datetime.now(UTC)
            self.error = None
            self.error_at = None
            self._log.info("Policy loaded from %s (sha256 %s).", self._path, policy.sha256[:12])
            for warning in policy.warnings:
                self._log.warning("Policy %s: %s", self._path, warning)
            return True

    def status(self) -> dict[str, Any]:
        policy = self._policy
        return {
            "path": str(self._path) if self._path is not None else None,
            "source": policy.source,
            "sha256": policy.sha256,
            "loaded_at": self._loaded_at.isoformat(),
            "error": self.error,
            "error_at": self.error_at.isoformat() if self.error_at else None,
            "rules": len(policy.rules),
            "rate_limits": len(policy.rate_limits),
            "warnings": list(policy.warnings),
        }

    def _file_missing(self) -> bool:
        if self._from_file:
            if self._stamp is not None:
                self._stamp = None
                # Editors may delete and rewrite a file; keeping the last policy avoids a window of the default.
                return self._fail(f"{self._path}: the policy file was removed; the last loaded policy stays in force")
            return False
        self._stamp = None
        if self._policy is Policy.default():
            return False
        # The bad file that put deny-all in force is gone: without a file, the built-in default applies.
        self._policy = Policy.default()
        self._loaded_at = datetime.now(UTC)
        self.error = None
        self.error_at = None
        self._log.info("Policy file %s removed; the built-in default policy is in force.", self._path)
        return True

    def _fail(self, message: str) -> bool:
        if message != self.error:
            self.error = message
            self.error_at = datetime.now(UTC)
            if self._policy is Policy.deny_all():
                self._log.error("%s (every tool is denied until the policy file is fixed)", message)
            else:
                self._log.warning("%s (the previous policy stays in force)", message)
        return False


# -- YAML loading ---------------------------------------------------------------------------------------
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _load_yaml(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _check_keys(root, source)
        document = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        raise PolicyError(
            f"YAML syntax error: {problem}",
            source=source,
            line=mark.line + 1 if mark else None,
            column=mark.column + 1 if mark else None,
        ) from exc
    except yaml.YAMLError as exc:
        raise PolicyError(f"YAML syntax error: {exc}", source=source) from exc
    finally:
        loader.dispose()
    if document is None:
        raise PolicyError("the policy file is empty; start it with `version: 1`", source=source)
    return document, root


def _check_keys(node: yaml.Node, source: str) -> None:
    """Mapping keys must be strings and appear once (YAML would silently keep the last duplicate)."""
    seen_nodes: set[int] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if id(current) in seen_nodes:
            continue
        seen_nodes.add(id(current))
        if isinstance(current, yaml.MappingNode):
            keys: dict[str, int] = {}
            for key_node, value_node in current.value:
                stack.append(value_node)
                if key_node.tag == _MERGE_TAG:
                    continue
                line = key_node.start_mark.line + 1
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
                    raise PolicyError(
                        "keys must be plain strings (quote keys such as yes, no, on, off or numbers)",
                        source=source,
                        line=line,
                    )
                if key_node.value in keys:
                    raise PolicyError(
                        f"duplicate key '{key_node.value}' (first on line {keys[key_node.value]}); keep one",
                        source=source,
                        line=line,
                    )
                keys[key_node.value] = line
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)


def _locate(root: yaml.Node | None, path: Sequence[str | int], *, key: bool = False) -> int | None:
    """The 1-based line of the node at `path` (of its key when `key`), or of the deepest node found."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for index, part in enumerate(path):
        last = index == len(path) - 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == part:
                    node = key_node if (last and key) else value_node
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            return line
        line = node.start_mark.line + 1
    return line


def _json_path(path: Iterable[str | int]) -> str:
    out = "$"
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(part)}]"
    return out


# -- schema validation ---------------------------------------------------------------------------------
def policy_schema() -> dict[str, Any]:
    """The published JSON Schema (2020-12) of policy files."""
    return json.loads(_schema_text())


@cache
def _schema_text() -> str:
    return resources.files("contextlab.extension").joinpath("schemas/policy.schema.json").read_text("utf-8")


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(policy_schema())


_RATE_HINT = "write the rate as N/s, N/m or N/h, for example '20/s'"
_PATTERN_HINTS = {
    "rate": _RATE_HINT,
    "name": "names use letters, digits and _ . : - and start with a letter or digit",
}
_VALUE_HINTS = {
    "rate": _RATE_HINT,
    "roles": "roles are Owner, Admin, Operator, Viewer or '*'",
    "sensitivity": (
        f"use a level ({', '.join(SENSITIVITY_LEVELS)}), '*', a list of levels, "
        "or {at_least: <level>} and/or {at_most: <level>}"
    ),
}


def _validate(document: Any, root: yaml.Node | None, source: str) -> None:
    errors = list(_validator().iter_errors(document))
    if not errors:
        return
    error = best_match(errors)
    path = list(error.absolute_path)
    detail, path, on_key = _describe(error, path)
    more = len(errors) - 1
    if more:
        detail += f" ({more} more problem{'s' if more > 1 else ''} found)"
    raise PolicyError(detail, source=source, path=_json_path(path), line=_locate(root, path, key=on_key))


def _describe(error: ValidationError, path: list[str | int]) -> tuple[str, list[str | int], bool]:
    """A plain-words message for one schema error, the path to point at, and whether it is a key."""
    kind = error.validator
    last = next((part for part in reversed(path) if isinstance(part, str)), "")
    hint: str | None = None
    if kind == "pattern":
        hint = "detector names use lower-case letters, digits and _" if "custom" in path else _PATTERN_HINTS.get(last)
    elif kind != "enum":  # an enum error lists the choices already
        hint = _VALUE_HINTS.get(last)
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        allowed = list(error.schema.get("properties", {}))
        extra = next((k for k in error.instance if k not in allowed), "?")
        close = difflib.get_close_matches(str(extra), allowed, n=1, cutoff=0.6)
        detail = f"unknown key '{extra}'"
        if close:
            detail += f"; did you mean '{close[0]}'?"
        detail += f" Allowed keys here: {', '.join(allowed)}."
        return detail, [*path, extra], True
    if kind == "required" and isinstance(error.instance, dict):
        missing = [name for name in error.validator_value if name not in error.instance]
        detail = f"missing required key '{missing[0]}'"
        if missing[0] == "version":
            detail += "; start the file with `version: 1`"
        return detail, path, False
    if "propertyNames" in error.absolute_schema_path:
        key = error.instance if isinstance(error.instance, str) else "?"
        detail = f"invalid key {key!r}: attribute names use letters, digits and _ . - and start with a letter or _"
        return detail, [*path, key], True
    if kind == "const":
        detail = f"must be {json.dumps(error.validator_value)}, not {json.dumps(error.instance, default=str)}"
    elif kind == "enum":
        choices = ", ".join(json.dumps(v) for v in error.validator_value)
        detail = f"{json.dumps(error.instance, default=str)} is not allowed here; use one of {choices}"
    elif kind == "type":
        detail = f"expected {_type_words(error.validator_value)}, not {_type_words(_json_type(error.instance))}"
    elif kind in ("anyOf", "oneOf"):
        detail = f"{json.dumps(error.instance, default=str)} does not have an allowed form"
        hint = hint or "use a string or a list of strings"
    else:
        detail = error.message
    if hint and hint not in detail:
        detail += f"; {hint}"
    return detail, path, False


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _type_words(kind: str | list[str]) -> str:
    words = {"object": "a mapping", "array": "a list", "string": "a string", "null": "nothing (null)"}
    kinds = [kind] if isinstance(kind, str) else kind
    return " or ".join(words.get(k, f"a {k}") for k in kinds)


# -- building the policy ----------------------------------------------------------------------------------
def _build(document: dict[str, Any], root: yaml.Node | None, text: str, source: str) -> Policy:
    def fail(detail: str, path: list[str | int]) -> PolicyError:
        return PolicyError(detail, source=source, path=_json_path(path), line=_locate(root, path))

    warnings: list[str] = []
    rules: list[PolicyRule] = []
    names: dict[str, int] = {}
    for index, spec in enumerate(document.get("rules", [])):
        path: list[str | int] = ["rules", index]
        name = spec["name"]
        if name == "default":
            raise fail("'default' is reserved for the default decision; rename the rule", [*path, "name"])
        if name in names:
            raise fail(
                f"duplicate rule name '{name}' (also rules[{names[name]}]); names must be unique", [*path, "name"]
            )
        names[name] = index
        caller_conditions = [
            _caller_condition(key, value, fail, [*path, "caller", key], warnings)
            for key, value in spec.get("caller", {}).items()
        ]
        target_conditions = [
            _target_condition(key, value, fail, [*path, "target", key], warnings)
            for key, value in spec.get("target", {}).items()
        ]
        effect = spec["effect"]
        description = spec.get("description", "")
        reason = f"matched rule '{name}'" + (f": {description}" if description else "")
        rules.append(
            PolicyRule(
                name=name,
                effect=effect,
                actions=frozenset(spec.get("actions", ACTIONS)),
                description=description,
                decision=Decision(effect == "allow", name, reason),
                caller_conditions=tuple(c for c in caller_conditions if c is not None),
                target_conditions=tuple(c for c in target_conditions if c is not None),
            )
        )
    warnings.extend(_shadowed(rules))
    default_effect = document.get("default", "deny")
    if not rules and default_effect == "deny":
        warnings.append("there are no rules and the default is deny: every tool is denied")

    limits: list[RateLimitRule] = []
    limit_names: set[str] = set()
    for index, spec in enumerate(document.get("rate_limits", [])):
        path = ["rate_limits", index]
        if spec["name"] in limit_names:
            raise fail(f"duplicate rate limit name '{spec['name']}'; names must be unique", [*path, "name"])
        limit_names.add(spec["name"])
        try:
            limits.append(
                RateLimitRule.from_spec(spec["name"], spec["per"], spec["rate"], spec.get("burst"), spec.get("match"))
            )
        except ValueError as exc:
            raise fail(str(exc), [*path, "rate"]) from exc

    return Policy(
        source=source,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        default_effect=default_effect,
        rules=tuple(rules),
        rate_limits=tuple(limits),
        dlp=_dlp(document.get("dlp", {}), fail),
        warnings=tuple(warnings),
    )


def _dlp(spec: dict[str, Any], fail: Callable[[str, list[str | int]], PolicyError]) -> DLPSettings:
    custom: list[CustomDetector] = []
    seen: set[str] = set(DLP_DETECTORS)
    for index, item in enumerate(spec.get("custom", [])):
        path: list[str | int] = ["dlp", "custom", index]
        name = item["name"]
        if name in seen:
            taken = "a built-in detector" if name in DLP_DETECTORS else "another custom detector"
            raise fail(f"detector name '{name}' is already used by {taken}; pick another", [*path, "name"])
        seen.add(name)
        try:
            pattern = re.compile(item["pattern"])
        except re.error as exc:
            raise fail(f"invalid regular expression: {exc}", [*path, "pattern"]) from exc
        if pattern.match(""):
            raise fail("the pattern matches the empty string; it would redact nothing useful", [*path, "pattern"])
        custom.append(CustomDetector(name, pattern, item.get("replacement", f"[REDACTED:{name}]")))
    return DLPSettings(
        detectors=tuple(spec.get("detectors", DLP_DETECTORS)),
        custom=tuple(custom),
        apply_to=tuple(spec.get("apply_to", DLP_TARGETS)),
    )


def _shadowed(rules: list[PolicyRule]) -> list[str]:
    """Rules that can never match because an earlier unconditional rule covers all their actions."""
    warnings = []
    covered: dict[str, str] = {}
    for rule in rules:
        if rule.actions and all(action in covered for action in rule.actions):
            earlier = ", ".join(sorted({covered[action] for action in rule.actions}))
            warnings.append(f"rule '{rule.name}' is never reached: rule '{earlier}' matches everything before it")
        if rule.unconditional:
            for action in rule.actions:
                covered.setdefault(action, rule.name)
    return warnings


# -- compiling conditions -------------------------------------------------------------------------------
_CALLER_FIELDS: dict[str, Callable[[Caller], Any]] = {
    "name": attrgetter("name"),
    "kind": attrgetter("kind"),
    "roles": attrgetter("roles"),
    "tenant": attrgetter("tenant"),
}
_TARGET_FIELDS: dict[str, Callable[[ToolTarget], Any]] = {
    "name": attrgetter("name"),
    "server": attrgetter("server"),
    "tool": attrgetter("tool"),
    "upstream": attrgetter("upstream"),
}


def _caller_getter(key: str) -> Callable[[Caller], Any]:
    getter = _CALLER_FIELDS.get(key)
    if getter is not None:
        return getter
    return lambda caller: caller.attributes.get(key)


def _target_getter(key: str) -> Callable[[ToolTarget], Any]:
    getter = _TARGET_FIELDS.get(key)
    if getter is not None:
        return getter
    return lambda target: target.attributes.get(key)


def _near_miss(key: str, known: Sequence[str], side: str, path: list[str | int], warnings: list[str]) -> None:
    if key in known:
        return
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    if close:
        warnings.append(
            f"{_json_path(path)}: '{key}' is matched against the {side}'s attributes; did you mean '{close[0]}'?"
        )


def _caller_condition(
    key: str,
    value: Any,
    fail: Callable[[str, list[str | int]], PolicyError],
    path: list[str | int],
    warnings: list[str],
) -> CallerCondition:
    values = value if isinstance(value, list) else [value]
    for index, item in enumerate(values):
        if isinstance(item, str) and "${" in item:
            where = [*path, index] if isinstance(value, list) else path
            raise fail("references like ${caller.org} are only allowed in target:, not in caller:", where)
    _near_miss(key, _CALLER_KEYS, "caller", path, warnings)
    getter = _caller_getter(key)
    predicate = _compile_values(values)
    return lambda caller: predicate(getter(caller))


def _target_condition(
    key: str,
    value: Any,
    fail: Callable[[str, list[str | int]], PolicyError],
    path: list[str | int],
    warnings: list[str],
) -> TargetCondition | None:
    if key == "sensitivity":
        levels = _sensitivity_levels(value)
        if levels == frozenset(SENSITIVITY_LEVELS):
            return None  # every target has a sensitivity (internal when unset)
        return lambda caller, target: _sensitivity(target) in levels
    if key == "upstream":
        wanted = bool(value)
        return lambda caller, target: bool(target.upstream) is wanted

    _near_miss(key, _TARGET_KEYS, "target", path, warnings)
    values = value if isinstance(value, list) else [value]
    statics: list[Any] = []
    references: list[Callable[[Caller], Any]] = []
    for index, item in enumerate(values):
        if isinstance(item, str) and "${" in item:
            match = _REF_RE.match(item)
            if match is None:
                where = [*path, index] if isinstance(value, list) else path
                raise fail(
                    f"invalid reference {item!r}: write the whole value as ${{caller.<attribute>}}, "
                    "for example ${caller.org}",
                    where,
                )
            references.append(_caller_getter(match[1]))
        else:
            statics.append(item)
    getter = _target_getter(key)
    if not references:
        static = _compile_values(statics)
        return lambda caller, target: static(getter(target))
    predicate = _compile_values(statics) if statics else None

    def condition(caller: Caller, target: ToolTarget) -> bool:
        actual = getter(target)
        if predicate is not None and predicate(actual):
            return True
        mine = _literal_set(actual)
        return bool(mine) and any(not mine.isdisjoint(_literal_set(ref(caller))) for ref in references)

    return condition


def _sensitivity_levels(value: Any) -> frozenset[str]:
    if isinstance(value, dict):
        low = _LEVEL_RANK[value.get("at_least", SENSITIVITY_LEVELS[0])]
        high = _LEVEL_RANK[value.get("at_most", SENSITIVITY_LEVELS[-1])]
        return frozenset(SENSITIVITY_LEVELS[low : high + 1])
    values = value if isinstance(value, list) else [value]
    if "*" in values:
        return frozenset(SENSITIVITY_LEVELS)
    return frozenset(values)


def _sensitivity(target: ToolTarget) -> str:
    level = target.sensitivity
    if level in _LEVEL_RANK:
        return level
    level = level.strip().lower()
    return level if level in _LEVEL_RANK else SENSITIVITY_LEVELS[-1]


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str | list | tuple | set | frozenset | dict):
        return len(value) > 0
    return True


def _literal_set(value: Any) -> frozenset[str]:
    """A value (or the items of a list) as strings, for `${caller.x}` comparisons; empty when missing."""
    if value is None:
        return frozenset()
    items = value if isinstance(value, _COLLECTIONS) else (value,)
    return frozenset(str(item) for item in items if item is not None and item != "")


def _compile_values(values: list[Any]) -> Callable[[Any], bool]:
    """A predicate over an attribute value (a scalar or a list of scalars) matching any of `values`."""
    if "*" in values:
        return _present
    literals: set[str] = set()
    globs: list[str] = []
    booleans: set[bool] = set()
    for value in values:
        if isinstance(value, bool):
            booleans.add(value)
        elif isinstance(value, str) and any(ch in value for ch in "*?["):
            globs.append(value)
        else:
            literals.add(str(value))
    pattern = re.compile("|".join(f"(?:{translate(g)})" for g in globs)) if globs else None
    frozen = frozenset(literals)

    def one(item: Any) -> bool:
        if type(item) is str:  # the common case first
            text = item
        elif isinstance(item, bool):
            return item in booleans
        elif isinstance(item, str | int | float):
            text = str(item)
        else:
            return False
        return text in frozen or (pattern is not None and pattern.match(text) is not None)

    def predicate(actual: Any) -> bool:
        if isinstance(actual, _COLLECTIONS):
            for item in actual:
                if one(item):
                    return True
            return False
        return actual is not None and one(actual)

    return predicate
