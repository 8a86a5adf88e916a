"""Variance components of a binomial GLMM from their Laplace-approximate marginal posterior. Pure functions.

Why: ``fit_vb`` (and lme4's ML Laplace) estimate the variance components jointly with the fixed effects, which
biases them low when the random factor has few levels. In our simulations (10 units per layer group, a
trial's unit effect the mean of three units) VB's unit SD averaged 0.50 for a true 0.58, and the layer test,
a between-unit contrast whose SE scales with that SD, rejected a true null in 13% of replicates at
alpha = 0.05. Integrating the fixed effects out as well, as REML does for linear mixed models, removes most
of that bias (mean 0.59; rejection 5%; see analysis/README.md).

The model is statsmodels' ``BinomialBayesMixedGLM`` (its design, ``ident`` and priors are used as they are):

    y ~ Bernoulli(logistic(X beta + Z b)),  beta ~ N(0, fe_p^2),  b_j ~ N(0, exp(theta[ident_j])^2),
    theta_k ~ N(0, vcp_p^2)   (theta: log random-effect SDs; only with ``flat_sd_prior=False``)

By default (``flat_sd_prior=True``) the SDs get a flat prior on [0, 20] instead, so the objective is the
Laplace-approximate *restricted* likelihood of the SDs and an SD can be estimated at 0, as glmer does: the
N(0, 1) prior on log SD kept SDs of random-observer data (true SD 0) at 0.09-0.25 with intervals excluding 0.
Intervals of an SD are then likelihood-ratio (profile-type) intervals of that objective, which reach 0 when
the data cannot tell the SD from 0 (boundary-aware; the other SDs held at their estimates, cheap, and close to
the full profile because crossed participant and unit SDs are nearly orthogonal).

For fixed theta, u = (beta, b) is found at its posterior mode by Newton's method (the log posterior is
concave in u), and the Laplace approximation integrates u out:

    log p(theta | y) ~ log p(y, u_hat | theta) - 1/2 log det H(theta) + log p(theta) + const,

with H the negative Hessian in u. theta_hat maximises this (a few parameters: a derivative-free search is
robust and fast); the fixed effects reported are the conditional mode at theta_hat and their covariance the
(beta, beta) block of H(theta_hat)^-1, as lme4 reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, sparse

LOG_SD_BOUNDS = (-7.0, 3.0)  # SDs between 0.001 and 20 on the logit scale (log-normal prior search)
SD_MAX = 20.0  # flat-prior search: SD in [0, SD_MAX]
SD_FLOOR = 1e-4  # an SD below this is treated as 0 (its effects are held at 0 by a precision of 1e8)
CHI2_95_1DF = 3.841458820694124  # likelihood-ratio interval: 2 * drop in log objective <= this


@dataclass
class LaplaceFit:
    params: np.ndarray  # statsmodels' order: fixed effects, log SDs (vcp), random effects (vc)
    log_posterior: float  # Laplace-approximate log marginal posterior of theta at its mode (up to a constant)
    evaluations: int
    converged: bool
    message: str
    sd: np.ndarray | None = None  # SDs (exactly 0 at the boundary); exp of the log SDs in ``params`` otherwise
    sd_ci: np.ndarray | None = None  # k x 2, 95% intervals of the SDs (flat prior: likelihood-ratio; may reach 0)
    problem: "_Problem | None" = None  # for further evaluations at other SDs (Satterthwaite df; analysis.satterthwaite)


class _Problem:
    """The pieces of one model needed again and again while theta is searched."""

    def __init__(self, model, flat_sd_prior: bool = True):
        self.X = np.asarray(model.exog, dtype=float)
        self.kf = self.X.shape[1]
        Z = model.exog_vc
        self.kv = Z.shape[1] if Z is not None else 0
        self.D = sparse.hstack([sparse.csr_array(self.X), Z]).tocsr() if self.kv else sparse.csr_array(self.X)
        self.y = np.asarray(model.endog, dtype=float)
        self.ident = np.asarray(model.ident, dtype=int) if self.kv else np.zeros(0, int)
        self.fe_prec = 1.0 / model.fe_p**2
        self.vcp_p = float(model.vcp_p)
        self.flat_sd_prior = flat_sd_prior
        self.u = np.zeros(self.D.shape[1])  # warm start for the next conditional mode

    def precisions(self, theta: np.ndarray) -> np.ndarray:
        return np.r_[np.full(self.kf, self.fe_prec), np.exp(-2 * theta[self.ident])]

    def log_joint(self, u: np.ndarray, prec: np.ndarray) -> tuple[float, np.ndarray]:
        eta = self.D @ u
        return float(np.sum(self.y * eta - np.logaddexp(0, eta)) - 0.5 * np.sum(prec * u * u)), eta

    def hessian(self, eta: np.ndarray, prec: np.ndarray) -> np.ndarray:
        mu = 1 / (1 + np.exp(-eta))
        w = mu * (1 - mu)
        return (self.D.T @ sparse.csr_array(self.D.multiply(w[:, None]))).toarray() + np.diag(prec)

    def conditional_mode(self, theta: np.ndarray, tol: float = 1e-10, max_iter: int = 100):
        """Posterior mode of (beta, b) given theta by damped Newton; returns u, H and the log joint density."""
        prec = self.precisions(theta)
        u = self.u.copy()
        f, eta = self.log_joint(u, prec)
        for _ in range(max_iter):
            mu = 1 / (1 + np.exp(-eta))
            grad = self.D.T @ (self.y - mu) - prec * u
            H = self.hessian(eta, prec)
            step = np.linalg.solve(H, grad)
            t = 1.0
            while True:  # halve the step until the (concave) objective does not decrease
                f_new, eta_new = self.log_joint(u + t * step, prec)
                if f_new >= f - 1e-12 or t < 1e-6:
                    break
                t /= 2
            u, f, eta = u + t * step, f_new, eta_new
            if np.max(np.abs(t * step)) < tol:
                break
        H = self.hessian(eta, prec)
        self.u = u
        return u, H, f

    def log_posterior(self, theta: np.ndarray) -> float:
        theta = np.asarray(theta, dtype=float)
        u, H, f = self.conditional_mode(theta)
        # log N(b; 0, sd^2) normalisers (the fixed-effect prior's is a constant), Laplace term, prior on theta
        normalisers = -np.sum(theta[self.ident])
        prior = 0.0 if self.flat_sd_prior else -0.5 * float(theta @ theta) / self.vcp_p**2
        return f + normalisers - 0.5 * np.linalg.slogdet(H)[1] + prior

    def params_at_sd(self, sd: np.ndarray) -> np.ndarray:
        """statsmodels' parameter vector (fixed effects, log SDs, random effects) at the conditional mode for ``sd``."""
        theta = np.log(np.maximum(np.asarray(sd, dtype=float), SD_FLOOR))
        u, _, _ = self.conditional_mode(theta)
        return np.r_[u[:self.kf], theta, u[self.kf:]]

    def log_objective_sd(self, sd: np.ndarray) -> float:
        """Flat prior on the SDs: the Laplace restricted log likelihood as a function of the SDs themselves."""
        return self.log_posterior(np.log(np.maximum(np.asarray(sd, dtype=float), SD_FLOOR)))


