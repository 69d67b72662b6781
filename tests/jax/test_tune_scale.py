"""``mixlight tune`` at scale, JAX: a ``data`` mesh and a ``data x model`` mesh of 4 forced
CPU devices train the one-device adapter (and an expert count the model axis does not divide
falls back to replicated adapters, saying so); two processes joined by
``jax.distributed`` on localhost train it too and save one adapter from a mesh that spans
both; the config's dropout gives torch's losses at 0 on a checkpoint whose ``dropout_rate``
is 0.1, and trains at 0.1 in both frameworks; bf16 with ``nnx.remat`` trains float32
adapters; resume is bit-identical with accumulation, a schedule, clipping, dropout and
``keep_best``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")
pytest.importorskip("sentencepiece")

import mixlight as ml  # noqa: E402
from mixlight_tune.experiment import SHIPPED_BASE  # noqa: E402
from mixlight_tune.tune_cli import run  # noqa: E402
from mixlight_tune.tune_config import read_config  # noqa: E402
from tests.tune_case import interrupted_then_resumed, write_case  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).with_name("tune_mesh.py")
SGD = {"optimizer": "sgd", "lr": 0.5, "steps": 3, "batch_size": 4, "checkpoint_every": 0}
MOV4 = {"adapter": {"preset": "mov", "num_experts": 4}}
MESHES = {
    "data": SGD | {"mesh": {"data": 4}},
    "data_model": SGD | MOV4 | {"mesh": {"data": 2, "model": 2}, "grad_accum_steps": 2},
    "fallback": SGD | {"mesh": {"data": 2, "model": 2}},  # 3 experts, model axis 2
}


def adapter(path: Path) -> dict[str, np.ndarray]:
    return ml.read_adapter(path).arrays


def assert_same_adapter(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=atol, rtol=0, err_msg=name)


def _env(devices: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def one_device(tmp_path_factory) -> dict[str, Path]:
    """The reference runs on this process's one CPU device: MoV-3 and MoV-4."""
    root = tmp_path_factory.mktemp("one")
    out = {}
    for name, extra in {"mov3": {}, "mov4": MOV4}.items():
        (root / name).mkdir()
        run(read_config(write_case(root / name, "jax", **SGD, **extra)), lambda _: None)
        out[name] = root / name / "out-jax"
    return out


