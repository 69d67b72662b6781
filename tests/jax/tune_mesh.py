"""Run ``mixlight tune`` configs on the forced CPU devices of this process.

``python tests/jax/tune_mesh.py CONFIG...``, started by ``test_tune_scale.py`` with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``: one process, several runs, each on
the ``mesh`` its config names. Not collected by pytest (no ``test_`` prefix).
"""

import sys

from mixlight_tune.tune_cli import run
from mixlight_tune.tune_config import read_config

if __name__ == "__main__":
    for path in sys.argv[1:]:
        run(read_config(path), print)
