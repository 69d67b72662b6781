"""DDP and FSDP2 training of an injected T5 equals single-process training on the global batch:
the raw adapter gradients after one backward (MoV and MoLoRA) and the adapter after plain SGD
steps, elementwise, so a gradient scale error (ranks summing instead of averaging) shows.

The module is also the helper script: ``python -m tests.torch.test_distributed OUT`` forks
two gloo ranks on CPU that train under DDP and FSDP2, save with
``save_adapter_distributed`` and record what they saw under ``OUT``; the tests compare that
with a single-process run here.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mixlight as ml
from mixlight_torch.distributed import (
    save_adapter_distributed,
    shard_batch,
    shard_model,
)
from mixlight_torch.model import adapter_parameters, unwrap
from tests.torch.conftest import perturb, tiny_t5

ROOT = Path(__file__).resolve().parents[2]
WORLD, STEPS = 2, 3
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)


def global_batch() -> dict[str, torch.Tensor]:
    """Four examples; every label counts, so the mean of per-rank mean losses is the global
    mean loss."""
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(2, 100, (4, 7), generator=g),
        "labels": torch.randint(2, 100, (4, 5), generator=g),
    }


KINDS = {"mov": lambda e: ml.MoV(e), "molora": lambda e: ml.MoLoRA(e, rank=2)}


def injected(num_experts: int = 4, kind: str = "mov") -> torch.nn.Module:
    """Tiny T5 with MoV (or MoLoRA), moved off its initial values: at init all experts are
    equal, the router's gradient is exactly zero and its computed value is rounding noise."""
    model = tiny_t5()
    torch.manual_seed(1)
    return perturb(ml.inject(model, KINDS[kind](num_experts)), scale=0.1)


def raw_gradients(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """The adapter's gradients after one backward of the mean loss (whole tensors: a
    collective for FSDP2 shards, so every rank calls it)."""
    model(**batch).loss.backward()
    grads = {}
    for name, p in adapter_parameters(unwrap(model)):
        grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        grads[name] = grad.detach().numpy().copy()
    return grads


def train(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Plain SGD (not Adam, which would hide a constant gradient scale)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(STEPS):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    return model


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**global_batch()).logits


def _error(call) -> str:
    try:
        call()
    except (ValueError, RuntimeError) as err:
        return f"{type(err).__name__}: {err}"
    return "no error"


def _worker(rank: int, out: Path) -> None:
    """One rank: DDP, FSDP2, loading into a sharded model, and two saves that must fail."""
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=WORLD
    )
    batch = shard_batch(global_batch(), rank, WORLD)
    for kind in KINDS:
        for layout, wrap in (("ddp", DistributedDataParallel), ("fsdp", shard_model)):
            grads = raw_gradients(wrap(injected(kind=kind)), batch)
            if rank == 0:
                np.savez(out / f"grads_{layout}_{kind}.npz", **grads)
    save_adapter_distributed(train(DistributedDataParallel(injected()), batch), out / "ddp")
    fsdp = train(shard_model(injected()), batch)
    save_adapter_distributed(fsdp, out / "fsdp")
    sharded_logits = logits(fsdp)
    resumed = logits(ml.load_adapter(shard_model(injected()), out / "fsdp"))
    if rank == 0:
        np.save(out / "fsdp_logits.npy", sharded_logits.numpy())
        np.save(out / "fsdp_resumed_logits.npy", resumed.numpy())
    errors = {
        "config": _error(
            lambda: save_adapter_distributed(injected(4 if rank == 0 else 2), out / "x")
        ),
        "write": _error(lambda: save_adapter_distributed(fsdp, out / "fsdp_logits.npy")),
    }
    (out / f"errors{rank}.json").write_text(json.dumps(errors))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The two ranks, started in the background: ``(output directory, process)``."""
    out = tmp_path_factory.mktemp("distributed")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.torch.test_distributed", str(out)],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield out, proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    return train(injected(), global_batch())


@pytest.fixture(scope="module")
def runs(launched, reference) -> Path:
    """The ranks' output directory, once they are done (``reference`` trains meanwhile)."""
    out, proc = launched
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    return out


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("layout", ["ddp", "fsdp"])
def test_sharded_gradients_equal_single_process(runs, layout, kind):
    want = raw_gradients(injected(kind=kind), global_batch())
    with np.load(runs / f"grads_{layout}_{kind}.npz") as saved:
        got = dict(saved)
    assert got.keys() == want.keys()
    assert all(np.abs(g).max() > 1e-6 for g in want.values())  # every parameter is trained
    for name, grad in want.items():
        scale = np.abs(grad).max()
        np.testing.assert_allclose(got[name], grad, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


@pytest.mark.parametrize("layout", ["ddp", "fsdp"])
def test_sharded_training_equals_single_process(runs, reference, layout):
    saved = ml.read_adapter(runs / layout).arrays
    want = {n: p.detach().numpy() for n, p in adapter_parameters(reference)}
    start = dict(adapter_parameters(injected()))
    assert max(np.abs(a - start[n].detach().numpy()).max() for n, a in want.items()) > 1e-3
    assert saved.keys() == want.keys()
    for name, array in want.items():
        np.testing.assert_allclose(saved[name], array, rtol=0, atol=1e-5, err_msg=name)


def test_sharded_save_loads_into_a_single_process_model(runs, reference):
    loaded = ml.load_adapter(tiny_t5(), runs / "fsdp")
    got = logits(loaded)
    torch.testing.assert_close(got, torch.from_numpy(np.load(runs / "fsdp_logits.npy")))
    # float32 rounding of sharded vs whole-batch reductions, over the training steps
    torch.testing.assert_close(got, logits(reference), rtol=1e-5, atol=1e-5)


def test_sharded_save_loads_into_a_sharded_model(runs):
    resumed, sharded = (np.load(runs / f"fsdp{s}_logits.npy") for s in ("_resumed", ""))
    np.testing.assert_array_equal(resumed, sharded)


def test_failed_saves_raise_on_every_rank(runs):
    for rank in range(WORLD):
        errors = json.loads((runs / f"errors{rank}.json").read_text())
        assert "disagree with rank 0 on the adapter config" in errors["config"], errors
        assert "rank 0 failed to write: AdapterFileError" in errors["write"], errors
    assert not (runs / "x").exists()


def test_a_checkpoint_with_another_expert_count_does_not_load(runs):
    with pytest.raises(ValueError, match="different adapter"):
        ml.load_adapter(injected(2), runs / "fsdp")


@pytest.mark.parametrize("world_size", [3, 8])
def test_shard_batch_needs_a_divisible_batch(world_size):
    with pytest.raises(ValueError, match="cannot be split evenly"):
        shard_batch(global_batch(), 0, world_size)
    assert shard_batch(global_batch(), 1, 2)["labels"].shape == (2, 5)


if __name__ == "__main__":
    injected()  # import the model code and the backend once, before forking
    torch.multiprocessing.start_processes(
        _worker, args=(Path(sys.argv[1]),), nprocs=WORLD, start_method="fork"
    )
