"""A save killed after any filesystem step, concurrent savers and a reader during saves:
the directory always reads as exactly the old or exactly the new adapter.

Each save runs in a forked child that counts its filesystem steps (audited opens, renames,
removals, directory listings, the lock; wrapped ``os.write``/``os.fsync``) and SIGKILLs itself
just before step ``k``, i.e. right after step ``k - 1``, for every ``k`` the save takes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys

import numpy as np
import pytest

import mixlight as ml
import mixlight.extend as mlx
from mixlight import _atomic_dir
from mixlight.adapter_file import _arrays_sha256
from tests.core.test_adapter_file import make

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

CONFIG = ml.MoLoRA(3, 2, targets=[".*wo"])
AUDITED = {"open", "os.rename", "os.remove", "os.mkdir", "os.rmdir", "os.listdir", "os.scandir"}
AUDITED |= {"fcntl.flock"}
_state: dict = {"armed": False, "root": "", "count": 0, "kill_at": 0}


def _step() -> None:
    _state["count"] += 1
    if _state["count"] == _state["kill_at"]:
        os.kill(os.getpid(), signal.SIGKILL)


def _audit(event: str, args: tuple) -> None:
    if not _state["armed"] or event not in AUDITED:
        return
    target = args[0] if args else None
    if event == "fcntl.flock" or (
        isinstance(target, (str, bytes, os.PathLike))
        and os.fsdecode(target).startswith(_state["root"])
    ):
        _step()


sys.addaudithook(_audit)  # hooks cannot be removed; it does nothing unless armed


def _counted(fn):
    def wrapper(*args, **kwargs):
        if _state["armed"]:
            _step()
        return fn(*args, **kwargs)

    return wrapper


def _in_child(body) -> int:
    """Run ``body`` in a forked child; its wait status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


def _save_killed_before_step(root, kill_at, specs, arrays) -> int:
    def body():
        os.write, os.fsync = _counted(os.write), _counted(os.fsync)
        _state.update(armed=True, root=str(root), count=0, kill_at=kill_at)
        mlx.write_adapter(root, CONFIG, specs, arrays)
        os._exit(100 + min(_state["count"], 100))  # completed: report the step count

    return _in_child(body)


def _digest_of(root) -> str | None:
    """The arrays' digest of the adapter at ``root``, None when no adapter is there."""
    try:
        return _arrays_sha256(ml.read_adapter(root).arrays)
    except ml.AdapterFileError as err:
        assert "does not exist" in str(err) or "is missing" in str(err), err
        return None


@pytest.mark.parametrize("before", ["nothing", "an adapter"])
def test_kill_after_every_step_leaves_old_or_new(tmp_path, before):
    specs, old = make(CONFIG, seed=1)
    _, new = make(CONFIG, seed=2)
    old_digest, new_digest = _arrays_sha256(old), _arrays_sha256(new)
    killed_at = []
    for kill_at in range(1, 60):
        root = tmp_path / f"k{kill_at}"
        if before == "an adapter":
            mlx.write_adapter(root, CONFIG, specs, old)
        status = _save_killed_before_step(root, kill_at, specs, new)
        seen = _digest_of(root)
        if os.WIFSIGNALED(status):
            assert os.WTERMSIG(status) == signal.SIGKILL
            killed_at.append(kill_at)
            expected_old = None if before == "nothing" else old_digest
            assert seen in (expected_old, new_digest), f"killed before step {kill_at}"
        else:
            assert os.WEXITSTATUS(status) >= 100, "the save failed instead of completing"
            steps = os.WEXITSTATUS(status) - 100
            assert seen == new_digest
            break
        # the next save completes and leaves no staging behind
        _, newer = make(CONFIG, seed=3)
        mlx.write_adapter(root, CONFIG, specs, newer)
        assert _digest_of(root) == _arrays_sha256(newer)
        assert not [p for p in os.listdir(root) if p.startswith(_atomic_dir.STAGING_PREFIX)]
    else:
        pytest.fail("the save never completed within 60 steps")
    assert killed_at == list(range(1, steps + 1)), "every step of the save was interrupted"
    assert steps >= 10  # lock, listing, two staged files (open/write/fsync), renames, dir fsync


def _saver(root, specs, adapters) -> None:
    for arrays in adapters:
        mlx.write_adapter(root, CONFIG, specs, arrays)


