#!/usr/bin/env bash
# `make demo-control`: the control condition of Geirhos et al. (2023) on built-in data. One stimulus set from
# the original network, a silent-units manipulation of the same network on the same units, a second set from
# it, simulated sessions of the image-computable observer on both, and ONE report comparing them
# (accuracy by condition and path similarity side by side). Its own small settings (not `make demo`'s):
# 3 units per layer group, 10 exemplars, 5 feature visualizations per unit at 64 px with 32 steps and the
# fixed diversity weight (preset lucid). Without torchvision's cached weights the networks are RANDOM
# (said in every output), and then the feature-visualization trials are near chance on both sets.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PY=$BIN/python
WEIGHTS=${WEIGHTS:-auto}
ORIG=data/stimuli/control-original
MANIP=data/stimuli/control-silent
MODEL=data/models/control-silent
SESSIONS=data/sessions
RESULTS=data/results/control
PARTICIPANTS=${PARTICIPANTS:-2}
SET_ARGS=(--collection builtin --k 10 --fv-per-unit 5 --fv-steps 32 --fv-size 64 --fv-preset lucid --seed 0 --overwrite)
start=$(date +%s)

echo "== 1/5 original stimulus set: $ORIG"
"$BIN/fvmatch-stimuli" --out "$ORIG" --weights "$WEIGHTS" --units-per-group 3 "${SET_ARGS[@]}"
# the same units in the manipulated network: layer:channel (and layer:channel:group for the second set)
UNITS=$(tail -n +2 "$ORIG/units.csv" | awk -F, '{printf "%s%s:%s", (NR>1?",":""), $3, $4}')
UNITS_GROUPS=$(tail -n +2 "$ORIG/units.csv" | awk -F, '{printf "%s%s:%s:%s", (NR>1?",":""), $3, $4, $2}')

echo "== 2/5 silent units next to $UNITS: $MODEL"
# --holdout-fraction 0: every image of the collection sets the silent biases, so the manipulated network's
# natural exemplars are the original's (a held-out image could trip a silent filter)
"$PY" -m stimuli_gen.manipulate.cli silent --out "$MODEL" --units "$UNITS" --collection builtin --weights "$WEIGHTS" \
  --seed 0 --holdout-fraction 0 --fv-per-unit 1 --fv-steps 32 --fv-size 64 --overwrite --no-progress

echo "== 3/5 manipulated stimulus set: $MANIP"
"$BIN/fvmatch-stimuli" --out "$MANIP" --weights "$MODEL" --units "$UNITS_GROUPS" "${SET_ARGS[@]}"

echo "== 4/5 sessions: the image-computable observer (--simulate features) on both sets, in the real window"
for study in control-original control-silent; do
  rm -rf "${SESSIONS:?}/$study"  # demo sessions only: a real experiment's folder is never deleted by fvmatch
  for i in $(seq 1 "$PARTICIPANTS"); do
    "$BIN/fvmatch-session" --stimuli "data/stimuli/$study" --design demo --experiment "$study" --participant "obs0$i" \
      --session 1 --counterbalance $((i - 1)) --simulate features --data-dir "$SESSIONS" --no-dialog
  done
done

echo "== 5/5 comparison report -> $RESULTS"
"$PY" -m analysis.control_compare --original "$SESSIONS/control-original" --manipulated "$SESSIONS/control-silent" \
  --out "$RESULTS"

echo
echo "demo-control finished in $(( $(date +%s) - start )) s"
echo "report: $RESULTS/report.html (also report.md, accuracy_comparison.csv, figures/)"
echo "manipulated model and its verification report: $MODEL/verification.md"
