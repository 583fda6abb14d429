"""Tool poisoning checks for tool definitions that upstream MCP servers advertise.

An upstream server controls the text the model reads about its tools: name, title, description
and every description, enum value and default inside the input schema. A poisoned definition
hides instructions for the model in that text (Invariant Labs, "MCP Security Notification: Tool
Poisoning Attacks", 2025): invisible Unicode, `<IMPORTANT>` blocks telling the model to read
`~/.ssh/id_rsa` and pass it as a parameter, orders about other tools ("shadowing"), or
"ignore previous instructions". `scan_tool` flags such text so the router can quarantine the tool
until an admin reviews it; `description_fingerprint` identifies the reviewed text, so an approval
lapses when the server changes it (a "rug pull").

Checks run on a normalised copy of each text: invisible characters removed, Unicode tag
characters decoded to the ASCII they smuggle, compatibility forms (fullwidth, mathematical
letters) and common Cyrillic and Greek look-alikes folded to ASCII. The phrase checks are
deliberately specific, because a finding quarantines the tool: "Ignore case when matching names"
or "Returns the previous page" must pass.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

EXCERPT_LENGTH = 120
MAX_FINDINGS = 50
# The parts of a tool definition that are scanned and fingerprinted.
SCANNED_FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")
_MAX_DEPTH = 64  # deeper schema nesting is not walked (and is itself reported)
_MAX_TEXT = 65536  # longer texts are reported and only their start is scanned


@dataclass(frozen=True)
class Finding:
    """Why a tool definition looks poisoned. `detail` names the field; `excerpt` quotes it (escaped)."""

    kind: str
    detail: str
    excerpt: str


def description_fingerprint(tool: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of the tool's scanned fields: any change needs a new review.

    Covers name, title, description and inputSchema, and also outputSchema and annotations, since
    they are scanned too and an approval must not carry over to text nobody reviewed.
    """
    canonical = json.dumps(
        {key: tool.get(key) for key in SCANNED_FIELDS},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def scan_tool(tool: Mapping[str, Any]) -> list[Finding]:
    """Findings for every text of an MCP tool definition, nested schema descriptions included."""
    name = tool.get("name")
    own_name = name if isinstance(name, str) else ""
    findings: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for where, text in _texts(tool):
        for finding in _scan_text(where, text, own_name):
            key = (finding.kind, finding.detail)
            if key not in seen:
                seen.add(key)
                findings.append(finding)
            if len(findings) >= MAX_FINDINGS:
                return findings
    return findings


# -- walking the definition ---------------------------------------------------------------------
def _texts(tool: Mapping[str, Any]) -> Iterator[tuple[str, str | None]]:
    """(location, text) for every string in the scanned fields and every property name; None
    for a value nested too deep to walk."""
    stack: list[tuple[str, Any, int]] = [(key, tool.get(key), 0) for key in reversed(SCANNED_FIELDS)]
    while stack:
        where, value, depth = stack.pop()
        if isinstance(value, str):
            yield where, value
        elif depth >= _MAX_DEPTH:
            yield where, None
        elif isinstance(value, Mapping):
            names_are_text = where.endswith((".properties", ".patternProperties", ".$defs", ".definitions"))
            for key, item in reversed(list(value.items())):
                key = str(key)
                label = key if key.isprintable() else repr(key)  # no invisible characters in a detail
                stack.append((f"{where}.{label}", item, depth + 1))
                if names_are_text:
                    stack.append((f"{where} name {key!r}", key, depth + 1))
        elif isinstance(value, list | tuple):
            for index in range(len(value) - 1, -1, -1):
                stack.append((f"{where}[{index}]", value[index], depth + 1))


# -- Unicode ------------------------------------------------------------------------------------
_TAGS = range(0xE0000, 0xE0080)
_VARIATION_SELECTORS = {*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)}
_BLANK_LETTERS = {0x115F, 0x1160, 0x3164, 0xFFA0}  # Hangul fillers: letters that render as nothing
_ZWJ = 0x200D
_EMOJI_MODIFIERS = {0xFE0F, *range(0x1F3FB, 0x1F400)}  # emoji presentation selector, skin tones
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Cyrillic and Greek letters that look like Latin ones (NFKC leaves them alone).
_CONFUSABLES = str.maketrans(
    "АВЕЅІЈКМНОРСТХУаеіјорсхуѕԁһӏԛԝΑΒΕΖΗΙΚΜΝΟΡΤΥΧοαιντυκρ",
    "ABESIJKMHOPCTXYaeijopcxysdhlqwABEZHIKMNOPTYXoaivtukp",
)
_LETTER_SCRIPTS = frozenset({"LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE"})


