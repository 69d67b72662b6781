"""Hub repo ids, offline: ``load_adapter("user/repo")`` resolves from a local Hugging Face
cache built here (``HF_HUB_OFFLINE=1``), clear errors when it cannot, and ``push_to_hub``
against a fake ``HfApi`` that records what would be uploaded. No network."""

import sys
from pathlib import Path

import numpy as np
import pytest

import mixlight as ml
import mixlight.extend as mlx
from tests.core.dict_backend import dict_backend, t5_like


@pytest.fixture
def hub():
    return pytest.importorskip("huggingface_hub")


@pytest.fixture
def offline_cache(hub, tmp_path, monkeypatch):
    """An empty HF cache, offline."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_repo(cache: Path, repo_id: str, write) -> Path:
    """Lay out ``models--user--repo`` as snapshot_download leaves it; ``write(dir)`` fills
    the snapshot."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    root = cache / ("models--" + repo_id.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(sha)
    snapshot = root / "snapshots" / sha
    snapshot.mkdir(parents=True)
    write(snapshot)
    return snapshot


def test_load_adapter_takes_a_repo_id_from_the_cache(offline_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "user/mov" is not a local path here
    with dict_backend():
        trained = ml.inject(t5_like(), ml.MoV(2), seed=3)
        cache_repo(offline_cache, "user/mov", lambda d: ml.save_adapter(trained, d))
        model = ml.load_adapter(t5_like(), "user/mov")
        want = mlx.load_backend("dict").adapter_state(trained)[2]
        got = mlx.load_backend("dict").adapter_state(model)[2]
        assert want.keys() == got.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])


def test_load_peft_adapter_takes_a_repo_id_too(offline_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with dict_backend():
        ia3 = ml.inject(t5_like(), ml.IA3(), seed=0)
        cache_repo(offline_cache, "user/peft-ia3", lambda d: ml.save_peft_adapter(ia3, d))
        model = ml.load_peft_adapter(t5_like(), "user/peft-ia3")
        assert model.state[0].num_experts == 1


def test_an_unknown_repo_id_says_what_was_tried(offline_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with (
        dict_backend(),
        pytest.raises(
            ml.AdapterFileError,
            match=r"'user/nothing' is neither an existing directory nor a Hub repo.*HF_HUB_OFFLINE",
        ),
    ):
        ml.load_adapter(t5_like(), "user/nothing")


def test_without_huggingface_hub_a_repo_id_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with dict_backend(), pytest.raises(ml.AdapterFileError, match="pip install huggingface_hub"):
        ml.load_adapter(t5_like(), "user/repo")
    with dict_backend(), pytest.raises(ml.AdapterFileError, match="does not exist"):
        ml.load_adapter(t5_like(), tmp_path / "user" / "repo")  # a Path is always local


def test_push_to_hub_uploads_the_adapter_and_its_card(hub, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            calls.append(("upload_folder", repo_id, files, kwargs))
            return "commit-info"

    monkeypatch.setattr(hub, "HfApi", FakeApi)
    with dict_backend():
        model = ml.inject(t5_like(), ml.MoV(2), seed=0)
        assert ml.push_to_hub(model, "me/mov", private=True, token="t") == "commit-info"
        with pytest.raises(ValueError, match="'user/repo'"):
            ml.push_to_hub(model, "not a repo id")
    assert calls[0] == ("init", "t")
    assert calls[1] == (
        "create_repo",
        "me/mov",
        {"private": True, "exist_ok": True, "repo_type": "model"},
    )
    _, repo, files, kwargs = calls[2]
    assert repo == "me/mov" and kwargs["repo_type"] == "model"
    assert set(files) == {"mixlight_adapter.safetensors", "mixlight_config.json", "README.md"}
    assert 'ml.load_adapter(model, "me/mov")' in files["README.md"].decode()
