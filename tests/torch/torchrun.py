"""The ``torchrun`` command line the multi-process tests launch: two CPU ranks on a free port.

A fixed port (torchrun's default 29500) lets two tests, or two test runs on one machine,
collide in the rendezvous; each launch asks the OS for an unused port instead.
"""

from __future__ import annotations

import socket
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def torchrun_command(nproc: int = 2) -> list[str]:
    """``python -m torch.distributed.run`` for ``nproc`` local ranks; append ``-m module ...``."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc-per-node", str(nproc), "--master-port", str(free_port()),
    ]  # fmt: skip
