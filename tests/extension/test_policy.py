"""The gateway policy: parsing and validation, first-match decisions, the built-in default and reloading."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import jsonschema
import pytest

from contextlab.extension.policy import (
    DEFAULT_POLICY_YAML,
    DLP_DETECTORS,
    Decision,
    Policy,
    PolicyEngine,
    PolicyError,
    policy_schema,
)
from contextlab.extension.principals import ROLES, SENSITIVITY_LEVELS, Caller, ToolTarget
from contextlab.extension.ratelimit import BUCKET_KINDS

REPO = Path(__file__).resolve().parents[2]

EXAMPLE = """\
version: 1
default: deny
rules:
  - name: viewers-no-confidential
    effect: deny
    actions: [list, call]
    caller: {roles: [Viewer]}
    target: {sensitivity: [confidential, secret]}
  - name: same-org
    effect: allow
    target: {org: "${caller.org}"}
  - name: everyone-else
    effect: allow
    caller: {roles: ["*"]}
"""


def caller(name: str = "alice", *roles: str, **attributes: object) -> Caller:
    return Caller(name=name, attributes={"roles": list(roles), **attributes})


def target(name: str = "github__create_issue", *, upstream: bool = True, **attributes: object) -> ToolTarget:
    server, _, tool = name.partition("__")
    return ToolTarget(name=name, server=server, tool=tool, upstream=upstream, attributes=attributes)


def rules(*lines: str, default: str = "deny") -> Policy:
    """A policy from rule bodies written as YAML flow mappings."""
    body = "".join(f"  - {line}\n" for line in lines)
    return Policy.parse(f"version: 1\ndefault: {default}\nrules:\n{body}")


# -- decisions -------------------------------------------------------------------------------------------
def test_first_matching_rule_decides():
    policy = Policy.parse(EXAMPLE)
    vera = caller("vera", "Viewer", org="acme")
    secret_acme = target(org="acme", sensitivity="secret")
    # same-org would allow, but the deny rule comes first
    assert policy.decide(vera, secret_acme, "call").label == "deny:viewers-no-confidential"

    swapped = rules(
        '{name: same-org, effect: allow, target: {org: "${caller.org}"}}',
        "{name: viewers-no-confidential, effect: deny, caller: {roles: Viewer}}",
    )
    assert swapped.decide(vera, secret_acme, "call").label == "allow:same-org"


def test_no_matching_rule_falls_back_to_default_deny():
    policy = Policy.parse(EXAMPLE)
    nobody = caller("nobody", org="initech")  # no roles, another org
    decision = policy.decide(nobody, target(org="acme"), "call")
    assert decision == Decision(False, "default", "no rule matched; the default is deny")
    assert decision.label == "deny:default"


def test_default_allow_when_the_file_says_so():
    policy = rules("{name: no-viewers, effect: deny, caller: {roles: Viewer}}", default="allow")
    assert policy.decide(caller("x"), target(), "call").label == "allow:default"
    assert policy.decide(caller("v", "Viewer"), target(), "call").label == "deny:no-viewers"


def test_decision_reason_names_the_rule_and_its_description():
    policy = rules("{name: r, effect: allow, description: Everyone may read.}")
    decision = policy.decide(caller(), target(), "list")
    assert decision.allowed and decision.rule == "r"
    assert decision.reason == "matched rule 'r': Everyone may read."


def test_caller_reference_matches_the_same_attribute_only():
    policy = rules('{name: same-org, effect: allow, target: {org: "${caller.org}"}}')
    assert policy.decide(caller(org="acme"), target(org="acme"), "call").allowed
    assert not policy.decide(caller(org="acme"), target(org="globex"), "call").allowed
    # missing on both sides is not "equal"
    assert not policy.decide(caller(), target(), "call").allowed
    assert not policy.decide(caller(org=""), target(org=""), "call").allowed
    # compared literally: a caller attribute is never used as a glob
    assert not policy.decide(caller(org="*"), target(org="acme"), "call").allowed


def test_caller_reference_against_list_attributes_and_mixed_values():
    policy = rules('{name: mine, effect: allow, target: {owner: ["${caller.name}", "shared-*"]}}')
    assert policy.decide(caller("alice"), target(owner="alice"), "call").allowed
    assert policy.decide(caller("bob"), target(owner="shared-team"), "call").allowed
    assert not policy.decide(caller("bob"), target(owner="alice"), "call").allowed

    projects = rules('{name: p, effect: allow, target: {project: "${caller.projects}"}}')
    member = caller(projects=["apollo", "gemini"])
    assert projects.decide(member, target(project="gemini"), "call").allowed
    assert not projects.decide(member, target(project="mercury"), "call").allowed


def test_globs_lists_and_case_sensitivity():
    policy = rules('{name: sql, effect: allow, caller: {name: "data-*"}, target: {name: ["sql__*", "logs__recent"]}}')
    analyst = caller("data-ann")
    assert policy.decide(analyst, target("sql__query", upstream=False), "call").allowed
    assert policy.decide(analyst, target("logs__recent", upstream=False), "call").allowed
    assert not policy.decide(analyst, target("logs__search", upstream=False), "call").allowed
    assert not policy.decide(analyst, target("SQL__query", upstream=False), "call").allowed
    assert not policy.decide(caller("ann"), target("sql__query", upstream=False), "call").allowed


def test_star_requires_the_attribute_to_be_present():
    policy = rules('{name: owned, effect: allow, target: {owner: "*"}}')
    assert policy.decide(caller(), target(owner="bob"), "call").allowed
    assert not policy.decide(caller(), target(), "call").allowed
    assert not policy.decide(caller(), target(owner=""), "call").allowed

    any_role = rules('{name: any-role, effect: allow, caller: {roles: "*"}}')
    assert any_role.decide(caller("a", "Viewer"), target(), "call").allowed
    assert not any_role.decide(caller("b"), target(), "call").allowed


def test_roles_match_any_of_the_callers_roles():
    policy = rules("{name: ops, effect: allow, caller: {roles: [Operator, Admin]}}")
    assert policy.decide(caller("a", "Viewer", "Operator"), target(), "call").allowed
    assert not policy.decide(caller("b", "Viewer"), target(), "call").allowed
    # a single role given as a string, as Caller.roles accepts
    assert policy.decide(Caller("c", attributes={"roles": "Admin"}), target(), "call").allowed


@pytest.mark.parametrize(
    ("clause", "allowed_levels"),
    [
        ("{at_least: confidential}", {"confidential", "secret"}),
        ("{at_most: internal}", {"public", "internal"}),
        ("{at_least: internal, at_most: confidential}", {"internal", "confidential"}),
        ("[public, secret]", {"public", "secret"}),
        ("internal", {"internal"}),
    ],
)
def test_sensitivity_forms(clause, allowed_levels):
    policy = rules(f"{{name: s, effect: allow, target: {{sensitivity: {clause}}}}}")
    for level in SENSITIVITY_LEVELS:
        assert policy.decide(caller(), target(sensitivity=level), "call").allowed is (level in allowed_levels), level


def test_sensitivity_defaults_to_internal_and_unknown_levels_count_as_secret():
    policy = rules("{name: high, effect: deny, target: {sensitivity: {at_least: secret}}}", default="allow")
    assert policy.decide(caller(), target(), "call").allowed  # unset: internal
    assert not policy.decide(caller(), target(sensitivity="top-secret"), "call").allowed
    assert not policy.decide(caller(), target(sensitivity=" Secret "), "call").allowed


def test_upstream_and_custom_attributes():
    policy = rules(
        "{name: local, effect: allow, target: {upstream: false}}",
        "{name: eu, effect: allow, caller: {region: [eu-west, eu-north]}, target: {tier: 2}}",
    )
    assert policy.decide(caller(), target("sql__query", upstream=False), "call").label == "allow:local"
    assert policy.decide(caller(region="eu-west"), target(tier=2), "call").label == "allow:eu"
    assert policy.decide(caller(region="eu-west"), target(tier=3), "call").label == "deny:default"
    assert policy.decide(caller(region="us-east"), target(tier=2), "call").label == "deny:default"


def test_actions_restrict_a_rule_to_list_or_call():
    policy = rules(
        "{name: no-prod-calls, effect: deny, actions: [call], target: {server: 'prod-*'}}",
        "{name: rest, effect: allow}",
    )
    prod = target("prod-db__delete_rows")
    assert policy.decide(caller(), prod, "list").label == "allow:rest"
    assert policy.decide(caller(), prod, "call").label == "deny:no-prod-calls"
    with pytest.raises(ValueError, match="unknown policy action"):
        policy.decide(caller(), prod, "delete")


def test_allows_list_filters_in_order_like_decide():
    policy = Policy.parse(EXAMPLE)
    vera = caller("vera", "Viewer", org="acme")
    targets = [
        target("a__t", org="acme", sensitivity="secret"),
        target("b__t", org="globex", sensitivity="internal"),
        target("c__t", org="acme", sensitivity="public"),
        target("d__t", org="globex", sensitivity="confidential"),
    ]
    listed = policy.allows_list(vera, targets)
    assert [t.name for t in listed] == ["b__t", "c__t"]
    assert listed == [t for t in targets if policy.decide(vera, t, "list").allowed]
    # a caller without roles sees only its own org's targets
    assert [t.name for t in policy.allows_list(caller("x", org="acme"), targets)] == ["a__t", "c__t"]


def test_allows_list_ignores_call_only_rules():
    policy = rules("{name: no-calls, effect: deny, actions: [call]}", "{name: rest, effect: allow}")
    assert policy.allows_list(caller(), [target()]) == [target()]


# -- the built-in policy ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("roles", "sensitivity", "label"),
    [
        (("Viewer",), "confidential", "deny:viewers-no-confidential"),
        (("Viewer",), "secret", "deny:viewers-no-confidential"),
        (("Viewer",), "internal", "allow:any-role"),
        (("Viewer",), "public", "allow:any-role"),
        (("Owner",), "secret", "allow:admins"),
        (("Admin",), "secret", "allow:admins"),
        (("Operator",), "secret", "allow:operators"),
        (("Viewer", "Operator"), "secret", "allow:operators"),
        (("Analyst",), "secret", "allow:any-role"),
        ((), "public", "deny:default"),
    ],
)
@pytest.mark.parametrize("action", ["list", "call"])
def test_default_policy(roles, sensitivity, label, action):
    decision = Policy.default().decide(caller("u", *roles), target(sensitivity=sensitivity), action)
    assert decision.label == label


def test_default_policy_is_the_documented_yaml_and_is_cached():
    policy = Policy.default()
    assert policy is Policy.default()
    assert policy.sha256 == hashlib.sha256(DEFAULT_POLICY_YAML.encode()).hexdigest()
    assert policy.default_effect == "deny"
    assert not policy.rate_limits
    assert policy.dlp.detectors == DLP_DETECTORS
    assert policy.warnings == ()


def test_deny_all_denies_owners_too():
    decision = Policy.deny_all().decide(caller("root", "Owner"), target(sensitivity="public"), "list")
    assert decision.label == "deny:policy-file-invalid"


# -- rate limits and DLP sections ---------------------------------------------------------------------------
def test_rate_limits_are_parsed_with_default_burst():
    policy = Policy.parse(
        """\