def _lr_interval(prob: _Problem, sd: np.ndarray, k: int, top: float) -> tuple[float, float]:
    """95% likelihood-ratio interval of SD k (others held at ``sd``): where the log objective is within
    chi2_1(0.95)/2 of its maximum ``top``. The lower end is 0 when the objective at SD 0 is still above it."""
    cut = top - CHI2_95_1DF / 2

    def g(v: float) -> float:
        s = sd.copy()
        s[k] = v
        return prob.log_objective_sd(s) - cut

    lo = 0.0
    if g(0.0) < 0:
        lo = optimize.brentq(g, 0.0, max(sd[k], SD_FLOOR), xtol=1e-3)
    hi_b = max(2 * sd[k], 0.1)
    while g(hi_b) > 0 and hi_b < SD_MAX:
        hi_b = min(2 * hi_b, SD_MAX)
    hi = SD_MAX if g(hi_b) > 0 else optimize.brentq(g, max(sd[k], 0.0), hi_b, xtol=1e-3)
    return lo, hi


def fit_laplace(model, start_sd: float = 0.5, xatol: float = 1e-3, fatol: float = 1e-5,
                flat_sd_prior: bool = True, sd_intervals: bool = True) -> LaplaceFit:
    """Mode of the Laplace-approximate marginal posterior of the SDs; fixed and random effects at their
    conditional mode there. ``model``: a ``statsmodels`` ``BinomialBayesMixedGLM``. ``flat_sd_prior``: a flat
    prior on each SD in [0, 20] (default; SDs can be 0, likelihood-ratio intervals) or statsmodels' N(0, vcp_p^2)
    prior on the log SDs (SDs stay away from 0; no intervals here, see ``log_sd_covariance``).

    Tolerances: log SD to 0.001 (0.1% of the SD) and log posterior to 1e-5; tighter ones (1e-4, 1e-8) changed
    no estimate or SE in the 4th decimal on bench/analysis.py's data and took 25-50% more evaluations."""
    prob = _Problem(model, flat_sd_prior)
    k_vcp = int(model.k_vcp)
    if flat_sd_prior and k_vcp:
        return _fit_flat(prob, k_vcp, start_sd, xatol, fatol, sd_intervals)
    if k_vcp == 0:
        u, _, f = prob.conditional_mode(np.zeros(0))
        return LaplaceFit(params=u, log_posterior=f, evaluations=1, converged=True, message="no random effects")
    theta0 = np.full(k_vcp, np.log(start_sd))
    res = optimize.minimize(lambda t: -prob.log_posterior(t), theta0, method="Nelder-Mead",
                            bounds=[LOG_SD_BOUNDS] * k_vcp,
                            options={"xatol": xatol, "fatol": fatol, "maxfev": 400 * k_vcp})
    theta = res.x
    u, _, _ = prob.conditional_mode(theta)
    params = np.r_[u[:prob.kf], theta, u[prob.kf:]]
    at_bound = [k for k in range(k_vcp) if min(abs(theta[k] - b) for b in LOG_SD_BOUNDS) < 1e-3]
    message = str(res.message)
    if at_bound:
        message += f"; log SD of component(s) {at_bound} at the search bound {LOG_SD_BOUNDS}"
    return LaplaceFit(params=params, log_posterior=-float(res.fun), evaluations=int(res.nfev),
                      converged=bool(res.success) and not at_bound, message=message)


