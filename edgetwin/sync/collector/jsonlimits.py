"""Refuse JSON whose nesting or numbers would make a parser recurse or compute for long.

Python's ``json`` raises ``RecursionError`` on documents nested a few thousand deep and
``ValueError`` on integers over 4,300 digits (after converting them in quadratic
time). This scan runs first, in time linear in the input, and only looks at the
characters that matter (quotes, backslashes and brackets) through one regular expression.
"""

from __future__ import annotations

import re

MAX_DEPTH = 32
MAX_NUMBER_CHARS = 64  # a float's repr is at most 24 characters

_SPECIAL = re.compile(rb'["\\\[\]{}]')
_QUOTE, _BACKSLASH = 0x22, 0x5C
_OPEN, _CLOSE = frozenset(b"[{"), frozenset(b"]}")


class JsonLimitExceeded(ValueError):
    """The document nests too deep or holds a number too long; the message says which."""


def check_json_limits(data: bytes, *, max_depth: int = MAX_DEPTH,
                      max_number_chars: int = MAX_NUMBER_CHARS) -> None:
    """JsonLimitExceeded if ``data`` nests deeper than ``max_depth`` or has a long number.

    Only structure outside strings counts; malformed JSON is left to the parser.
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
                raise JsonLimitExceeded(f"JSON nested deeper than {max_depth} levels")
        elif c in _CLOSE:
            depth -= 1
    if not in_string:
        outside.append(data[segment:])
    # re caches the compiled pattern per limit.
    longest = re.search(rb"[-+0-9.eE]{%d,}" % (max_number_chars + 1), b" ".join(outside))
    if longest is not None:
        raise JsonLimitExceeded(f"JSON number of {len(longest.group())} characters "
                                f"(at most {max_number_chars})")
