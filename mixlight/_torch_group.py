"""Join the process group ``torchrun`` launched this process into, and leave it at the end.

Shared by ``mixlight check`` and ``mixlight tune``. Imports torch only when called.
"""

from __future__ import annotations

import atexit
import os
import sys


def join_process_group(backend: str) -> None:
    """``init_process_group(backend)`` unless a group exists, and destroy it at exit.

    No barrier: a rank leaving on an error must not wait for ranks that never arrive.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return
    dist.init_process_group(backend)
    atexit.register(_leave)


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def end_launched_process(status: int) -> int:
    """End a process that joined a group now, with ``status``; else return ``status``.

    A launched rank leaves its group, flushes its output and exits without the
    interpreter's finalisation: gloo's and DDP's threads torn down there abort the process
    ("terminate called without an active exception") in about one run in three, after
    all its work succeeded. ``torchrun`` then reports a failed job.
    """
    if "torch.distributed" not in sys.modules:
        return status
    import torch.distributed as dist

    if not dist.is_initialized():
        return status
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