version: 1
rate_limits:
  - {name: per-caller, per: caller, rate: 20/s, burst: 40, match: {tool: "sql__*", server: "*", caller: "*"}}
  - {name: slow, per: caller+server, rate: 2.5/s}
  - {name: hourly, per: tool, rate: 10/h}
"""
    )
    per_caller, slow, hourly = policy.rate_limits
    assert (per_caller.name, per_caller.per, per_caller.rate_per_second, per_caller.burst) == (
        "per-caller",
        "caller",
        20.0,
        40,
    )
    assert per_caller.match_tool == "sql__*"
    assert per_caller.matches(caller(), target("sql__query"))
    assert not per_caller.matches(caller(), target("logs__recent"))
    assert slow.burst == 3
    assert hourly.burst == 1
    assert hourly.rate_per_second == pytest.approx(10 / 3600)


def test_dlp_settings_defaults_and_custom_detectors():
    assert Policy.parse("version: 1").dlp.detectors == DLP_DETECTORS
    assert Policy.parse("version: 1").dlp.apply_to == ("arguments", "results")
    dlp = Policy.parse(
        """\
version: 1
dlp:
  detectors: [email]
  custom:
    - name: employee_id
      pattern: "EMP-\\\\d{6}"
    - {name: ticket, pattern: 'T#\\d+', replacement: "[ticket]"}
  apply_to: [results]