def _invisible(text: str, i: int) -> bool:
    """Whether text[i] renders as nothing and is not part of an ordinary emoji sequence."""
    char = text[i]
    code = ord(char)
    if code < 0x80:
        return (code < 0x20 and char not in "\t\n\r") or code == 0x7F
    if code in _BLANK_LETTERS:
        return True
    if code in _VARIATION_SELECTORS:
        # VS15/VS16 right after a visible character choose text or emoji presentation (⚠️).
        return not (code in (0xFE0E, 0xFE0F) and i > 0 and not _invisible(text, i - 1))
    if code == _ZWJ:  # joins emoji, as in 👩‍💻
        return not (0 < i < len(text) - 1 and _emoji_like(text[i - 1]) and _emoji_like(text[i + 1]))
    return unicodedata.category(char) in ("Cf", "Cc")


def _emoji_like(char: str) -> bool:
    return unicodedata.category(char) == "So" or ord(char) in _EMOJI_MODIFIERS


def _describe_invisible(char: str) -> str:
    code = ord(char)
    if code in _TAGS:
        return "Unicode tag characters"
    if code in _VARIATION_SELECTORS:
        return "variation selectors"
    return f"U+{code:04X} {unicodedata.name(char, 'control character')}"


def _normalize(text: str) -> tuple[str, list[int] | None]:
    """The text a model effectively reads, and for each of its characters the index in `text`.

    Invisible characters are dropped, tag characters become the ASCII they encode, compatibility
    forms and accents are folded (NFKD) and look-alike letters mapped to Latin.
    """
    if text.isascii() and not _ASCII_CONTROL.search(text):
        return text, None
    out: list[str] = []
    index: list[int] = []
    for i, char in enumerate(text):
        code = ord(char)
        if 0xE0020 <= code <= 0xE007E:
            folded = chr(code - 0xE0000)
        elif char in "\t\n\r":
            folded = char
        elif _invisible(text, i):
            continue
        elif code < 0x80:
            folded = char
        else:
            folded = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
            folded = folded.translate(_CONFUSABLES)
        out.append(folded)
        index.extend([i] * len(folded))
    return "".join(out), index


def _excerpt(text: str, start: int) -> str:
    """Up to `EXCERPT_LENGTH` characters of `text` from a little before `start`, on one line, with
    invisible and control characters written as escapes (\\u200b)."""
    begin = max(0, start - 30)
    out = "…" if begin else ""
    for i in range(begin, len(text)):
        char = text[i]
        if char in "\n\r\t":
            piece = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}[char]
        elif _invisible(text, i) or unicodedata.category(char) in ("Co", "Cn", "Cs", "Zl", "Zp"):
            code = ord(char)
            piece = f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
        else:
            piece = char
        if len(out) + len(piece) > EXCERPT_LENGTH - 1:
            return out + "…"
        out += piece
    return out


# -- phrase checks ------------------------------------------------------------------------------
_I = re.IGNORECASE
_GAP = r"(?:[^.\n]|\.(?=\S)|\n(?![ \t]*\n)){0,80}?"  # up to 80 characters of the same sentence
_QUOTE = "[`'\"]?"
_NOT_A_NAME = r"(?!(?:the|a|an|this|that|these|each|every|any|same|current|its|own|next|other)\b)"
_TOOL_NAME = rf"{_QUOTE}{_NOT_A_NAME}(?P<tool>[\w.:/-]+){_QUOTE}"

