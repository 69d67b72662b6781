"""What ``mixlight tune --dry-run`` reads of a model it does not load: its ``config.json``.

A dry run needs the model's shapes only (the trainable share and :mod:`mixlight_tune.memory`'s
estimate): a ``model`` folder holding a ``config.json`` and no weights is used as it is, and a
Hub model id is read as its ``config.json`` alone, from the Hub cache or downloaded by itself
(a few hundred bytes), never its weights. The model is then built on torch's meta device for
either backend (the same shapes; JAX configs need torch installed for this).

:func:`intended_layout` is the launch a dry run estimates for: ``--processes N``
data-parallel processes (FSDP2 when the config says ``fsdp``), or a JAX config's ``mesh``.
"""

from __future__ import annotations

from pathlib import Path

from . import hub
from .memory import Layout
from .tune_config import TuneConfig, TuneConfigError

CONFIG = "config.json"
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


def config_only(folder: Path) -> bool:
    """A model folder with a ``config.json`` and no weights: enough for a dry run."""
    if not (folder / CONFIG).is_file():
        return False
    return not any(any(folder.glob(pattern)) for pattern in WEIGHT_FILES)


def hub_config_folder(repo_id: str, revision: str | None) -> Path:
    """The folder of model ``repo_id``'s ``config.json`` at ``revision``: the cached
    snapshot's, else that file downloaded alone (refused while offline)."""
    hint = (
        "a dry run reads only the model's config.json: download it where there is network "
        f"(hf download {repo_id} {CONFIG}), or --set model=FOLDER holding a config.json "
        "(configs/paper/models/ has the paper's)"
    )
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:
        raise TuneConfigError(
            f"model = {repo_id!r} is a Hub id; resolving it needs {hub.HUB_HINT}; or {hint}"
        ) from None
    where = f"model {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        file = huggingface_hub.hf_hub_download(
            repo_id,
            CONFIG,
            revision=revision,
            cache_dir=hub.cache_dir(),
            local_files_only=hub.offline(),
        )
    except errors.LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if hub.offline() else "the Hub could not be reached"
        raise TuneConfigError(
            f"{where}: its {CONFIG} is not in the Hub cache and {why}; {hint}"
        ) from None
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as err:
        reason = str(err).strip().splitlines()[0]
        raise TuneConfigError(f"{where}: not found on the Hub ({reason}); {hint}") from None
    except (OSError, errors.HfHubHTTPError) as err:  # network failures
        raise TuneConfigError(
            f"{where}: its {CONFIG} could not be fetched ({type(err).__name__}: {err}); {hint}"
        ) from None
    return Path(file).parent


def intended_layout(cfg: TuneConfig, processes: int | None) -> Layout:
    """The launch to estimate for: a JAX config's ``mesh`` (``processes``, when given, is
    then the data axis of a mesh without one), else ``processes`` data-parallel processes
    (one by default), FSDP2-sharded when ``distributed = "fsdp"``."""
    if cfg.backend == "jax":
        mesh = dict(cfg.mesh or {})
        if processes is not None and "data" not in mesh:
            mesh["data"] = processes
        data, model = mesh.get("data", 1), mesh.get("model", 1)
        return Layout(processes or 1, data, model, False)
    count = processes or 1
    return Layout(count, count, 1, cfg.distributed == "fsdp" and count > 1)
