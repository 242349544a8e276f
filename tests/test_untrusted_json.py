"""One parser for JSON from outside: bounded work, one precise sentence per refusal."""

from __future__ import annotations

import pytest

from edgetwin import untrusted_json as uj


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (b"[" * 8000 + b"]" * 8000, "nested deeper than 64 levels"),
        (b'{"a": ' + b"9" * 5000 + b"}", "number of 5000 characters"),
        (b'{"a": NaN}', "NaN is not a number"),
        (b'{"a": -Infinity}', "-Infinity is not a number"),
        (b'{"a": 1e999}', "overflows a float"),
        (b'{"a": 1,}', "not valid JSON"),
        (b'{"a": "\xff"}', "not UTF-8 text (byte 7)"),
    ],
)
def test_hostile_documents_get_one_precise_sentence(doc: bytes, fragment: str) -> None:
    with pytest.raises(uj.UntrustedJsonError, match=None) as err:
        uj.loads(doc)
    assert fragment in str(err.value)


def test_brackets_and_digits_inside_strings_do_not_count() -> None:
    doc = '{"text": "' + "[" * 500 + "9" * 500 + '\\"]"}'
    assert uj.loads(doc)["text"].startswith("[[[")


def test_limits_and_int_digits_are_the_callers_choice() -> None:
    assert uj.loads(b"[[[1]]]", max_depth=3) == [[[1]]]
    with pytest.raises(uj.UntrustedJsonError, match="deeper than 2"):
        uj.loads(b"[[[1]]]", max_depth=2)
    assert uj.loads(b'{"n": 123456789012345678}', max_int_digits=18)["n"] == 123456789012345678
    with pytest.raises(uj.UntrustedJsonError, match="more than 18 digits"):
        uj.loads(b'{"n": 1234567890123456789}', max_int_digits=18)
    assert uj.loads(b'{"a": NaN}', finite=False)["a"] != 0  # NaN where the caller allows it
