#!/usr/bin/env bash
# `make demo-control`: the control condition of Geirhos et al. (2023) on built-in data. One stimulus set from
# the original network, a silent-units manipulation of the same network on the same units, a second set from
# it, simulated sessions of the image-computable observer on both, and ONE report comparing them
# (accuracy by condition, whether the silent filters acted on the visualizations, path similarity side by side).
# Its own small settings (stimuli_gen/configs/demo_control.toml, not `make demo`'s): 3 units per layer group,
# 10 exemplars at 112 px, 5 feature visualizations per unit at 64 px with 32 steps at lr 0.5 and the fixed
# diversity weight (preset lucid). Without torchvision's cached weights the networks are RANDOM (said in every output),
# and then the feature-visualization trials are near chance on both sets.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
# One thread per process: on a shared 2-core machine torch's default (one per core) ran the observer's network
# 17x slower (0.80 s vs 0.05 s per image, load ~6) and oversubscribes the cores for everyone.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
PY=$BIN/python
WEIGHTS=${WEIGHTS:-auto}
ORIG=data/stimuli/control-original
MANIP=data/stimuli/control-silent
MODEL=data/models/control-silent
SESSIONS=data/sessions
RESULTS=data/results/control
PARTICIPANTS=${PARTICIPANTS:-2}
# natural images at 112 px (not 224) in both sets and in the manipulation (whose biases must see them exactly as
# the sets' exemplar pass does): every pass over the collection costs 4x less; the observer looks at 112 px anyway
CROP=(--resize 128 --crop 112)
SET_ARGS=(--config stimuli_gen/configs/demo_control.toml "${CROP[@]}" --seed 0 --overwrite)
start=$(date +%s)
t_stage=$start
TIMES=$(mktemp)
trap 'rm -f "$TIMES"' EXIT
# wall seconds of the stage that just ended, and the CPU (user+sys) its processes used so far in all (bash `times`)
stage_done() {
  local now cpu; now=$(date +%s)
  times >"$TIMES"  # not in a pipeline: a subshell's `times` would not count this shell's children
  cpu=$(tail -1 "$TIMES")
  echo "-- stage $1: $((now - t_stage)) s wall; load $(cut -d' ' -f1-3 /proc/loadavg); CPU (user, sys) of all stages so far: $cpu"
  t_stage=$now
}

echo "== 1/5 original stimulus set: $ORIG"
"$BIN/fvmatch-stimuli" --out "$ORIG" --weights "$WEIGHTS" "${SET_ARGS[@]}"
# the same units in the manipulated network: layer:channel (and layer:channel:group for the second set)
UNITS=$(tail -n +2 "$ORIG/units.csv" | awk -F, '{printf "%s%s:%s", (NR>1?",":""), $3, $4}')
UNITS_GROUPS=$(tail -n +2 "$ORIG/units.csv" | awk -F, '{printf "%s%s:%s:%s", (NR>1?",":""), $3, $4, $2}')

stage_done 1
echo "== 2/5 silent units next to $UNITS: $MODEL"
# --holdout-fraction 0: every image of the collection sets the silent biases, so the manipulated network's
# natural exemplars are the original's (a held-out image could trip a silent filter). Lambda and gain: the
# command's defaults. --fv-per-unit 0: no verification renders (time); whether the silent filters act on the set's
# visualizations is measured on the set itself, in the comparison report (stage 5). (Verification renders would
# need the set's --fv-lr 0.5: at Lucid's 0.05, 32 steps do not leave the natural range and nothing trips.)
"$PY" -m stimuli_gen.manipulate.cli silent --out "$MODEL" --units "$UNITS" --collection builtin --weights "$WEIGHTS" \
  "${CROP[@]}" --seed 0 --holdout-fraction 0 --fv-per-unit 0 --overwrite --no-progress

stage_done 2
echo "== 3/5 manipulated stimulus set: $MANIP"
"$BIN/fvmatch-stimuli" --out "$MANIP" --weights "$MODEL" --units "$UNITS_GROUPS" "${SET_ARGS[@]}"

stage_done 3
echo "== 4/5 sessions: the image-computable observer (--simulate features) on both sets, in the real window"
for study in control-original control-silent; do
  rm -rf "${SESSIONS:?}/$study"  # demo sessions only: a real experiment's folder is never deleted by fvmatch
  for i in $(seq 1 "$PARTICIPANTS"); do
    "$BIN/fvmatch-session" --stimuli "data/stimuli/$study" --design demo --experiment "$study" --participant "obs0$i" \
      --session 1 --counterbalance $((i - 1)) --simulate features --data-dir "$SESSIONS" --no-dialog
  done
done

stage_done 4
echo "== 5/5 comparison report -> $RESULTS"
"$PY" -m analysis.control_compare --original "$SESSIONS/control-original" --manipulated "$SESSIONS/control-silent" \
  --out "$RESULTS"

stage_done 5
echo
echo "demo-control finished in $(( $(date +%s) - start )) s"
echo "report: $RESULTS/report.html (also report.md, accuracy_comparison.csv, manipulation_effect.csv, figures/)"
echo "manipulated model and its verification report: $MODEL/verification.md"
