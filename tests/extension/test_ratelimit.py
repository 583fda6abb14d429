"""Token-bucket rate limits, driven by a fake clock (no sleeps, no timing assertions)."""

from __future__ import annotations

import pickle

import pytest

from contextlab.extension.principals import Caller, ToolTarget
from contextlab.extension.ratelimit import (
    RateLimiter,
    RateLimitExceeded,
    RateLimitRule,
    format_rate,
    parse_rate,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def who(name: str = "alice") -> Caller:
    return Caller(name=name, attributes={"roles": ["Viewer"]})


def tool(name: str = "sql__query") -> ToolTarget:
    server, _, bare = name.partition("__")
    return ToolTarget(name=name, server=server, tool=bare)


def rule(name: str = "per-caller", per: str = "caller", rate: str = "2/s", burst: int | None = None, **match: str):
    return RateLimitRule.from_spec(name, per, rate, burst, match or None)


def allowed(limiter: RateLimiter, caller: Caller, target: ToolTarget, rules: list[RateLimitRule]) -> bool:
    try:
        limiter.check(caller, target, rules)
    except RateLimitExceeded:
        return False
    return True


def drain(limiter: RateLimiter, caller: Caller, target: ToolTarget, rules: list[RateLimitRule], most: int = 50) -> int:
    """How many calls in a row go through (at most `most`; the clock does not move)."""
    count = 0
    while count < most and allowed(limiter, caller, target, rules):
        count += 1
    return count


# -- rates ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "per_second"),
    [("20/s", 20.0), ("30/m", 0.5), ("36/h", 0.01), (" 1.5 / s ", 1.5), ("1000/h", 1000 / 3600)],
)
def test_parse_rate(text, per_second):
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["20", "20/d", "/s", "-1/s", "0/s", "0.0/m", "twenty/s", ""])
def test_parse_rate_rejects_malformed_and_zero_rates(text):
    with pytest.raises(ValueError, match="invalid rate"):
        parse_rate(text)


@pytest.mark.parametrize(("per_second", "text"), [(20.0, "20/s"), (0.5, "30/m"), (10 / 3600, "10/h"), (1.5, "90/m")])
def test_format_rate(per_second, text):
    assert format_rate(per_second) == text


def test_default_burst_is_the_per_second_rate_rounded_up():
    assert rule(rate="20/s").burst == 20
    assert rule(rate="2.5/s").burst == 3
    assert rule(rate="10/m").burst == 1
    assert rule(rate="20/s", burst=5).burst == 5


def test_invalid_rules_are_refused():
    with pytest.raises(ValueError, match="per must be one of"):
        rule(per="user")
    with pytest.raises(ValueError, match="burst"):
        RateLimitRule("r", "caller", 1.0, 0)
    with pytest.raises(ValueError, match="positive"):
        RateLimitRule("r", "caller", 0.0, 1)
    with pytest.raises(ValueError, match="unknown match keys"):
        RateLimitRule.from_spec("r", "caller", "1/s", match={"user": "x"})


# -- buckets ---------------------------------------------------------------------------------------------
def test_burst_then_exceeded_with_retry_after():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    limit = rule(rate="2/s", burst=3)
    assert drain(limiter, who(), tool(), [limit]) == 3

    with pytest.raises(RateLimitExceeded) as info:
        limiter.check(who(), tool(), [limit])
    error = info.value
    assert (error.rule, error.key) == ("per-caller", "alice")
    assert error.retry_after == pytest.approx(0.5)  # one token at 2/s
    assert str(error) == "Rate limit 'per-caller' (2/s per caller) exceeded for alice; retry after 0.50 s."

    clock.advance(0.2)  # 0.4 of a token: still refused, and the wait shrinks accordingly
    with pytest.raises(RateLimitExceeded) as info:
        limiter.check(who(), tool(), [limit])
    assert info.value.retry_after == pytest.approx(0.3)


def test_waiting_retry_after_lets_exactly_one_call_through():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    limit = rule(rate="4/s", burst=2)
    drain(limiter, who(), tool(), [limit])
    with pytest.raises(RateLimitExceeded) as info:
        limiter.check(who(), tool(), [limit])
    clock.advance(info.value.retry_after)
    assert drain(limiter, who(), tool(), [limit]) == 1


def test_refill_after_clock_advance_is_capped_at_burst():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    limit = rule(rate="10/s", burst=5)
    assert drain(limiter, who(), tool(), [limit]) == 5
    clock.advance(0.3)
    assert drain(limiter, who(), tool(), [limit]) == 3
    clock.advance(3600)
    assert drain(limiter, who(), tool(), [limit]) == 5


def test_clock_going_backwards_adds_no_tokens():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    limit = rule(rate="1/s", burst=1)
    assert drain(limiter, who(), tool(), [limit]) == 1
    clock.advance(-10)
    assert drain(limiter, who(), tool(), [limit]) == 0


def test_per_caller_buckets_are_independent_of_each_other():
    limiter = RateLimiter(clock=FakeClock())
    limit = rule(per="caller", burst=2)
    assert drain(limiter, who("alice"), tool("sql__query"), [limit]) == 2
    assert drain(limiter, who("alice"), tool("logs__recent"), [limit]) == 0  # same caller, another tool
    assert drain(limiter, who("bob"), tool("sql__query"), [limit]) == 2


def test_per_tool_buckets_are_shared_by_callers():
    limiter = RateLimiter(clock=FakeClock())
    limit = rule(name="per-tool", per="tool", burst=2)
    assert drain(limiter, who("alice"), tool("sql__query"), [limit]) == 2
    assert drain(limiter, who("bob"), tool("sql__query"), [limit]) == 0  # alice used the tool's tokens
    assert drain(limiter, who("bob"), tool("sql__schema"), [limit]) == 2
    with pytest.raises(RateLimitExceeded) as info:
        limiter.check(who("bob"), tool("sql__schema"), [limit])
    assert info.value.key == "sql__schema"


