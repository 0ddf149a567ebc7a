"""segrepro.files: a write is all or nothing, and leaves no temporary file behind."""
from __future__ import annotations

import json
import os

import pytest

from segrepro.files import atomic_write, write_json


def test_the_final_file_is_complete_after_a_write(tmp_path):
    path = tmp_path / "sub" / "out.txt"  # the folder is created
    with atomic_write(path, "w") as file:
        file.write("a" * 100_000)
        assert not path.exists()  # nothing under the final name until the block ends
    assert path.read_text() == "a" * 100_000
    assert [p.name for p in path.parent.iterdir()] == ["out.txt"]


def test_a_write_by_name_replaces_the_old_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with atomic_write(path) as tmp:
        assert tmp.parent == tmp_path and tmp != path
        tmp.write_bytes(b"new")
        assert path.read_bytes() == b"old"
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


@pytest.mark.parametrize("mode", [None, "w"])
def test_an_exception_mid_write_keeps_the_old_file_and_no_temporary_one(tmp_path, mode):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(path, mode) as target:
            if mode is None:
                target.write_text("half")
            else:
                target.write("half")
                target.flush()
            raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_write_json_round_trips_and_a_failed_dump_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json({"miou": 0.5, "iou": [0.25, 0.75]}, path)
    assert json.loads(path.read_text()) == {"miou": 0.5, "iou": [0.25, 0.75]}
    with pytest.raises(TypeError):
        write_json({"miou": 0.6, "bad": object()}, path)  # not JSON: fails part-way through the dump
    assert json.loads(path.read_text()) == {"miou": 0.5, "iou": [0.25, 0.75]}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_the_file_gets_the_umasks_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "out.txt", "w") as file:
            file.write("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644  # readable by others, as open() makes it


@pytest.mark.parametrize("fsync", [True, False])
def test_the_temporary_file_keeps_the_extension_for_writers_that_go_by_it(tmp_path, fsync):
    path = tmp_path / "label.png"
    with atomic_write(path, fsync=fsync) as tmp:
        assert tmp.suffix == ".png" and tmp.name.startswith(".label.")
        tmp.write_bytes(b"png")
    assert path.read_bytes() == b"png" and [p.name for p in tmp_path.iterdir()] == ["label.png"]
