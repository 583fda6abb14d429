"""A parser for the subset of Mermaid `erDiagram` syntax the `er` target accepts.

    erDiagram
        %% comments start with two percent signs
        direction LR
        customers ||--o{ orders : "places"
        orders }|..|| "order status" : has
        customers {
            int customer_id PK "surrogate key"
            varchar name
            int region_id FK
        }
        p[Person] { string name }

Entities are names (letters, digits, `_`, `-`) or double-quoted strings, optionally with an alias in square
brackets. A relationship is `<entity> <left><line><right> <entity> : <label>` with the left end one of `|o`,
`||`, `}o`, `}|`, the line `--` (identifying) or `..` (non-identifying), the right end one of `o|`, `||`,
`o{`, `|{` (or Mermaid's word forms: `one or zero`, `only one`, `zero or many`, ..., joined by `to` or
`optionally to`). Attributes are `type name [PK|FK|UK[, ...]] ["comment"]`. `style`, `classDef`, `class`,
`accTitle` and `accDescr` lines are skipped. Errors are `MermaidError` with a 1-based line number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SYMBOL_LEFT = {"|o": "zero or one", "||": "exactly one", "}o": "zero or more", "}|": "one or more"}
SYMBOL_RIGHT = {"o|": "zero or one", "||": "exactly one", "o{": "zero or more", "|{": "one or more"}
WORDS = {
    "one or zero": "zero or one",
    "zero or one": "zero or one",
    "one or more": "one or more",
    "one or many": "one or more",
    "many(1)": "one or more",
    "1+": "one or more",
    "zero or more": "zero or more",
    "zero or many": "zero or more",
    "many(0)": "zero or more",
    "0+": "zero or more",
    "only one": "exactly one",
    "1": "exactly one",
}
MANY = {"zero or more", "one or more"}

_NAME = r'(?:"[^"\n]*"|[A-Za-z_\u00C0-\uFFFF][\w\u00C0-\uFFFF-]*)'
_ENTITY = rf"(?P<{{g}}>{_NAME})(?:\[(?P<{{g}}_alias>[^\]\n]*)\])?"
_WORD_ALT = "|".join(re.escape(w) for w in sorted(WORDS, key=len, reverse=True))
_REL_SYMBOL = re.compile(
    r"^"
    + _ENTITY.format(g="a")
    + r"\s*(?P<left>\|o|\|\||\}o|\}\|)(?P<line>--|\.\.)(?P<right>o\||\|\||o\{|\|\{)\s*"
    + _ENTITY.format(g="b")
    + r"\s*(?::\s*(?P<label>.*))?$"
)
_REL_WORDS = re.compile(
    r"^" + _ENTITY.format(g="a") + rf"\s+(?P<left>{_WORD_ALT})\s+(?P<line>optionally to|to)\s+(?P<right>{_WORD_ALT})"
    r"\s+" + _ENTITY.format(g="b") + r"\s*(?::\s*(?P<label>.*))?$"
)
_ENTITY_LINE = re.compile(r"^" + _ENTITY.format(g="a") + r"\s*(?P<open>\{)?\s*(?P<rest>.*)$")
_ATTR = re.compile(
    r"\s*(?P<type>[A-Za-z_][\w\-\[\]()]*)\s+(?P<name>\*?[A-Za-z_][\w\-\[\]()]*)"
    r'(?:\s+(?P<keys>(?:PK|FK|UK)(?:\s*,\s*(?:PK|FK|UK))*))?(?:\s+"(?P<comment>[^"\n]*)")?\s*'
)
_SKIP = re.compile(r"^(style|classDef|class|accTitle|accDescr|title)\b")


class MermaidError(ValueError):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(f"Mermaid line {line}: {message}")
        self.line = line


@dataclass
class Attribute:
    type: str
    name: str
    keys: list[str]
    comment: str | None
    line: int


@dataclass
class Entity:
    name: str
    alias: str | None
    line: int
    attributes: list[Attribute] = field(default_factory=list)


@dataclass
class Relationship:
    left: str
    right: str
    left_cardinality: str
    right_cardinality: str
    identifying: bool
    label: str
    line: int
    text: str


@dataclass
class ERDiagram:
    entities: dict[str, Entity]
    relationships: list[Relationship]
    direction: str | None = None


def _unquote(name: str) -> str:
    return name[1:-1] if len(name) >= 2 and name[0] == name[-1] == '"' else name


def parse_er_diagram(text: str) -> ERDiagram:
    """Parse an `erDiagram`; raises MermaidError naming the line and what was expected."""
    lines = text.splitlines()
    index = 0
    if lines and lines[0].strip() == "---":  # front matter
        for end in range(1, len(lines)):
            if lines[end].strip() == "---":
                index = end + 1
                break
        else:
            raise MermaidError("front matter opened with `---` is never closed", 1)
    diagram = ERDiagram({}, [])
    header_seen = False
    open_entity: Entity | None = None

    def entity(name: str, alias: str | None, number: int) -> Entity:
        key = _unquote(name)
        if key not in diagram.entities:
            diagram.entities[key] = Entity(key, alias, number)
        elif alias and not diagram.entities[key].alias:
            diagram.entities[key].alias = alias
        return diagram.entities[key]

    for number in range(index + 1, len(lines) + 1):
        raw = lines[number - 1]
        stripped = _strip_comment(raw).strip()
        if not stripped:
            continue
        if not header_seen:
            if stripped.split()[0] != "erDiagram":
                raise MermaidError(f"expected `erDiagram` as the first statement, found `{stripped[:40]}`", number)
            header_seen = True
            stripped = stripped[len("erDiagram") :].strip()
            if not stripped:
                continue
        if open_entity is not None:
            if stripped == "}":
                open_entity = None
                continue
            closing = stripped.endswith("}")
            body = stripped[:-1] if closing else stripped
            _parse_attributes(open_entity, body, number)
            if closing:
                open_entity = None
            continue
        if stripped.startswith("direction"):
            parts = stripped.split()
            if len(parts) != 2 or parts[1] not in ("TB", "BT", "LR", "RL"):
                raise MermaidError("`direction` takes one of TB, BT, LR, RL", number)
            diagram.direction = parts[1]
            continue
        if _SKIP.match(stripped):
            continue
        match = _REL_SYMBOL.match(stripped)
        words = False
        if match is None:
            match = _REL_WORDS.match(stripped)
            words = match is not None
        if match is not None:
            label = match.group("label")
            if label is None or not label.strip():
                raise MermaidError(
                    f"relationship `{stripped}` needs a label after a colon, e.g. `{stripped} : has`", number
                )
            label = label.strip()
            if label.startswith('"') and (len(label) < 2 or not label.endswith('"')):
                raise MermaidError(f"unterminated quoted label {label}", number)
            a = entity(match.group("a"), match.group("a_alias"), number)
            b = entity(match.group("b"), match.group("b_alias"), number)
            if words:
                left, right = WORDS[match.group("left")], WORDS[match.group("right")]
                identifying = match.group("line") == "to"
            else:
                left, right = SYMBOL_LEFT[match.group("left")], SYMBOL_RIGHT[match.group("right")]
                identifying = match.group("line") == "--"
            diagram.relationships.append(
                Relationship(a.name, b.name, left, right, identifying, _unquote(label), number, stripped)
            )
            continue
        match = _ENTITY_LINE.match(stripped)
        if match is not None and (match.group("open") or not match.group("rest")):
            current = entity(match.group("a"), match.group("a_alias"), number)
            rest = match.group("rest").strip()
            if match.group("open"):
                if rest.endswith("}"):
                    _parse_attributes(current, rest[:-1], number)
                else:
                    if rest:
                        _parse_attributes(current, rest, number)
                    open_entity = current
            continue
        raise MermaidError(_explain(stripped), number)
    if not header_seen:
        raise MermaidError("the diagram is empty: expected `erDiagram`", max(1, len(lines)))
    if open_entity is not None:
        raise MermaidError(f"the attribute block of `{open_entity.name}` is never closed with `}}`", open_entity.line)
    return diagram


def _strip_comment(line: str) -> str:
    """The line without a `%%` comment (outside double quotes)."""
    quoted = False
    for position, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif not quoted and line.startswith("%%", position):
            return line[:position]
    return line


def _parse_attributes(target: Entity, body: str, number: int) -> None:
    position = 0
    body = body.rstrip()
    while position < len(body):
        match = _ATTR.match(body, position)
        if match is None or match.end() == position:
            rest = body[position:].strip()
            if re.match(r"[A-Za-z_][\w\-\[\]()]*\(.*,", rest):
                raise MermaidError(
                    f"attribute type `{rest.split()[0]}` may not contain `,` in Mermaid; write just the type name "
                    "(e.g. `decimal`)",
                    number,
                )
            if len(rest.split()) == 1:
                raise MermaidError(
                    f"attribute `{rest}` in `{target.name}` needs a type and a name: `type name`", number
                )
            raise MermaidError(
                f'cannot parse attribute `{rest}` in `{target.name}`: expected `type name [PK|FK|UK] ["comment"]`',
                number,
            )
        keys = [k.strip() for k in match.group("keys").split(",")] if match.group("keys") else []
        target.attributes.append(
            Attribute(match.group("type"), match.group("name"), keys, match.group("comment"), number)
        )
        position = match.end()


def _explain(statement: str) -> str:
    if re.search(r"[|}{o.-]{3,}", statement) or "--" in statement or ".." in statement:
        return (
            f"cannot parse relationship `{statement}`: write `A <left><line><right> B : label` with the left end one "
            "of |o || }o }|, the line -- or .., the right end one of o| || o{ |{ (e.g. `customers ||--o{ orders : "
            "places`)"
        )
    return (
        f"cannot parse `{statement}`: expected an entity (`name {{ ... }}`) or a relationship (`A ||--o{{ B : label`)"
    )
