"""``python -m benchmarks [options]`` from the repository root: the same as ``mixlight bench``
(the benchmarks ship with the source tree, not with the installed package)."""

import sys

from benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main())
