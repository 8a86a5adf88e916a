"""Accuracy per condition at two levels, with bootstrap CIs over participants. Pure functions.

Levels: ``row`` = one matched reference row (chance 1/3); ``trial`` = all three rows right (chance 1/6).
A condition's accuracy is the mean of per-participant accuracies (each participant weighs the same), and its
CI resamples participants with all their trials (percentile bootstrap).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from contracts.results import CHANCE

CONDITION = ("trial_type", "layer_group", "n_images")


def main_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Main trials only: practice and catch trials are not conditions of the study. The flags may be booleans (as
    loaded through the contract) or a raw trials.csv's 0/1."""
    flag = lambda c: trials[c].astype(str).str.lower().isin(["1", "true"])  # noqa: E731
    return trials[~flag("is_practice") & ~flag("is_catch")]


def rows_long(trials: pd.DataFrame) -> pd.DataFrame:
    """One record per (trial, reference row): the per-row outcome with the unit of that row."""
    base = trials.assign(trial_uid=trials.participant + "|" + trials.session.astype(str) + "|" + trials.trial_index.astype(str))
    parts = []
    for i in range(3):
        parts.append(pd.DataFrame({
            "participant": base.participant.to_numpy(), "trial_uid": base.trial_uid.to_numpy(), "row": i,
            "unit": base[f"unit_{i}"].to_numpy(), "correct": base[f"correct_{i}"].to_numpy().astype(int),
            "unit_a": base.unit_0.to_numpy(), "unit_b": base.unit_1.to_numpy(), "unit_c": base.unit_2.to_numpy(),
            **{k: base[k].to_numpy() for k in CONDITION},
        }))
    return pd.concat(parts, ignore_index=True)


def participant_accuracy(trials: pd.DataFrame, keys: tuple[str, ...] = CONDITION) -> pd.DataFrame:
    """Per participant x condition x level: accuracy and number of observations (rows or trials)."""
    keys = list(keys)
    g = trials.groupby(["participant", *keys], observed=True)
    row = g.n_correct.agg(["sum", "size"]).reset_index()
    row = row.assign(level="row", accuracy=row["sum"] / (3 * row["size"]), n_observations=3 * row["size"])
    trial = g.trial_correct.agg(["mean", "size"]).reset_index()
    trial = trial.assign(level="trial", accuracy=trial["mean"], n_observations=trial["size"])
    cols = ["participant", *keys, "level", "accuracy", "n_observations"]
    out = pd.concat([row[cols], trial[cols]], ignore_index=True)
    return canonical_order(out, ["level", *keys, "participant"])


def bootstrap_means(matrix: np.ndarray, n_boot: int, seed: int, ci: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI of column means (NaN-aware) when the rows (participants) are resampled with replacement."""
    rng = np.random.default_rng(seed)
    n = matrix.shape[0]
    if n < 2:
        nan = np.full(matrix.shape[1], np.nan)
        return nan, nan.copy()
    idx = rng.integers(0, n, size=(n_boot, n))
    draws = matrix[idx]  # n_boot x n x cells
    with np.errstate(all="ignore"), _quiet():
        means = np.nanmean(draws, axis=1)
        lo, hi = np.nanpercentile(means, [50 * (1 - ci), 50 * (1 + ci)], axis=0)
    return lo, hi


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells in a draw are expected; they stay NaN

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def condition_accuracy(part: pd.DataFrame, keys: tuple[str, ...] = CONDITION, n_boot: int = 2000, seed: int = 0,
                       ci: float = 0.95) -> pd.DataFrame:
    """Contract table ``accuracy_by_condition``: mean over participants, bootstrap CI, chance, counts."""
    keys = list(keys)
    out = []
    for level, d in part.groupby("level", sort=True):
        wide = d.pivot_table(index="participant", columns=keys, values="accuracy", aggfunc="mean")
        lo, hi = bootstrap_means(wide.to_numpy(dtype=float), n_boot, seed, ci)
        counts = d.groupby(keys).agg(n_participants=("participant", "nunique"), n_observations=("n_observations", "sum"))
        for j, cell in enumerate(wide.columns):
            cell = cell if isinstance(cell, tuple) else (cell,)
            c = counts.loc[cell if len(cell) > 1 else cell[0]]
            out.append({**dict(zip(keys, cell)), "level": level, "accuracy": float(np.nanmean(wide.iloc[:, j])),
                        "ci_low": lo[j], "ci_high": hi[j], "chance": CHANCE[level],
                        "n_participants": int(c.n_participants), "n_observations": int(c.n_observations)})
    cols = [*keys, "level", "accuracy", "ci_low", "ci_high", "chance", "n_participants", "n_observations"]
    return canonical_order(pd.DataFrame(out, columns=cols), ["level", *keys])


_ORDER = {"trial_type": ("exemplar", "feature_vis"), "layer_group": ("early", "middle", "late"), "level": ("row", "trial")}


def canonical_order(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Sort by level, trial type, layer group (early -> late), n, participant: the order a reader expects."""
    sort_keys = {k: (lambda s, k=k: s.map({v: i for i, v in enumerate(_ORDER[k])}).fillna(99)) for k in _ORDER}
    by = [k for k in keys if k in df]
    return df.sort_values(by, key=lambda s: sort_keys[s.name](s) if s.name in sort_keys else s).reset_index(drop=True)


def marginal_participant_accuracy(part: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """Average a participant's condition accuracies over the factors not in ``keys`` (each cell weighs the same)."""
    g = part.groupby(["participant", *keys, "level"], observed=True)
    return g.agg(accuracy=("accuracy", "mean"), n_observations=("n_observations", "sum")).reset_index()
