#!/usr/bin/env bash
# Everything that needs a GPU, in one command: the device tests on CUDA, then the two GPU benchmarks of
# issues 3 and 4 (with the cost of the diversity search, issue 17). Logs go to $OUT (or ./gpu-check) so they come back from a remote machine.
#
#   tools/gpu-check.sh                 # with the python that holds a CUDA torch (PYTHON=... to choose)
#
# It needs torch, torchvision, numpy, pandas, pillow, scikit-image, tqdm and pytest; not PsychoPy. It runs
# from the source tree (PYTHONPATH), so it works without `make` where nothing can be installed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
LOG=${OUT:-gpu-check}
mkdir -p "$LOG"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" - <<'EOF' || { echo "gpu-check: this python has no CUDA device" >&2; exit 2; }
import torch, torchvision
assert torch.cuda.is_available()
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {torch.cuda.get_device_name()}")
EOF
status=0
run() {  # name, command...: run, keep its log, remember a failure but go on
  local name=$1; shift
  echo "== $name: $*"
  "$@" 2>&1 | tee "$LOG/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc"
  [ "$rc" = 0 ] || status=1
}
run device-tests env FVMATCH_TEST_DEVICE=cuda "$PY" -m pytest -p no:cacheprovider -q -s tests/test_device.py
run bench-exemplars "$PY" bench/exemplars.py --n 16384 --batch-size 256 --workers 15 --check-precision 200
run bench-render "$PY" bench/render.py --device cuda   # (c): the diversity search next to a fixed weight, 512 steps
run bench-render-compiled "$PY" bench/render.py --device cuda --compile true --skip-search
exit $status
