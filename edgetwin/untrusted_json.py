"""JSON from outside the twin (bundles, control-socket requests, uploads to the collector).

Python's ``json`` recurses on nesting (``RecursionError`` a few thousand levels deep),
converts long integers in quadratic time (and refuses them past 4,300 digits) and
accepts ``NaN``/``Infinity``. :func:`loads` first scans the bytes in linear time for
depth and number length, then parses with NaN, infinities and overflowing floats
refused, so a hostile document costs little and gets one precise sentence.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 64  # edgetwin writes at most ~6 levels; deeper is hostile
MAX_NUMBER_CHARS = 64  # a float's repr is at most 24 characters

_SPECIAL = re.compile(rb'["\\\[\]{}]')
_QUOTE, _BACKSLASH = 0x22, 0x5C
_OPEN, _CLOSE = frozenset(b"[{"), frozenset(b"]}")


class UntrustedJsonError(ValueError):
    """What is wrong with a document, in one sentence (no location: the caller adds it)."""


def loads(
    data: str | bytes,
    *,
    finite: bool = True,
    max_depth: int = MAX_DEPTH,
    max_number_chars: int = MAX_NUMBER_CHARS,
    max_int_digits: int | None = None,
) -> Any:
    """Parse ``data``; UntrustedJsonError for anything but a sane JSON document.

    ``finite`` refuses NaN and ±Infinity (and floats that overflow to them);
    ``max_int_digits`` refuses longer integers (18 keeps every integer in an int64).
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    check_limits(raw, max_depth=max_depth, max_number_chars=max_number_chars)
    hooks: dict[str, Any] = {}
    if finite:
        hooks.update(parse_constant=_no_constant, parse_float=_finite_float)
    if max_int_digits is not None:
        hooks["parse_int"] = lambda text: _bounded_int(text, max_int_digits)
    try:
        return json.loads(raw, **hooks)
    except UnicodeDecodeError as exc:
        raise UntrustedJsonError(f"not UTF-8 text (byte {exc.start})") from None
    except RecursionError:  # not reachable after check_limits; kept as a guard
        raise UntrustedJsonError(f"JSON nested deeper than {max_depth} levels") from None
    except UntrustedJsonError:
        raise
    except ValueError as exc:  # JSONDecodeError
        raise UntrustedJsonError(f"not valid JSON ({exc})") from None


def check_limits(
    data: bytes, *, max_depth: int = MAX_DEPTH, max_number_chars: int = MAX_NUMBER_CHARS
) -> None:
    """UntrustedJsonError if ``data`` nests deeper than ``max_depth`` or has a long number.

    Only structure outside strings counts; malformed JSON is left to the parser. Linear
    in the input: one regular expression finds the quotes, backslashes and brackets.
    """
    depth = 0
    in_string = False
    escaped = -1  # index of the character a backslash escapes
    segment = 0  # start of the current text outside strings
    outside: list[bytes] = []
    for m in _SPECIAL.finditer(data):
        p = m.start()
        c = data[p]
        if in_string:
            if p == escaped:
                continue
            if c == _BACKSLASH:
                escaped = p + 1
            elif c == _QUOTE:
                in_string = False
                segment = p + 1
            continue
        if c == _QUOTE:
            in_string = True
            outside.append(data[segment:p])
        elif c in _OPEN:
            depth += 1
            if depth > max_depth:
                raise UntrustedJsonError(f"JSON nested deeper than {max_depth} levels")
        elif c in _CLOSE:
            depth -= 1
    if not in_string:
        outside.append(data[segment:])
    longest = re.search(rb"[-+0-9.eE]{%d,}" % (max_number_chars + 1), b" ".join(outside))
    if longest is not None:
        raise UntrustedJsonError(
            f"JSON number of {len(longest.group())} characters (at most {max_number_chars})"
        )


def _no_constant(name: str) -> Any:
    raise UntrustedJsonError(f"{name} is not a number (JSON has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise UntrustedJsonError(f"number {text[:24]} overflows a float")
    return value


def _bounded_int(text: str, digits: int) -> int:
    if len(text.lstrip("-")) > digits:
        raise UntrustedJsonError(f"integer {text[:24]}... has more than {digits} digits")
    return int(text)
