"""Data loss prevention: redact personal data and secrets from tool results and tool arguments.

`Redactor.redact` runs on every tool result in the gateway's hot path. Regular expressions cost
CPython's `re` several nanoseconds per character even when nothing matches, so they never scan
a whole text. Instead the text is encoded to ASCII bytes (non-ASCII characters become ``?``, so
offsets are kept) and mapped to coarse shapes with `bytes.translate` (digits become ``9``, ...);
about twenty `bytes.find` passes for literal triggers locate the few places where a detector
could match. Only those regions go to the precise patterns, whose matches are then validated
(Luhn and issuer ranges, ISO 7064 check characters, SSN area rules...). Every detector's pattern
contains one of its triggers, so the prefilter never hides a finding; the tests check this
against an exhaustive scan.

All strings of a structure are joined with NUL and scanned as one text: no pattern crosses a
NUL, and one pass over a 2 KB result is much cheaper than two hundred passes over its fields.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

BUILTIN_DETECTORS = ("email", "phone", "national_id", "credit_card", "secret")

CustomDetector = tuple[str, re.Pattern[str], str | None]

_SEPARATOR = "\x00"  # joins the strings of a structure; every shape maps it to a region break
_LOOKAHEAD_MARGIN = 4  # how far past a region a pattern's lookahead may look, e.g. `(?!\.\d)`
_MAX_KEY_LENGTH = 64
_SHORTEST_FINDING = 6  # a@b.co; shorter strings cannot hold a built-in finding

_DIGITS = b"0123456789"
_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LOWER = b"abcdefghijklmnopqrstuvwxyz"


def _shape(mapping: dict[bytes, bytes]) -> bytes:
    """A `bytes.translate` table sending each group of characters to one byte, the rest to space."""
    table = bytearray(b" " * 256)
    for chars, to in mapping.items():
        for char in chars:
            table[char] = to[0]
    return bytes(table)


# Numbers: digits -> 9; upper case, and x for a Chinese ID's check character -> A; separators
# inside phone and card numbers -> -; + stays.
_NUMERIC = _shape({_DIGITS: b"9", _UPPER + b"x": b"A", b" .-()": b"-", b"+": b"+"})
# Word characters, the alphabet of prefixed API keys such as AKIA... and ghp_...
_WORD = _shape({_DIGITS + _UPPER + _LOWER + b"_": b"w"})
_EMAIL = _shape({_DIGITS + _UPPER + _LOWER + b"._%+-@": b"e"})
# Lower case with - folded into _, to find key names (api-key, API_KEY).
_FOLD = bytes(range(256)).translate(bytes.maketrans(_UPPER + b"-", _LOWER + b"_"))

# Each numeric pattern contains one of its detectors' triggers: 11 digits in a row, a group of 4
# digits after a separator (phones, SSNs, grouped cards) or the digits of a NINO. International
# phone numbers are found from their + instead (see `_plus_anchors`).
_NUMERIC_TRIGGERS = {
    "phone": (b"99-9999", b"99999999999"),
    "national_id": (b"99-9999", b"99999999999", b"A999999", b"99-99-99-A"),
    "credit_card": (b"99-9999", b"99999999999"),
}
_WORD_RUN = b"w" * 20  # the shortest word-character secret: AKIA + 16
_KEY_LITERALS = (b"passw", b"secret", b"token", b"api_key", b"apikey")

_F = re.ASCII

# -- patterns -----------------------------------------------------------------------------------
_NUMERIC_RE = re.compile(
    r"(?<!\w)(?:"  # every number starts after a non-word character; checked once
    + "|".join(
        f"(?P<{name}>{pattern})"
        for name, pattern in (
            # +<country code> and groups: +1 (555) 123-4567, +44 20 7946 0958, +8613812345678.
            ("intl", r"(?<!\+)\+[1-9]\d{0,2}+(?:[ .-]?\(?\d{1,4}+\)?){1,6}+(?!\d)"),
            # 11 to 19 digits in a row: Chinese mobile, Chinese ID (may end in X), card.
            ("run", r"(?<!\.)\d{11,19}+[Xx]?+(?!\w|\.\d)"),
            ("ssn", r"(?<![.-])\d{3}-\d{2}-\d{4}(?!\w|-\d)"),
            # 555-123-4567, 555.123.4567, (555) 123-4567, 1-555-123-4567.
            (
                "us",
                r"(?<![.-])(?:1[-. ])?(?:\d{3}(?P<us_sep>[-.])\d{3}(?P=us_sep)|\(\d{3}\)[ .-]?\d{3}[ .-])\d{4}"
                r"(?!\w|[-.]\d)",
            ),
            ("mobile", r"(?<![.-])1[3-9]\d(?P<mo_sep>[ -])\d{4}(?P=mo_sep)\d{4}(?!\w|[-.]\d)"),
            # 4-4-4-4(-3), 4-4-4-1..4 and 4-6-4/5 (Amex); a last 3-digit group may be a CVV, see _card_end.
            (
                "card",
                r"(?<![.-])\d{4}(?P<cc_sep>[ -])(?:\d{4}(?P=cc_sep)\d{4}(?P=cc_sep)\d{1,4}"
                r"(?:(?P=cc_sep)\d{3})?|\d{6}(?P=cc_sep)\d{4,5})(?!\w)",
            ),
            # UK National Insurance number: AB123456C, AB123456 C, AB 12 34 56 C.
            ("nino", r"[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z](?:\d{6} ?| \d{2} \d{2} \d{2} )[A-D](?![A-Za-z0-9])"),
        )
    )
    + ")",
    _F,
)

_EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,24}(?![A-Za-z0-9-])",
    _F,
)

# Keys made of word characters only, found inside runs of 20 or more of them.
_WORD_SECRET_RE = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Za-z0-9])"  # AWS access key ids
    r"|gh[pousr]_[A-Za-z0-9]{36,255}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{22,255}"  # GitHub fine-grained tokens
    r"|[sr]k_(?:live|test)_[A-Za-z0-9]{16,255}"  # Stripe secret and restricted keys
    r")",
    _F,
)

_WORD_SECRET_PREFIXES = ("AKIA", "ASIA", "gh", "github_pat_", "sk_", "rk_")
_LOWER_WORD = frozenset(_LOWER + b"_")  # the word characters that end a numeric region
_NUMBER_START_RE = re.compile(r"[ ()+A-Z]|-\d{11}")

_NOT_IN_TOKEN = r"(?<![A-Za-z0-9_-])"
# Secrets that start with a literal: matched right where the literal is found.
# (literal, a rare byte of it whose absence skips the search, pattern)
_ANCHORED = (
    (b"AIza", b"z", re.compile(_NOT_IN_TOKEN + r"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])", _F)),  # Google API keys
    # OpenAI (sk-, sk-proj-...) and Anthropic (sk-ant-...) keys; see _looks_random.
    (b"sk-", b"k", re.compile(_NOT_IN_TOKEN + r"sk-[A-Za-z0-9_-]{20,}+", _F)),
    (b"xox", b"x", re.compile(_NOT_IN_TOKEN + r"xox[abposr]-[A-Za-z0-9-]{10,}+", _F)),  # Slack tokens
    # JWTs: base64url JSON header and payload, and a signature that may be empty.
    (b"eyJ", b"J", re.compile(_NOT_IN_TOKEN + r"eyJ[A-Za-z0-9_-]{8,}+\.eyJ[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]*+", _F)),
    (b"cl_", b"_", re.compile(_NOT_IN_TOKEN + r"cl_[A-Za-z0-9]+_[A-Za-z0-9_-]{20,}+", _F)),  # ContextLab API tokens
)
# PEM private keys: header to footer, or as far as the base64 body goes when the footer is missing.
_PEM_HEADER_RE = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----", _F)
_PEM_FOOTER_RE = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----", _F)
_PEM_BODY_RE = re.compile(r"[A-Za-z0-9+/=\s\\]*+", _F)
_PEM_MAX_LENGTH = 16384
_BEARER_RE = re.compile(_NOT_IN_TOKEN + r"bearer\s+(?P<value>[A-Za-z0-9._~+/-]{20,}+=*)", _F | re.IGNORECASE)

# What follows a secret key: `: value`, `=value`, `": "value"`, `\": \"value\"` (JSON in JSON).
_KEY_VALUE_RE = re.compile(
    r"""\\?["']?[ \t]*(?:==?|:=?|=>)[ \t]*(?:"""
    + r'\\"(?P<esc>[^"\\\r\n\x00]{1,1024})\\"'
    + r'|"(?P<dq>(?:[^"\\\r\n\x00]|\\[^\r\n\x00]){1,1024})"'
    + r"|'(?P<sq>[^'\r\n\x00]{1,1024})'"
    + r"""|(?P<bare>[^\s"'`,;&<>(){}\[\]\x00]{1,1024}))""",
    _F,
)
_KEY_CHARS = frozenset(_DIGITS + _LOWER + b"_.")
_SECRET_KEYS = (
    b"password", b"passwd", b"secret", b"api_key", b"apikey", b"client_secret", b"secret_key",
    b"secret_access_key", b"access_token", b"auth_token", b"refresh_token", b"id_token", b"api_token",
    b"bearer_token", b"session_token",
)  # fmt: skip
_NOT_SECRET_VALUES = frozenset({"true", "false", "null", "none", "nil", "undefined"})
_NINO_UNUSED_PREFIXES = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})
_SECRET = "[REDACTED:secret]"


