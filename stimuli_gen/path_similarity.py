"""Path similarity (Geirhos et al. 2023): does the network process a unit's feature visualizations
along the same path as the natural images that drive the unit? Pure functions, no I/O, no torch.

Per layer ``l`` and unit, with activation vectors of the images at ``l``:

- ``rho_fv``: mean similarity between the unit's feature visualizations and its top natural exemplars;
- ``rho_related`` (upper reference): mean similarity among distinct top exemplars of the unit;
- ``rho_unrelated`` (lower reference): mean similarity between the top exemplars and natural images
  that do not drive the unit (a seeded sample outside the unit's exemplars);
- ``normalised = (rho_fv - rho_unrelated) / (rho_related - rho_unrelated)``: 1 = the network treats
  the visualizations like the unit's own natural exemplars, 0 = like unrelated natural images.

Spread: the standard deviation over the image pairs behind each mean. The model pass and the stimulus
set's files are in ``stimuli_gen.path_similarity_run``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

METRICS = ("spearman", "pearson", "cosine")
POOLINGS = ("mean", "flat")  # spatially averaged channel vector (default) | the flattened map
THRESHOLD = 0.5  # "processed more like its own exemplars than like unrelated images"
MIN_SEPARATION = 1e-6  # rho_related - rho_unrelated below this: the references do not separate, no normalised value


def pool(maps: np.ndarray, pooling: str = "mean") -> np.ndarray:
    """``N x C x H x W`` (or already ``N x D``) -> ``N x D`` activation vectors."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if maps.ndim == 2:
        return maps
    return maps.mean(axis=(2, 3)) if pooling == "mean" else maps.reshape(len(maps), -1)


def _standardise(x: np.ndarray, metric: str) -> np.ndarray:
    """Rows scaled so that a dot product is the metric; constant rows (no defined correlation) become NaN."""
    x = np.asarray(x, dtype=np.float64)
    if metric == "spearman":
        x = rankdata(x, axis=1)  # average ranks for ties (post-ReLU zeros)
    if metric in ("spearman", "pearson"):
        x = x - x.mean(axis=1, keepdims=True)
    elif metric != "cosine":
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, x / norm, np.nan)


def similarity_matrix(a: np.ndarray, b: np.ndarray, metric: str = "spearman") -> np.ndarray:
    """``len(a) x len(b)`` similarities between the rows of ``a`` and ``b`` (Spearman, Pearson or cosine)."""
    return np.clip(_standardise(a, metric) @ _standardise(b, metric).T, -1.0, 1.0)


@dataclass(frozen=True)
class Reference:
    """Mean and spread of one similarity over its image pairs."""

    mean: float
    sd: float
    n_pairs: int


def _summary(values: np.ndarray) -> Reference:
    v = values[np.isfinite(values)]
    if not len(v):
        return Reference(math.nan, math.nan, 0)
    return Reference(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, int(len(v)))


def unit_layer_similarity(fv: np.ndarray, top: np.ndarray, unrelated: np.ndarray,
                          metric: str = "spearman") -> dict[str, Reference]:
    """``rho_fv``, ``rho_related`` and ``rho_unrelated`` of one unit at one layer from its vectors."""
    if len(top) < 2:
        raise ValueError(f"rho_related needs at least 2 top exemplars, got {len(top)}")
    if len(fv) < 1 or len(unrelated) < 1:
        raise ValueError(f"need at least one visualization and one unrelated image (got {len(fv)}, {len(unrelated)})")
    related = similarity_matrix(top, top, metric)[np.triu_indices(len(top), k=1)]  # distinct pairs only
    return {"rho_fv": _summary(similarity_matrix(fv, top, metric).ravel()),
            "rho_related": _summary(related),
            "rho_unrelated": _summary(similarity_matrix(top, unrelated, metric).ravel())}


def normalise(rho_fv: float, rho_related: float, rho_unrelated: float) -> float:
    """``(rho_fv - rho_unrelated) / (rho_related - rho_unrelated)``; NaN when the references do not separate."""
    den = rho_related - rho_unrelated
    if not np.isfinite(den) or den < MIN_SEPARATION:
        return math.nan
    return (rho_fv - rho_unrelated) / den


