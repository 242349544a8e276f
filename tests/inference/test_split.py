"""The real people's train / validation / test split: by person, stratified, seeded, on record."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import MODELS

ROOT = Path(__file__).resolve().parents[2]
SPLITS = ("train", "val", "test")


def _realdata() -> Any:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from modeling import realdata
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return realdata


def shared_people(split: dict[str, list[str]]) -> list[str]:
    """People listed in more than one split (or twice in one)."""
    seen: dict[str, int] = {}
    for k in SPLITS:
        for p in split[k]:
            seen[p] = seen.get(p, 0) + 1
    return sorted(p for p, n in seen.items() if n > 1)


def stored_split() -> dict[str, Any]:
    return json.loads((MODELS / "split.json").read_text())


def test_no_person_is_in_two_splits() -> None:
    split = stored_split()
    assert shared_people(split) == []
    for a, b in itertools.combinations(SPLITS, 2):
        assert not set(split[a]) & set(split[b]), (a, b)
    assert len(split["test"]) >= 15 and len(split["val"]) >= 15


def test_a_person_added_to_a_second_split_is_caught() -> None:
    split = stored_split()
    doctored = {**split, "test": [*split["test"], split["train"][0]]}
    assert shared_people(doctored) == [split["train"][0]]


def test_split_is_stratified_over_every_dataset() -> None:
    realdata = _realdata()
    split = stored_split()
    for ds in realdata.DATASETS:
        counts = {k: sum(realdata.dataset_of(p) == ds for p in split[k]) for k in SPLITS}
        assert all(counts.values()), (ds, counts)


def test_split_is_the_seeded_rule_and_covers_the_trained_files() -> None:
    """Re-deriving the split from the people and the seed gives the stored one."""
    realdata = _realdata()
    split = stored_split()
    people = sorted(p for k in SPLITS for p in split[k])
    again = realdata.make_split(people, split["seed"])
    assert {k: again[k] for k in SPLITS} == {k: split[k] for k in SPLITS}
    manifest = json.loads((MODELS / "manifest.json").read_text())
    files = {f["file"] for f in manifest["training"]["files"]}
    assert {f"rr/{p}.csv.gz" for p in people} <= files
    assert manifest["training"]["people"] == {k: len(split[k]) for k in SPLITS}


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_make_split_never_shares_a_person(seed: int) -> None:
    realdata = _realdata()
    sizes = zip(realdata.DATASETS, (50, 27, 6, 8), strict=True)
    people = [f"{ds}_{i:03d}" for ds, n in sizes for i in range(n)]
    split = realdata.make_split(people, seed)
    assert shared_people(split) == []
    assert sorted(p for k in SPLITS for p in split[k]) == sorted(people)
    assert split == realdata.make_split(list(reversed(people)), seed)
