"""The model registry: ``models/manifest.json`` is checked before any model byte is used.

A model is loaded only if its file's sha256 and size match the manifest, every
feature the manifest names (``features``: what the models consume, in their
order) is a feature of this edgetwin's schema, the manifest's schema version is
one this code knows, the step matches, and the ONNX session's inputs and outputs
are the ones the manifest promises. Anything else is
:class:`~edgetwin.errors.DataCorrupt` with a message that names the file.

A model trained on an older schema keeps working when the schema grows: the
runtime selects the columns it names (``Manifest.columns``), so the shipped
schema-v1 models read the first 13 features of schema v2 and never the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetwin.errors import DataCorrupt, UsageError
from edgetwin.features import schema
from edgetwin.inference.baseline import Prior

_LOGGER = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
PRECISIONS = ("int8", "fp32")
_REBUILD = "restore the shipped models/ directory, or rebuild it with scripts/train"


def default_models_dir() -> Path:
    """``$EDGETWIN_MODELS``, else the ``models/`` directory beside the installed package."""
    env = os.environ.get("EDGETWIN_MODELS")
    if env:
        return Path(env)
    import edgetwin

    return Path(edgetwin.__file__).resolve().parents[1] / "models"


@dataclass(frozen=True, slots=True)
class ModelFile:
    """One ONNX file as the manifest describes it."""

    name: str
    precision: str
    path: Path
    sha256: str
    size: int
    inputs: tuple[tuple[str, tuple[int | str, ...]], ...]
    outputs: tuple[tuple[str, tuple[int | str, ...]], ...]

    def read_verified(self) -> bytes:
        """The file's bytes, after checking size and sha256 against the manifest."""
        try:
            blob = self.path.read_bytes()
        except OSError as exc:
            raise DataCorrupt(
                f"model file {self.path} cannot be read ({exc.strerror})", hint=_REBUILD
            ) from exc
        if len(blob) != self.size:
            raise DataCorrupt(
                f"model file {self.path} is {len(blob)} bytes but the manifest says {self.size}: "
                "it was modified or truncated",
                hint=_REBUILD,
            )
        digest = hashlib.sha256(blob).hexdigest()
        if digest != self.sha256:
            raise DataCorrupt(
                f"model file {self.path} fails its sha256 check (manifest {self.sha256[:12]}…, "
                f"file {digest[:12]}…): it was modified after the manifest was written",
                hint=_REBUILD,
            )
        return blob


@dataclass(frozen=True, slots=True)
class Manifest:
    """The validated contents of ``manifest.json``."""

    root: Path
    schema_version: int
    features: tuple[str, ...]
    # the columns of the current feature schema holding ``features``, in that order
    columns: tuple[int, ...]
    step_s: float
    prior: Prior
    imputer_window: int
    context: int
    horizon: int
    min_context: int
    targets: tuple[str, ...]
    quantiles: tuple[float, ...]
    z_clip: float
    files: dict[tuple[str, str], ModelFile]
    # features the imputer leaves to linear interpolation (indices into ``features``)
    interpolate: tuple[int, ...]
    raw: dict[str, Any]

    def file(self, model: str, precision: str) -> ModelFile:
        if precision not in PRECISIONS:
            raise UsageError(f"model precision {precision!r} is unknown; use 'int8' or 'fp32'")
        return self.files[(model, precision)]


def load_manifest(models_dir: Path | None = None) -> Manifest:
    """Read and validate ``models_dir/manifest.json`` against this package's feature schema."""
    root = Path(models_dir) if models_dir is not None else default_models_dir()
    path = root / MANIFEST
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(
            f"no model manifest at {path}",
            hint="point EDGETWIN_MODELS at a models directory, or rebuild it with scripts/train",
        ) from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataCorrupt(f"model manifest {path} is unreadable ({exc})", hint=_REBUILD) from exc
    try:
        return _parse(root, raw)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataCorrupt(
            f"model manifest {path} is malformed ({type(exc).__name__}: {exc})", hint=_REBUILD
        ) from exc


def _parse(root: Path, raw: dict[str, Any]) -> Manifest:
    if raw.get("format") != MANIFEST_FORMAT:
        raise DataCorrupt(
            f"model manifest {root / MANIFEST}: format {raw.get('format')!r} is not "
            f"{MANIFEST_FORMAT}"
        )
    version = int(raw["feature_schema_version"])
    if version not in schema.LAYOUTS:
        raise DataCorrupt(
            f"models in {root} were trained on feature schema v{version} but this edgetwin "
            f"knows v{min(schema.LAYOUTS)}..v{schema.SCHEMA_VERSION}",
            hint="install models built for this version (scripts/train rebuilds them)",
        )
    features = tuple(str(f) for f in raw["features"])
    try:
        columns = schema.columns_of(features, where=f"model manifest {root / MANIFEST}")
    except ValueError as exc:
        raise DataCorrupt(
            str(exc), hint="install models built for this edgetwin (scripts/train rebuilds them)"
        ) from None
    prior = Prior.from_json(raw["baseline_prior"], len(features))
    models = raw["models"]
    files: dict[tuple[str, str], ModelFile] = {}
    for name in ("imputer", "forecaster"):
        for precision in PRECISIONS:
            entry = models[name]["files"][precision]
            rel = Path(str(entry["path"]))
            if rel.is_absolute() or ".." in rel.parts:
                raise DataCorrupt(
                    f"model manifest {root / MANIFEST}: {name} path {rel} leaves the "
                    "models directory"
                )
            files[(name, precision)] = ModelFile(
                name=name,
                precision=precision,
                path=root / rel,
                sha256=str(entry["sha256"]).lower(),
                size=int(entry["bytes"]),
                inputs=tuple((str(i["name"]), tuple(i["shape"])) for i in entry["inputs"]),
                outputs=tuple((str(o["name"]), tuple(o["shape"])) for o in entry["outputs"]),
            )
    fc = models["forecaster"]
    targets = tuple(str(t) for t in fc["targets"])
    unknown = [t for t in targets if t not in features]
    if unknown:
        raise DataCorrupt(
            f"model manifest {root / MANIFEST}: forecaster targets {unknown} are not features"
        )
    interp = tuple(str(f) for f in models["imputer"].get("interpolate", ()))
    if any(f not in features for f in interp):
        raise DataCorrupt(
            f"model manifest {root / MANIFEST}: imputer.interpolate {list(interp)} names "
            "features that do not exist"
        )
    return Manifest(
        root=root,
        schema_version=version,
        features=features,
        columns=columns,
        step_s=float(raw["step_s"]),
        prior=prior,
        imputer_window=int(models["imputer"]["window"]),
        context=int(fc["context"]),
        horizon=int(fc["horizon"]),
        min_context=int(fc["min_context"]),
        targets=targets,
        quantiles=tuple(float(q) for q in fc["quantiles"]),
        z_clip=float(raw["z_clip"]),
        files=files,
        interpolate=tuple(features.index(f) for f in interp),
        raw=raw,
    )
