#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py) on a machine with nothing to download: installs the wheels carried in .whl/
# and this package (no dependencies, no index, no build isolation) into a private folder, never into the
# interpreter's own site-packages, then runs the check under an 8-minute limit. Arguments go to gpu_check.py
# (--quick, --cpu, ...). Exit status: gpu_check.py's (0 PASS, 1 FAIL), 124 when the limit ran out.
#
#   bash bench/gpu_check.sh [--quick]
#
# PYTHON picks the interpreter (default python3); GPU_CHECK_SITE the install folder (default: a new temporary one).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [[ -n "${GPU_CHECK_SITE:-}" ]]; then
  SITE=$GPU_CHECK_SITE
else
  SITE=$(mktemp -d /tmp/gpu_check_site.XXXXXX)
  trap 'rm -rf "$SITE"' EXIT
fi
PIP=("$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check --upgrade)

shopt -s nullglob
wheels=(.whl/*.whl)
if ((${#wheels[@]})); then
  echo "gpu_check.sh: installing ${wheels[*]##*/}"
  "${PIP[@]}" --target "$SITE" "${wheels[@]}" || { echo "gpu_check: FAIL (could not install .whl/)"; exit 1; }
fi
echo "gpu_check.sh: installing this package into $SITE"
"${PIP[@]}" --no-build-isolation --target "$SITE" . || { echo "gpu_check: FAIL (pip install . failed)"; exit 1; }

export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TQDM_DISABLE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# the installed copy, not the working tree: run from outside it so that `rlhf` resolves to $SITE
script=$PWD/bench/gpu_check.py
cd "$SITE" && timeout 480 "$PYTHON" "$script" "$@"