def _reader(root, known, stop_file, log_file) -> None:
    reads = 0
    while not os.path.exists(stop_file) or reads < 3:
        seen = _arrays_sha256(ml.read_adapter(root).arrays)
        if seen not in known:
            raise AssertionError("read an adapter that nobody saved")
        reads += 1
    with open(log_file, "w") as f:
        f.write(str(reads))


def test_two_savers_and_a_reader_only_ever_see_whole_adapters(tmp_path):
    specs, first = make(CONFIG, seed=0)
    root = tmp_path / "shared"
    mlx.write_adapter(root, CONFIG, specs, first)
    batches = [[make(CONFIG, seed=s)[1] for s in range(1 + 20 * w, 21 + 20 * w)] for w in (0, 1)]
    known = {_arrays_sha256(a) for a in [first, *batches[0], *batches[1]]}
    stop, log = tmp_path / "stop", tmp_path / "reads"
    reader = os.fork()
    if reader == 0:
        code = 1
        try:
            _reader(root, known, stop, log)
            code = 0
        finally:
            os._exit(code)
    statuses = []
    writers = []
    for batch in batches:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _saver(root, specs, batch)
                code = 0
            finally:
                os._exit(code)
        writers.append(pid)
    statuses = [os.waitpid(pid, 0)[1] for pid in writers]
    stop.write_text("")
    reader_status = os.waitpid(reader, 0)[1]
    assert statuses == [0, 0], "both savers complete"
    assert reader_status == 0, "the reader saw only whole, known adapters"
    assert int(log.read_text()) >= 3
    final = ml.read_adapter(root)
    assert _arrays_sha256(final.arrays) in {_arrays_sha256(b[-1]) for b in batches}
    readable = json.loads((root / "mixlight_config.json").read_text())
    weights = (root / "mixlight_adapter.safetensors").read_bytes()
    assert readable["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert sorted(os.listdir(root)) == [
        "README.md",
        "mixlight_adapter.safetensors",
        "mixlight_config.json",
    ]


def test_stale_staging_files_are_removed(tmp_path):
    """A killed save's staging files go; a directory of that name is not one, and stays."""
    specs, arrays = make(CONFIG)
    (tmp_path / ".mixlight-staging-1234-dead").mkdir()
    (tmp_path / ".mixlight-staging-99-ab-mixlight_adapter.safetensors").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("mine")
    mlx.write_adapter(tmp_path, CONFIG, specs, arrays)
    assert sorted(os.listdir(tmp_path)) == [
        ".mixlight-staging-1234-dead",
        "README.md",
        "mixlight_adapter.safetensors",
        "mixlight_config.json",
        "notes.txt",
    ]


def test_full_disk_keeps_the_old_adapter_and_says_so(tmp_path, monkeypatch):
    specs, old = make(CONFIG, seed=1)
    mlx.write_adapter(tmp_path, CONFIG, specs, old)
    before = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)}
    real_write = os.write

    def full(fd, data):
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="no space left .* is unchanged; free some space") as err:
        mlx.write_adapter(tmp_path, CONFIG, specs, make(CONFIG, seed=2)[1])
    assert err.value.errno == 28
    monkeypatch.undo()
    assert {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)} == before
    np.testing.assert_array_equal(
        ml.read_adapter(tmp_path).arrays["enc.0.mlp.wo.lora_A"], old["enc.0.mlp.wo.lora_A"]
    )


def test_a_failure_after_the_commit_says_the_new_adapter_is_saved(tmp_path, monkeypatch):
    specs, old = make(CONFIG, seed=1)
    mlx.write_adapter(tmp_path, CONFIG, specs, old)
    _, new = make(CONFIG, seed=2)
    real_replace, calls = os.replace, []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OSError, match="the new adapter is saved, but the save could not finish"):
        mlx.write_adapter(tmp_path, CONFIG, specs, new)
    monkeypatch.undo()
    assert _digest_of(tmp_path) == _arrays_sha256(new)


def test_directories_that_cannot_be_fsynced_still_save(tmp_path, monkeypatch):
    real_fsync = os.fsync

    def no_dir_fsync(fd):
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            raise OSError(22, "Invalid argument")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", no_dir_fsync)
    specs, arrays = make(CONFIG)
    mlx.write_adapter(tmp_path / "new", CONFIG, specs, arrays)
    monkeypatch.undo()
    assert _digest_of(tmp_path / "new") == _arrays_sha256(arrays)
