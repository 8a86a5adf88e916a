#!/usr/bin/env bash
# `make demo`: the whole pipeline on built-in data, as a user would run it, in three commands.
# Demo settings (stimuli_gen/configs/demo.toml, recorded in the manifest): 3 units per layer group, 10
# exemplars, 5 feature visualizations per unit at 224 px with 64 optimization steps (a real set: 512 steps).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
STIMULI=data/stimuli/demo
SESSIONS=data/sessions/demo
RESULTS=data/results/demo
start=$(date +%s)

echo "== 1/3 stimuli: $STIMULI"
"$BIN/fvmatch-stimuli" --config stimuli_gen/configs/demo.toml --out "$STIMULI" --overwrite

echo "== 2/3 sessions: simulated participants in the real PsychoPy window -> $SESSIONS"
rm -rf "$SESSIONS"  # demo sessions only: a real experiment's folder is never deleted by fvmatch
i=0
# noisy:P = attentive, imperfect observers; random = inattentive (fails the catch trials; the analysis excludes it)
for policy in noisy:0.9 noisy:0.8 noisy:0.7 noisy:0.6 random; do
  i=$((i + 1))
  "$BIN/fvmatch-session" --stimuli "$STIMULI" --design demo --experiment demo --participant "sim0$i" \
    --session 1 --simulate "$policy" --data-dir data/sessions --no-dialog
done

echo "== 3/3 analysis -> $RESULTS"
"$BIN/fvmatch-analyze" "$SESSIONS" --out "$RESULTS"

echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "report: $RESULTS/report.html  (also report.md, tables *.csv, figures/)"
echo "stimulus check: $STIMULI/path_similarity.md (are the feature visualizations processed like natural images?)"
