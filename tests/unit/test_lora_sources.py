"""LoRA adapters' sources and the request field, without a model: names, rules, the folder scan."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from gridgen import InvalidRequestError
from gridgen.diffusion.lora import (
    MAX_LORAS_PER_REQUEST,
    Loras,
    LoraSources,
    LoraSpec,
    active_loras,
    check_request_loras,
    parse_byte_size,
)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    loras: Loras = ()


def _errors(loras: Any) -> list[tuple[str, str, str]]:
    with pytest.raises(ValidationError) as caught:
        _Request(loras=loras)
    return [(".".join(map(str, e["loc"])), e["type"], e["msg"]) for e in caught.value.errors()]


@pytest.mark.parametrize("name", ["../x", "a/b", "/etc/passwd", "a\\b", "C:\\x\\y", "{x}/y"])
def test_a_name_with_a_path_separator_is_refused_naming_the_adapter(name: str) -> None:
    [(field, rule, message)] = _errors([{"name": name}])
    assert (field, rule) == ("loras.0.name", "lora_path")
    assert repr(name) in message and "never a path" in message


@pytest.mark.parametrize("name", ["", ".hidden", "..", "-x", "a b", "é", "x" * 129])
def test_names_are_plain_words(name: str) -> None:
    [(field, rule, _)] = _errors([{"name": name}])
    assert (field, rule) == ("loras.0.name", "lora_name")


def test_scale_range_default_count_and_duplicates() -> None:
    assert _Request(loras=[{"name": "a"}]).loras[0].scale == 1.0
    assert _Request(loras=[{"name": "a", "scale": -2}, {"name": "b", "scale": 2}]).loras[1].scale == 2
    assert _errors([{"name": "a", "scale": 2.5}])[0][:2] == ("loras.0.scale", "less_than_equal")
    assert _errors([{"name": "a", "scale": True}])[0][0] == "loras.0.scale"
    assert _errors([{"name": "a", "path": "/x"}])[0][:2] == ("loras.0.path", "extra_forbidden")
    too_many = [{"name": f"n{i}"} for i in range(MAX_LORAS_PER_REQUEST + 1)]
    assert _errors(too_many)[0][:2] == ("loras", "too_long")
    field, rule, message = _errors([{"name": "a"}, {"name": "a", "scale": 0.5}])[0]
    assert (field, rule) == ("loras", "lora_duplicate") and "'a'" in message


def test_the_active_set_is_sorted_and_leaves_scale_0_out() -> None:
    specs = [LoraSpec(name="b", scale=0.5), LoraSpec(name="z", scale=0), LoraSpec(name="a")]
    assert active_loras(specs) == (("a", 1.0), ("b", 0.5))
    assert active_loras([LoraSpec(name="a", scale=0)]) == active_loras(()) == ()


def _file(path: Path) -> Path:
    path.write_bytes(b"not read by the sources")
    return path


def test_named_files_and_folders_and_the_folder_scan(tmp_path: Path) -> None:
    folder = tmp_path / "dir"
    folder.mkdir()
    _file(folder / "style.safetensors")
    _file(folder / "bad name.safetensors")  # not a usable name: skipped
    _file(folder / "notes.txt")
    saved = tmp_path / "saved"
    saved.mkdir()
    _file(saved / "pytorch_lora_weights.safetensors")  # a folder as save_lora_weights writes it
    single = _file(tmp_path / "single.safetensors")
    sources = LoraSources({"subject": saved, "style": single}, folder)
    assert sources.names() == ["style", "subject"]
    assert sources.path("subject") == saved / "pytorch_lora_weights.safetensors"
    assert sources.path("style") == single  # a named adapter shadows the folder's
    assert sources.path("notes") is None and sources.path("missing") is None


def test_a_folder_that_gains_a_file_is_scanned_again(tmp_path: Path) -> None:
    sources = LoraSources(directory=tmp_path)
    assert sources.names() == []
    new = _file(tmp_path / "fresh.safetensors")
    stamp = tmp_path.stat().st_mtime_ns  # some file systems tick coarsely: make the change visible
    os.utime(tmp_path, ns=(stamp + 10**9, stamp + 10**9))
    assert sources.names() == ["fresh"] and sources.path("fresh") == new


def test_unknown_names_are_refused_with_the_registered_ones(tmp_path: Path) -> None:
    sources = LoraSources({"a": _file(tmp_path / "a.safetensors")})
    with pytest.raises(InvalidRequestError) as caught:
        sources.check([LoraSpec(name="a"), LoraSpec(name="nope")])
    [error] = caught.value.errors
    assert (error.field, error.rule) == ("loras.1.name", "unknown_lora")
    assert "'nope'" in error.message and "registered: a" in error.message


def test_the_host_check_reads_the_setup_arguments(tmp_path: Path) -> None:
    setup = {"loras": {"a": str(_file(tmp_path / "a.safetensors")), "b": str(_file(tmp_path / "b.safetensors"))},
             "max_loras": 1}
    check_request_loras(_Request(loras=[{"name": "a"}, {"name": "b", "scale": 0}]), setup)
    with pytest.raises(InvalidRequestError, match="at most 1 loaded") as caught:
        check_request_loras(_Request(loras=[{"name": "a"}, {"name": "b"}]), setup)
    assert caught.value.errors[0].rule == "too_many_loras"
    with pytest.raises(InvalidRequestError, match="none are configured"):
        check_request_loras(_Request(loras=[{"name": "a"}]), {})
    check_request_loras(_Request(), {})  # no adapters asked for: nothing to check


@pytest.mark.parametrize(
    ("sources", "error"),
    [
        ({"named": {"a/b": "x"}}, ValueError),
        ({"named": {"a": "/no/such/file.safetensors"}}, FileNotFoundError),
        ({"directory": "/no/such/folder"}, FileNotFoundError),
    ],
)
def test_bad_sources_fail_at_setup(sources: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        LoraSources(**sources)


def test_byte_sizes() -> None:
    assert parse_byte_size("512M") == 512 << 20
    assert parse_byte_size("2G") == parse_byte_size("2GiB") == 2 << 30
    assert parse_byte_size("1000") == 1000
    with pytest.raises(ValueError, match="not a size"):
        parse_byte_size("lots")
