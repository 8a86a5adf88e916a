"""How well the image-computable observer matches a stimulus set, without a window.

The measurement behind a control (stimuli_gen/manipulate): on a set made from a manipulated network
the feature-visualization trials of ``experiment.image_observer`` should fall to chance while its
exemplar trials stay where they were. A PsychoPy session gives a handful of trials per cell; here
every triplet of units of a layer group (a seeded sample when there are many) is shown at every n and
both ABBA splits, as ``experiment.design`` builds trials:

* exemplar trial: reference row = natural_max ranks of the ABBA split, candidate row = the other rank
  of each pair;
* feature-visualization trial: the same reference rows, candidate row = ``n`` of the unit's
  visualizations (ranks ``s .. s+n-1`` cyclically, so both splits do not show the same ones).

``fv_cross_set_accuracy`` asks a second question of a control: shown one set's visualizations of three units
on one side and the other set's visualizations of the same units (same seeds) on the other, does the
observer pair them up? For a manipulation that changed nothing, the images are identical and it always
does; for one that changed what the visualizations show, it falls towards chance. Unlike the task's
feature-visualization trials this works with random weights too, whose visualizations are not matched
to natural exemplars above chance even on the original set (README, "Control condition").

The observer's assignment is permutation-equivariant, so the candidate order does not matter. The
result is row accuracy (chance 1/3) per trial type and layer group, with the number of trials and a
one-sided binomial test against chance over trials (whole-trial accuracy, chance 1/6, as the trials of
one triplet are not independent across n and splits: the test is a guide, not the science).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from experiment.design import abba_split, usable_images

CHANCE_ROW = 1 / 3
CHANCE_TRIAL = 1 / 6


def _triplets(unit_ids, max_triplets: int, rng: np.random.Generator) -> list[tuple]:
    """Every triplet of a layer group's units, or a seeded sample of ``max_triplets`` of them (in order)."""
    triplets = list(itertools.combinations(list(unit_ids), 3))
    if len(triplets) > max_triplets:
        triplets = [triplets[i] for i in sorted(rng.choice(len(triplets), max_triplets, replace=False))]
    return triplets


def candidate_trials(units: pd.DataFrame, images: pd.DataFrame, n_images: list[int], max_triplets: int = 40,
                     seed: int = 0) -> list[dict]:
    """Every trial the measurement shows: ``{group, trial_type, n, triplet, reference_files, candidate_files}``
    (candidate row i shows the unit of reference row i: the correct assignment is the identity)."""
    imgs = usable_images(images)
    files = {(u, k): dict(zip(g["rank"].astype(int), g["file"])) for (u, k), g in imgs.groupby(["unit_id", "kind"])}
    rng = np.random.default_rng(seed)
    trials = []
    for group, gu in units.groupby("group", sort=False):
        for trip, n, s in itertools.product(_triplets(gu.unit_id, max_triplets, rng), n_images, (0, 1)):
            ref_ranks, cand_ranks = abba_split(n, s)
            nat = [files.get((u, "natural_max"), {}) for u in trip]
            fv = [files.get((u, "feature_vis"), {}) for u in trip]
            if any(r not in f for f in nat for r in ref_ranks + cand_ranks):
                raise ValueError(f"unit of {trip}: fewer than {2 * n} natural_max exemplars for n = {n}")
            ref = [tuple(f[r] for r in ref_ranks) for f in nat]
            trials.append({"group": group, "trial_type": "exemplar", "n": n, "triplet": trip, "reference_files": ref,
                           "candidate_files": [tuple(f[r] for r in cand_ranks) for f in nat]})
            if all(len(f) >= n for f in fv):
                cand = [tuple(f[sorted(f)[(s + i) % len(f)]] for i in range(n)) for f in fv]
                trials.append({"group": group, "trial_type": "feature_vis", "n": n, "triplet": trip,
                               "reference_files": ref, "candidate_files": cand})
    return trials


def observer_accuracy(root: str | Path, layer: str = "inception3b", weights: str = "auto",
                      n_images: list[int] | None = None, max_triplets: int = 40, seed: int = 0) -> pd.DataFrame:
    """Per trial type x layer group: ``trials, row_accuracy, trial_accuracy, p_above_chance`` of the
    image observer on the stimulus set at ``root`` (read with its validating reader)."""
    from contracts.stimulus_set import load_stimulus_set
    from experiment.image_observer import choose

    s = load_stimulus_set(root)
    rows = []
    for t in candidate_trials(s.units, s.images, n_images or [1, 3, 5], max_triplets, seed):
        a = choose(s.root, t["reference_files"], t["candidate_files"], layer, weights)
        rows.append({"group": t["group"], "trial_type": t["trial_type"], "n": t["n"],
                     "rows_correct": sum(int(a[i] == i) for i in range(3))})
    return summarize(pd.DataFrame(rows))


def fv_cross_set_accuracy(root_a: str | Path, root_b: str | Path, layer: str = "inception3b", weights: str = "auto",
                          n_images: list[int] | None = None, max_triplets: int = 40, seed: int = 0) -> pd.DataFrame:
    """Trials whose reference rows are set A's visualizations (ranks 0..n-1) and whose candidate rows are set B's
    visualizations of the same units and ranks; accuracy per layer group as :func:`observer_accuracy` gives it
    (``trial_type = "fv_a_vs_fv_b"``). The sets must have the same units."""
    from contracts.stimulus_set import load_stimulus_set
    from experiment.image_observer import choose

    a, b = load_stimulus_set(root_a), load_stimulus_set(root_b)
    if sorted(a.units.unit_id) != sorted(b.units.unit_id):
        raise ValueError(f"{root_a} and {root_b} have different units; the comparison needs the same units")
    fv = lambda s, u: list(s.unit_images(u, "feature_vis").sort_values("rank").file)  # noqa: E731
    rng = np.random.default_rng(seed)
    rows = []
    for group, gu in a.units.groupby("group", sort=False):
        for trip, n in itertools.product(_triplets(gu.unit_id, max_triplets, rng), n_images or [1, 3, 5]):
            fa, fb = [fv(a, u) for u in trip], [fv(b, u) for u in trip]
            if any(len(f) < n for f in fa + fb):
                continue
            ref = [tuple(a.root / x for x in f[:n]) for f in fa]
            cand = [tuple(b.root / x for x in f[:n]) for f in fb]
            got = choose(Path("/"), ref, cand, layer, weights)
            rows.append({"group": group, "trial_type": "fv_a_vs_fv_b", "n": n,
                         "rows_correct": sum(int(got[i] == i) for i in range(3))})
    if not rows:
        raise ValueError(f"{root_a}, {root_b}: no layer group has three units with feature visualizations")
    return summarize(pd.DataFrame(rows))


def summarize(trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` (group, trial_type, rows_correct) -> accuracy per trial type x group and over all groups."""
    from scipy.stats import binomtest

    out = []
    for (tt, g), d in pd.concat([trials, trials.assign(group="all")]).groupby(["trial_type", "group"], sort=False):
        right = int((d.rows_correct == 3).sum())
        out.append({"trial_type": tt, "group": g, "trials": len(d), "row_accuracy": d.rows_correct.mean() / 3,
                    "trial_accuracy": right / len(d),
                    "p_above_chance": binomtest(right, len(d), CHANCE_TRIAL, alternative="greater").pvalue})
    return pd.DataFrame(out)
