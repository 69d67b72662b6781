"""mixlight's speed and memory benchmarks (run them with ``mixlight bench``, or
``python -m benchmarks`` from the repository root; they are not installed with the package).

* :mod:`benchmarks.impl` — implementations under test, groups of them, equality checks.
* :mod:`benchmarks.measure` — interleaved timing, saved-for-backward bytes, CUDA peak memory,
  profiles of where one implementation spends more time than another.
* :mod:`benchmarks.sites` — cases 1 and 2: one MoV site and one MoLoRA site, fwd+bwd.
* :mod:`benchmarks.t5` — cases 3 and 4: a T5 training step and cached greedy generation.
* :mod:`benchmarks.cases` — the case registry, shapes (full and ``--quick``) and targets.
* :mod:`benchmarks.report` — ``RESULTS.md`` and ``results.json``.
* :mod:`benchmarks.analysis` — what the CPU numbers mean, and proposed targets.
* ``gpu.sh`` — the CUDA tests and the benchmarks on a GPU (``RESULTS-gpu.md``).

Every number is a ratio against a baseline measured in the same run, in interleaved rounds,
so that load from other processes moves numerator and denominator together.
"""