_SENSITIVE_FILE = (
    r"(?:~?/?(?:[\w.-]{1,64}/){0,12}\.ssh\b(?:/[\w.-]+)?|\bid_(?:rsa|dsa|ecdsa|ed25519)\b(?:\.pub)?|(?<![\w.])\.env\b"
    r"|[\w./~-]{0,200}\bmcp\.json\b|\bclaude_desktop_config\.json\b|\.aws/credentials\b|\.git-credentials\b"
    r"|\bcredentials\.json\b|(?<![\w.])\.(?:netrc|npmrc|pypirc|pgpass)\b|/etc/(?:passwd|shadow)\b|\.kube/config\b"
    r"|\.docker/config\.json\b|\.(?:bash|zsh)_history\b|\bwallet\.dat\b|\.gnupg\b)"
)
_SECRETS = (
    r"(?:credentials|api[\s_-]?keys?|secrets|passwords|private[\s_-]keys?|access[\s_-]tokens?|auth[\s_-]tokens?"
    r"|session[\s_-](?:tokens?|cookies)|cookies|ssh[\s_-]keys?|environment\s+variables|env\s+vars)\b"
)
# Whose secrets: "the user's", "all", "saved"... ("pass the API key in a header" is ordinary usage).
_OWNER = (
    r"(?:(?:the|its|their)\s+)?(?:all|any|every|your|user'?s|users'|saved|stored|cached|local)\s+"
    r"(?:(?:the|saved|stored|cached|local|private|\w+'s)\s+){0,2}"
)

