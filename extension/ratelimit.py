"""Token-bucket rate limits for gateway tool calls.

A `RateLimitRule` says how fast calls may go and which calls share a bucket (`per`): one bucket per
caller, per tool, per server, or per caller and tool (or server) pair. `RateLimiter.check` takes one
token from the bucket of every rule that matches a call, or none at all when any of them is empty.

Buckets live in memory, keyed by (rule name, bucket key), in least-recently-used order. A bucket that
has refilled completely is the same as no bucket, so such buckets are dropped as calls come in; past
`max_buckets` the least recently used ones are dropped too (those keys start again with a full burst).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import translate

from contextlab.extension.principals import Caller, ToolTarget

BUCKET_KINDS = ("caller", "tool", "server", "caller+tool", "caller+server")
DEFAULT_MAX_BUCKETS = 100_000

_RATE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*([smh])\s*$")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_EVICT_STEPS = 4  # refilled buckets dropped per call at most: keeps check() O(1)
_EPSILON = 1e-9  # float slack, so that 0.3 s at 10/s refills 3 tokens, not 2.9999999


def parse_rate(text: str) -> float:
    """`"20/s"`, `"100/m"` or `"1000/h"` as tokens per second; ValueError if malformed or zero."""
    match = _RATE_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"invalid rate {text!r}: write N/s, N/m or N/h, for example '20/s'")
    per_second = float(match[1]) / _UNIT_SECONDS[match[2]]
    if per_second <= 0:
        raise ValueError(f"invalid rate {text!r}: it must be greater than zero")
    return per_second


def format_rate(per_second: float) -> str:
    """The shortest whole-number form of a rate: 20/s, 30/m (for 0.5/s), 10/h."""
    for unit, seconds in _UNIT_SECONDS.items():
        count = per_second * seconds
        if count >= 1 and abs(count - round(count)) < 1e-9 * count:
            return f"{round(count)}/{unit}"
    return f"{per_second:g}/s"


def _glob(pattern: str) -> re.Pattern[str] | None:
    """A compiled glob, or None for `*` (matches everything)."""
    return None if pattern == "*" else re.compile(translate(pattern))


@dataclass(frozen=True)
class RateLimitRule:
    """At most `rate_per_second` calls per second on average, `burst` at once, per bucket.

    `match_tool` (a glob on the namespaced tool name), `match_server` and `match_caller` (a glob on the
    caller's name) select the calls the rule counts. `per` is one of `BUCKET_KINDS`; `tool` means the
    namespaced tool name (`sql__query`), `caller` the caller's name.
    """

    name: str
    per: str
    rate_per_second: float
    burst: int
    match_tool: str = "*"
    match_server: str = "*"
    match_caller: str = "*"
    _matchers: tuple[re.Pattern[str] | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.per not in BUCKET_KINDS:
            kinds = ", ".join(BUCKET_KINDS)
            raise ValueError(f"rate limit {self.name!r}: per must be one of {kinds}, not {self.per!r}")
        if not (math.isfinite(self.rate_per_second) and self.rate_per_second > 0):
            raise ValueError(f"rate limit {self.name!r}: the rate must be a positive number")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError(f"rate limit {self.name!r}: burst must be a whole number of at least 1")
        matchers = (_glob(self.match_tool), _glob(self.match_server), _glob(self.match_caller))
        object.__setattr__(self, "_matchers", matchers)

    @classmethod
    def from_spec(
        cls,
        name: str,
        per: str,
        rate: str,
        burst: int | None = None,
        match: Mapping[str, str] | None = None,
    ) -> RateLimitRule:
        """A rule from its policy-file form; `burst` defaults to the per-second rate rounded up (at least 1)."""
        per_second = parse_rate(rate)
        match = match or {}
        unknown = set(match) - {"tool", "server", "caller"}
        if unknown:
            raise ValueError(f"rate limit {name!r}: unknown match keys {sorted(unknown)}; use tool, server, caller")
        return cls(
            name=name,
            per=per,
            rate_per_second=per_second,
            burst=max(1, math.ceil(per_second)) if burst is None else burst,
            match_tool=match.get("tool", "*"),
            match_server=match.get("server", "*"),
            match_caller=match.get("caller", "*"),
        )

    @property
    def rate(self) -> str:
        return format_rate(self.rate_per_second)

    def matches(self, caller: Caller, target: ToolTarget) -> bool:
        tool, server, who = self._matchers
        return (
            (tool is None or tool.match(target.name) is not None)
            and (server is None or server.match(target.server) is not None)
            and (who is None or who.match(caller.name) is not None)
        )

    def bucket_key(self, caller: Caller, target: ToolTarget) -> tuple[str, ...]:
        """What shares a bucket under this rule, e.g. `("alice", "sql__query")` for caller+tool."""
        per = self.per
        if per == "caller":
            return (caller.name,)
        if per == "tool":
            return (target.name,)
        if per == "server":
            return (target.server,)
        if per == "caller+tool":
            return (caller.name, target.name)
        return (caller.name, target.server)


class RateLimitExceeded(Exception):
    """A call over a rate limit; `retry_after` is how many seconds until it would be let through."""

    def __init__(self, limit: RateLimitRule, key: str, retry_after: float) -> None:
        self.limit = limit
        self.rule = limit.name
        self.key = key
        self.retry_after = retry_after
        super().__init__(
            f"Rate limit '{limit.name}' ({limit.rate} per {limit.per}) exceeded for {key}; "
            f"retry after {_seconds(retry_after)} s."
        )

    def __reduce__(self) -> tuple[type[RateLimitExceeded], tuple[RateLimitRule, str, float]]:
        return (type(self), (self.limit, self.key, self.retry_after))


def _seconds(value: float) -> str:
    if value < 10:
        return f"{max(value, 0.01):.2f}"
    return f"{math.ceil(value)}"


class _Bucket:
    __slots__ = ("tokens", "stamp", "rate", "burst")

    def __init__(self, tokens: float, stamp: float, rate: float, burst: int) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.rate = rate
        self.burst = burst


class RateLimiter:
    """In-memory token buckets shared by all requests of one server process.

    `clock` returns seconds from any fixed origin (default `time.monotonic`); tests pass a fake one.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_buckets: int = DEFAULT_MAX_BUCKETS) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be at least 1")
        self._clock = clock
        self._max_buckets = max_buckets
        self._buckets: OrderedDict[tuple[str, ...], _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, caller: Caller, target: ToolTarget, rules: Sequence[RateLimitRule]) -> None:
        """Take a token from the bucket of every rule matching this call, or raise RateLimitExceeded.

        Either all matching buckets give a token or none does. When several are empty, the exception
        names the one that refills last, so that retrying after `retry_after` can succeed.
        """
        if not rules:
            return
        now = self._clock()
        with self._lock:
            buckets = self._buckets
            # key -> [rule, bucket or None, tokens left once this call is counted]
            plan: dict[tuple[str, ...], list] = {}
            worst: tuple[float, RateLimitRule, tuple[str, ...]] | None = None
            for rule in rules:
                if not rule.matches(caller, target):
                    continue
                key = (rule.name, *rule.bucket_key(caller, target))
                entry = plan.get(key)
                if entry is not None:  # two rules sharing a name and a bucket: count the call twice
                    tokens = entry[2]
                else:
                    bucket = buckets.get(key)
                    if bucket is None:
                        tokens = float(rule.burst)
                    else:
                        elapsed = max(0.0, now - bucket.stamp)
                        tokens = min(float(rule.burst), bucket.tokens + elapsed * rule.rate_per_second)
                    entry = plan[key] = [rule, bucket, tokens]
                if tokens < 1.0 - _EPSILON:
                    retry_after = (1.0 - tokens) / rule.rate_per_second
                    if worst is None or retry_after > worst[0]:
                        worst = (retry_after, rule, key)
                entry[2] = tokens - 1.0
            if worst is not None:
                retry_after, rule, key = worst
                raise RateLimitExceeded(rule, _describe_key(rule, key[1:]), retry_after)
            for key, (rule, bucket, tokens) in plan.items():
                if bucket is None:
                    buckets[key] = _Bucket(tokens, now, rule.rate_per_second, rule.burst)
                else:
                    bucket.tokens, bucket.stamp = tokens, now
                    bucket.rate, bucket.burst = rule.rate_per_second, rule.burst
                    buckets.move_to_end(key)
            self._evict(now)

    def reset(self) -> None:
        """Forget every bucket (all keys start again with a full burst)."""
        with self._lock:
            self._buckets.clear()

    def _evict(self, now: float) -> None:
        buckets = self._buckets
        for _ in range(_EVICT_STEPS):
            if not buckets:
                break
            key, bucket = next(iter(buckets.items()))
            if bucket.tokens + (now - bucket.stamp) * bucket.rate < bucket.burst - _EPSILON:
                break
            del buckets[key]
        while len(buckets) > self._max_buckets:
            buckets.popitem(last=False)


def _describe_key(rule: RateLimitRule, parts: tuple[str, ...]) -> str:
    return " on ".join(parts) if rule.per.startswith("caller+") else parts[0]
