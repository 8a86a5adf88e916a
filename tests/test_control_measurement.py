"""Does the control work? Original and silent-units sets from the same collection (random weights recalibrated
as generation does, tiny CPU settings), measured with the image-computable observer (experiment.observer_check).

What a working manipulation must show, and a manipulation that changes nothing must fail: the natural exemplars
(and so the observer's exemplar trials) are the original's, while the visualizations the observer sees are not
(shown the original set's visualizations against the manipulated set's of the same units and seeds, the observer
no longer pairs them up; for a no-op it always does). The task's feature-visualization trials themselves are
near chance on random weights already (README, "Control condition"), so they cannot show the drop here; the
slow test records them.
"""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from contracts.stimulus_set import load_stimulus_set
from experiment import observer_check as OC
from stimuli_gen import cli as stimuli_cli
from stimuli_gen.manipulate import cli as manipulate_cli

UNITS = ["inception3a:5", "inception3a:70", "inception3a:200", "inception3b:100"]
SMALL = ["--resize", "72", "--crop", "64", "--no-progress"]
SET = ["--k", "2", "--spares", "0", "--fv-per-unit", "2", "--fv-steps", "16", "--fv-size", "48", "--fv-preset", "lucid",
       "--no-path-similarity", "--workers", "0", "--seed", "0", *SMALL]


@pytest.fixture(scope="module")
def sets(builtin_collection, tmp_path_factory):
    d = tmp_path_factory.mktemp("control")
    units = ",".join(f"{u}:early" for u in UNITS)
    assert stimuli_cli.main(["--out", str(d / "orig"), "--collection", str(builtin_collection), "--units", units, *SET,
                             "--weights", "random"]) == 0
    assert manipulate_cli.main(["silent", "--out", str(d / "model"), "--units", ",".join(UNITS), "--collection",
                                str(builtin_collection), "--holdout-fraction", "0", "--fv-per-unit", "0", "--weights",
                                "random", *SMALL]) == 0
    assert stimuli_cli.main(["--out", str(d / "silent"), "--collection", str(builtin_collection), "--units", units,
                             *SET, "--weights", str(d / "model")]) == 0
    return d / "orig", d / "silent"


def _acc(table: pd.DataFrame, trial_type: str) -> float:
    return float(table[(table.trial_type == trial_type) & (table.group == "all")].row_accuracy.iloc[0])


def test_control_keeps_the_exemplars_and_changes_what_the_observer_sees_in_the_visualizations(sets):
    orig, silent = sets
    a, b = load_stimulus_set(orig), load_stimulus_set(silent)
    assert b.manipulation["kind"] == "silent_units" and not a.manipulation
    nat = lambda s: [(s.root / f).read_bytes() for f in s.images[s.images.kind == "natural_max"].sort_values(["unit_id", "rank"]).file]  # noqa: E731
    assert nat(a) == nat(b)  # --holdout-fraction 0: every collection image set the biases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acc_a = OC.observer_accuracy(orig, weights="random", n_images=[1])
        acc_b = OC.observer_accuracy(silent, weights="random", n_images=[1])
        same = OC.fv_cross_set_accuracy(orig, orig, weights="random", n_images=[1, 2])
        cross = OC.fv_cross_set_accuracy(orig, silent, weights="random", n_images=[1, 2])
    # the observer's exemplar trials: the same images, the same answers
    assert _acc(acc_a, "exemplar") == _acc(acc_b, "exemplar")
    # a manipulation that changed nothing: the observer pairs every visualization with itself
    assert _acc(same, "fv_a_vs_fv_b") == 1.0
    # the silent units' visualizations are other pictures: the observer pairs them with the original ones at about
    # chance (1/3). Measured 2026-12-02 (4 units, 8 trials): 0.375 across sets, 1.0 for a set against itself;
    # the task's trials on these sets: exemplar 1.0 on both, feature-vis 0.21 original, 0.67 silent (8 trials each)
    assert _acc(cross, "fv_a_vs_fv_b") <= 0.6, cross
