"""Emmeans-style contrasts of model-based means and their joint Wald tests, for any fitted model with
fixed effects ``b`` and covariance ``V`` (analysis.glmm fits the models). Pure functions.

Tests are of each factor averaged over the others (equal weights) and of trial type x layer group; their reference
distributions come from analysis.satterthwaite."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import patsy
from scipy import stats

from analysis.satterthwaite import Reference, partly_known_p_value

Z95 = stats.norm.ppf(0.975)


def _grid(frame: pd.DataFrame, rhs: str) -> pd.DataFrame:
    levels = {}
    for f in ("type", "layer", "n"):
        if pd.api.types.is_numeric_dtype(frame[f]) and not isinstance(frame[f].dtype, pd.CategoricalDtype):
            levels[f] = sorted(frame[f].unique())
        else:
            levels[f] = list(frame[f].cat.categories)
    idx = pd.MultiIndex.from_product([levels["type"], levels["layer"], levels["n"]], names=["type", "layer", "n"])
    g = idx.to_frame(index=False)
    for f in ("type", "layer"):
        g[f] = pd.Categorical(g[f], categories=frame[f].cat.categories)
    if isinstance(frame["n"].dtype, pd.CategoricalDtype):
        g["n"] = pd.Categorical(g["n"], categories=frame["n"].cat.categories)
    return g


def _marginal_rows(grid: pd.DataFrame, Xg: np.ndarray, by: list[str]) -> pd.DataFrame:
    """Average design rows over the factors not in ``by`` (emmeans-style equal cell weights)."""
    keyed = pd.DataFrame(Xg).assign(**{k: grid[k].astype(str).to_numpy() for k in by})
    return keyed.groupby(by, sort=False).mean()


def wald(L: np.ndarray, b: np.ndarray, V: np.ndarray) -> tuple[float, int, float]:
    """Joint Wald chi-square of L b = 0 (rank-aware)."""
    Lb, LVL = L @ b, L @ V @ L.T
    if not np.all(np.isfinite(LVL)):
        return np.nan, 0, np.nan
    rank = int(np.linalg.matrix_rank(LVL, tol=1e-10 * max(1.0, np.abs(LVL).max())))
    if rank == 0:
        return np.nan, 0, np.nan
    chi2 = float(Lb @ np.linalg.pinv(LVL, rcond=1e-10) @ Lb)
    return chi2, rank, float(stats.chi2.sf(chi2, rank))


def tests_and_contrasts(frame: pd.DataFrame, rhs: str, design_info, b: np.ndarray, V: np.ndarray,
                        scale: str, method: str, n_units: int = 0,
                        reference_fn: Callable[[np.ndarray], Reference] | None = None,
                        unit_sd_at_boundary: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tests of each factor (averaged over the others) and of type x layer; contrasts of type per layer and
    model-based means per type x layer (random effects at zero).

    With ``reference_fn`` (L -> :class:`analysis.satterthwaite.Reference`) every test reports F = chi2 / df on
    (df, ddf), ddf Satterthwaite's, and its p-value treats only the part of the contrast's variance that grows with
    the SDs as estimated (``sd_share``, with ``sd_df`` df; analysis.satterthwaite.partly_known_p_value); without
    it, chi-square. The layer main effect is a between-unit contrast (every unit belongs to one layer group): its
    information comes from ``n_units`` units, so ddf and sd_df are capped at the containment df n_units - layer
    groups (with ``n_units`` given; without ``reference_fn``, or with ``unit_sd_at_boundary`` (the unit SD
    estimated at 0, so no curvature says how uncertain it is), the test is F on that df). Levels under a true null,
    200 simulated studies with 10 units per group (analysis/README.md): the chi-square 8.5-12.5%, F on the
    containment df 6-10%, F on Satterthwaite df 1.5-3%."""
    grid = _grid(frame, rhs)
    Xg = np.asarray(patsy.build_design_matrices([design_info], grid)[0])
    tests, cons = [], []
    types, layers = list(frame.type.cat.categories), list(frame.layer.cat.categories)
    ddf_layer = n_units - len(layers)

    def add_test(name, L, what, between_units=False):
        chi2, df, p = wald(L, b, V) if L is not None else (np.nan, 0, np.nan)
        rec = {"test": name, "chi2": chi2, "df": df, "p_value": p, "method": method if df else what,
               "F": np.nan, "ddf": np.nan, "sd_share": np.nan, "sd_df": np.nan}
        if not df:
            tests.append(rec)
            return
        cap = between_units and ddf_layer > 0
        if reference_fn is not None:
            ref = reference_fn(L)
            if cap:
                # no estimated SD moves a between-unit contrast (the unit SD at the boundary): F on the containment
                # df, conservatively, as before the refinement
                ref = (Reference(float(ddf_layer), 1.0, float(ddf_layer)) if unit_sd_at_boundary or not np.isfinite(ref.sd_df)
                       else ref.capped(ddf_layer))
            if not np.isfinite(ref.ddf):
                tests.append(rec)  # V does not depend on an estimated SD: the chi-square
                return
            how = "Satterthwaite" + (", capped at units - layer groups (between-unit contrast)" if cap else "")
            rec.update(F=chi2 / df, ddf=ref.ddf, sd_share=ref.sd_share, sd_df=ref.sd_df,
                       p_value=partly_known_p_value(chi2, df, ref),
                       method=f"{method}; F = chi2/df on ({df}, {ref.ddf:.1f}) df: {how}; p-value with the "
                              f"Bernoulli part of the variance known, the SD part ({ref.sd_share:.0%}) on "
                              f"{ref.sd_df:.1f} df")
        elif cap:
            rec.update(F=chi2 / df, ddf=float(ddf_layer), p_value=float(stats.f.sf(chi2 / df, df, ddf_layer)),
                       method=f"{method}; F = chi2/df on ({df}, {ddf_layer}) df: units - layer groups (between-unit contrast)")
        tests.append(rec)

    for f, label in (("layer", "layer group (main effect)"), ("type", "trial type (main effect)"), ("n", "n images (main effect)")):
        mm = _marginal_rows(grid, Xg, [f])
        if len(mm) < 2 or f not in rhs:
            add_test(label, None, f"not testable: '{f}' is not in the fitted model")
            continue
        add_test(label, (mm.iloc[1:].to_numpy() - mm.iloc[[0]].to_numpy()), "", between_units=f == "layer" and n_units > 0)
    if len(types) == 2 and len(layers) >= 2 and "type" in rhs and "layer" in rhs:
        mm = _marginal_rows(grid, Xg, ["type", "layer"])
        gap = {l: mm.loc[(types[1], l)].to_numpy() - mm.loc[(types[0], l)].to_numpy() for l in layers}
        L = np.array([gap[l] - gap[layers[0]] for l in layers[1:]])
        add_test("trial type x layer group (interaction)", L, "")
        for l in layers:
            est, se = float(gap[l] @ b), float(np.sqrt(max(gap[l] @ V @ gap[l], 0)))
            cons.append({"contrast": f"{types[1]} - {types[0]} | {l}", "estimate": est, "se": se,
                         "ci_low": est - Z95 * se, "ci_high": est + Z95 * se, "scale": scale})
    else:
        add_test("trial type x layer group (interaction)", None, "not testable: needs both trial types and >= 2 layer groups in the model")
    mm = _marginal_rows(grid, Xg, ["type", "layer"])
    for (t, l), row in mm.iterrows():
        x = row.to_numpy()
        est, se = float(x @ b), float(np.sqrt(max(x @ V @ x, 0)))
        rec = {"contrast": f"mean | {t}, {l}", "estimate": est, "se": se, "ci_low": est - Z95 * se,
               "ci_high": est + Z95 * se, "scale": scale}
        if scale == "logit":
            rec.update(prob=_expit(est), prob_ci_low=_expit(est - Z95 * se), prob_ci_high=_expit(est + Z95 * se))
        cons.append(rec)
    return pd.DataFrame(tests), pd.DataFrame(cons)


def _expit(x):
    return float(1 / (1 + np.exp(-x)))