@dataclass(frozen=True, slots=True)
class _Span:
    start: int
    end: int
    detector: str
    replacement: str

    def shifted(self, offset: int, limit: int) -> _Span:
        return _Span(self.start - offset, min(self.end - offset, limit), self.detector, self.replacement)


# -- validators ---------------------------------------------------------------------------------
def _luhn(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _known_card(digits: str) -> bool:
    """Luhn-valid, in a known issuer range and of a length that range issues."""
    n = len(digits)
    if not 13 <= n <= 19 or not _luhn(digits):
        return False
    two, four = int(digits[:2]), int(digits[:4])
    if digits[0] == "4":  # Visa
        return n in (13, 16, 19)
    if 51 <= two <= 55 or 2221 <= four <= 2720:  # Mastercard
        return n == 16
    if two in (34, 37):  # American Express
        return n == 15
    if four == 6011 or two == 65 or 3528 <= four <= 3589 or two == 62:  # Discover, JCB, UnionPay
        return n >= 16
    return False


_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def _cn_resident_id(value: str) -> bool:
    """A PRC resident identity number: province, birth date and ISO 7064 MOD 11-2 check character."""
    if len(value) != 18 or not value[:17].isdigit() or not "11" <= value[:2] <= "82":
        return False
    try:
        born = date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    if born.year < 1900:
        return False
    check = "10X98765432"[sum(int(d) * w for d, w in zip(value, _CN_ID_WEIGHTS, strict=False)) % 11]
    return value[17].upper() == check


def _ssn(value: str) -> bool:
    area, group, serial = value.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


# -- the redactor -------------------------------------------------------------------------------
class Redactor:
    """Finds and replaces personal data and secrets in text and in JSON-like structures.

    `detectors` picks from `BUILTIN_DETECTORS`. `custom` adds `(name, pattern, replacement)`
    detectors; the replacement is a `re.sub` template (``\\1``, ``\\g<name>``) and defaults to
    ``[REDACTED:<name>]``. A redactor is immutable and can be shared between threads.
    """

    def __init__(
        self,
        detectors: Sequence[str] = BUILTIN_DETECTORS,
        custom: Sequence[CustomDetector] = (),
    ) -> None:
        if isinstance(detectors, str):
            detectors = (detectors,)
        unknown = [name for name in detectors if name not in BUILTIN_DETECTORS]
        if unknown:
            raise ValueError(
                f"unknown DLP detector(s) {', '.join(map(repr, unknown))}; valid: {', '.join(BUILTIN_DETECTORS)}"
            )
        for name, pattern, _ in custom:
            if not isinstance(pattern, re.Pattern):
                raise ValueError(f"custom DLP detector {name!r} needs a compiled regular expression")
        self.detectors: frozenset[str] = frozenset(detectors)
        self.custom: tuple[CustomDetector, ...] = tuple(custom)
        self._numeric_triggers = tuple(
            sorted({t for name in self.detectors & _NUMERIC_TRIGGERS.keys() for t in _NUMERIC_TRIGGERS[name]})
        )
        self._phone = "phone" in self.detectors
        self._email = "email" in self.detectors
        self._secret = "secret" in self.detectors

    def __repr__(self) -> str:
        return f"Redactor({sorted(self.detectors)!r}, custom={[name for name, _, _ in self.custom]!r})"

    def redact_text(self, text: str) -> tuple[str, Counter[str]]:
        """`text` with every finding replaced, and the number of findings per detector."""
        counts: Counter[str] = Counter()
        return self._apply(text, self._scan(text) + self._custom_spans(text), counts), counts

    def redact(self, value: Any) -> tuple[Any, Counter[str]]:
        """Redact the strings in JSON-like `value`: dict values, list and tuple items, nested.

        Dict keys, numbers, booleans and None are left alone. Containers are copied only on the
        paths to a redacted string, so a clean `value` comes back as the very same object.
        """
        if isinstance(value, str):
            return self.redact_text(value)
        counts: Counter[str] = Counter()
        strings: list[str] = []
        _collect(value, strings)
        if not strings:
            return value, counts
        found: dict[int, list[_Span]] = {}
        indexes = [i for i, s in enumerate(strings) if len(s) >= _SHORTEST_FINDING]
        if len(indexes) == 1:
            spans = self._scan(strings[indexes[0]])
            if spans:
                found[indexes[0]] = spans
        elif indexes:
            starts: list[int] = []
            offset = 0
            for i in indexes:
                starts.append(offset)
                offset += len(strings[i]) + 1
            for span in self._scan(_SEPARATOR.join(strings[i] for i in indexes)):
                n = bisect_right(starts, span.start) - 1
                index = indexes[n]
                found.setdefault(index, []).append(span.shifted(starts[n], len(strings[index])))
        if self.custom:
            for index, s in enumerate(strings):
                spans = self._custom_spans(s)
                if spans:
                    found.setdefault(index, []).extend(spans)
        if not found:
            return value, counts
        redacted = [self._apply(s, found[i], counts) if i in found else s for i, s in enumerate(strings)]
        return _rebuild(value, iter(redacted)), counts

    # -- internals -----------------------------------------------------------------------------
    def _custom_spans(self, text: str) -> list[_Span]:
        spans = []
        for name, pattern, replacement in self.custom:
            for match in pattern.finditer(text):
                if match.end() > match.start():
                    new = match.expand(replacement) if replacement is not None else f"[REDACTED:{name}]"
                    spans.append(_Span(match.start(), match.end(), name, new))
        return spans

    @staticmethod
    def _apply(text: str, spans: list[_Span], counts: Counter[str]) -> str:
        """Replace `spans` in `text`; of overlapping findings the one starting first (then longest) wins."""
        if not spans:
            return text
        spans.sort(key=lambda span: (span.start, -span.end))
        out: list[str] = []
        cursor = 0
        for span in spans:
            if span.start < cursor:
                continue
            out.append(text[cursor : span.start])
            out.append(span.replacement)
            cursor = span.end
            counts[span.detector] += 1
        out.append(text[cursor:])
        return "".join(out)

    def _scan(self, text: str, exhaustive: bool = False) -> list[_Span]:
        """Built-in findings in `text`. `exhaustive` skips the prefilter: for tests, and slow."""
        data = text.encode("ascii", "replace")
        everything = [(0, len(text))]
        spans: list[_Span] = []
        if self._numeric_triggers:
            numeric = data.translate(_NUMERIC)
            if exhaustive:
                regions = everything
            else:
                anchors = [i for trigger in self._numeric_triggers for i in _find_all(numeric, trigger)]
                if self._phone:
                    anchors += _plus_anchors(data, numeric)
                regions = _regions(numeric, anchors)
            for start, end in regions:
                if exhaustive or _number_may_start(text, data, start, end):
                    _search(text, _NUMERIC_RE, start, end, self._numeric_span, spans)
        if self._email and b"@" in data:
            regions = everything if exhaustive else _regions(data.translate(_EMAIL), _find_all(data, b"@"))
            for start, end in regions:
                _search(text, _EMAIL_RE, start, end, _email_span, spans)
        if self._secret:
            words = data.translate(_WORD)
            regions = everything if exhaustive else _regions(words, _find_all(words, _WORD_RUN))
            for start, end in regions:
                if exhaustive or _word_secret_may_start(text, start, end):
                    _search(text, _WORD_SECRET_RE, start, end, _secret_span, spans)
            for literal, gate, pattern in _ANCHORED:
                if gate not in data:
                    continue
                for i in _find_all(data, literal):
                    match = pattern.match(text, i)
                    if match and (literal != b"sk-" or _looks_random(match.group())):
                        spans.append(_secret_span(match))
            _scan_pem(text, data, spans)
            folded = data.translate(_FOLD)
            for i in _find_all(folded, b"bearer"):
                match = _BEARER_RE.match(text, i)
                if match:
                    spans.append(_Span(match.start("value"), match.end("value"), "secret", _SECRET))
            _scan_key_values(text, folded, spans)
        return spans

    def _numeric_span(self, match: re.Match[str]) -> _Span | None:
        kind, value, end = match.lastgroup, match.group(), match.end()
        detector = None
        if kind == "run":
            if len(value) == 18 and _cn_resident_id(value):
                detector = "national_id"
            elif value.isdigit():
                if len(value) == 11 and value[0] == "1" and value[1] in "3456789":
                    detector = "phone"
                elif _known_card(value):
                    detector = "credit_card"
        elif kind == "intl":
            detector = "phone" if 8 <= sum(char.isdigit() for char in value) <= 15 else None
        elif kind in ("us", "mobile"):
            detector = "phone"
        elif kind == "ssn":
            detector = "national_id" if _ssn(value) else None
        elif kind == "nino":
            detector = "national_id" if value[:2] not in _NINO_UNUSED_PREFIXES else None
        elif kind == "card":
            end = _card_end(match)
            detector = "credit_card" if end else None
        if detector is None or detector not in self.detectors:
            return None
        return _Span(match.start(), end, detector, f"[REDACTED:{detector}]")


# -- scanning helpers ---------------------------------------------------------------------------
def _find_all(haystack: bytes, needle: bytes) -> list[int]:
    found = []
    i = haystack.find(needle)
    while i >= 0:
        found.append(i)
        i = haystack.find(needle, i + 1)
    return found


def _plus_anchors(data: bytes, numeric: bytes) -> list[int]:
    """Each + that could start an international number: after a non-word character, before a digit."""
    return [i for i in _find_all(data, b"+") if numeric[i + 1 : i + 2] == b"9" and (i == 0 or numeric[i - 1] in b" -")]


def _regions(shape: bytes, anchors: list[int]) -> list[tuple[int, int]]:
    """The maximal runs of non-space bytes in `shape` that hold an anchor, each once, in order."""
    regions = []
    last_end = -1
    for anchor in sorted(anchors):
        if anchor < last_end:
            continue
        start = shape.rfind(b" ", 0, anchor) + 1
        end = shape.find(b" ", anchor)
        if end < 0:
            end = len(shape)
        regions.append((start, end))
        last_end = end
    return regions


def _search(
    text: str,
    pattern: re.Pattern[str],
    start: int,
    end: int,
    accept: Callable[[re.Match[str]], _Span | None],
    spans: list[_Span],
) -> None:
    """Accepted matches of `pattern` that start in [start, end); after a rejected one, retry a char later.

    A region's patterns only consume characters of the region's class, so no match runs past
    `end`; the margin lets lookaheads see the characters that follow.
    """
    endpos = min(len(text), end + _LOOKAHEAD_MARGIN)
    pos = start
    while pos < end:
        match = pattern.search(text, pos, endpos)
        if match is None or match.start() >= end:
            return
        span = accept(match)
        if span is None:
            pos = match.start() + 1
        else:
            spans.append(span)
            pos = match.end()


def _number_may_start(text: str, data: bytes, start: int, end: int) -> bool:
    """False for a region no number can start in, e.g. the digit groups of a lower-case UUID.

    A number starts after a non-word character, so inside a region after a separator: any after
    a space or parenthesis, after `.` or `-` only a NINO (upper case), a + or (after `-`) a run
    of digits.
    """
    return start == 0 or data[start - 1] not in _LOWER_WORD or _NUMBER_START_RE.search(text, start, end) is not None


def _word_secret_may_start(text: str, start: int, end: int) -> bool:
    """Whether a key prefix opens the word run or follows an _ inside it (not a hash or a long name)."""
    if text.startswith(_WORD_SECRET_PREFIXES, start):
        return True
    i = text.find("_", start, end)
    while i >= 0:
        if text.startswith(_WORD_SECRET_PREFIXES, i + 1):
            return True
        i = text.find("_", i + 1, end)
    return False


def _card_end(match: re.Match[str]) -> int:
    """End of a grouped card number, or 0. A trailing 3-digit group may be a CVV: retry without it."""
    value = match.group()
    digits = value.replace(" ", "").replace("-", "")
    if _known_card(digits):
        return match.end()
    head, sep, tail = value.rpartition(match.group("cc_sep"))
    if len(tail) == 3 and head.count(sep) == 3 and _known_card(digits[:-3]):
        return match.start() + len(head)
    return 0


def _email_span(match: re.Match[str]) -> _Span | None:
    label = match.group().rpartition("@")[2].split(".", 1)[0]
    if label[:-1].isdigit() and label[-1] in "xX":  # image assets such as icon@2x.png
        return None
    return _Span(match.start(), match.end(), "email", "[REDACTED:email]")


def _secret_span(match: re.Match[str]) -> _Span:
    return _Span(match.start(), match.end(), "secret", _SECRET)


def _looks_random(token: str) -> bool:
    """An `sk-` key rather than a hyphenated name such as sk-learn-compatible-estimators."""
    return any(char.isdigit() for char in token) and any(char.isalpha() for char in token[3:])


def _scan_pem(text: str, data: bytes, spans: list[_Span]) -> None:
    headers = _find_all(data, b"-----BEGIN ")
    footers = _find_all(data, b"-----END ") if headers else []
    for i in headers:
        header = _PEM_HEADER_RE.match(text, i)
        if header is None:
            continue
        end = header.end()
        index = bisect_right(footers, end - 1)
        footer = _PEM_FOOTER_RE.match(text, footers[index]) if index < len(footers) else None
        if footer is not None and footer.end() - i <= _PEM_MAX_LENGTH and _SEPARATOR not in text[i : footer.end()]:
            end = footer.end()
        else:
            body = _PEM_BODY_RE.match(text, end)
            end = body.end() if body else end
        spans.append(_Span(i, end, "secret", _SECRET))


def _scan_key_values(text: str, folded: bytes, spans: list[_Span]) -> None:
    """Values assigned to secret-looking keys: `password=...`, `"api_key": "..."`, `DB_PASSWORD: ...`."""
    hits = sorted((i, i + len(literal)) for literal in _KEY_LITERALS for i in _find_all(folded, literal))
    done = -1
    for hit_start, hit_end in hits:
        if hit_start < done:  # a second literal in a key already handled, as in secret_token
            continue
        start, end = _key_bounds(folded, hit_start, hit_end)
        done = end
        if not _is_secret_key(folded[start:end], text[start:end]):
            continue
        match = _KEY_VALUE_RE.match(text, end)
        if match is None:
            continue
        group = match.lastgroup or "bare"
        value = match.group(group)
        if value.strip().lower() in _NOT_SECRET_VALUES or value.startswith("$") or not value.strip("* "):
            continue  # booleans and nulls, $PLACEHOLDERS, ***** masks
        spans.append(_Span(match.start(group), match.end(group), "secret", _SECRET))


def _key_bounds(folded: bytes, start: int, end: int) -> tuple[int, int]:
    """The identifier around a key literal, e.g. `db_password` or `spring.datasource.password`."""
    floor = max(0, start - _MAX_KEY_LENGTH)
    while start > floor and folded[start - 1] in _KEY_CHARS:
        start -= 1
    ceiling = min(len(folded), end + _MAX_KEY_LENGTH)
    while end < ceiling and folded[end] in _KEY_CHARS:
        end += 1
    while end > start and folded[end - 1] == 0x2E:  # a full stop ends a sentence, not a key
        end -= 1
    return start, end


def _is_secret_key(key: bytes, original: str) -> bool:
    key = key.replace(b".", b"_").lstrip(b"_")
    if key == b"token" or key in _SECRET_KEYS or any(key.endswith(b"_" + name) for name in _SECRET_KEYS):
        return True
    # GITHUB_TOKEN=... in an environment file, but not next_page_token in an API response.
    return key.endswith(b"_token") and original.isupper()


# -- structures ---------------------------------------------------------------------------------
def _collect(value: Any, strings: list[str]) -> None:
    if isinstance(value, str):
        strings.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _collect(item, strings)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect(item, strings)


def _rebuild(value: Any, strings: Iterator[str]) -> Any:
    """`value` with its strings taken in `_collect` order from `strings`; unchanged parts are shared."""
    if isinstance(value, str):
        return next(strings)
    if isinstance(value, dict):
        items = {key: _rebuild(item, strings) for key, item in value.items()}
        return items if any(items[key] is not item for key, item in value.items()) else value
    if isinstance(value, list | tuple):
        new = [_rebuild(item, strings) for item in value]
        if all(a is b for a, b in zip(new, value, strict=True)):
            return value
        return new if isinstance(value, list) else tuple(new)
    return value
