"""A small PromQL parser and type checker, for validating the `expr` of Prometheus rules without a server.

It accepts what rule expressions use: numbers (decimal, hex, Inf, NaN), strings, metric selectors with
label matchers (`=`, `!=`, `=~`, `!~`), range selectors (`[5m]`), subqueries (`[1h:5m]`), `offset` and `@`
modifiers, function calls (checked against Prometheus's function list, argument count and types),
aggregations with `by`/`without` before or after the arguments, unary and binary operators with
Prometheus precedence, `bool`, `on`/`ignoring`, `group_left`/`group_right`, and `#` comments. It checks
types the way Prometheus does (e.g. `rate` needs a range vector, scalars compare only with `bool`, set
operators need vectors). It rejects unbalanced brackets, bad matchers, unknown operators and functions,
with the position (1-based line and column) in `PromQLError`.

    >>> parse_promql('sum by (job) (rate(http_requests_total{code=~"5.."}[5m])) > 0').type
    'vector'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCALAR, VECTOR, MATRIX, STRING = "scalar", "vector", "matrix", "string"
_A = {SCALAR: "a scalar", VECTOR: "an instant vector", MATRIX: "a range vector", STRING: "a string"}

V, M, S, T = VECTOR, MATRIX, SCALAR, STRING
# name: (argument types, variadic, return type). variadic 0: exact; n > 0: the last argument is optional and
# may repeat up to n times; -1: the last argument is optional and repeats without limit (as in Prometheus).
FUNCTIONS: dict[str, tuple[tuple[str, ...], int, str]] = {
    **{
        f: ((V,), 0, V)
        for f in (
            "abs",
            "absent",
            "acos",
            "acosh",
            "asin",
            "asinh",
            "atan",
            "atanh",
            "ceil",
            "cos",
            "cosh",
            "deg",
            "exp",
            "floor",
            "histogram_avg",
            "histogram_count",
            "histogram_stddev",
            "histogram_stdvar",
            "histogram_sum",
            "ln",
            "log10",
            "log2",
            "rad",
            "sgn",
            "sin",
            "sinh",
            "sort",
            "sort_desc",
            "sqrt",
            "tan",
            "tanh",
            "timestamp",
        )
    },
    **{
        f: ((M,), 0, V)
        for f in (
            "absent_over_time",
            "avg_over_time",
            "changes",
            "count_over_time",
            "delta",
            "deriv",
            "idelta",
            "increase",
            "irate",
            "last_over_time",
            "mad_over_time",
            "max_over_time",
            "min_over_time",
            "present_over_time",
            "rate",
            "resets",
            "stddev_over_time",
            "stdvar_over_time",
            "sum_over_time",
            "first_over_time",
            "ts_of_max_over_time",
            "ts_of_min_over_time",
            "ts_of_last_over_time",
        )
    },
    **{
        f: ((V,), 1, V)
        for f in (
            "day_of_month",
            "day_of_week",
            "day_of_year",
            "days_in_month",
            "hour",
            "minute",
            "month",
            "year",
        )
    },
    "clamp": ((V, S, S), 0, V),
    "clamp_max": ((V, S), 0, V),
    "clamp_min": ((V, S), 0, V),
    "double_exponential_smoothing": ((M, S, S), 0, V),
    "holt_winters": ((M, S, S), 0, V),
    "histogram_fraction": ((S, S, V), 0, V),
    "histogram_quantile": ((S, V), 0, V),
    "info": ((V, V), 1, V),
    "label_join": ((V, T, T, T), -1, V),
    "label_replace": ((V, T, T, T, T), 0, V),
    "pi": ((), 0, S),
    "predict_linear": ((M, S), 0, V),
    "quantile_over_time": ((S, M), 0, V),
    "round": ((V, S), 1, V),
    "scalar": ((V,), 0, S),
    "sort_by_label": ((V, T), -1, V),
    "sort_by_label_desc": ((V, T), -1, V),
    "time": ((), 0, S),
    "vector": ((S,), 0, V),
}
AGGREGATIONS = {
    "sum",
    "avg",
    "count",
    "min",
    "max",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
}
AGGREGATION_PARAM = {"topk": S, "bottomk": S, "quantile": S, "limitk": S, "limit_ratio": S, "count_values": T}
KEYWORDS = {
    "and",
    "or",
    "unless",
    "atan2",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
}
COMPARISONS = {"==", "!=", "<", "<=", ">", ">="}
SET_OPERATORS = {"and", "or", "unless"}
PRECEDENCE = {
    "or": 1,
    "and": 2,
    "unless": 2,
    **{op: 3 for op in COMPARISONS},
    "+": 4,
    "-": 4,
    "*": 5,
    "/": 5,
    "%": 5,
    "atan2": 5,
    "^": 6,
}
OPERATORS = [
    "==",
    "!=",
    "<=",
    ">=",
    "=~",
    "!~",
    "<",
    ">",
    "=",
    "+",
    "-",
    "*",
    "/",
    "%",
    "^",
    "(",
    ")",
    "{",
    "}",
    "[",
    "]",
    ",",
    "@",
    ":",
]
BAD_OPERATORS = {
    "&&": "and",
    "||": "or",
    "<>": "!=",
    "===": "==",
    "!==": "!=",
    "=>": ">=",
    "=<": "<=",
    "**": "^",
    "//": "/",
    "!": "!= (or `unless`)",
    "&": "and",
    "|": "or",
}

_DURATION = re.compile(r"(?:\d+(?:ms|[smhdwy]))+(?![A-Za-z0-9_])")
_VALID_DURATION = re.compile(r"^(?:\d+y)?(?:\d+w)?(?:\d+d)?(?:\d+h)?(?:\d+m)?(?:\d+s)?(?:\d+ms)?$")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_IDENT_NO_COLON = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ESCAPE = re.compile(r"\\(?:[abfnrtv\\'\"]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{3})")


class PromQLError(ValueError):
    """A parse or type error at `position` (0-based offset) of `text`."""

    def __init__(self, message: str, text: str, position: int) -> None:
        self.message = message
        self.text = text
        self.position = max(0, min(position, len(text)))
        self.line = text.count("\n", 0, self.position) + 1
        self.column = self.position - (text.rfind("\n", 0, self.position) + 1) + 1
        super().__init__(f"{message} (line {self.line}, column {self.column})")

    def snippet(self) -> str:
        """The offending line with a caret under the position."""
        line = self.text.split("\n")[self.line - 1]
        return f"{line}\n{' ' * (self.column - 1)}^"


@dataclass
class Token:
    kind: str  # number, duration, string, ident, op, eof
    value: str
    pos: int

    def show(self) -> str:
        return "end of expression" if self.kind == "eof" else f"`{self.value}`"


@dataclass
class Node:
    kind: str  # number, string, selector, range, subquery, call, aggregation, unary, binary, paren
    type: str
    pos: int
    offset: bool = False
    at: bool = False


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    square = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
            continue
        if char == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
            continue
        if char.isdigit() or (char == "." and i + 1 < len(text) and text[i + 1].isdigit()):
            match = _DURATION.match(text, i)
            if match and char != ".":
                if not _VALID_DURATION.match(match.group()):
                    raise PromQLError(
                        f"`{match.group()}` is not a valid duration (units go from largest to smallest: "
                        "y w d h m s ms, each once)",
                        text,
                        i,
                    )
                tokens.append(Token("duration", match.group(), i))
                i = match.end()
                continue
            match = _NUMBER.match(text, i)
            assert match is not None
            end = match.end()
            if end < len(text) and (text[end].isalpha() or text[end] == "_"):
                word = re.match(r"[A-Za-z0-9_]+", text[i:]).group()  # type: ignore[union-attr]
                raise PromQLError(
                    f"`{word}` is neither a number nor a duration (durations look like 5m, 1h30m)", text, i
                )
            tokens.append(Token("number", match.group(), i))
            i = end
            continue
        if char in "\"'`":
            end = i + 1
            while end < len(text) and text[end] != char:
                if text[end] == "\\" and char != "`":
                    escape = _ESCAPE.match(text, end)
                    if escape is None:
                        bad = text[end : end + 2]
                        raise PromQLError(
                            f"invalid escape sequence `{bad}` in a string; write `\\{bad}` or use a `backtick` "
                            "string for regular expressions",
                            text,
                            end,
                        )
                    end = escape.end()
                    continue
                if text[end] == "\n" and char != "`":
                    break
                end += 1
            if end >= len(text) or text[end] != char:
                raise PromQLError(f"unterminated string starting with {char}", text, i)
            tokens.append(Token("string", text[i : end + 1], i))
            i = end + 1
            continue
        ident = (_IDENT_NO_COLON if square else _IDENT).match(text, i)
        if ident:
            tokens.append(Token("ident", ident.group(), i))
            i = ident.end()
            continue
        run = re.match(r"[=!<>~&|*/%^+\-]+", text[i:])
        if run:
            for bad in sorted(BAD_OPERATORS, key=len, reverse=True):
                if run.group().startswith(bad) and not any(
                    run.group().startswith(op) and len(op) >= len(bad) for op in OPERATORS
                ):
                    raise PromQLError(f"unknown operator `{bad}`; PromQL uses `{BAD_OPERATORS[bad]}`", text, i)
        for op in OPERATORS:
            if text.startswith(op, i):
                if op == "[":
                    square += 1
                elif op == "]":
                    square = max(0, square - 1)
                tokens.append(Token("op", op, i))
                i += len(op)
                break
        else:
            raise PromQLError(f"unexpected character `{char}`", text, i)
    tokens.append(Token("eof", "", len(text.rstrip())))
    return tokens


def _unquote(token: Token) -> str:
    body = token.value[1:-1]
    if token.value[0] == "`":
        return body
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    # -- tokens ----------------------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def peek(self, ahead: int = 1) -> Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def take(self) -> Token:
        token = self.tokens[self.i]
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return token

    def is_op(self, *values: str) -> bool:
        return self.tok.kind == "op" and self.tok.value in values

    def is_word(self, *values: str) -> bool:
        return self.tok.kind == "ident" and self.tok.value.lower() in values

    def error(self, message: str, position: int | None = None) -> PromQLError:
        return PromQLError(message, self.text, self.tok.pos if position is None else position)

    def close(self, closer: str, opener: Token, what: str) -> None:
        if self.is_op(closer):
            self.take()
            return
        line = self.text.count("\n", 0, opener.pos) + 1
        column = opener.pos - (self.text.rfind("\n", 0, opener.pos) + 1) + 1
        raise self.error(
            f"missing `{closer}` to close the `{opener.value}` at line {line}, column {column} ({what}); "
            f"found {self.tok.show()}"
        )

    # -- grammar ---------------------------------------------------------------------------------
    def parse(self) -> Node:
        if self.tok.kind == "eof":
            raise self.error("empty expression")
        node = self.binary(1)
        if self.tok.kind != "eof":
            if self.is_op(")", "]", "}"):
                raise self.error(f"unexpected `{self.tok.value}`: no matching opening bracket")
            raise self.error(f"unexpected {self.tok.show()} after a complete expression; missing an operator?")
        return node

    def binary_operator(self) -> str | None:
        if self.tok.kind == "op" and self.tok.value in PRECEDENCE:
            return self.tok.value
        if self.tok.kind == "ident" and self.tok.value.lower() in ("and", "or", "unless", "atan2"):
            return self.tok.value.lower()
        if self.is_op("="):
            raise self.error("unexpected `=`; compare with `==`")
        return None

    def binary(self, min_precedence: int) -> Node:
        left = self.unary()
        while True:
            op = self.binary_operator()
            if op is None or PRECEDENCE[op] < min_precedence:
                return left
            op_token = self.take()
            use_bool = matching = grouping = False
            if self.is_word("bool"):
                if op not in COMPARISONS:
                    raise self.error(f"`bool` can only follow a comparison operator, not `{op}`")
                self.take()
                use_bool = True
            if self.is_word("on", "ignoring"):
                self.take()
                self.label_list()
                matching = True
            if self.is_word("group_left", "group_right"):
                word = self.take()
                if op in SET_OPERATORS:
                    raise self.error(f"no grouping allowed for `{op}`", word.pos)
                if not matching:
                    raise self.error(f"`{word.value}` needs `on(...)` or `ignoring(...)` before it", word.pos)
                if self.is_op("("):
                    self.label_list()
                grouping = True
            if self.tok.kind == "eof":
                raise self.error(f"missing right-hand side of `{op}`")
            next_min = PRECEDENCE[op] if op == "^" else PRECEDENCE[op] + 1
            right = self.binary(next_min)
            left = self.check_binary(op, op_token, left, right, use_bool, matching or grouping)

    def check_binary(self, op: str, token: Token, left: Node, right: Node, use_bool: bool, matching: bool) -> Node:
        for side in (left, right):
            if side.type not in (SCALAR, VECTOR):
                raise self.error(
                    f"`{op}` needs scalar or instant vector operands, got {_A[side.type]}"
                    + ("; wrap the range selector in a function such as rate(...)" if side.type == MATRIX else ""),
                    side.pos,
                )
        if op in SET_OPERATORS and (left.type == SCALAR or right.type == SCALAR):
            raise self.error(f"set operator `{op}` needs instant vectors on both sides", token.pos)
        if op in COMPARISONS and left.type == SCALAR and right.type == SCALAR and not use_bool:
            raise self.error(f"comparisons between scalars must use `bool` (e.g. `1 {op} bool 2`)", token.pos)
        if matching and (left.type == SCALAR or right.type == SCALAR):
            raise self.error(
                "vector matching (on/ignoring/group_left/group_right) needs vectors on both sides", token.pos
            )
        result = SCALAR if left.type == SCALAR and right.type == SCALAR else VECTOR
        return Node("binary", result, left.pos)

    def unary(self) -> Node:
        if self.is_op("+", "-"):
            token = self.take()
            operand = self.binary(PRECEDENCE["^"])
            if operand.type not in (SCALAR, VECTOR):
                raise self.error(
                    f"unary `{token.value}` needs a scalar or instant vector, got {_A[operand.type]}", operand.pos
                )
            return Node("unary", operand.type, token.pos)
        return self.postfix(self.primary())

    def postfix(self, node: Node) -> Node:
        while True:
            if self.is_op("["):
                node = self.range_or_subquery(node)
            elif self.is_word("offset"):
                word = self.take()
                if node.kind not in ("selector", "range", "subquery"):
                    raise self.error("`offset` must follow a selector or a subquery", word.pos)
                if node.offset:
                    raise self.error("`offset` may not be set twice", word.pos)
                if self.is_op("-", "+"):
                    self.take()
                self.duration("after `offset`")
                node.offset = True
            elif self.is_op("@"):
                at = self.take()
                if node.kind not in ("selector", "range", "subquery"):
                    raise self.error("`@` must follow a selector or a subquery", at.pos)
                if node.at:
                    raise self.error("`@` may not be set twice", at.pos)
                if self.is_op("-", "+"):
                    self.take()
                if self.tok.kind == "number":
                    self.take()
                elif self.is_word("start", "end") and self.peek().kind == "op" and self.peek().value == "(":
                    self.take()
                    opener = self.take()
                    self.close(")", opener, "start()/end()")
                else:
                    raise self.error(f"expected a timestamp, start() or end() after `@`, found {self.tok.show()}")
                node.at = True
            else:
                return node

    def duration(self, where: str) -> str:
        if self.tok.kind != "duration":
            if self.tok.kind == "number":
                raise self.error(f"expected a duration with a unit {where} (e.g. 5m), found `{self.tok.value}`")
            raise self.error(f"expected a duration {where} (e.g. 5m), found {self.tok.show()}")
        return self.take().value

    def range_or_subquery(self, node: Node) -> Node:
        opener = self.take()
        self.duration("in `[...]`")
        if self.is_op(":"):
            self.take()
            if self.tok.kind == "duration":
                self.take()
            self.close("]", opener, "subquery")
            if node.type != VECTOR:
                raise self.error(f"subqueries need an instant vector, got {_A[node.type]}", opener.pos)
            if node.kind in ("range", "subquery"):
                raise self.error("a range vector cannot be sub-queried", opener.pos)
            return Node("subquery", MATRIX, node.pos)
        self.close("]", opener, "range selector")
        if node.kind != "selector" or node.offset or node.at:
            if node.kind == "range":
                raise self.error("a range selector cannot take a second range", opener.pos)
            raise self.error(
                "ranges are only allowed on metric selectors; for an expression use a subquery such as `[5m:1m]`",
                opener.pos,
            )
        return Node("range", MATRIX, node.pos)

    def primary(self) -> Node:
        token = self.tok
        if token.kind == "number":
            self.take()
            return Node("number", SCALAR, token.pos)
        if token.kind == "duration":
            raise self.error(f"unexpected duration `{token.value}`; durations belong in `[...]` or after `offset`")
        if token.kind == "string":
            self.take()
            return Node("string", STRING, token.pos)
        if token.kind == "op":
            if token.value == "(":
                opener = self.take()
                if self.is_op(")"):
                    raise self.error("empty parentheses")
                inner = self.binary(1)
                self.close(")", opener, "parenthesis")
                return Node("paren", inner.type, token.pos)
            if token.value == "{":
                return self.selector(None, token.pos)
            if token.value in (")", "]", "}"):
                raise self.error(
                    f"unexpected `{token.value}`: no matching opening bracket, or an expression is missing before it"
                )
            raise self.error(f"unexpected `{token.value}`; expected an expression")
        if token.kind == "eof":
            raise self.error("unexpected end of expression; expected an expression")
        word = token.value
        lower = word.lower()
        if lower in ("inf", "nan"):
            self.take()
            return Node("number", SCALAR, token.pos)
        if lower in AGGREGATIONS and (self.peek().value == "(" or self.peek().value.lower() in ("by", "without")):
            return self.aggregation()
        if self.peek().kind == "op" and self.peek().value == "(":
            return self.call()
        if lower in KEYWORDS:
            raise self.error(f"unexpected keyword `{word}`; expected an expression")
        self.take()
        return self.selector(word, token.pos)

    def call(self) -> Node:
        name = self.take()
        if name.value not in FUNCTIONS:
            if name.value.lower() in AGGREGATIONS:
                raise self.error(f"aggregations are lower case: write `{name.value.lower()}`", name.pos)
            close = [f for f in FUNCTIONS if f.startswith(name.value[:3])][:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise self.error(f"unknown function `{name.value}`{hint}", name.pos)
        opener = self.take()
        args = self.arguments(opener, f"call to {name.value}")
        types, variadic, result = FUNCTIONS[name.value]
        self.check_arguments(name, args, types, variadic)
        return Node("call", result, name.pos)

    def arguments(self, opener: Token, what: str) -> list[Node]:
        args: list[Node] = []
        if self.is_op(")"):
            self.take()
            return args
        while True:
            if self.tok.kind == "eof":
                self.close(")", opener, what)
            args.append(self.binary(1))
            if self.is_op(","):
                self.take()
                if self.is_op(")"):
                    break
                continue
            break
        self.close(")", opener, what)
        return args

    def check_arguments(self, name: Token, args: list[Node], types: tuple[str, ...], variadic: int) -> None:
        if variadic == 0 and len(args) != len(types):
            raise self.error(f"`{name.value}` takes {len(types)} argument(s), got {len(args)}", name.pos)
        if variadic != 0:
            low = len(types) - 1
            high = None if variadic < 0 else len(types) - 1 + variadic
            if len(args) < low or (high is not None and len(args) > high):
                expected = f"at least {low}" if high is None else f"{low} to {high}"
                raise self.error(f"`{name.value}` takes {expected} argument(s), got {len(args)}", name.pos)
        for index, arg in enumerate(args):
            expected = types[min(index, len(types) - 1)]
            if arg.type != expected:
                hint = ""
                if expected == MATRIX and arg.type == VECTOR:
                    hint = " (add a range such as [5m] to the selector)"
                raise self.error(
                    f"argument {index + 1} of `{name.value}` must be {_A[expected]}, got {_A[arg.type]}{hint}",
                    arg.pos,
                )

    def aggregation(self) -> Node:
        name = self.take()
        op = name.value.lower()
        grouped = False
        if self.is_word("by", "without"):
            self.take()
            self.label_list()
            grouped = True
        if not self.is_op("("):
            raise self.error(f"expected `(` after `{name.value} by/without (...)`, found {self.tok.show()}")
        opener = self.take()
        args = self.arguments(opener, f"aggregation {op}")
        if self.is_word("by", "without"):
            word = self.take()
            if grouped:
                raise self.error("`by`/`without` may be given only once", word.pos)
            self.label_list()
        if op in AGGREGATION_PARAM:
            self.check_arguments(name, args, (AGGREGATION_PARAM[op], VECTOR), 0)
        else:
            self.check_arguments(name, args, (VECTOR,), 0)
        return Node("aggregation", VECTOR, name.pos)

    def label_list(self) -> None:
        if not self.is_op("("):
            raise self.error(f"expected `(` and a label list, found {self.tok.show()}")
        opener = self.take()
        while not self.is_op(")"):
            if self.tok.kind == "ident" or self.tok.kind == "string":
                label = self.take()
                if label.kind == "ident" and not _LABEL.match(label.value):
                    raise self.error(f"`{label.value}` is not a valid label name", label.pos)
            else:
                if self.tok.kind == "eof" or self.is_op("]", "}"):
                    self.close(")", opener, "label list")
                raise self.error(f"expected a label name in the label list, found {self.tok.show()}")
            if self.is_op(","):
                self.take()
            elif not self.is_op(")"):
                if self.tok.kind == "eof":
                    self.close(")", opener, "label list")
                raise self.error(f"expected `,` or `)` in the label list, found {self.tok.show()}")
        self.take()

    def selector(self, metric: str | None, position: int) -> Node:
        names = [metric] if metric else []
        non_empty = bool(metric)
        if self.is_op("{"):
            opener = self.take()
            while not self.is_op("}"):
                if self.tok.kind == "eof" or self.is_op(")", "]"):
                    self.close("}", opener, "label matchers")
                label = self.take()
                if label.kind == "string" and (self.is_op(",", "}")):
                    names.append(_unquote(label))  # {"metric.name"}
                    non_empty = True
                elif label.kind not in ("ident", "string") or (label.kind == "ident" and not _LABEL.match(label.value)):
                    raise self.error(f"expected a label name in the matcher, found {label.show()}", label.pos)
                else:
                    non_empty |= self.matcher(label)
                if self.is_op(","):
                    self.take()
                elif not self.is_op("}"):
                    if self.tok.kind == "eof":
                        self.close("}", opener, "label matchers")
                    raise self.error(f"expected `,` or `}}` after a label matcher, found {self.tok.show()}")
            self.take()
        if len(names) > 1:
            raise self.error("the metric name is set twice", position)
        if not non_empty:
            raise self.error(
                "a selector needs a metric name or at least one matcher that does not match the empty string", position
            )
        return Node("selector", VECTOR, position)

    def matcher(self, label: Token) -> bool:
        """One `label op "value"`; whether it rules out the empty string."""
        if not self.is_op("=", "!=", "=~", "!~"):
            found = self.tok.show()
            if self.is_op("==", "<", ">", "<=", ">="):
                raise self.error(f"unexpected {found} in a label matcher; use =, !=, =~ or !~")
            raise self.error(f"expected a matcher operator (=, !=, =~, !~) after `{label.value}`, found {found}")
        op = self.take().value
        if self.tok.kind != "string":
            value = self.tok
            hint = f': write {label.value}{op}"{value.value}"' if value.kind in ("number", "ident", "duration") else ""
            raise self.error(f"the value of a label matcher must be a quoted string{hint}", value.pos)
        value_token = self.take()
        value = _unquote(value_token)
        if label.kind == "ident" and label.value == "__name__" and op == "=":
            return True
        if op in ("=~", "!~"):
            try:
                pattern = re.compile(value)
            except re.error as exc:
                raise self.error(
                    f"invalid regular expression {value_token.value}: {exc.msg}", value_token.pos
                ) from None
            matches_empty = pattern.fullmatch("") is not None
        else:
            matches_empty = value == ""
        return not matches_empty if op in ("=", "=~") else matches_empty


def parse_promql(text: str) -> Node:
    """Parse and type-check a PromQL expression; raises PromQLError with the position of the problem."""
    return _Parser(text).parse()
