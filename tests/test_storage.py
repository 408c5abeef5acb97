"""tempo_lens.storage: the one atomic writer. Each test asserts what survives on disk or
the exact refusal."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from filelock import FileLock

from tempo_lens.errors import TempoError
from tempo_lens.storage import (
    artefact_kind,
    atomic_dir,
    check_target,
    marker,
    sweep_stale,
    target_lock,
    write_file_atomic,
    write_json_atomic,
)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _make_run_like(d, text="old"):
    d.mkdir(parents=True)
    write_json_atomic(d / "run.json", {"tempo_lens": marker("run"), "text": text})


def test_atomic_dir_replaces_an_artefact_of_its_kind(tmp_path):
    target = tmp_path / "r"
    _make_run_like(target, "old")
    with atomic_dir(target, "run") as d:
        write_json_atomic(d / "run.json", {"tempo_lens": marker("run"), "text": "new"})
    assert json.loads((target / "run.json").read_text())["text"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r.lock", "r"]


def test_atomic_dir_refuses_a_user_directory_and_keeps_it(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_bytes(b"\x00precious\xff")
    with pytest.raises(TempoError, match="is not a tempo_lens run; nothing was written"):
        with atomic_dir(target, "run") as d:
            write_json_atomic(d / "run.json", {"tempo_lens": marker("run")})
    assert (target / "thesis.tex").read_bytes() == b"\x00precious\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_atomic_dir_refuses_another_kind(tmp_path):
    target = tmp_path / "exp"
    target.mkdir()
    write_json_atomic(target / "summary.json", {"tempo_lens": marker("experiment")})
    with pytest.raises(TempoError, match="not a tempo_lens run"):
        check_target(target, "run")
    assert artefact_kind(target) == "experiment"


def test_atomic_dir_needs_the_marker_in_what_it_commits(tmp_path):
    with pytest.raises(TempoError, match="lacks its run.json marker"):
        with atomic_dir(tmp_path / "r", "run") as d:
            (d / "run.json").write_text("{}")
    assert not (tmp_path / "r").exists()


def test_failure_inside_leaves_the_old_artefact(tmp_path):
    target = tmp_path / "r"
    _make_run_like(target, "old")
    with pytest.raises(RuntimeError), atomic_dir(target, "run") as d:
        (d / "run.json").write_text("{half")
        raise RuntimeError("crash")
    assert json.loads((target / "run.json").read_text())["text"] == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".r.lock", "r"]


@pytest.mark.parametrize(
    "raw, message",
    [
        ("", "the output path is empty"),
        ("   ", "the output path is empty"),
        ("/", "file-system root"),
        ("/proc", "mount point"),
    ],
)
def test_check_target_refusals(raw, message):
    with pytest.raises(TempoError, match=message):
        check_target(raw, "run")


def test_check_target_refuses_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TempoError, match="current directory"):
        check_target(".", "run")
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.parent.iterdir() if ".old-" in p.name] == []


def test_check_target_refuses_a_symlink(tmp_path):
    real = tmp_path / "real"
    _make_run_like(real)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(TempoError, match="symbolic link"):
        check_target(tmp_path / "link", "run")


def test_write_file_atomic_refuses_a_user_file_and_replaces_its_own(tmp_path):
    mine = tmp_path / "report.html"
    mine.write_text("<html>my own page</html>")
    with pytest.raises(TempoError, match="was not written by tempo_lens"):
        write_file_atomic(mine, "new", kind="report")
    assert mine.read_text() == "<html>my own page</html>"
    ours = tmp_path / "ours.html"
    write_file_atomic(ours, '<meta name="generator" content="tempo_lens report">v1', kind="report")
    write_file_atomic(ours, '<meta name="generator" content="tempo_lens report">v2', kind="report")
    assert ours.read_text().endswith("v2")


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    pid = _dead_pid()
    stale = tmp_path / f".r.tmp-{pid}-abcd1234"
    stale.mkdir()
    (stale / "tensors.safetensors").write_bytes(b"x" * 1000)
    mine = tmp_path / f".r.tmp-{os.getpid()}-abcd1234"  # a live process's: kept
    mine.mkdir()
    with atomic_dir(tmp_path / "r", "run") as d:
        write_json_atomic(d / "run.json", {"tempo_lens": marker("run")})
    assert not stale.exists() and mine.exists()


def test_an_interrupted_fallback_swap_is_undone(tmp_path):
    pid = _dead_pid()
    old = tmp_path / f".r.old-{pid}-abcd1234"
    _make_run_like(old, "old")
    assert sweep_stale(tmp_path, "r") == []
    assert json.loads((tmp_path / "r" / "run.json").read_text())["text"] == "old"


def test_a_second_writer_stops_with_one_line(tmp_path):
    target = tmp_path / "r"
    held = FileLock(tmp_path / ".r.lock")
    with held:
        with pytest.raises(TempoError, match="another tempo_lens process is writing"):
            with target_lock(target, timeout=0):
                pass
    with target_lock(target, timeout=0):  # free again
        pass


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        with atomic_dir(tmp_path / "r", "run") as d:
            write_json_atomic(d / "run.json", {"tempo_lens": marker("run")})
            (d / "sub").mkdir()
        write_file_atomic(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE
    assert mode((tmp_path / "r").stat().st_mode) == 0o777 & ~mask
    assert mode((tmp_path / "r" / "sub").stat().st_mode) == 0o777 & ~mask
    assert mode((tmp_path / "r" / "run.json").stat().st_mode) == 0o666 & ~mask
    assert mode((tmp_path / "f.txt").stat().st_mode) == 0o666 & ~mask


def test_legacy_artefacts_without_marker_are_recognised(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    keys = ("format_version", "prompt", "model_name", "steps", "layout")
    (d / "run.json").write_text(json.dumps(dict.fromkeys(keys, 1)))
    assert artefact_kind(d) == "run"
    (d / "run.json").write_text('{"prompt": 1}')
    assert artefact_kind(d) is None


def test_a_benchmark_result_replaces_only_an_earlier_result(tmp_path):
    """`result_target`: a benchmark's --out may be new or an earlier result of the same
    script (a JSON object with its keys); a user's file or a directory is refused and
    left as it was."""
    from tempo_lens.storage import result_target

    keys = ("config", "speedup_median")
    assert result_target(tmp_path / "new.json", keys) == tmp_path / "new.json"
    earlier = tmp_path / "earlier.json"
    earlier.write_text('{"config": "x", "speedup_median": 2.0, "more": 1}')
    assert result_target(earlier, keys) == earlier
    for text in ('{"config": "x"}', "[1, 2]", "notes, not JSON", "\udcff"):
        mine = tmp_path / "mine.json"
        mine.write_text(text, errors="surrogateescape")
        with pytest.raises(TempoError, match="not an earlier result of this benchmark"):
            result_target(mine, keys)
        assert mine.read_text(errors="surrogateescape") == text
    with pytest.raises(TempoError, match="is a directory"):
        result_target(tmp_path, keys)
