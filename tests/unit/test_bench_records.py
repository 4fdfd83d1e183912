"""Each family benchmark record says what it measured: family, precision, cache, image format
and images per request (issue 21 asks every committed result for these five fields)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from helpers.bench import load_bench

ROOT = Path(__file__).resolve().parents[2]
FIELDS = ("family", "precision", "cache", "image_format", "images_per_request")


def _family_records() -> list[tuple[str, dict[str, Any]]]:
    records = []
    for path in sorted((ROOT / "bench" / "results").glob("*.json")):
        data = json.loads(path.read_text())
        results = data.get("results") if isinstance(data, dict) else None
        if isinstance(results, list) and any(isinstance(r, dict) and "family" in r for r in results):
            records += [(path.name, r) for r in results]
    return records


def test_the_committed_family_results_exist() -> None:
    assert len({name for name, _ in _family_records()}) >= 8


@pytest.mark.parametrize("name,record", _family_records(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_committed_family_record_names_its_setting(name: str, record: dict[str, Any]) -> None:
    missing = [field for field in FIELDS if field not in record]
    assert not missing, f"{name}: {record.get('mode')} {record.get('lever') or record.get('setup')} lacks {missing}"
    assert record["precision"] in ("bf16", "fp16", "fp8"), name
    cache = record["cache"]
    assert cache is None or (cache.startswith("first_block:") and 0 < float(cache.split(":")[1]) <= 1), name
    assert record["images_per_request"] is None or record["images_per_request"] >= 1, name


def test_family_levers_writes_the_fields_and_what_a_mode_set(tmp_path: Path) -> None:
    levers = load_bench("family_levers")
    args = argparse.Namespace(out=str(tmp_path), model="tiny-flux", size=64, steps=4)
    log = levers.Log(args)
    log(mode="bare", lever="eager", images_per_request=1, s_per_image=0.1)
    log.common.update(precision="fp8", cache=levers._cache_name(0.4), steps=2)  # as bare mode does per lever
    log(mode="bare", lever="fp8+cache:0.4", compile_s=1.0)
    first, second = (json.loads(line) for line in (tmp_path / "levers.jsonl").read_text().splitlines())
    assert {k: first[k] for k in FIELDS} == {
        "family": "flux-dev", "precision": "bf16", "cache": None, "image_format": "png", "images_per_request": 1,
    }
    assert {k: second[k] for k in (*FIELDS, "steps")} == {
        "family": "flux-dev", "precision": "fp8", "cache": "first_block:0.4", "image_format": "png", "images_per_request": None,
        "steps": 2,
    }
