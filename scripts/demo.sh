#!/usr/bin/env bash
# The main job (README): the instruction-tuning demo on its built-in tiny model and data.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
bash scripts/env.sh .venv all
exec .venv/bin/mixlight demo "$@"
