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
"""

from __future__ import annotations

from typing import Callable

import numpy as np

BOUNDARY_SD = 0.05  # an SD below this is held fixed (its likelihood is flat or one-sided there)


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


def contrast_ddf(L: np.ndarray, V: np.ndarray, dV: list[np.ndarray], A: np.ndarray, tol: float = 1e-10) -> float:
    """Satterthwaite denominator df of the Wald F test of ``L b = 0`` (rows of L: contrasts); inf when V does not
    depend on any estimated SD (the chi-square is then exact in the large-sample sense)."""
    L = np.atleast_2d(L)
    LVL = L @ V @ L.T
    lam, P = np.linalg.eigh((LVL + LVL.T) / 2)
    keep = lam > tol * max(1.0, lam.max(initial=0.0))
    if not keep.any():
        return np.nan
    if A.size == 0:
        return np.inf
    nus = []
    for m in np.flatnonzero(keep):
        l = P[:, m] @ L
        g = np.array([l @ d @ l for d in dV])
        var_of_var = float(g @ A @ g)
        nus.append(np.inf if var_of_var <= 0 else 2 * lam[m] ** 2 / var_of_var)
    nus = np.array(nus)
    q = nus.size
    if q == 1:
        return float(nus[0])
    if np.any(nus <= 2):
        return 2.0
    if np.all(np.isinf(nus)):
        return np.inf
    e = float(np.sum(np.where(np.isinf(nus), 1.0, nus / (nus - 2))))
    return 2 * e / (e - q) if e > q else np.inf