def _fit_flat(prob: _Problem, k_vcp: int, start_sd: float, xatol: float, fatol: float,
              sd_intervals: bool = True) -> LaplaceFit:
    res = optimize.minimize(lambda s: -prob.log_objective_sd(s), np.full(k_vcp, start_sd), method="Nelder-Mead",
                            bounds=[(0.0, SD_MAX)] * k_vcp,
                            options={"xatol": xatol, "fatol": fatol, "maxfev": 400 * k_vcp})
    sd = np.where(res.x < SD_FLOOR, 0.0, res.x)
    top = prob.log_objective_sd(sd)  # also leaves prob.u at the conditional mode for sd
    evals = int(res.nfev)
    u, _, _ = prob.conditional_mode(np.log(np.maximum(sd, SD_FLOOR)))
    params = np.r_[u[:prob.kf], np.log(np.maximum(sd, SD_FLOOR)), u[prob.kf:]]
    ci = (np.array([_lr_interval(prob, sd, k, top) for k in range(k_vcp)]) if sd_intervals
          else np.full((k_vcp, 2), np.nan))
    at_max = [k for k in range(k_vcp) if sd[k] > SD_MAX - 1e-3]
    message = str(res.message)
    if at_max:
        message += f"; SD of component(s) {at_max} at the search bound {SD_MAX}"
    return LaplaceFit(params=params, log_posterior=top, evaluations=evals, converged=bool(res.success) and not at_max,
                      message=message, sd=sd, sd_ci=ci, problem=prob)


def log_sd_covariance(model, params: np.ndarray, h: float = 1e-3) -> np.ndarray:
    """Covariance of the log SDs: inverse of the negative Hessian of the Laplace log marginal posterior at
    ``params`` (central differences); NaN where that Hessian is not positive definite. For the log-normal SD
    prior (``fit_laplace(..., flat_sd_prior=False)``)."""
    prob = _Problem(model, flat_sd_prior=False)
    kf, k = prob.kf, int(model.k_vcp)
    theta = np.asarray(params[kf:kf + k], dtype=float)
    prob.u = np.r_[params[:kf], params[kf + k:]]
    f = prob.log_posterior
    E = np.eye(k) * h
    Hm = np.array([[(f(theta + E[i] + E[j]) - f(theta + E[i] - E[j]) - f(theta - E[i] + E[j]) + f(theta - E[i] - E[j]))
                    / (4 * h * h) for j in range(k)] for i in range(k)])
    Hm = -(Hm + Hm.T) / 2
    if np.any(~np.isfinite(Hm)) or np.linalg.eigvalsh(Hm).min() <= 0:
        return np.full((k, k), np.nan)
    return np.linalg.inv(Hm)
