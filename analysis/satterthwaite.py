"""Satterthwaite denominator degrees of freedom for the Wald F tests of a GLMM's fixed effects. Pure functions.

Why: a Wald chi-square treats the covariance of the fixed effects as known, but it is a function V(sd) of the
estimated random-effect SDs. The layer main effect is a between-unit contrast: its variance is mostly the unit
variance divided by the units per layer group, and with about 10 units per group the unit SD is poorly
determined (its 95% likelihood-ratio interval reached 0 in 18.5% of simulated studies; analysis/README.md). The
chi-square then rejected a true null in 8.5-12.5% of replicates, and F on the containment df (units - layer
groups) still in 10% on the independent generator, because multiple-membership trials (three units of one group)
and Bernoulli noise leave far fewer than ``units - groups`` degrees of freedom for the unit variance.

The method is the one of lmerTest (Kuznetsova et al. 2017, after Fai & Cornelius 1996) and of SAS PROC
GLIMMIX's DDFM=SATTERTHWAITE, on our Laplace-approximate restricted likelihood:

* ``A``: asymptotic covariance of the SDs, the inverse negative Hessian of the log restricted likelihood in the
  SDs at their estimate (components estimated at or near 0 are held fixed: a boundary has no curvature);
* for a 1-df contrast l: nu = 2 (l' V l)^2 / (g' A g), g = d(l' V(sd) l)/d sd (central differences);
* for a q-df test L: the eigen-contrasts of L V L' each get nu_m; E = sum nu_m / (nu_m - 2) and
  ddf = 2 E / (E - q) (ddf = 2 when any nu_m <= 2), and F = chi2 / q on (q, ddf).

The p-values fvmatch reports use one refinement (:func:`partly_known_p_value`). F on Satterthwaite df treats the
whole of l'Vl as a scaled chi-square, as if it could fall to 0; but in a binomial GLMM it is a part fixed by the
Bernoulli variance (no residual variance is estimated) plus a part that grows with the SDs' squares, and only the
latter is estimated. Measured (analysis/README.md): with about 10 units per layer group the layer test's variance
is 80% unit variance; F on Satterthwaite df rejected a true null in 1.5% (the model's own generator) to 3% (an
independent generator) of 200 simulated studies, the chi-square in 8.5-12.5%. The refinement gives the SD part
alone Satterthwaite's moment-matched distribution: l'V^l = (1 - f) l'Vl + f l'Vl s, s ~ chi2_nu_u / nu_u, with
f = sum_k sd_k/2 dV/dsd_k / l'Vl (exact when V is linear in the squared SDs, as for a between-unit contrast)
and nu_u = 2 (f l'Vl)^2 / (g'Ag); the p-value integrates the chi-square tail over s. It is F(q, nu) when f = 1
and the chi-square when f = 0.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats

BOUNDARY_SD = 0.05  # an SD below this is held fixed (its likelihood is flat or one-sided there)
QUANTILE_NODES = 20000
_MIDPOINTS = (np.arange(QUANTILE_NODES) + 0.5) / QUANTILE_NODES


def sd_covariance(log_objective: Callable[[np.ndarray], float], sd: np.ndarray,
                  rel_step: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Covariance of the interior SDs (inverse negative Hessian of ``log_objective`` by central differences) and
    the indices of those SDs. Components below ``BOUNDARY_SD`` are left out; an empty result when the Hessian of
    the rest is not negative definite (no usable curvature)."""
    sd = np.asarray(sd, dtype=float)
    comps = np.flatnonzero(sd >= BOUNDARY_SD)
    if comps.size == 0:
        return np.zeros((0, 0)), comps
    h = rel_step * sd[comps]
    k = comps.size

    def f(delta: np.ndarray) -> float:
        s = sd.copy()
        s[comps] += delta
        return log_objective(s)

    E = np.diag(h)
    H = np.empty((k, k))
    f0 = f(np.zeros(k))
    for i in range(k):
        H[i, i] = (f(E[i]) - 2 * f0 + f(-E[i])) / h[i] ** 2
        for j in range(i):
            H[i, j] = H[j, i] = (f(E[i] + E[j]) - f(E[i] - E[j]) - f(-E[i] + E[j]) + f(-E[i] - E[j])) / (4 * h[i] * h[j])
    info = -H
    if not np.all(np.isfinite(info)) or np.linalg.eigvalsh(info).min() <= 0:
        return np.zeros((0, 0)), np.zeros(0, int)
    return np.linalg.inv(info), comps


def cov_jacobian(cov_at: Callable[[np.ndarray], np.ndarray], sd: np.ndarray, comps: np.ndarray,
                 rel_step: float = 0.02) -> list[np.ndarray]:
    """dV/d sd_k for each k in ``comps`` by central differences of ``cov_at`` (the fixed-effect covariance as a
    function of the SDs)."""
    sd = np.asarray(sd, dtype=float)
    out = []
    for k in comps:
        h = rel_step * sd[k]
        up, down = sd.copy(), sd.copy()
        up[k] += h
        down[k] -= h
        out.append((cov_at(up) - cov_at(down)) / (2 * h))
    return out


