"""Kubernetes label selectors, parsed as apimachinery's `labels.Parse` does.

Requirements are comma-separated: `key`, `!key`, `key=value` (or `==`), `key!=value`,
`key in (a,b)`, `key notin (a,b)`, `key>1`, `key<1`. Keys are an optional DNS-subdomain prefix
and a name of at most 63 characters; values are at most 63 characters, possibly empty.
`!=` and `notin` also match objects without the key, as in Kubernetes.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Mapping

NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
TOKEN = re.compile(r"\s*(==|!=|=|!|\(|\)|,|<|>|[^\s=!(),<>]+)")


class SelectorError(ValueError):
    """A selector that does not parse; the message says what and where."""


class Operator(enum.Enum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"
    GREATER = ">"
    LESS = "<"


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        present = self.key in labels
        if op is Operator.EXISTS:
            return present
        if op is Operator.DOES_NOT_EXIST:
            return not present
        if op in (Operator.EQUALS, Operator.IN):
            return present and labels[self.key] in self.values
        if op in (Operator.NOT_EQUALS, Operator.NOT_IN):
            return not present or labels[self.key] not in self.values
        if not present:
            return False
        try:
            value = int(labels[self.key])
        except ValueError:
            return False
        bound = int(self.values[0])
        return value > bound if op is Operator.GREATER else value < bound


@dataclass(frozen=True, slots=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def _check_key(key: str) -> str:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix)):
        raise SelectorError(f"invalid label key {key!r}: prefix must be a DNS subdomain")
    if not name or len(name) > 63 or not NAME.match(name):
        raise SelectorError(
            f"invalid label key {key!r}: name must be 63 characters or less, alphanumeric at both ends, "
            "with '-', '_' or '.' between"
        )
    return key


def _check_value(value: str) -> str:
    if value and (len(value) > 63 or not NAME.match(value)):
        raise SelectorError(
            f"invalid label value {value!r}: must be 63 characters or less, empty or alphanumeric at both ends, "
            "with '-', '_' or '.' between"
        )
    return value


def _tokens(text: str) -> list[str]:
    tokens, position = [], 0
    text = text.rstrip()
    while position < len(text):
        match = TOKEN.match(text, position)
        if match is None:  # only whitespace can fail to match, and rstrip removed the trailing kind
            raise SelectorError(f"unexpected character at position {position}")
        tokens.append(match.group(1))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokens(text)
        self.index = 0

    def peek(self) -> str | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise SelectorError(f"unexpected end of selector {self.text!r}")
        self.index += 1
        return token

    def expect(self, token: str) -> None:
        found = self.take()
        if found != token:
            raise SelectorError(f"expected {token!r} but found {found!r} in {self.text!r}")

    def parse(self) -> Selector:
        requirements = []
        while self.peek() is not None:
            requirements.append(self.requirement())
            if self.peek() is None:
                break
            self.expect(",")
            if self.peek() is None:
                raise SelectorError(f"trailing ',' in {self.text!r}")
        return Selector(tuple(requirements))

    def requirement(self) -> Requirement:
        token = self.take()
        if token == "!":
            return Requirement(_check_key(self._word("a label key after '!'")), Operator.DOES_NOT_EXIST)
        key = _check_key(self._ensure_word(token, "a label key"))
        following = self.peek()
        if following is None or following == ",":
            return Requirement(key, Operator.EXISTS)
        op = self.take()
        if op in ("=", "=="):
            return Requirement(key, Operator.EQUALS, (self._value(),))
        if op == "!=":
            return Requirement(key, Operator.NOT_EQUALS, (self._value(),))
        if op in ("in", "notin"):
            return Requirement(key, Operator.IN if op == "in" else Operator.NOT_IN, self._set())
        if op in (">", "<"):
            bound = self._word("an integer")
            if not re.fullmatch(r"-?\d+", bound):
                raise SelectorError(f"for '{op}' the value must be an integer, got {bound!r}")
            return Requirement(key, Operator.GREATER if op == ">" else Operator.LESS, (bound,))
        raise SelectorError(f"expected an operator (=, ==, !=, in, notin, <, >) after {key!r} but found {op!r}")

    def _value(self) -> str:
        following = self.peek()
        if following is None or following == ",":
            return ""  # `key=` selects an empty value
        return _check_value(self._word("a label value"))

    def _set(self) -> tuple[str, ...]:
        """`(a, b)`; a missing value between commas is the empty value, as in apimachinery."""
        self.expect("(")
        values: list[str] = []
        want_value = True
        while (token := self.take()) != ")":
            if token == ",":
                if want_value:
                    values.append("")
                want_value = True
            elif want_value:
                values.append(_check_value(self._ensure_word(token, "a label value")))
                want_value = False
            else:
                raise SelectorError(f"expected ',' or ')' in a set but found {token!r} in {self.text!r}")
        if want_value and values:
            values.append("")
        if not values:
            raise SelectorError(f"empty set in {self.text!r}: 'in' and 'notin' need at least one value")
        return tuple(values)

    def _word(self, what: str) -> str:
        return self._ensure_word(self.take(), what)

    def _ensure_word(self, token: str, what: str) -> str:
        if token in ("==", "!=", "=", "!", "(", ")", ",", "<", ">"):
            raise SelectorError(f"expected {what} but found {token!r} in {self.text!r}")
        return token


def parse_selector(text: str) -> Selector:
    """Parse a labelSelector query parameter; raises SelectorError with a precise message."""
    return _Parser(text).parse()
