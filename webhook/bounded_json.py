"""JSON from an untrusted peer, parsed only once its shape is known to be cheap to parse.

Python's json module recurses once per nesting level (a 10,000-deep body raises RecursionError),
turns every digit run into an int (5,000 digits raise ValueError past Python's 4,300-digit
guard, fewer cost quadratic time), and makes one object per value (8 MB of `{}` is ~170 MiB).
So before parsing, one pass over the raw bytes with strings blanked out (a regular expression
and numpy, both at C speed) measures the nesting depth, the longest digit run and the number of
values, and the body is refused with the reason if any is past its bound.

The bounds hold every object the API server can send us with room to spare: a Pod or
InferenceService inside an AdmissionReview nests about 15 levels (managedFields add a few),
Kubernetes numbers are int64 (19 digits) or float64 (Go writes at most 21 integer and ~23
fraction digits), and a Pod spec has hundreds of values, not hundreds of thousands.
"""

from __future__ import annotations

import json
import re

import numpy as np

MAX_DEPTH = 100
MAX_DIGITS = 40
MAX_VALUES = 200_000

# a JSON string: quote, then runs of ordinary characters or escapes (unrolled: no backtracking)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# digits to "0", everything else to " ": a run too long is then a plain substring search
_DIGIT_MAP = bytes(0x30 if 0x30 <= c <= 0x39 else 0x20 for c in range(256))
_TOO_MANY_DIGITS = b"0" * (MAX_DIGITS + 1)
_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("{"), ord("[")]] = 1
_CLOSE = np.zeros(256, np.int8)
_CLOSE[[ord("}"), ord("]")]] = 1
_SEPARATOR = np.zeros(256, np.bool_)
_SEPARATOR[[ord(","), ord("{"), ord("[")]] = True


class TooComplex(ValueError):
    """The body is JSON-like but past a bound; the message names it."""


def check_shape(body: bytes) -> None:
    """Raise TooComplex when parsing `body` would nest, count or convert past the bounds."""
    if len(body) <= MAX_VALUES and body.count(b"{") + body.count(b"[") <= MAX_DEPTH and not _long_digits(body):
        return  # too few brackets to nest too deep, too short for too many values: most reviews
    skeleton = _STRING.sub(b'""', body)
    if _long_digits(skeleton):
        raise TooComplex(f"a number has more than {MAX_DIGITS} digits")
    codes = np.frombuffer(skeleton, np.uint8)
    if int(np.count_nonzero(_SEPARATOR[codes])) > MAX_VALUES:
        raise TooComplex(f"more than {MAX_VALUES:,} values")
    depth = np.cumsum(_OPEN[codes] - _CLOSE[codes], dtype=np.int32)
    if depth.size and int(depth.max()) > MAX_DEPTH:
        raise TooComplex(f"nested deeper than {MAX_DEPTH} levels")


def _long_digits(text: bytes) -> bool:
    return _TOO_MANY_DIGITS in text.translate(_DIGIT_MAP)


def loads(body: bytes):
    """The JSON value of a UTF-8 body within the bounds; ValueError (TooComplex,
    JSONDecodeError, UnicodeDecodeError) otherwise, never RecursionError or MemoryError."""
    check_shape(body)
    return json.loads(body.decode("utf-8"), parse_constant=_no_constant)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")