def test_per_server_and_pair_keys():
    limiter = RateLimiter(clock=FakeClock())
    per_server = rule(name="srv", per="server", burst=1)
    assert drain(limiter, who("alice"), tool("sql__query"), [per_server]) == 1
    assert drain(limiter, who("bob"), tool("sql__schema"), [per_server]) == 0  # same server
    assert drain(limiter, who("bob"), tool("logs__recent"), [per_server]) == 1

    pair = rule(name="pair", per="caller+tool", burst=1)
    assert drain(limiter, who("alice"), tool("sql__query"), [pair]) == 1
    assert drain(limiter, who("alice"), tool("sql__schema"), [pair]) == 1
    assert drain(limiter, who("bob"), tool("sql__query"), [pair]) == 1
    with pytest.raises(RateLimitExceeded) as info:
        limiter.check(who("bob"), tool("sql__query"), [pair])
    assert info.value.key == "bob on sql__query"


def test_match_globs_select_the_calls_a_rule_counts():
    limiter = RateLimiter(clock=FakeClock())
    limit = rule(burst=1, tool="sql__*", caller="a*")
    assert drain(limiter, who("alice"), tool("sql__query"), [limit]) == 1
    assert drain(limiter, who("alice"), tool("logs__recent"), [limit]) == 50  # not counted
    assert drain(limiter, who("bob"), tool("sql__query"), [limit]) == 50  # not counted
    assert len(limiter) == 1


def test_multiple_rules_are_all_or_nothing():
    limiter = RateLimiter(clock=FakeClock())
    overall = rule(name="overall", per="caller", rate="1/h", burst=3)
    per_tool = rule(name="per-tool", per="caller+tool", rate="1/h", burst=1)
    rules = [overall, per_tool]
    assert allowed(limiter, who(), tool("a__x"), rules)  # overall 2 left
    with pytest.raises(RateLimitExceeded) as info:
        limiter.check(who(), tool("a__x"), rules)  # refused by per-tool; overall must not be charged
    assert info.value.rule == "per-tool"
    assert allowed(limiter, who(), tool("a__y"), rules)  # overall 1 left
    assert allowed(limiter, who(), tool("a__z"), rules)  # overall 0 left
    with pytest.raises(RateLimitExceeded) as info:
        limiter.check(who(), tool("a__w"), rules)
    assert info.value.rule == "overall"


def test_the_slowest_exceeded_rule_is_reported():
    limiter = RateLimiter(clock=FakeClock())
    fast = rule(name="fast", per="caller", rate="10/s", burst=1)
    slow = rule(name="slow", per="tool", rate="1/m", burst=1)
    limiter.check(who(), tool(), [fast, slow])
    with pytest.raises(RateLimitExceeded) as info:
        limiter.check(who(), tool(), [fast, slow])
    assert info.value.rule == "slow"
    assert info.value.retry_after == pytest.approx(60.0)
    assert "(1/m per tool)" in str(info.value) and "retry after 60 s" in str(info.value)


def test_no_rules_or_no_matching_rule_is_free():
    limiter = RateLimiter(clock=FakeClock())
    limiter.check(who(), tool(), [])
    limiter.check(who(), tool(), [rule(tool="github__*")])
    assert len(limiter) == 0


def test_a_reloaded_rule_applies_its_new_burst_to_existing_buckets():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    assert allowed(limiter, who(), tool(), [rule(rate="1/h", burst=5)])  # 4 tokens left
    assert drain(limiter, who(), tool(), [rule(rate="1/h", burst=2)]) == 2  # clamped to the new burst

    assert drain(limiter, who(), tool(), [rule(rate="1/s", burst=1)]) == 0
    clock.advance(3)
    assert drain(limiter, who(), tool(), [rule(rate="1/s", burst=5)]) == 3  # refilled up to the new burst


# -- memory -----------------------------------------------------------------------------------------------
def test_bucket_count_is_capped_by_evicting_the_least_recently_used():
    limiter = RateLimiter(clock=FakeClock(), max_buckets=3)
    limit = rule(rate="1/h", burst=1)
    for name in ("a", "b", "c", "d", "e"):
        limiter.check(who(name), tool(), [limit])
        assert len(limiter) <= 3
    assert len(limiter) == 3
    # "a" was evicted, so it starts again with a full bucket; "e" is still remembered as empty
    assert allowed(limiter, who("a"), tool(), [limit])
    assert not allowed(limiter, who("e"), tool(), [limit])


def test_refilled_buckets_are_dropped():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    limit = rule(rate="1/s", burst=2)
    for name in ("a", "b", "c"):
        limiter.check(who(name), tool(), [limit])
    assert len(limiter) == 3
    clock.advance(5)  # all three are full again, which is the same as having no bucket
    limiter.check(who("d"), tool(), [limit])
    assert len(limiter) == 1
    assert drain(limiter, who("a"), tool(), [limit]) == 2


def test_reset_forgets_every_bucket():
    limiter = RateLimiter(clock=FakeClock())
    limit = rule(rate="1/h", burst=1)
    limiter.check(who(), tool(), [limit])
    limiter.reset()
    assert len(limiter) == 0
    assert allowed(limiter, who(), tool(), [limit])


def test_max_buckets_must_be_positive():
    with pytest.raises(ValueError):
        RateLimiter(max_buckets=0)


def test_exception_pickles():
    error = RateLimitExceeded(rule(), "alice", 0.25)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.rule, copy.key, copy.retry_after, str(copy)) == ("per-caller", "alice", 0.25, str(error))