def _eigen_contrasts(L: np.ndarray, V: np.ndarray, dV: list[np.ndarray], A: np.ndarray,
                     tol: float) -> list[tuple[float, np.ndarray, float]]:
    """The eigen-contrasts l_m of L V L' that carry variance: (l_m' V l_m, g_m = d(l_m' V l_m)/d sd, g_m' A g_m)."""
    L = np.atleast_2d(L)
    LVL = L @ V @ L.T
    lam, P = np.linalg.eigh((LVL + LVL.T) / 2)
    keep = lam > tol * max(1.0, lam.max(initial=0.0))
    out = []
    for m in np.flatnonzero(keep):
        l = P[:, m] @ L
        g = np.array([l @ d @ l for d in dV])
        out.append((float(lam[m]), g, float(g @ A @ g) if A.size else 0.0))
    return out


def _combined_ddf(parts: list[tuple[float, np.ndarray, float]]) -> float:
    """lmerTest's combination of the eigen-contrasts' df into one ddf of the q-df test."""
    nus = np.array([np.inf if vv <= 0 else 2 * lam ** 2 / vv for lam, _, vv in parts])
    q = nus.size
    if q == 1:
        return float(nus[0])
    if np.any(nus <= 2):
        return 2.0
    if np.all(np.isinf(nus)):
        return np.inf
    e = float(np.sum(np.where(np.isinf(nus), 1.0, nus / (nus - 2))))
    return 2 * e / (e - q) if e > q else np.inf


def contrast_ddf(L: np.ndarray, V: np.ndarray, dV: list[np.ndarray], A: np.ndarray, tol: float = 1e-10) -> float:
    """Satterthwaite denominator df of the Wald F test of ``L b = 0`` (rows of L: contrasts); inf when V does not
    depend on any estimated SD (the chi-square is then exact in the large-sample sense)."""
    parts = _eigen_contrasts(L, V, dV, A, tol)
    if not parts:
        return np.nan
    return np.inf if A.size == 0 else _combined_ddf(parts)


@dataclass(frozen=True)
class Reference:
    """What a Wald test's reference distribution needs: Satterthwaite's ddf of the whole variance, the share
    ``sd_share`` of the contrast's variance that scales with the SDs' squares, and that part's df ``sd_df``."""

    ddf: float
    sd_share: float
    sd_df: float

    def capped(self, df: float) -> "Reference":
        """The containment cap (a between-unit contrast's variance part has at most units - groups df)."""
        return Reference(min(self.ddf, df), self.sd_share, min(self.sd_df, df))


def contrast_reference(L: np.ndarray, V: np.ndarray, dV: list[np.ndarray], A: np.ndarray, sd: np.ndarray,
                       tol: float = 1e-10) -> Reference:
    """:class:`Reference` of the test of ``L b = 0``; ``sd`` are the SDs of ``dV``/``A`` (the interior ones). For
    q > 1 the eigen-contrasts' shares and df are averaged: they share one estimate of the SDs."""
    parts = _eigen_contrasts(L, V, dV, A, tol)
    if not parts:
        return Reference(np.nan, 0.0, np.inf)
    if A.size == 0:
        return Reference(np.inf, 0.0, np.inf)
    shares, dfs = [], []
    for lam, g, var_of_var in parts:
        v_sd = float(np.clip(np.asarray(sd) / 2 @ g, 0.0, lam))  # the part proportional to the squared SDs
        shares.append(v_sd / lam)
        dfs.append(np.inf if var_of_var <= 0 or v_sd == 0 else 2 * v_sd ** 2 / var_of_var)
    return Reference(_combined_ddf(parts), float(np.mean(shares)), float(np.mean(dfs)))


def partly_known_p_value(chi2: float, q: int, ref: Reference) -> float:
    """P(chi2_q > chi2 * (1 - f + f s)), s ~ chi2_nu / nu, f = ``ref.sd_share``, nu = ``ref.sd_df``: the Wald
    statistic's tail when only the SD part of its variance is estimated (module docstring)."""
    f, nu = float(np.clip(ref.sd_share, 0.0, 1.0)), ref.sd_df
    if not np.isfinite(chi2):
        return np.nan
    if f == 0 or not np.isfinite(nu):
        return float(stats.chi2.sf(chi2, q))
    if f == 1:  # the whole variance estimated: F(q, nu) in closed form (exact also far in the tail)
        return float(stats.f.sf(chi2 / q, q, nu))
    # the expectation over s as a mean over its quantiles (midpoint rule on [0, 1]): the integrand is bounded and
    # monotone for any nu (the density of s is not, for nu < 2), so the error is below 1 / QUANTILE_NODES
    return float(np.mean(stats.chi2.sf(chi2 * (1 - f + f * _quantiles(float(nu))), q)))


@functools.lru_cache(maxsize=64)
def _quantiles(nu: float) -> np.ndarray:
    return stats.gamma.ppf(_MIDPOINTS, nu / 2, scale=2 / nu)