# (kind, what it means, pattern). A `tool` or `tool_id` group must name a tool other than the scanned one.
_PHRASES: tuple[tuple[str, str, re.Pattern[str]], ...] = tuple(
    (kind, what, re.compile(pattern, _I))
    for kind, what, pattern in (
        (
            "instruction_override",
            "tells the model to ignore its instructions",
            r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:(?:all|any|every|the|your|my|these|those|of)\s+){0,3}"
            r"(?:previous|prior|above|earlier|preceding|former|original|initial|system|safety|developer)\s+"
            r"(?:instructions?|prompts?|rules|directions|directives?|guidelines|guidance|context|messages?"
            r"|commands|guardrails|constraints|policies)\b",
        ),
        (
            "instruction_override",
            "tells the model to ignore its instructions",
            r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+)?(?:of\s+)?(?:your|the\s+(?:model|assistant)'?s)\s+"
            r"(?:instructions?|rules|guidelines|directives?|programming|training|system\s+prompt|constraints|guardrails)\b",
        ),
        (
            "instruction_override",
            "tells the model to ignore its instructions",
            r"\b(?:ignore|disregard|forget)\s+(?:all\s+of\s+|all\s+)?(?:the\s+above|everything\s+(?:above|before"
            r"|you\s+(?:were|have\s+been)\s+told))\b",
        ),
        (
            "instruction_override",
            "assigns the model a new role",
            r"\byou\s+are\s+now\s+(?:a|an|the|my|acting|operating|no\s+longer|free|unrestricted|jailbroken|dan"
            r"|in\s+(?:[\w-]+\s+){0,2}mode)\b",
        ),
        (
            "instruction_override",
            "announces new instructions",
            r"\b(?:new|updated|revised|real|actual|true|override"
            r"|secret|hidden)\s+(?:system\s+)?instructions?\s*:",
        ),
        ("instruction_override", "mentions the system prompt", r"\bsystem\s+prompt\b"),
        (
            "instruction_override",
            "redefines the model's behaviour",
            r"\b(?:from\s+now\s+on|henceforth),?\s+"
            r"(?:you|the\s+(?:assistant|model|ai))\b",
        ),
        (
            "instruction_override",
            "contains a chat-template role marker",
            r"<\|(?:im_start|im_end|system|endoftext"
            r"|start_header_id|end_header_id|eot_id)\|>|\[/?INST\]|<</?SYS>>",
        ),
        (
            "hidden_directive",
            "has a block addressed to the model",
            r"<\s*/?\s*(?:important|system(?:[\s_-]*(?:prompt|message|reminder|instructions?|note))?|instructions?"
            r"|hidden|secret[\s_-]*instructions?|critical)(?:\s[^<>]{0,40})?\s*>",
        ),
        ("hidden_directive", "has an HTML comment", r"<!--\s*(?!-->)\S"),
        (
            "hidden_directive",
            "tells the model to keep something from the user",
            r"\b(?:(?:do\s+not|don'?t|never|must\s+not|should\s+not|shouldn'?t)\s+(?:tell|mention|inform|notify"
            r"|alert|warn)|without\s+(?:telling|mentioning|informing|notifying))\s+"
            r"(?:(?:this|that|it|anything|them)\s+)?(?:to\s+)?(?:the\s+)?users?\b"
            r"|\b(?:do\s+not|don'?t|never|without)\s+let(?:ting)?\s+(?:the\s+)?users?\s+(?:know|see|notice)\b",
        ),
        (
            "hidden_directive",
            "tells the model to keep something from the user",
            r"\b(?:do\s+not|don'?t|never)\s+(?:mention|reveal|disclose|tell|say|expose)\s+"
            r"(?:this|that|these|it|anything|the\s+(?:above|following|fact))\b",
        ),
        (
            "hidden_directive",
            "tells the model to keep something from the user",
            r"\b(?:the\s+)?user\s+(?:must|should|need|needs|will)\s+(?:not|never)\s+(?:know|see|notice|find\s+out"
            r"|be\s+(?:told|informed|aware|notified))\b|\b(?:hide|conceal)\s+(?:this|it|that|the\s+\w+)\s+from\s+"
            r"(?:the\s+)?users?\b",
        ),
        ("hidden_directive", "asks for secrecy", r"\b(?:secretly|covertly|surreptitiously|stealthily)\b"),
        (
            "hidden_directive",
            "asks for secrecy",
            r"\bwithout\s+(?:the\s+user(?:'s)?\s+)?(?:noticing|knowing|knowledge|awareness"
            r"|being\s+(?:noticed|detected|seen))\b",
        ),
        (
            "exfiltration",
            "asks to read or send a sensitive file",
            r"\b(?:read|cat|open|load|send|include|pass|upload|copy|fetch|extract|access|print|output|dump|share"
            rf"|attach|forward|post|leak|collect|exfiltrate|grab|steal|retrieve|get|provide|append|embed)\b{_GAP}"
            + _SENSITIVE_FILE,
        ),
        (
            "exfiltration",
            "asks to smuggle data through a parameter",
            # "pass its content as 'sidenote'": the content of something read before, not the tool's own input
            r"\b(?:pass|send|include|put|append|embed|forward|upload|post|copy|leak|provide|add|insert|attach)\s+"
            r"(?:(?:its|their)\s+(?:(?:full|entire|complete|whole)\s+)?contents?\b|(?:all\s+)?(?:the\s+)?"
            rf"(?:(?:full|entire|complete|whole)\s+)?contents?\s+of\b){_GAP}\bas\s+(?:the\s+)?"
            r"(?:['\"`][\w-]+['\"`]|[\w-]+\s+(?:parameter|argument|param|field))",
        ),
        (
            "exfiltration",
            "asks to send credentials",
            rf"\b(?:send|pass|include|upload|forward|post|share|attach"
            rf"|append|embed|copy|transmit|reveal|disclose)\s+{_OWNER}{_SECRETS}|\b(?:exfiltrate|leak|steal|harvest)\s+"
            rf"(?:\S+\s+){{0,3}}?{_SECRETS}",
        ),
        (
            "exfiltration",
            "asks to send data to a URL",
            rf"\b(?:send|post|upload|forward|transmit|exfiltrate|leak"
            rf"|beacon|log|sync|mirror|copy)\b{_GAP}\bto\s+(?:the\s+(?:url|endpoint|server|webhook)\s+)?(?:https?://|\d{{1,3}}(?:\.\d{{1,3}}){{3}})",
        ),
        (
            "exfiltration",
            "redirects messages to a fixed address",
            rf"\b(?:send|forward|redirect|bcc|cc|route)\b{_GAP}"
            r"\bto\s+[\w.+-]+@[\w-]+(?:\.[\w-]+)+",
        ),
        (
            "exfiltration",
            "redirects messages to a fixed address",
            r"\b(?:change|rewrite|replace|set|override"
            r"|redirect)\s+(?:the\s+|every\s+|each\s+)?(?:recipients?|destination|to[\s_-]address|target\s+(?:number"
            r"|address))\s+to\s+\S",
        ),
        ("exfiltration", "renders a remote image (an exfiltration channel)", r"!\[[^\]\n]{0,200}\]\(\s*https?://"),
        (
            "cross_tool",
            "gives orders about another tool",
            rf"\bwhen(?:ever)?\s+(?:(?:the|a)\s+)?(?:(?:user|assistant|you|agent|model|llm|ai|client)\s+)?"
            rf"(?:calls?|calling|uses?|using|invokes?|invoking|runs?|running|executes?|executing)\s+(?:the\s+|a\s+)?"
            rf"{_TOOL_NAME}\s+tool\b",
        ),
        (
            "cross_tool",
            "gives orders about another tool",
            rf"\b(?:before|after)\s+(?:calling|using|invoking|running)\s+(?:the\s+)?{_TOOL_NAME}\s+tool\b",
        ),
        (
            "cross_tool",
            "gives orders about another tool",
            rf"\bthe\s+{_TOOL_NAME}\s+tool\s+(?:must|should|shall|will\s+(?:now|always)|needs?\s+to|has\s+to"
            rf"|is\s+required\s+to)\b",
        ),
        (
            "cross_tool",
            "gives orders about another tool",
            # "anytime `whatsapp.send_message` is invoked": a tool, or a name that looks like one
            rf"\b(?:when(?:ever)?|any\s*time|each\s+time|every\s+time)\s+(?:the\s+)?(?:{_TOOL_NAME}\s+tool"
            rf"|{_QUOTE}(?P<tool_id>[\w:/-]*[_.][\w.:/-]*){_QUOTE})\s+is\s+(?:called|invoked|used|run|executed)\b",
        ),
        (
            "cross_tool",
            "steers the model away from other tools",
            r"\binstead\s+of\s+(?:calling|using|invoking"
            r"|running)\s+(?:\S+\s+){0,4}?tools?\b",
        ),
        (
            "cross_tool",
            "gives orders about other tools",
            r"\bbefore\s+(?:calling|using|invoking|running)\s+(?:any|another|other|all|every|each)\s+(?:other\s+)?"
            r"tools?\b|\b(?:do\s+not|don'?t|never)\s+(?:call|use|invoke|trust)\s+(?:any\s+|the\s+)?other\s+tools?\b"
            r"|\b(?:all\s+)?other\s+tools?\s+(?:must|should|are\s+(?:deprecated|disabled|broken|unsafe))\b",
        ),
    )
)
_NEGATED = re.compile(r"\b(?:never|not|no)\s+(?:\w+\s+){0,2}$|n't\s+(?:\w+\s+){0,2}$", _I)
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{80,}={0,2}")
_PADDING = re.compile(r"(?:[ \t]*\n){15,}|[ \t\u00a0]{120,}")
_WORD = re.compile(r"\w+")


