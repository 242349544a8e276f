"""``DPRelease``: the only thing that may leave the device.

A ``DPRelease`` can be made in exactly two places, both in this package:

* :func:`edgetwin.privacy.mechanism.release_value` mints a fresh one from a
  clipped summary through OpenDP's Laplace mechanism;
* :func:`readmit` re-admits one that the mechanism wrote to the encrypted,
  authenticated twin store (the sync outbox), after checking every field.

Both go through :func:`_mint`, which passes a module-private capability that
``__post_init__`` checks, and seals the fields with an HMAC under a per-process
random key. :func:`is_genuine` (used by the uplink serialiser) accepts only an
object whose type *is* ``DPRelease`` (no subclass) and whose seal matches its
fields, which refuses direct construction, subclasses, ``dataclasses.replace``
with edited fields, and objects assembled with ``object.__new__``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
from dataclasses import dataclass, field
from typing import Any

# The capability: only code holding this object can construct a DPRelease.
_MINT = object()
# Seals releases minted in this process; never leaves memory.
_SEAL_KEY = secrets.token_bytes(32)

RELEASE_SCHEMA = "edgetwin.dp-release/1"
MECHANISM = "laplace"

# Public fields in wire order; the payload JSON has exactly these keys.
FIELDS: tuple[str, ...] = (
    "schema",
    "id",
    "metric",
    "unit",
    "period",
    "period_start",
    "period_end",
    "value",
    "mechanism",
    "epsilon",
    "scale",
    "sensitivity",
    "lower",
    "upper",
    "created",
    "library",
)


class ForgedRelease(TypeError):
    """Something that is not a genuine DPRelease was offered where one is required."""


@dataclass(frozen=True, slots=True)
class DPRelease:
    """One differentially private summary of one metric over one person-period.

    ``value`` = clipped summary + Laplace(``scale``) noise drawn by OpenDP, with
    ``scale`` = ``sensitivity`` / ``epsilon`` and ``sensitivity`` = ``upper`` -
    ``lower``. ``id`` is a random idempotency key (it reveals nothing).
    """

    schema: str
    id: str
    metric: str
    unit: str
    period: str
    period_start: float
    period_end: float
    value: float
    mechanism: str
    epsilon: float
    scale: float
    sensitivity: float
    lower: float
    upper: float
    created: float
    library: str
    _capability: object = field(repr=False, compare=False)
    _seal: bytes = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._capability is not _MINT:
            raise ForgedRelease(
                "DPRelease can only be made by edgetwin.privacy's mechanism",
                )
        if not hmac.compare_digest(self._seal, _seal_of(_public(self))):
            raise ForgedRelease("DPRelease fields do not match their seal")

    def to_record(self) -> dict[str, Any]:
        """The public fields as a JSON-ready dict (payload and outbox)."""
        return _public(self)


def is_genuine(obj: object) -> bool:
    """Whether ``obj`` is a DPRelease minted by this package and unchanged since."""
    if type(obj) is not DPRelease:
        return False
    try:
        return obj._capability is _MINT and hmac.compare_digest(obj._seal, _seal_of(_public(obj)))
    except (AttributeError, TypeError, ValueError):
        # object.__new__(DPRelease) leaves slots unset; odd field types fail to seal.
        return False


def require_genuine(obj: object) -> DPRelease:
    """``obj`` if it is a genuine DPRelease, else ForgedRelease naming what it was."""
    if not is_genuine(obj):
        raise ForgedRelease(
            f"refusing to serialise {type(obj).__module__}.{type(obj).__qualname__}: "
            "only a DPRelease made by edgetwin's privacy mechanism may leave the device"
        )
    assert isinstance(obj, DPRelease)
    return obj


def readmit(record: dict[str, Any]) -> DPRelease:
    """Re-admit a release read back from the encrypted outbox; ValueError if any field is off."""
    check_record(record)
    return _mint(**record)


def check_record(record: dict[str, Any]) -> None:
    """Validate a release record's fields and their DP consistency; ValueError if wrong."""
    if not isinstance(record, dict) or set(record) != set(FIELDS):
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"release record has keys {keys}, expected {sorted(FIELDS)}")
    if record["schema"] != RELEASE_SCHEMA or record["mechanism"] != MECHANISM:
        raise ValueError(f"release record has schema {record['schema']!r} / "
                         f"mechanism {record['mechanism']!r}")
    for name in ("id", "metric", "unit", "period", "library"):
        if not isinstance(record[name], str):
            raise ValueError(f"release field {name!r} must be a string")
    if record["period"] not in ("day", "hour"):
        raise ValueError(f"release period {record['period']!r} is not day or hour")
    numbers = ("period_start", "period_end", "value", "epsilon", "scale", "sensitivity",
               "lower", "upper", "created")
    for name in numbers:
        v = record[name]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"release field {name!r} must be a finite number, not {v!r}")
    if not (record["epsilon"] > 0 and record["scale"] > 0 and record["lower"] < record["upper"]):
        raise ValueError("release needs epsilon > 0, scale > 0 and lower < upper")
    if not math.isclose(record["sensitivity"], record["upper"] - record["lower"]):
        raise ValueError("release sensitivity must equal upper - lower")
    # OpenDP may round the scale up a little to guarantee epsilon; never down.
    if record["scale"] * record["epsilon"] < record["sensitivity"] * (1 - 1e-9):
        raise ValueError("release scale is too small for its epsilon and sensitivity")


def canonical_json(obj: Any) -> bytes:
    """Deterministic UTF-8 JSON: sorted keys, no spaces, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False,
                      ensure_ascii=True).encode("ascii")


# -- private helpers ---------------------------------------------------------


def _mint(**fields: Any) -> DPRelease:
    """Construct a sealed DPRelease; only this package calls it. Never of location."""
    from edgetwin.privacy.metrics import is_location, location_refusal

    if is_location(str(fields["metric"])):
        raise ForgedRelease(location_refusal(str(fields["metric"])))
    public = {name: fields[name] for name in FIELDS}
    for name in ("period_start", "period_end", "value", "epsilon", "scale", "sensitivity",
                 "lower", "upper", "created"):
        public[name] = float(public[name])
    return DPRelease(**public, _capability=_MINT, _seal=_seal_of(public))


def _public(release: DPRelease) -> dict[str, Any]:
    return {name: getattr(release, name) for name in FIELDS}


def _seal_of(public: dict[str, Any]) -> bytes:
    return hmac.new(_SEAL_KEY, canonical_json(public), hashlib.sha256).digest()
