"""Mixed-effects models of matching accuracy. Pure functions (no I/O).

Models (all share one design builder and one contrast/test machinery):

``glmm_trial`` (primary)
    Binomial GLMM (logit) of whole-trial correctness (chance 1/6). Trials are independent given the random
    effects, so no within-trial dependence is ignored. Random intercepts: participant, and unit as a
    multiple-membership effect (a trial's item effect is the mean of its three units' effects).
``glmm_row``
    Binomial GLMM of per-row correctness (chance 1/3), crossed participant and unit intercepts: the
    trial's units (mean of the three, as in ``glmm_trial``) plus the row's own unit. The three rows of a trial form a permutation and are dependent; the model's covariance is
    therefore replaced by a sandwich whose likelihood "meat" is clustered by trial (see ``_robust_cov``).
``mixedlm_cells`` (not in ``fit_all`` or the report; kept for the validation tables)
    Linear mixed model (REML, ``statsmodels.MixedLM``) of per-participant cell accuracy (rows), participant
    random intercept. It ignores the unit variance, and its layer test rejected a true null in 59-73% of
    replicates at alpha 0.05 (issue 13; analysis/README.md): badly anticonservative, so it is no cross-check.

Both GLMMs are fitted by ``analysis.laplace`` (default ``estimator="laplace"``): the random-effect SDs at the
mode of their Laplace-approximate marginal posterior, with fixed *and* random effects integrated out (the GLMM
analogue of REML); fixed effects at their conditional posterior mode given those SDs; covariance from the
inverse Hessian of the log posterior conditional on the SDs (lme4's ``vcov(fit, use.hessian = FALSE)``;
glmer's default inverts the joint Hessian of SDs and fixed effects; bench/lme4_crosscheck.py compares both). ``statsmodels``'
``BinomialBayesMixedGLM`` supplies the model (design, priors) and the alternative estimators ``fit_vb`` and
``fit_map``. Why not ``fit_vb``: its posterior means agree with lme4::glmer to about 0.01 logit, but it
estimates the SDs jointly with the fixed effects, which biases them low when a random factor has few levels;
with about 10 units per layer group the layer test (a between-unit contrast) then rejected a true null in 13%
of simulations at alpha = 0.05 (5% with ``laplace``; analysis/README.md). Its mean-field ``fe_sd`` is far too
small in any case, so its SEs also come from the Hessian. Priors: N(0, fe_prior_sd^2) on fixed effects (10 by
default: negligible at realistic sizes, it keeps separated estimates finite) and a flat prior on each random-effect
SD in [0, 20] (or N(0, vcp_prior_sd^2) on the log SDs); tests are Wald tests on the Laplace covariance
(analysis.contrasts), shown as F on Satterthwaite denominator df, their p-values with only the SD part of each
contrast's variance estimated (analysis.satterthwaite; the layer test's df capped at units - layer groups).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import patsy
from scipy import sparse, stats
from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM

from analysis.accuracy import rows_long
from analysis.laplace import fit_laplace, log_sd_covariance
from analysis.contrasts import Z95, tests_and_contrasts
from analysis.satterthwaite import BOUNDARY_SD, Reference, contrast_reference, cov_jacobian, sd_covariance

try:  # optional (present with PsychoPy's dependencies); without it BLAS keeps its default threads
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

TYPE_LEVELS = ("exemplar", "feature_vis")
LAYER_LEVELS = ("early", "middle", "late")
N_AS = ("factor", "numeric")
ESTIMATORS = ("laplace", "vb", "map")
METHODS = {
    "laplace": "binomial GLMM (logit; statsmodels BinomialBayesMixedGLM model); random-effect SDs at the mode of their "
               "Laplace-approximate marginal posterior with fixed and random effects integrated out (REML-like; "
               "analysis.laplace); fixed effects at their conditional mode; SE from the inverse Hessian of the log "
               "posterior",
    "vb": "statsmodels BinomialBayesMixedGLM.fit_vb (logit); posterior means (SDs biased low with few units); SE from "
          "the inverse Hessian of the log posterior (Laplace)",
    "map": "statsmodels BinomialBayesMixedGLM.fit_map (logit); joint posterior mode (shrinks variance components); SE "
           "from the inverse Hessian of the log posterior",
}
# separation: fitted, but some estimates are set by the prior because a cell is all right or all wrong
STATUS_OK, STATUS_WARN, STATUS_SEP, STATUS_NA = "ok", "warning", "separation", "not_estimable"


@dataclass
class ModelOptions:
    n_as: str = "factor"  # n_images as a factor or as a numeric (centred) covariate
    # N(0, fe_prior_sd^2) on every fixed effect. 10: negligible against the likelihood at realistic sizes (estimates
    # within 0.01 logit of fe_prior_sd = 1000, so of glmer), still finite and flagged under complete separation.
    # statsmodels' default 2 moved estimates by up to 0.10 logit and shrank SEs by 4-19% (issue 13).
    fe_prior_sd: float = 10.0
    # None: flat prior on each random-effect SD in [0, 20] (restricted likelihood; an SD can be 0 and its interval
    # reach 0). A number p: N(0, p^2) on the log SDs (statsmodels' form; SDs kept away from 0).
    vcp_prior_sd: float | None = None
    sd_intervals: bool = True  # False skips the SD intervals (simulation studies that do not use them: faster)
    seed: int = 0  # fit_vb's random start of the variational SDs (the laplace estimator is deterministic)
    # laplace: SDs from their marginal posterior, fixed effects integrated out (primary; analysis.laplace);
    # vb: posterior means by fit_vb (SDs biased low with few units); map: joint posterior mode (shrinks SDs more)
    estimator: str = "laplace"
    # VB start: zero (statsmodels' default) or the posterior mode. The mode is slow to find when a variance
    # component shrinks towards zero (bench/analysis.py: 1400 BFGS iterations), so zero is the default.
    vb_start: str = "zero"

    def __post_init__(self):
        if self.n_as not in N_AS:
            raise ValueError(f"n_as must be one of {N_AS}, not {self.n_as!r}")
        if self.estimator not in ESTIMATORS or self.vb_start not in ("map", "zero"):
            raise ValueError(f"estimator must be one of {ESTIMATORS} and vb_start map or zero, not {self.estimator!r}, "
                             f"{self.vb_start!r}")


@dataclass
class ModelFit:
    name: str
    outcome: str  # trial | row | row (cell means)
    method: str
    formula: str = ""
    scale: str = "logit"
    status: str = STATUS_OK
    warnings: list[str] = field(default_factory=list)  # problems: they set status "warning"
    notes: list[str] = field(default_factory=list)  # information (e.g. a singular fit); status unchanged
    fixed: pd.DataFrame = field(default_factory=pd.DataFrame)
    random: pd.DataFrame = field(default_factory=pd.DataFrame)
    tests: pd.DataFrame = field(default_factory=pd.DataFrame)
    contrasts: pd.DataFrame = field(default_factory=pd.DataFrame)
    n_obs: int = 0
    n_participants: int = 0
    n_units: int = 0
    seconds: float = 0.0
    se_method: str = ""
    iterations: int = 0

    def summary_row(self) -> dict:
        sd = dict(zip(self.random.component, self.random.sd)) if len(self.random) else {}
        return {"model": self.name, "outcome": self.outcome, "scale": self.scale, "status": self.status,
                "formula": self.formula, "method": self.method, "se_method": self.se_method,
                "n_obs": self.n_obs, "n_participants": self.n_participants, "n_units": self.n_units,
                "sd_participant": sd.get("participant", np.nan), "sd_unit": sd.get("unit", np.nan),
                "sd_residual": sd.get("residual", np.nan), "seconds": round(self.seconds, 3),
                "warnings": " | ".join(self.warnings), "notes": " | ".join(self.notes)}


# ---------------------------------------------------------------------------------------------------------
# design

def model_frame(trials: pd.DataFrame, n_as: str) -> pd.DataFrame:
    """Model variables with canonical level order (reference: exemplar, early, smallest n)."""
    d = pd.DataFrame({
        "participant": trials.participant.to_numpy(),
        "type": pd.Categorical(trials.trial_type, categories=[t for t in TYPE_LEVELS if t in set(trials.trial_type)]),
        "layer": pd.Categorical(trials.layer_group, categories=[g for g in LAYER_LEVELS if g in set(trials.layer_group)]),
    })
    n_levels = sorted(int(v) for v in trials.n_images.unique())
    if n_as == "factor":
        d["n"] = pd.Categorical(trials.n_images.astype(int), categories=n_levels)
    else:
        d["n"] = trials.n_images.to_numpy(dtype=float) - float(np.mean(n_levels))
    return d


def candidate_formulas(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """Right-hand sides from the requested full model to simpler ones, with a note of what each drops."""
    present = []
    for f in ("type", "layer", "n"):
        levels = frame[f].nunique()
        if levels >= 2:
            present.append(f)
    if not present:
        return [("1", "no factor varies in the data: intercept only")]
    out = [(" * ".join(present), "")]
    if len(present) == 3:
        out.append(("(type + layer + n) ** 2", "three-way interaction dropped"))
        out.append(("type * layer + n", "interactions with n dropped"))
    if len(present) >= 2:
        out.append((" + ".join(present), "all interactions dropped"))
    out.append(("1", "all fixed effects but the intercept dropped"))
    return out


def choose_design(frame: pd.DataFrame, y: np.ndarray) -> tuple[str, pd.DataFrame, list[str]]:
    """First candidate formula whose design has full column rank (enough cells observed)."""
    notes = []
    for f in ("type", "layer", "n"):
        if frame[f].nunique() < 2:
            notes.append(f"'{f}' has a single level in the data and is not in the model")
    for rhs, note in candidate_formulas(frame):
        X = patsy.dmatrix(rhs, frame, return_type="dataframe")
        if np.linalg.matrix_rank(X.to_numpy()) == X.shape[1] and X.shape[0] > X.shape[1]:
            if note:
                notes.append(f"the design is rank-deficient for the full model (empty cells): {note}; fitted {rhs}")
            return rhs, X, notes
    raise ValueError("no estimable fixed-effects design")


def separation_notes(frame: pd.DataFrame, y: np.ndarray, rhs: str) -> list[str]:
    """Cells (of the factors in the model) where every response is correct or every one is wrong."""
    keys = [f for f in ("type", "layer", "n") if f in rhs]
    if not keys:
        return ["every response is " + ("correct" if y.mean() == 1 else "wrong")] if y.min() == y.max() else []
    g = pd.DataFrame({**{k: frame[k].astype(str) for k in keys}, "y": y}).groupby(keys, observed=True).y.agg(["mean", "size"])
    bad = g[(g["mean"] == 0) | (g["mean"] == 1)]
    if bad.empty:
        return []
    cells = ", ".join(f"{'/'.join(map(str, idx if isinstance(idx, tuple) else (idx,)))} ({'all correct' if r['mean'] == 1 else 'all wrong'}, {int(r['size'])})"
                      for idx, r in bad.iterrows())
    return [f"complete separation in {len(bad)} of {len(g)} cells: {cells}; estimates of terms involving them are "
            "set by the fixed-effect prior, not by the data"]


# ---------------------------------------------------------------------------------------------------------
# Bayesian GLMM with Laplace covariance

def _indicator(codes: np.ndarray, n_levels: int, weight: float = 1.0) -> sparse.csr_array:
    rows = np.arange(len(codes))
    return sparse.csr_array((np.full(len(codes), weight), (rows, codes)), shape=(len(codes), n_levels))


def neg_hessian(model: BinomialBayesMixedGLM, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Negative Hessian of the log posterior (parameter order fe, vcp, vc) and its likelihood part.

    Analytic for the logit link; equals numerically differentiating ``model.logposterior_grad``.
    """
    kf, kp, kv = model.k_fep, model.k_vcp, model.k_vc
    fe, vcp, vc = model._unpack(params)
    X = np.asarray(model.exog)
    Z = model.exog_vc
    eta = X @ fe + (Z @ vc if kv else 0)
    mu = 1 / (1 + np.exp(-eta))
    w = mu * (1 - mu)
    k = kf + kp + kv
    A = np.zeros((k, k))
    lik = np.zeros((k, k))
    fi, pi, vi = slice(0, kf), slice(kf, kf + kp), slice(kf + kp, k)
    lik[fi, fi] = X.T @ (X * w[:, None])
    if kv:
        ZW = sparse.csr_array(Z.multiply(w[:, None]))
        lik[fi, vi] = (ZW.T @ X).T
        lik[vi, fi] = lik[fi, vi].T
        lik[vi, vi] = (Z.T @ ZW).toarray()
    A[:] = lik
    A[fi, fi] += np.eye(kf) / model.fe_p**2
    if kv:
        s2 = np.exp(2 * vcp[model.ident])
        A[vi, vi] += np.diag(1 / s2)
        cross = np.zeros((kv, kp))
        cross[np.arange(kv), model.ident] = -2 * vc / s2
        A[vi, pi] = cross
        A[pi, vi] = cross.T
        A[pi, pi] = np.diag(2 * np.bincount(model.ident, weights=vc**2 / s2, minlength=kp) + 1 / model.vcp_p**2)
    return A, lik