def _scan_text(where: str, text: str | None, own_name: str, decoded: bool = False) -> Iterator[Finding]:
    if text is None:
        yield Finding("obfuscation", f"{where}: nested deeper than {_MAX_DEPTH} levels, not scanned", "")
        return
    if len(text) > _MAX_TEXT:
        yield Finding("obfuscation", f"{where}: {len(text)} characters long, only the first {_MAX_TEXT} scanned", "")
        text = text[:_MAX_TEXT]
    if not decoded:
        yield from _hidden_unicode(where, text)
        yield from _lookalikes(where, text)
    normalized, index = _normalize(text)

    def located(what: str, match: re.Match[str]) -> tuple[str, str]:
        """The finding's detail and excerpt; text smuggled in tag characters is quoted decoded."""
        if index is None:
            return f"{where}: {what}", _excerpt(text, match.start())
        start = index[match.start()]
        if any(ord(text[i]) in _TAGS for i in range(start, index[match.end() - 1] + 1)):
            return f"{where}: {what} (in text hidden as Unicode tag characters)", _excerpt(normalized, match.start())
        return f"{where}: {what}", _excerpt(text, start)

    for kind, what, pattern in _PHRASES:
        match = next((m for m in pattern.finditer(normalized) if _relevant(m, normalized, own_name, kind)), None)
        if match:
            yield Finding(kind, *located(what, match))
    padding = _PADDING.search(normalized)
    if padding:
        yield Finding("obfuscation", *located("whitespace padding that pushes text out of view", padding))
    for match in _BASE64.finditer(normalized):
        blob = match.group()
        if not _looks_encoded(blob):
            continue
        plain = _decode_base64(blob)
        what = f"a base64 blob of {len(blob)} characters"
        if plain is not None:
            what += f" that decodes to text {plain[:60]!r}"
        yield Finding("obfuscation", *located(what, match))
        if plain is not None and not decoded:
            yield from _scan_text(f"{where} (base64-decoded)", plain, own_name, decoded=True)


