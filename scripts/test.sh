#!/usr/bin/env bash
# The project's test command (README): core without frameworks, lint and types, full suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-ci}
bash scripts/env.sh .venv-core test
bash scripts/env.sh .venv all
echo "== core: neither torch nor jax installed"
.venv-core/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'jax')))"
.venv-core/bin/python -m pytest tests/core -q
echo "== lint and types"
.venv/bin/ruff check .
.venv/bin/ruff format --check mixlight backends tests examples
.venv/bin/mypy
echo "== docs site (mkdocs.yml; warnings are errors)"
site=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$site"
rm -rf "$site"
echo "== full suite"
.venv/bin/python -m pytest tests -q
echo "== main job smoke test: mixlight demo --quick"
smoke=$(mktemp -d)
.venv/bin/mixlight demo --quick --no-progress --output-dir "$smoke/out" --cache-dir "$smoke/cache"
test -s "$smoke/out/results.json"
rm -rf "$smoke"