def _embed(M: np.ndarray, keep: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((k, k))
    out[np.ix_(keep, keep)] = M
    return out


def _robust_cov(model, params, A, lik, clusters: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Sandwich B^-1 (B - lik + G'G) B^-1 on the (fe, vc) block B of the Hessian: the likelihood information
    is replaced by the outer product of per-cluster (trial) scores G; the prior part (the random-effect
    distribution) is kept. With independent rows G'G ~ lik and this reduces to B^-1."""
    kf, kv = model.k_fep, model.k_vc
    fe, vcp, vc = model._unpack(params)
    X = np.asarray(model.exog)
    eta = X @ fe + (model.exog_vc @ vc if kv else 0)
    r = model.endog - 1 / (1 + np.exp(-eta))
    codes = pd.factorize(clusters)[0]
    C = _indicator(codes, int(codes.max()) + 1).T.tocsr()  # clusters x obs
    D = sparse.hstack([sparse.csr_array(X), model.exog_vc]).tocsr() if kv else sparse.csr_array(X)
    G = (C @ sparse.csr_array(D.multiply(r[:, None]))).toarray()
    B = A[np.ix_(keep, keep)]
    meat = B - lik[np.ix_(keep, keep)] + G.T @ G
    Binv = np.linalg.inv(B)
    return _embed(Binv @ meat @ Binv, keep, A.shape[0])


def _covariance(model, params: np.ndarray, clusters: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Covariance of (fe, vcp, vc) conditional on the variance components (lme4's use.hessian = FALSE; zero in
    the vcp rows): the inverse (fe, vc) block of the Hessian, positive definite whenever the priors are proper,
    also when an SD collapses towards zero, where the joint Hessian including log-SDs is not (the funnel). With
    ``clusters``: the clustered sandwich (reported) and the model covariance."""
    A, lik = neg_hessian(model, params)
    kf, kp = model.k_fep, model.k_vcp
    keep = np.r_[0:kf, kf + kp:A.shape[0]]
    V_model = _embed(np.linalg.inv(A[np.ix_(keep, keep)]), keep, A.shape[0])
    V = V_model if clusters is None else _robust_cov(model, params, A, lik, clusters, keep)
    return V, V_model


def _test_reference(model, lf, clusters: np.ndarray | None, Vb: np.ndarray) -> Callable[[np.ndarray], Reference]:
    """L -> reference distribution of the Wald test of L b = 0 (Satterthwaite): the fixed-effect covariance (the reported one,
    sandwich included) as a function of the SDs, and the SDs' covariance from the curvature of the restricted
    Laplace likelihood (analysis.satterthwaite)."""
    prob, kf = lf.problem, model.k_fep
    A, comps = sd_covariance(prob.log_objective_sd, lf.sd)
    dV = cov_jacobian(lambda sd: _covariance(model, prob.params_at_sd(sd), clusters)[0][:kf, :kf], lf.sd, comps)
    prob.params_at_sd(lf.sd)  # leave the warm start at the estimate
    return lambda L: contrast_reference(L, Vb, dV, A, np.asarray(lf.sd)[comps])


def _one_blas_thread(fn):
    """Run a fit with one BLAS thread. The fits are many small dense products (BFGS updates over a few hundred
    parameters): BLAS threads only add overhead there, and on shared cores they made fit_vb ten times slower
    in our measurements (0.8 s vs 9 s for the same fit)."""
    import contextlib
    import functools

    @functools.wraps(fn)
    def wrapper(*a, **k):
        with threadpool_limits(1, user_api="blas") if threadpool_limits else contextlib.nullcontext():
            return fn(*a, **k)

    return wrapper


@_one_blas_thread
def fit_bayes_glmm(name: str, outcome: str, frame: pd.DataFrame, y: np.ndarray, re_blocks: dict[str, tuple],
                   opts: ModelOptions, clusters: np.ndarray | None = None, n_units: int = 0) -> ModelFit:
    """Fit a ``BinomialBayesMixedGLM`` with ``opts.estimator``; Hessian covariance; optional trial-clustered sandwich.

    ``re_blocks``: name -> (sparse design block, level names), one variance component each.
    """
    method = METHODS[opts.estimator]
    se_method = "Hessian of log posterior (Laplace)"
    if clusters is not None:
        se_method += ", sandwich clustered by trial (rows of a trial are dependent)"
    fit = ModelFit(name=name, outcome=outcome, method=method, se_method=se_method, n_obs=len(y),
                   n_participants=int(frame.participant.nunique()), n_units=n_units)
    t0 = time.perf_counter()
    if len(y) < 10 or y.min() == y.max():
        fit.status = STATUS_NA
        fit.warnings.append(f"not estimable: {len(y)} observations" + (", all with the same outcome" if len(y) and y.min() == y.max() else ""))
        return fit
    blocks = {k: v for k, v in re_blocks.items() if v[0].shape[1] >= 2}
    for k in re_blocks:
        if k not in blocks:
            fit.warnings.append(f"only one {k}: no {k} random effect in the model")
    if not blocks:
        fit.status = STATUS_NA
        fit.warnings.append("not estimable: fewer than 2 participants and fewer than 2 units")
        return fit
    if "participant" in blocks and blocks["participant"][0].shape[1] < 5:
        fit.warnings.append(f"only {blocks['participant'][0].shape[1]} participants: the participant SD and all "
                            "intervals are poorly determined")
    rhs, X, notes = choose_design(frame, y)
    fit.formula = f"{'trial_correct' if outcome == 'trial' else 'correct'} ~ {rhs} + " + " + ".join(f"(1|{k})" for k in blocks)
    fit.warnings += notes + separation_notes(frame, y, rhs)
    Z = sparse.hstack([b[0] for b in blocks.values()]).tocsr()
    ident = np.concatenate([np.full(b[0].shape[1], i) for i, b in enumerate(blocks.values())]).astype(int)
    vc_names = [f"{k}:{lv}" for k, b in blocks.items() for lv in b[1]]
    model = BinomialBayesMixedGLM(y.astype(float), X.to_numpy(), Z, ident, vcp_p=opts.vcp_prior_sd or 1.0,
                                  fe_p=opts.fe_prior_sd, fep_names=list(X.columns), vcp_names=list(blocks),
                                  vc_names=vc_names)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if opts.estimator == "laplace":
            lf = fit_laplace(model, flat_sd_prior=opts.vcp_prior_sd is None, sd_intervals=opts.sd_intervals)
            params, fit.iterations = lf.params, lf.evaluations
            if not lf.converged:
                fit.warnings.append(f"the Laplace search for the random-effect SDs did not converge ({lf.message})")
        else:
            if opts.estimator == "map":
                res = model.fit_map(rng=opts.seed)
            else:
                start = model.fit_map(rng=opts.seed).params if opts.vb_start == "map" else None
                res = model.fit_vb(mean=start, rng=opts.seed, minim_opts={"maxiter": 2000})
            params, r = res.params, res.optim_retvals
            fit.iterations = int(getattr(r, "nit", 0) or 0)
            if not r.success:
                gnorm = float(np.max(np.abs(r.jac))) if getattr(r, "jac", None) is not None else np.nan
                if not (gnorm < 1e-3):
                    fit.warnings.append(f"fit_{opts.estimator} did not converge ({r.message}; max |gradient| {gnorm:.2g})")
    fit.warnings += _dedupe([f"{w.category.__name__}: {w.message}" for w in caught
                             if "did not converge" not in str(w.message)])  # judged above by the final gradient
    kf, kp = model.k_fep, model.k_vcp
    V, V_model = _covariance(model, params, clusters)
    b = params[:kf]
    Vb = V[:kf, :kf]
    se = np.sqrt(np.clip(np.diag(Vb), 0, None))
    fixed = pd.DataFrame({"term": list(X.columns), "estimate": b, "se": se, "ci_low": b - Z95 * se,
                          "ci_high": b + Z95 * se})
    fixed["z"] = fixed.estimate / fixed.se
    fixed["p_value"] = 2 * stats.norm.sf(np.abs(fixed.z))
    if clusters is not None:
        fixed["se_model"] = np.sqrt(np.clip(np.diag(V_model[:kf, :kf]), 0, None))
    fit.fixed = fixed
    vcp = params[kf:kf + kp]
    sds = lf.sd if opts.estimator == "laplace" and lf.sd is not None else np.exp(vcp)
    fit.random = pd.DataFrame({"component": list(blocks), "sd": sds,
                               "n_levels": [b[0].shape[1] for b in blocks.values()]})
    if opts.estimator == "laplace" and lf.sd_ci is not None and opts.sd_intervals:
        # flat SD prior: likelihood-ratio intervals of the restricted Laplace likelihood; they reach 0 when the
        # data cannot tell the SD from 0
        fit.random["sd_ci_low"], fit.random["sd_ci_high"] = lf.sd_ci[:, 0], lf.sd_ci[:, 1]
        fit.random["sd_ci_method"] = "likelihood ratio (restricted Laplace likelihood, other SDs at their estimates)"
    elif opts.estimator == "laplace" and opts.sd_intervals:
        # log-normal SD prior: 95% intervals on the log-SD scale from the curvature of the marginal posterior. For
        # vb/map: none (their joint Hessian in (log SD, effects) is usually not positive definite: the funnel).
        half = Z95 * np.sqrt(np.diag(log_sd_covariance(model, params)))
        fit.random["sd_ci_low"], fit.random["sd_ci_high"] = np.exp(vcp - half), np.exp(vcp + half)
        fit.random["sd_ci_method"] = "Wald on log SD (curvature of the marginal posterior)"
    for comp, sd, lo in zip(blocks, sds, fit.random.get("sd_ci_low", pd.Series(np.nan, index=fit.random.index))):
        if sd < 0.05:
            fit.notes.append(f"the {comp} SD is estimated at or near zero ({sd:.3f}): a boundary (singular) fit for "
                             "that component, harmless for the fixed effects")
        elif lo == 0:
            fit.notes.append(f"the {comp} SD ({sd:.3f}) is not distinguishable from 0 (its 95% interval reaches 0)")
    reference_fn = (_test_reference(model, lf, clusters, Vb) if opts.estimator == "laplace" and lf.sd is not None
              and lf.problem is not None else None)
    fit.tests, fit.contrasts = tests_and_contrasts(frame, rhs, X.design_info, b, Vb, "logit",
                                                   "Wald chi-square on the Laplace covariance" + (" (trial-clustered sandwich)" if clusters is not None else ""),
                                                   n_units=n_units if "unit" in blocks else 0, reference_fn=reference_fn,
                                                   unit_sd_at_boundary="unit" in blocks and dict(zip(blocks, sds))["unit"] < BOUNDARY_SD)
    fit.seconds = time.perf_counter() - t0
    fit.status = _status(fit)
    return fit


def _dedupe(msgs: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    for m in msgs:
        counts[m] = counts.get(m, 0) + 1
    return [m if k == 1 else f"{m} (x{k})" for m, k in counts.items()]


def _status(fit: ModelFit) -> str:
    if any(w.startswith("complete separation") for w in fit.warnings):
        return STATUS_SEP
    return STATUS_WARN if fit.warnings else STATUS_OK


@_one_blas_thread
def fit_trial_glmm(trials: pd.DataFrame, opts: ModelOptions) -> ModelFit:
    """Primary model: whole-trial correctness, participant + multiple-membership unit intercepts."""
    frame = model_frame(trials, opts.n_as)
    y = trials.trial_correct.to_numpy().astype(int)
    pcodes, plevels = pd.factorize(trials.participant, sort=True)
    units = trials[["unit_0", "unit_1", "unit_2"]].to_numpy()
    ulevels = np.unique(units)
    ucodes = np.searchsorted(ulevels, units)
    Zu = (_indicator(ucodes[:, 0], len(ulevels), 1 / 3) + _indicator(ucodes[:, 1], len(ulevels), 1 / 3)
          + _indicator(ucodes[:, 2], len(ulevels), 1 / 3)).tocsr()
    blocks = {"participant": (_indicator(pcodes, len(plevels)), list(plevels)), "unit": (Zu, list(ulevels))}
    return fit_bayes_glmm("glmm_trial", "trial", frame, y, blocks, opts, n_units=len(ulevels))


@_one_blas_thread
def fit_row_glmm(trials: pd.DataFrame, opts: ModelOptions) -> ModelFit:
    """Per-row correctness, crossed participant and unit intercepts, trial-clustered sandwich SEs."""
    rows = rows_long(trials)
    frame = model_frame(rows, opts.n_as)
    y = rows.correct.to_numpy().astype(int)
    pcodes, plevels = pd.factorize(rows.participant, sort=True)
    ulevels = np.unique(trials[["unit_0", "unit_1", "unit_2"]].to_numpy())
    own = np.searchsorted(ulevels, rows.unit.to_numpy())
    # A row's correctness depends on all three units of its trial (they compete for the same candidates):
    # "unit" is the mean effect of the trial's three units, as in the trial model; "row_unit" is what is
    # specific to the row's own unit. With "unit" alone the layer effect's SE ignores most unit variance.
    trial_units = np.searchsorted(ulevels, rows[["unit_a", "unit_b", "unit_c"]].to_numpy())
    Zm = (_indicator(trial_units[:, 0], len(ulevels), 1 / 3) + _indicator(trial_units[:, 1], len(ulevels), 1 / 3)
          + _indicator(trial_units[:, 2], len(ulevels), 1 / 3)).tocsr()
    blocks = {"participant": (_indicator(pcodes, len(plevels)), list(plevels)),
              "unit": (Zm, list(ulevels)), "row_unit": (_indicator(own, len(ulevels)), list(ulevels))}
    return fit_bayes_glmm("glmm_row", "row", frame, y, blocks, opts, clusters=rows.trial_uid.to_numpy(),
                          n_units=len(ulevels))


@_one_blas_thread
def fit_mixedlm_cells(trials: pd.DataFrame, opts: ModelOptions) -> ModelFit:
    """MixedLM (REML) of per-participant cell accuracy (rows), participant random intercept. Not reported: it
    ignores unit variance and its layer test is badly anticonservative (validation tables only)."""
    from statsmodels.regression.mixed_linear_model import MixedLM

    cells = (trials.groupby(["participant", "trial_type", "layer_group", "n_images"]).n_correct
             .agg(["sum", "size"]).reset_index())
    cells["accuracy"] = cells["sum"] / (3 * cells["size"])
    fit = ModelFit(name="mixedlm_cells", outcome="row", scale="probability",
                   method="statsmodels MixedLM (REML), linear probability model of per-participant cell accuracy "
                          "(rows), participant random intercept; units averaged within cells",
                   se_method="MixedLM model-based covariance", n_obs=len(cells),
                   n_participants=int(cells.participant.nunique()))
    t0 = time.perf_counter()
    if fit.n_participants < 2 or len(cells) < 6:
        fit.status = STATUS_NA
        fit.warnings.append(f"not estimable: {fit.n_participants} participant(s), {len(cells)} cells")
        return fit
    frame = model_frame(cells, opts.n_as)
    y = cells.accuracy.to_numpy()
    if np.ptp(y) == 0:
        fit.status = STATUS_NA
        fit.warnings.append(f"not estimable: every cell has accuracy {y[0]:.3g}")
        return fit
    rhs, X, notes = choose_design(frame, y)
    fit.warnings += notes
    if len(cells) - X.shape[1] < fit.n_participants:
        fit.status = STATUS_NA
        fit.warnings.append(f"not estimable: {len(cells)} cells for {X.shape[1]} fixed effects and "
                            f"{fit.n_participants} participants")
        return fit
    fit.formula = f"accuracy ~ {rhs} + (1|participant)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = MixedLM(y, X, groups=cells.participant.to_numpy()).fit(reml=True)
        except (np.linalg.LinAlgError, ValueError) as e:
            fit.status = STATUS_NA
            fit.warnings.append(f"not estimable: MixedLM failed ({e})")
            return fit
    fit.warnings += _dedupe([f"{w.category.__name__}: {w.message}" for w in caught])
    if not res.converged:
        fit.warnings.append("MixedLM did not converge")
    kf = X.shape[1]
    b = np.asarray(res.fe_params)
    V = np.asarray(res.cov_params())[:kf, :kf]
    se = np.sqrt(np.clip(np.diag(V), 0, None))
    fit.fixed = pd.DataFrame({"term": list(X.columns), "estimate": b, "se": se, "ci_low": b - Z95 * se,
                              "ci_high": b + Z95 * se, "z": b / se, "p_value": 2 * stats.norm.sf(np.abs(b / se))})
    fit.random = pd.DataFrame({"component": ["participant", "residual"],
                               "sd": [float(np.sqrt(max(res.cov_re.iloc[0, 0], 0))), float(np.sqrt(res.scale))],
                               "n_levels": [fit.n_participants, len(cells)]})
    fit.tests, fit.contrasts = tests_and_contrasts(frame, rhs, X.design_info, b, V, "probability",
                                                   "Wald chi-square on the MixedLM covariance")
    fit.seconds = time.perf_counter() - t0
    fit.status = _status(fit)
    return fit


REPORTED_MODELS = {"glmm_trial": fit_trial_glmm, "glmm_row": fit_row_glmm}
# What the report fits unless asked: the primary model only. glmm_row's tests do not hold their level (its layer test
# rejected 0/100 true nulls on the primary model's generator, its interaction test 10/100 on the independent one;
# analysis/README.md), so it is fitted only on request (``fvmatch-analyze --models glmm_trial glmm_row``).
DEFAULT_MODELS = ("glmm_trial",)
UNCALIBRATED = {"glmm_row": "its tests are not calibrated: under a true null its layer test rejected 0/100 on the "
                            "primary model's generator and its interaction test 10/100 on the independent one "
                            "(analysis/README.md); read its estimates as a per-row view, not its p-values"}


def fit_all(trials: pd.DataFrame, opts: ModelOptions, models: tuple[str, ...] = DEFAULT_MODELS) -> list[ModelFit]:
    """The models of the report (``DEFAULT_MODELS``: the primary trial-level GLMM; ``mixedlm_cells`` is never one:
    its tests are uncalibrated). Never raises on data that cannot support a model: such a model comes back with
    status ``not_estimable``."""
    unknown = [m for m in models if m not in REPORTED_MODELS]
    if unknown or not models:
        raise ValueError(f"models must be among {list(REPORTED_MODELS)}, not {list(models)}")
    fits = []
    for name in models:
        fn = REPORTED_MODELS[name]
        try:
            fits.append(fn(trials, opts))
        except Exception as e:  # a model that cannot be fitted must not sink the accuracy report
            fits.append(ModelFit(name=name, outcome="?", method=fn.__doc__.split("\n")[0], status=STATUS_NA,
                                 warnings=[f"not estimable: {type(e).__name__}: {e}"]))
    return fits


def fixed_effects_table(fits: list[ModelFit]) -> pd.DataFrame:
    """Contract table ``fixed_effects`` for all models; non-estimable models get one row saying so."""
    cols = ["model", "term", "estimate", "se", "ci_low", "ci_high", "z", "p_value", "scale", "outcome",
            "se_method", "status", "se_model", "message"]
    out = []
    for f in fits:
        if f.fixed.empty:
            out.append(pd.DataFrame([{"model": f.name, "term": "(not estimable)", "estimate": np.nan, "se": np.nan,
                                      "ci_low": np.nan, "ci_high": np.nan, "scale": f.scale, "outcome": f.outcome,
                                      "se_method": f.se_method, "status": f.status,
                                      "message": " | ".join(f.warnings)}]))
        else:
            out.append(f.fixed.assign(model=f.name, scale=f.scale, outcome=f.outcome, se_method=f.se_method,
                                      status=f.status, message=" | ".join(f.warnings)))
    return pd.concat(out, ignore_index=True).reindex(columns=cols)