"""
    ).dlp
    assert dlp.detectors == ("email",)
    assert [(d.name, d.replacement) for d in dlp.custom] == [
        ("employee_id", "[REDACTED:employee_id]"),
        ("ticket", "[ticket]"),
    ]
    assert dlp.custom[0].pattern.sub(dlp.custom[0].replacement, "id EMP-123456") == "id [REDACTED:employee_id]"
    assert dlp.custom[1].pattern.search("see T#42")
    assert dlp.results and not dlp.arguments
    assert not Policy.parse("version: 1\ndlp: {detectors: []}").dlp.enabled


def test_sha256_is_of_the_text():
    text = EXAMPLE + "# a comment changes the digest\n"
    assert Policy.parse(text).sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert Policy.parse(text).sha256 != Policy.parse(EXAMPLE).sha256


# -- errors -----------------------------------------------------------------------------------------------
def parse_error(text: str) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        Policy.parse(text, source="policy.yaml")
    return info.value


def test_yaml_syntax_error_names_the_line():
    error = parse_error("version: 1\nrules:\n  - name: a\n    effect: allow\n   caller: {roles: x}\n")
    assert error.line == 5
    assert str(error).startswith("policy.yaml, line 5, column 4: YAML syntax error")


def test_unknown_key_names_the_path_the_line_and_a_fix():
    error = parse_error("version: 1\nrules:\n  - name: a\n    efect: allow\n")
    assert (error.path, error.line) == ("$.rules[0].efect", 4)
    assert "unknown key 'efect'; did you mean 'effect'?" in str(error)
    assert "policy.yaml, line 4, at $.rules[0].efect" in str(error)


def test_unknown_top_level_and_nested_keys_are_rejected():
    assert parse_error("version: 1\nrule: []\n").path == "$.rule"
    assert parse_error("version: 1\nrate_limits:\n  - {name: a, per: caller, rate: 1/s, match: {user: x}}\n").path == (
        "$.rate_limits[0].match.user"
    )
    assert parse_error("version: 1\ndlp: {apply: [results]}\n").path == "$.dlp.apply"


@pytest.mark.parametrize(
    ("text", "path", "line", "words"),
    [
        ("rules: []\n", "$", 1, "missing required key 'version'"),
        ("version: 2\n", "$.version", 1, "must be 1"),
        ("version: 1\ndefault: no\n", "$.default", 2, 'use one of "allow", "deny"'),
        ("version: 1\nrules:\n  - {name: a, effect: allow, caller: {roles: [viewer]}}\n", None, 3, "Viewer"),
        ("version: 1\nrules:\n  - {name: a, effect: allow, target: {sensitivity: {at_least: hi}}}\n", None, 3, "hi"),
        ("version: 1\nrate_limits:\n  - {name: a, per: caller, rate: 20}\n", "$.rate_limits[0].rate", 3, "N/s"),
        ("version: 1\nrate_limits:\n  - {name: a, per: caller, rate: 0/s}\n", "$.rate_limits[0].rate", 3, "zero"),
        ("version: 1\nrate_limits:\n  - {name: a, per: user, rate: 1/s}\n", "$.rate_limits[0].per", 3, "caller+tool"),
        (
            "version: 1\nrules:\n  - {name: a, effect: allow}\n  - {name: a, effect: deny}\n",
            "$.rules[1].name",
            4,
            "dup",
        ),
        ("version: 1\nrules:\n  - {name: default, effect: allow}\n", "$.rules[0].name", 3, "reserved"),
        ("version: 1\nrules:\n  - {name: a, effect: allow, target: {org: 'x${caller.org}'}}\n", None, 3, "whole"),
        ("version: 1\nrules:\n  - {name: a, effect: allow, caller: {org: '${caller.org}'}}\n", None, 3, "only allowed"),
        ("version: 1\ndlp:\n  custom:\n    - {name: x, pattern: '(['}\n", "$.dlp.custom[0].pattern", 4, "regular"),
        ("version: 1\ndlp:\n  custom:\n    - {name: email, pattern: x}\n", "$.dlp.custom[0].name", 4, "built-in"),
        ("version: 1\ndlp:\n  custom:\n    - {name: x, pattern: 'a*'}\n", "$.dlp.custom[0].pattern", 4, "empty string"),
        ("version: 1\nrules:\n  - name: a\n    effect: allow\n    effect: deny\n", None, 5, "duplicate key 'effect'"),
        ("version: 1\nyes: 1\n", None, 2, "plain strings"),
        ("- version: 1\n", "$", 1, "expected a mapping, not a list"),
    ],
)
def test_errors_are_precise(text, path, line, words):
    error = parse_error(text)
    if path is not None:
        assert error.path == path
    assert error.line == line
    assert words in str(error)


def test_empty_file_is_an_error():
    assert "empty" in str(parse_error("# nothing yet\n"))


def test_near_miss_keys_and_unreachable_rules_are_warnings():
    policy = rules(
        "{name: a, effect: allow, caller: {role: Viewer}, target: {sensitivty: secret}}",
        "{name: all, effect: allow}",
        "{name: never, effect: deny, actions: [call]}",
    )
    assert any("'role'" in w and "did you mean 'roles'" in w for w in policy.warnings)
    assert any("'sensitivty'" in w and "did you mean 'sensitivity'" in w for w in policy.warnings)
    assert [w for w in policy.warnings if "never reached" in w] == [
        "rule 'never' is never reached: rule 'all' matches everything before it"
    ]


# -- schema --------------------------------------------------------------------------------------------------
def test_schema_is_valid_2020_12_and_agrees_with_the_code():
    schema = json.loads((REPO / "extension" / "schemas" / "policy.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema == policy_schema()
    defs = schema["$defs"]
    assert defs["level"]["enum"] == list(SENSITIVITY_LEVELS)
    assert defs["role"]["enum"] == [*ROLES, "*"]
    assert defs["rateLimit"]["properties"]["per"]["enum"] == list(BUCKET_KINDS)
    assert defs["dlp"]["properties"]["detectors"]["items"]["enum"] == list(DLP_DETECTORS)


def test_policies_in_the_docs_parse():
    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / "docs" / "policy.md").read_text(), re.S)
    assert len(blocks) >= 2
    for block in blocks:
        Policy.parse(block, source="docs/policy.md")
    built_in = Policy.parse(blocks[0])
    assert [r.name for r in built_in.rules] == [r.name for r in Policy.default().rules]


# -- the engine ----------------------------------------------------------------------------------------------
GOOD = "version: 1\nrules:\n  - {name: everyone, effect: allow}\n"
OTHER = "version: 1\nrules:\n  - {name: nobody, effect: deny}\n"
BAD = "version: 1\nrules:\n  - {name: everyone, efect: allow}\n"


def test_engine_without_a_file_uses_the_default_policy(tmp_path):
    assert PolicyEngine(None).policy is Policy.default()
    engine = PolicyEngine(tmp_path / "policy.yaml")
    assert engine.policy is Policy.default()
    assert engine.reload() is False
    assert engine.error is None
    assert engine.status()["sha256"] == Policy.default().sha256


def test_engine_loads_a_file_that_appears_and_notices_changes(tmp_path):
    path = tmp_path / "policy.yaml"
    engine = PolicyEngine(path)
    path.write_text(GOOD)
    assert engine.reload() is True
    assert engine.policy.decide(caller(), target(), "call").label == "allow:everyone"
    assert engine.reload() is False  # unchanged
    path.write_text(OTHER + "# longer, so the size changes\n")
    assert engine.reload() is True
    assert engine.policy.decide(caller(), target(), "call").label == "deny:nobody"


def test_engine_keeps_the_old_policy_after_a_bad_edit_then_recovers(tmp_path, caplog):
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    engine = PolicyEngine(path)
    good_sha = engine.policy.sha256
    loaded_at = engine.loaded_at
    assert engine.status()["error"] is None

    path.write_text(BAD)
    with caplog.at_level(logging.WARNING, logger="contextlab.extension.policy"):
        assert engine.reload(force=True) is False
    assert engine.policy.sha256 == good_sha
    assert engine.policy.decide(caller(), target(), "call").label == "allow:everyone"
    assert engine.error is not None and "line 3" in engine.error and "$.rules[0].efect" in engine.error
    assert str(path) in engine.error
    assert engine.error_at is not None
    assert engine.loaded_at == loaded_at
    assert any("efect" in record.getMessage() for record in caplog.records)
    status = engine.status()
    assert status["error"] == engine.error and status["sha256"] == good_sha and status["rules"] == 1
    assert status["path"] == str(path)

    path.write_text(OTHER)
    assert engine.reload(force=True) is True
    assert engine.error is None and engine.error_at is None
    assert engine.policy.decide(caller(), target(), "call").label == "deny:nobody"


def test_engine_denies_everything_when_the_file_is_bad_at_start(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nrules: [\n")
    engine = PolicyEngine(path)
    assert engine.error is not None and "YAML syntax error" in engine.error
    assert engine.policy.decide(caller("root", "Owner"), target(), "call").label == "deny:policy-file-invalid"

    path.write_text(GOOD)
    assert engine.reload(force=True) is True
    assert engine.policy.decide(caller(), target(), "call").label == "allow:everyone"


def test_engine_removing_a_bad_start_file_brings_back_the_default(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(BAD)
    engine = PolicyEngine(path)
    path.unlink()
    assert engine.reload() is True
    assert engine.policy is Policy.default()
    assert engine.error is None


def test_engine_keeps_the_last_policy_when_its_file_is_removed(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    engine = PolicyEngine(path)
    path.unlink()
    assert engine.reload() is False
    assert engine.policy.decide(caller(), target(), "call").label == "allow:everyone"
    assert engine.error is not None and "removed" in engine.error
    path.write_text(GOOD)
    assert engine.reload() is True
    assert engine.error is None
