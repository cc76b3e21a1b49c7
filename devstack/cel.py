"""A small evaluator of the Common Expression Language (CEL) subset that Cloud Storage IAM
conditions use, for the local stack's bucket-IAM front (``devstack.gcs``).

Supported (what bucket conditions need; IAM Conditions attribute reference, "Resource attributes"
and "API attributes"): string literals in double or single quotes (also triple-quoted and raw
``r"..."``) with CEL's escapes, integers, ``true``/``false``/``null``; identifiers and field
selection (``resource.name``, ``resource.type``, ``resource.service``); the methods
``startsWith``, ``endsWith``, ``contains`` and ``matches`` (RE2 partial match; Python ``re``
stands in); ``api.getAttribute(name, default)``; ``==``, ``!=``, ``&&``, ``||``, ``!`` and
parentheses. ``&&``/``||`` absorb errors the way CEL does (``false && <error>`` is ``false``).

Anything else (``request.time``, ``<``, ``in``, macros, ...) is a :class:`CelError`; so is a
runtime type error. :func:`grants` turns every error into ``False``: an IAM condition that cannot
be evaluated does not grant (IAM Conditions overview: "If the condition expression ... evaluates
to an error, the role binding is not granted").
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

__all__ = ["CelError", "parse", "evaluate", "grants", "Activation"]


class CelError(Exception):
    """An expression this evaluator cannot parse, or whose evaluation is an error."""


Activation = Mapping[str, Any]
"""Variables (``resource`` -> {"name": ..., ...}) plus, under :data:`API_ATTRIBUTES`, the
``api.getAttribute`` values."""

API_ATTRIBUTES = "__api_attributes__"

# ---- lexer ------------------------------------------------------------------------------------
_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>[rR]?(?:\"\"\"(?:\\.|[^\\])*?\"\"\"|'''(?:\\.|[^\\])*?'''|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))
  | (?P<number>\d+)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>&&|\|\||==|!=|<=|>=|[!().,<>+\-*/%\[\]{}?:])
""", re.VERBOSE | re.DOTALL)

_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\",
            "'": "'", '"': '"', "`": "`", "?": "?"}


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    value: Any = None


def _unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(body):
            raise CelError("dangling backslash in string literal")
        e = body[i + 1]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e in "xX" and re.fullmatch(r"[0-9A-Fa-f]{2}", body[i + 2:i + 4]):
            out.append(chr(int(body[i + 2:i + 4], 16)))
            i += 4
        elif e == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", body[i + 2:i + 6]):
            out.append(chr(int(body[i + 2:i + 6], 16)))
            i += 6
        elif e == "U" and re.fullmatch(r"[0-9A-Fa-f]{8}", body[i + 2:i + 10]):
            out.append(chr(int(body[i + 2:i + 10], 16)))
            i += 10
        elif re.fullmatch(r"[0-3][0-7]{2}", body[i + 1:i + 4]):
            out.append(chr(int(body[i + 1:i + 4], 8)))
            i += 4
        else:
            raise CelError(f"invalid escape \\{e} in string literal")
    return "".join(out)


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise CelError(f"unexpected character at offset {pos}")
        pos = m.end()
        kind = m.lastgroup or ""
        raw = m.group()
        if kind == "ws":
            continue
        if kind == "string":
            is_raw = raw[0] in "rR"
            lit = raw[1:] if is_raw else raw
            q = 3 if lit[:3] in ('"""', "'''") else 1
            body = lit[q:-q]
            out.append(_Tok("string", raw, body if is_raw else _unescape(body)))
        elif kind == "number":
            out.append(_Tok("number", raw, int(raw)))
        else:
            out.append(_Tok(kind, raw))
    out.append(_Tok("eof", ""))
    return out


# ---- parser (recursive descent; CEL precedence: || < && < ==,!= < unary < member/call) --------
Node = tuple  # ("lit", v) | ("ident", name) | ("select", node, field) | ("call", target, name, args)
#               | ("not", node) | ("and"|"or"|"eq"|"ne", left, right)

