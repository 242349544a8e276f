"""The shape of everything a bundle carries, checked before any of it is used.

A bundle is untrusted input even when its hashes match (whoever made the
archive computed them). Every JSON document is parsed here with bounded
nesting, and every record, audit entry and prediction line is checked
against the shape edgetwin writes, so a hostile member ends the import with
a DataCorrupt that says which member, which line or key, and what is wrong,
never with a Python exception.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from edgetwin import untrusted_json
from edgetwin.errors import DataCorrupt

MAX_DEPTH = 64  # edgetwin writes at most ~6 levels; deeper is hostile, not a twin
TEXT_SUFFIXES = (".csv", ".json", ".jsonl", ".txt", ".toml")


def load_json(text: str | bytes, where: str, *, finite: bool = False) -> Any:
    """Parse untrusted JSON; DataCorrupt naming ``where`` for anything but a sane document.

    ``finite`` also refuses NaN and ±Infinity (and numbers that overflow to it).
    """
    try:
        return untrusted_json.loads(text, finite=finite, max_depth=MAX_DEPTH)
    except untrusted_json.UntrustedJsonError as exc:
        raise DataCorrupt(f"{where}: {exc}") from None


def depth(doc: Any) -> int:
    """How deeply lists and objects nest in ``doc`` (iterative: no recursion to exhaust)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, d)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((c, d + 1) for c in children)
    return deepest


# -- field checks ---------------------------------------------------------------------------

Check = Callable[[Any], bool]


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _text(v: Any) -> bool:
    return isinstance(v, str)


def _flag(v: Any) -> bool:
    return isinstance(v, bool)


def _obj(v: Any) -> bool:
    return isinstance(v, dict)


def _opt(check: Check) -> Check:
    return lambda v: v is None or check(v)


def _nonneg(v: Any) -> bool:
    return _num(v) and v >= 0


def _any(_v: Any) -> bool:
    return True


def _outbox_state(v: Any) -> bool:
    return v in ("pending", "sent", "failed", "cancelled")


# field -> (check, required). Extra fields are allowed: a newer edgetwin may add some.
_Spec = dict[str, tuple[Check, bool]]
RECORD_SPECS: dict[str, _Spec] = {
    "consent": {"granted": (_flag, True), "period": (_text, False),
                "granted_at": (_opt(_num), False), "revoked_at": (_opt(_num), False),
                "metric": (_text, False)},
    "privacy_ledger": {"spent": (_nonneg, True), "period": (_text, False),
                       "start": (_num, False)},
    "release": {"id": (_text, True), "at": (_num, True)},
    "release_cursor": {"next_start": (_num, True)},
    "outbox": {"release": (_obj, True), "state": (_outbox_state, True),
               "attempts": (_count, True),
               "next_try": (_num, True), "created": (_num, True),
               "last_error": (_opt(_text), False), "sent_at": (_opt(_num), False),
               "outcome": (_any, False), "lease_until": (_num, False)},
    "sync": {"kind": (lambda v: v in ("https", "mqtt"), True), "url": (_text, True),
             "host": (_text, False), "port": (_count, False), "path": (_text, False),
             "tls": (_flag, False), "topic": (_opt(_text), False),
             "ca_file": (_opt(_text), False), "allow_insecure_loopback": (_flag, False)},
    "pairing": {"kind": (_text, True)},
    "inference": {},  # model state: its loader refits or starts afresh on a misfit
}

_MAX_ITEMS = 4096  # a forecast horizon or band is tens of values, never thousands


def _real(v: Any) -> bool:
    """A number, NaN allowed (a forecast may hold gaps)."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def _reals(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= _MAX_ITEMS and all(_real(x) for x in v)


def _pairs(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= _MAX_ITEMS and all(
        isinstance(x, list) and len(x) == 2 and all(_real(y) for y in x) for x in v
    )


def _texts(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= _MAX_ITEMS and all(isinstance(x, str) for x in v)


def _named_reals(v: Any) -> bool:
    return isinstance(v, dict) and len(v) <= _MAX_ITEMS and all(_reals(x) for x in v.values())


PREDICTION_SPEC: _Spec = {
    "t": (_num, True), "target": (_text, True), "step_s": (_nonneg, True),
    "horizon": (_reals, True), "band": (_pairs, True), "attention": (_reals, True),
    "imputed": (_pairs, True), "model": (_text, False), "anomaly": (_flag, False),
    "sources": (_texts, False), "alternatives": (_named_reals, False),
    "influence": (_reals, False),
}
AUDIT_SPEC: _Spec = {"seq": (lambda v: _count(v) and v >= 1, True), "t": (_num, True),
                     "event": (_text, True), "details": (_obj, False)}


_WHAT: dict[Check, str] = {
    _num: "a finite number", _count: "a count", _text: "text", _flag: "true or false",
    _obj: "an object", _nonneg: "a number >= 0", _reals: "a list of numbers",
    _pairs: "a list of [low, high] pairs", _texts: "a list of texts",
    _named_reals: "an object of number lists",
}


def check_fields(doc: Any, spec: _Spec, where: str) -> dict[str, Any]:
    """``doc`` as an object whose fields pass ``spec``; else DataCorrupt naming the field."""
    if not isinstance(doc, dict):
        raise DataCorrupt(f"{where}: not an object but {_kind(doc)}")
    for name, (check, required) in spec.items():
        if name not in doc:
            if required:
                raise DataCorrupt(f"{where}: {name!r} is missing")
            continue
        if not check(doc[name]):
            want = _WHAT.get(check, "of the expected kind")
            raise DataCorrupt(f"{where}: {name!r} is {_show(doc[name])}, not {want}")
    return doc


def check_records(doc: Any, kind: str, member: str) -> dict[str, dict[str, Any]]:
    """The ``{"kind", "records"}`` document of ``records/<kind>.json``, every record checked."""
    if not isinstance(doc, dict):
        raise DataCorrupt(f"{member}: not an object of {kind!r} records but {_kind(doc)}")
    if doc.get("kind") != kind:
        raise DataCorrupt(f"{member}: its 'kind' is {_show(doc.get('kind'))}, not {kind!r}")
    recs = doc.get("records")
    if not isinstance(recs, dict):
        raise DataCorrupt(f"{member}: 'records' is {_show(recs)}, not an object")
    spec = RECORD_SPECS.get(kind)
    if spec is None:
        raise DataCorrupt(f"{member}: {kind!r} is not a kind of record edgetwin exports")
    for key, value in recs.items():
        if not key or len(key) > 256:
            raise DataCorrupt(f"{member}: a record key is empty or longer than 256 characters")
        check_fields(value, spec, f"{member}, record {key[:40]!r}")
    if kind == "sync" and set(recs) - {"target"}:
        extra = sorted(set(recs) - {"target"})[0]
        raise DataCorrupt(f"{member}: record {extra[:40]!r} is not a sync setting")
    return recs


def _kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false",
            type(None): "null"}.get(type(v), "a number")


def _show(v: Any) -> str:
    text = json.dumps(v) if depth(v) <= 2 else _kind(v)
    return text if len(text) <= 40 else text[:37] + "..."
