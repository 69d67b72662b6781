"""Join the process group ``torchrun`` launched this process into, and leave it at exit.

Shared by ``mixlight check`` and ``mixlight tune``. Imports torch only when called.
"""

from __future__ import annotations

import atexit


def join_process_group(backend: str) -> None:
    """``init_process_group(backend)`` unless a group exists, and destroy it at exit.

    The teardown matters: a gloo group left to the interpreter's finalisation can abort the
    process ("terminate called without an active exception") after all its work succeeded.
    No barrier: a rank leaving on an error must not wait for ranks that never arrive.
    """
    import torch.distributed as dist

    if dist.is_initialized():
        return
    dist.init_process_group(backend)

    def leave() -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    atexit.register(leave)