_KEYWORDS = {"true": True, "false": False, "null": None}


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self, text: str | None = None) -> _Tok:
        tok = self.toks[self.i]
        if text is not None and tok.text != text:
            raise CelError(f"expected {text!r}, found {tok.text or 'end of expression'!r}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        node = self.or_()
        if self.peek().kind != "eof":
            raise CelError(f"unsupported or unexpected {self.peek().text!r}")
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.peek().text == "||":
            self.take()
            node = ("or", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.equality()
        while self.peek().text == "&&":
            self.take()
            node = ("and", node, self.equality())
        return node

    def equality(self) -> Node:
        node = self.unary()
        while self.peek().text in ("==", "!="):
            op = "eq" if self.take().text == "==" else "ne"
            node = (op, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.peek().text == "!":
            self.take()
            return ("not", self.unary())
        return self.member()

    def member(self) -> Node:
        node = self.primary()
        while self.peek().text == ".":
            self.take()
            name = self.take()
            if name.kind != "ident":
                raise CelError(f"expected a field or method name after '.', found {name.text!r}")
            if self.peek().text == "(":
                node = ("call", node, name.text, self.args())
            else:
                node = ("select", node, name.text)
        return node

    def args(self) -> tuple[Node, ...]:
        self.take("(")
        out: list[Node] = []
        if self.peek().text != ")":
            out.append(self.or_())
            while self.peek().text == ",":
                self.take()
                out.append(self.or_())
        self.take(")")
        return tuple(out)

    def primary(self) -> Node:
        tok = self.take()
        if tok.kind in ("string", "number"):
            return ("lit", tok.value)
        if tok.kind == "ident":
            if tok.text in _KEYWORDS:
                return ("lit", _KEYWORDS[tok.text])
            if self.peek().text == "(":
                raise CelError(f"unsupported function {tok.text}()")
            return ("ident", tok.text)
        if tok.text == "(":
            node = self.or_()
            self.take(")")
            return node
        raise CelError(f"unsupported or unexpected {tok.text or 'end of expression'!r}")


@functools.lru_cache(maxsize=512)
def parse(expression: str) -> Node:
    """The syntax tree of ``expression``; :class:`CelError` if it is outside the subset."""
    if not isinstance(expression, str):
        raise CelError("an expression is a string")
    return _Parser(expression).parse()


# ---- evaluation -------------------------------------------------------------------------------
def _str_method(fn: Callable[[str, str], bool]) -> Callable[[Any, list[Any]], bool]:
    def call(target: Any, args: list[Any]) -> bool:
        if not isinstance(target, str) or len(args) != 1 or not isinstance(args[0], str):
            raise CelError("string method called on a non-string or with a wrong argument")
        return fn(target, args[0])
    return call


def _matches(target: str, pattern: str) -> bool:
    try:
        return re.search(pattern, target) is not None
    except re.error as e:
        raise CelError(f"invalid regular expression: {e}") from None


_METHODS: dict[str, Callable[[Any, list[Any]], bool]] = {
    "startsWith": _str_method(str.startswith),
    "endsWith": _str_method(str.endswith),
    "contains": _str_method(lambda s, sub: sub in s),
    "matches": _str_method(_matches),
}


class _Api:
    """The ``api`` variable: only ``getAttribute(name, default)``."""


def _eval(node: Node, act: Activation) -> Any:
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "ident":
        if node[1] == "api":
            return _Api()
        if node[1] not in act or node[1] == API_ATTRIBUTES:
            raise CelError(f"undeclared reference to {node[1]!r}")
        return act[node[1]]
    if kind == "select":
        target = _eval(node[1], act)
        if not isinstance(target, Mapping) or node[2] not in target:
            raise CelError(f"no such field {node[2]!r}")
        return target[node[2]]
    if kind == "call":
        target = _eval(node[1], act)
        args = [_eval(a, act) for a in node[3]]
        if isinstance(target, _Api):
            if node[2] != "getAttribute" or len(args) != 2 or not isinstance(args[0], str):
                raise CelError(f"unsupported api.{node[2]}()")
            attributes = act.get(API_ATTRIBUTES) or {}
            return attributes.get(args[0], args[1])
        method = _METHODS.get(node[2])
        if method is None:
            raise CelError(f"unsupported method {node[2]}()")
        return method(target, args)
    if kind == "not":
        value = _eval(node[1], act)
        if not isinstance(value, bool):
            raise CelError("'!' needs a bool")
        return not value
    if kind in ("eq", "ne"):
        left, right = _eval(node[1], act), _eval(node[2], act)
        if type(left) is not type(right) and None not in (left, right):
            raise CelError("no matching overload for comparison of different types")
        return (left == right) if kind == "eq" else (left != right)
    if kind in ("and", "or"):
        # CEL's commutative logic: a decisive operand wins even if the other one is an error.
        decisive = kind == "or"
        results: list[Union[bool, CelError]] = []
        for side in node[1:]:
            try:
                value = _eval(side, act)
                results.append(value if isinstance(value, bool) else CelError(f"'{kind}' needs bools"))
            except CelError as e:
                results.append(e)
        if decisive in results:
            return decisive
        for r in results:
            if isinstance(r, CelError):
                raise r
        return not decisive
    raise CelError(f"unsupported node {kind}")  # pragma: no cover - the parser makes no others


def evaluate(expression: str, activation: Activation) -> bool:
    """Evaluate ``expression``; :class:`CelError` if it cannot be parsed or evaluated, or if its
    value is not a bool (an IAM condition must be one)."""
    value = _eval(parse(expression), activation)
    if not isinstance(value, bool):
        raise CelError("the condition's value is not a bool")
    return value


def grants(expression: str, activation: Activation) -> bool:
    """True only if ``expression`` evaluates to ``true``: errors deny, as in IAM."""
    try:
        return evaluate(expression, activation)
    except CelError:
        return False
    except RecursionError:
        return False
