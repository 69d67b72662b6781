#!/usr/bin/env bash
# Usage: scripts/env.sh VENV EXTRAS
# Creates VENV (if missing) with mixlight installed editable with EXTRAS, CPU torch pinned by
# constraints/cpu.txt. Uses uv when it can be installed (fast), else plain pip.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$1
extras=$2
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import mixlight" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
links=$(python3 -m pip config get global.find-links 2>/dev/null || true)
if "$venv/bin/python" -m pip install --quiet uv 2>/dev/null; then
  "$venv/bin/uv" pip install --quiet --python "$venv/bin/python" \
    ${links:+--find-links "$links"} -c constraints/cpu.txt -e ".[$extras]"
else
  "$venv/bin/python" -m pip install --quiet -c constraints/cpu.txt -e ".[$extras]"
fi