def choose_unrelated(pool_ids: np.ndarray, exclude: set, n: int, seed: int) -> np.ndarray:
    """A seeded sample of ``n`` ids from ``pool_ids`` outside ``exclude`` (sorted pool: order-independent)."""
    candidates = np.array(sorted(set(pool_ids.tolist()) - set(exclude)))
    if len(candidates) < n:
        raise ValueError(f"only {len(candidates)} natural images outside the unit's exemplars for the unrelated "
                         f"reference, {n} requested")
    return np.sort(np.random.default_rng(seed).choice(candidates, size=n, replace=False))


def layer_depths(layers: list[str]) -> dict[str, float]:
    """Relative depth of each recorded stage, ``(i + 1) / n``: the last (the logits) is 1."""
    return {name: (i + 1) / len(layers) for i, name in enumerate(layers)}


def unit_table(unit_id: str, vectors: dict[str, np.ndarray], fv_rows: np.ndarray, top_rows: np.ndarray,
               unrelated_rows: np.ndarray, depths: dict[str, float], metric: str = "spearman") -> pd.DataFrame:
    """One row per layer for one unit. ``vectors[layer]`` is ``N_images x D``; ``*_rows`` index into it."""
    rows = []
    for layer, x in vectors.items():
        r = unit_layer_similarity(x[fv_rows], x[top_rows], x[unrelated_rows], metric)
        den = r["rho_related"].mean - r["rho_unrelated"].mean
        norm = normalise(r["rho_fv"].mean, r["rho_related"].mean, r["rho_unrelated"].mean)
        rows.append({"unit_id": unit_id, "layer": layer, "depth": depths[layer],
                     **{f"{k}{s}": getattr(v, a) for k, v in r.items()
                        for s, a in (("", "mean"), ("_sd", "sd"), ("_pairs", "n_pairs"))},
                     "normalised": norm,
                     # spread of the visualization pairs on the normalised scale (references held fixed)
                     "normalised_sd": r["rho_fv"].sd / den if np.isfinite(norm) else math.nan})
    return pd.DataFrame(rows)


def first_depth_above(table: pd.DataFrame, threshold: float = THRESHOLD) -> float:
    """Relative depth of the first layer (from the input) whose normalised similarity exceeds ``threshold``."""
    t = table.sort_values("depth")
    above = t[t.normalised > threshold]
    return float(above.depth.iloc[0]) if len(above) else math.nan


def unit_summary(table: pd.DataFrame, units: pd.DataFrame, threshold: float = THRESHOLD) -> pd.DataFrame:
    """Per unit: the first depth above ``threshold``, the value at the unit's own layer, and a flag with
    a sentence when the visualizations stay near the unrelated level up to the unit's own layer."""
    out = []
    for u in units.itertuples(index=False):
        t = table[table.unit_id == u.unit_id].sort_values("depth")
        own = t[t.layer == u.layer]
        own_depth = float(own.depth.iloc[0]) if len(own) else math.nan
        first = first_depth_above(t, threshold)
        upto = t[t.depth <= own_depth] if np.isfinite(own_depth) else t
        known = upto.normalised.dropna()
        # flagged only when it can be told: some layer up to the unit's own separates the references
        flagged = bool(len(known)) and not bool((known > threshold).any())
        own_value = float(own.normalised.iloc[0]) if len(own) else math.nan
        why = ""
        if flagged:
            why = (f"up to its own layer {u.layer} the network processes this unit's feature visualizations like "
                   f"unrelated natural images, not like its own top exemplars (normalised path similarity never "
                   f"above {threshold}; highest {known.max():.2f})")
        elif not len(known):
            why = (f"not determined: up to its own layer {u.layer} the unit's top exemplars are not more similar to "
                   f"each other than to unrelated images, so there is no scale to place the visualizations on")
        out.append({"unit_id": u.unit_id, "path_similarity_first_depth": first,
                    "path_similarity_own_layer": own_value, "path_similarity_flag": flagged,
                    "path_similarity_note": why})
    return pd.DataFrame(out)


def interval_over_units(table: pd.DataFrame, by: list[str], level: float = 0.95) -> pd.DataFrame:
    """Mean normalised similarity over units with a t-based ``level`` interval, per ``by`` cell."""
    from scipy.stats import t as student

    def agg(g: pd.DataFrame) -> pd.Series:
        v = g.normalised.dropna().to_numpy()
        m = float(v.mean()) if len(v) else math.nan
        half = (float(student.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
                if len(v) > 1 else math.nan)
        return pd.Series({"mean": m, "low": m - half, "high": m + half, "n_units": len(v)})

    return table.groupby(by, sort=True).apply(agg, include_groups=False).reset_index()