@pytest.fixture(scope="module")
def meshes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("meshes")
    configs = []
    for name, overrides in MESHES.items():
        (root / name).mkdir()
        configs.append(str(write_case(root / name, "jax", **overrides)))
    done = subprocess.run(
        [sys.executable, str(HELPER), *configs],
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root


def test_meshes_train_the_one_device_adapter(meshes, one_device):
    for name, reference in (("data", "mov3"), ("data_model", "mov4"), ("fallback", "mov3")):
        out = meshes / name / "out-jax"
        metrics = json.loads((out / "metrics.json").read_text())
        want = json.loads((one_device[reference] / "metrics.json").read_text())
        np.testing.assert_allclose(metrics["losses"], want["losses"], rtol=1e-5)
        want_adapter = adapter(one_device[reference] / "adapter")
        assert_same_adapter(adapter(out / "adapter"), want_adapter, 5e-6)
        mesh = MESHES[name]["mesh"]
        assert metrics["parallel"]["devices"] == 4
        assert (metrics["parallel"]["data"], metrics["parallel"]["model"]) == (
            mesh["data"],
            mesh.get("model", 1),
        )


def test_experts_the_model_axis_does_not_divide_are_replicated_with_a_note(meshes):
    notes = json.loads((meshes / "fallback/out-jax/metrics.json").read_text())["parallel"]
    assert "3 experts do not split over model = 2" in " ".join(notes["notes"])
    split = json.loads((meshes / "data_model/out-jax/metrics.json").read_text())["parallel"]
    assert "notes" not in split


def test_a_mesh_that_does_not_cover_the_devices_is_refused(tmp_path):
    config = write_case(tmp_path, "jax", **SGD, mesh={"data": 3})
    done = subprocess.run(
        [sys.executable, "-m", "mixlight.cli", "tune", str(config)],
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert "does not cover the 4 device(s)" in done.stderr


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_and_save_one_adapter(tmp_path, one_device):
    """Two processes of 2 CPU devices each, joined on localhost; adapters split over a model
    axis, the mesh spanning both processes: process 0 writes the adapter (gathered from
    both) and the checkpoints."""
    overrides = SGD | MOV4 | {"checkpoint_every": 2, "num_processes": 2}
    overrides["coordinator_address"] = f"localhost:{_port()}"
    overrides["mesh"] = {"data": 2, "model": 2}
    config = write_case(tmp_path, "jax", **overrides)
    command = [sys.executable, "-m", "mixlight.cli", "tune", str(config)]
    procs = [
        subprocess.Popen(
            command,
            env=_env(2, JAX_PROCESS_ID=str(pid)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for pid in (0, 1)
    ]
    try:
        outputs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    out = tmp_path / "out-jax"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["parallel"] | {"notes": None} == {
        "processes": 2,
        "devices": 4,
        "data": 2,
        "model": 2,
        "layout": "mesh",
        "device": "cpu",
        "notes": None,
    }
    assert_same_adapter(adapter(out / "adapter"), adapter(one_device["mov4"] / "adapter"), 5e-6)
    assert (out / "checkpoint.safetensors").is_file()
    assert "final loss" in outputs[0] and "final loss" not in outputs[1]  # one writer


@pytest.fixture(scope="module")
def dropout_checkpoint(tmp_path_factory) -> Path:
    """The shipped base with ``dropout_rate`` 0.1, as every Hub T5 v1.1 has."""
    folder = tmp_path_factory.mktemp("ckpt") / "t5"
    shutil.copytree(SHIPPED_BASE, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"dropout_rate": 0.1}))
    (folder / ".mixlight-output").unlink(missing_ok=True)
    return folder


@pytest.mark.parametrize("rate", [0.0, 0.1])
def test_dropout_is_the_configs_in_both_frameworks(tmp_path, dropout_checkpoint, rate):
    """At 0 both frameworks give the same losses on a checkpoint that says 0.1 (torch's
    attention dropout used to stay on: step-1 losses 15.47 vs 15.11 on a 0.1 checkpoint);
    at 0.1 both train, and differ from 0."""
    pytest.importorskip("torch")
    runs = {}
    for backend in ("torch", "jax"):
        (tmp_path / backend).mkdir()
        config = write_case(
            tmp_path / backend, backend, **SGD, model=str(dropout_checkpoint), dropout=rate
        )
        runs[backend] = run(read_config(config), lambda _: None)["losses"]
    if rate == 0.0:
        np.testing.assert_allclose(runs["jax"], runs["torch"], rtol=1e-4)
        return
    reference = {}
    for backend in ("torch", "jax"):
        (tmp_path / f"{backend}0").mkdir()
        config = write_case(
            tmp_path / f"{backend}0", backend, **SGD, model=str(dropout_checkpoint), dropout=0.0
        )
        reference[backend] = run(read_config(config), lambda _: None)["losses"]
        assert all(np.isfinite(runs[backend])) and runs[backend] != reference[backend]
        assert runs[backend][-1] < runs[backend][0]


def test_bf16_with_remat_trains_float32_adapters(tmp_path):
    config = write_case(tmp_path, "jax", **SGD, precision="bf16", gradient_checkpointing=True)
    metrics = run(read_config(config), lambda _: None)
    assert all(np.isfinite(metrics["losses"])) and metrics["losses"][-1] < metrics["losses"][0]
    saved = ml.read_adapter(tmp_path / "out-jax/adapter")
    assert {a.dtype for a in saved.arrays.values()} == {np.dtype(np.float32)}
    assert "bfloat16" in str(saved.base_identity.dtype)


def test_resume_is_bit_identical_with_every_loop_feature(tmp_path, monkeypatch):
    loop = {
        "batch_size": 4,
        "grad_accum_steps": 2,
        "lr_schedule": "linear",
        "warmup_steps": 2,
        "max_grad_norm": 0.5,
        "eval_data": "train.jsonl",
        "eval_every": 2,
        "keep_best": "eval_average",
        "dropout": 0.1,
    }
    whole, resumed = interrupted_then_resumed(tmp_path, "jax", monkeypatch, **loop)
    assert resumed["losses"] == whole["losses"]
    assert resumed["eval_history"] == whole["eval_history"]
    assert resumed["best"]["step"] == whole["best"]["step"]
    for folder in ("adapter", "best_adapter"):
        a = adapter(tmp_path / f"whole/out-jax/{folder}")
        b = adapter(tmp_path / f"split/out-jax/{folder}")
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{folder} {key}")