def _relevant(match: re.Match[str], text: str, own_name: str, kind: str) -> bool:
    tool = match.groupdict().get("tool") or match.groupdict().get("tool_id")
    if tool is not None and tool.lower() == own_name.lower():
        return False  # about the scanned tool itself
    if kind == "exfiltration" and _NEGATED.search(text, max(0, match.start() - 30), match.start()):
        return False  # "never send credentials"
    return True


def _hidden_unicode(where: str, text: str) -> Iterator[Finding]:
    if text.isascii() and not _ASCII_CONTROL.search(text):
        return
    hidden = [i for i in range(len(text)) if _invisible(text, i)]
    if not hidden:
        return
    kinds: dict[str, int] = {}
    for i in hidden:
        label = _describe_invisible(text[i])
        kinds[label] = kinds.get(label, 0) + 1
    what = ", ".join(f"{label} ×{count}" if count > 1 else label for label, count in kinds.items())
    smuggled = "".join(chr(ord(text[i]) - 0xE0000) for i in hidden if 0xE0020 <= ord(text[i]) <= 0xE007E)
    if smuggled:
        what += f"; the tag characters spell {smuggled[:80]!r}"
    yield Finding("hidden_unicode", f"{where}: {len(hidden)} invisible characters: {what}", _excerpt(text, hidden[0]))


def _lookalikes(where: str, text: str) -> Iterator[Finding]:
    """Words mixing Latin with look-alike scripts (pаssword), or written in styled letters (𝐢𝐠𝐧𝐨𝐫𝐞)."""
    if text.isascii():
        return
    mixed: list[re.Match[str]] = []
    styled: list[re.Match[str]] = []
    for match in _WORD.finditer(text):
        word = match.group()
        if word.isascii():
            continue
        scripts = {unicodedata.name(c, "").partition(" ")[0] for c in word if c.isalpha()} & _LETTER_SCRIPTS
        if "LATIN" in scripts and len(scripts) > 1:
            mixed.append(match)
        elif unicodedata.normalize("NFKC", word).isascii() and any(
            unicodedata.name(c, "").startswith(("FULLWIDTH", "MATHEMATICAL")) for c in word
        ):
            styled.append(match)
    for matches, what in ((mixed, "words mixing Latin and look-alike letters"), (styled, "words in styled letters")):
        if matches:
            words = ", ".join(repr(m.group()) for m in matches[:3])
            yield Finding("obfuscation", f"{where}: {what}: {words}", _excerpt(text, matches[0].start()))


def _looks_encoded(blob: str) -> bool:
    """Random-looking base64 rather than a long path or identifier."""
    return (
        any(c.isupper() for c in blob)
        and any(c.islower() for c in blob)
        and any(c.isdigit() for c in blob)
        and blob.count("/") <= len(blob) // 16
        and blob.count("_") + blob.count("-") <= len(blob) // 16
    )


def _decode_base64(blob: str) -> str | None:
    """The blob's text if it decodes to (almost only) printable UTF-8."""
    data = blob.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        plain = base64.b64decode(data + "=" * (-len(data) % 4), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    printable = sum(c.isprintable() or c in "\n\r\t" for c in plain)
    return plain if plain and printable >= 0.95 * len(plain) else None
