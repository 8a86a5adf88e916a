"""The Laplace estimator of the variance components (analysis.laplace), checked against statsmodels' model
definition and against brute-force numerical integration."""

import numpy as np
import pytest
from scipy import sparse
from scipy.special import expit, logsumexp
from statsmodels.genmod.bayes_mixed_glm import BinomialBayesMixedGLM

from analysis.laplace import _Problem, fit_laplace, log_sd_covariance


def _grouped_model(n_levels=5, n_per_level=200, sd=0.7, beta=0.4, seed=0):
    """Intercept-only logistic model with one random intercept (a factor with ``n_levels`` levels)."""
    rng = np.random.default_rng(seed)
    level = np.repeat(np.arange(n_levels), n_per_level)
    b = rng.normal(0, sd, n_levels)
    y = (rng.random(len(level)) < expit(beta + b[level])).astype(float)
    Z = sparse.csr_array((np.ones(len(level)), (np.arange(len(level)), level)), shape=(len(level), n_levels))
    model = BinomialBayesMixedGLM(y, np.ones((len(y), 1)), Z, np.zeros(n_levels, int), vcp_p=1.0, fe_p=2.0)
    return model, y, level


def test_fixed_and_random_effects_sit_at_the_conditional_posterior_mode():
    """At the fit, statsmodels' own log-posterior gradient in (fixed, random effects) vanishes: the objective
    maximised for each theta is exactly the model's posterior."""
    model, _, _ = _grouped_model(n_levels=8, n_per_level=60, seed=1)
    fit = fit_laplace(model)
    assert fit.converged, fit.message
    grad = model.logposterior_grad(fit.params)
    kf, kp = model.k_fep, model.k_vcp
    assert np.abs(np.r_[grad[:kf], grad[kf + kp:]]).max() < 1e-6
    assert np.abs(grad[kf:kf + kp]).max() > 1e-3  # the SDs are not at the joint mode (they are integrated)


@pytest.mark.parametrize("flat", [True, False])
def test_marginal_posterior_of_the_sd_matches_numerical_integration(flat):
    """log p(theta | y) up to a constant: the Laplace approximation against the exact integral over the fixed
    effect and every random effect (nested 1-d quadrature; the levels are independent given beta). flat: the
    default flat prior on the SD (the restricted likelihood); else the N(0, 1) prior on log SD."""
    model, y, level = _grouped_model()
    n_levels = level.max() + 1
    k = np.bincount(level, weights=y)
    n = np.bincount(level).astype(float)
    prob = _Problem(model, flat_sd_prior=flat)
    thetas = np.log(np.linspace(0.25, 2.0, 15))
    laplace = np.array([prob.log_posterior(np.array([t])) for t in thetas])

    beta = np.linspace(-6, 6, 1201)
    z = np.linspace(-8, 8, 1601)  # standardised random effect, b = sd * z
    dz, dbeta = z[1] - z[0], beta[1] - beta[0]
    exact = []
    for t in thetas:
        eta = beta[:, None] + np.exp(t) * z[None, :]  # beta x z
        log_p1, log_p0 = -np.logaddexp(0, -eta), -np.logaddexp(0, eta)
        per_level = [logsumexp(k[j] * log_p1 + (n[j] - k[j]) * log_p0 - z**2 / 2, axis=1) + np.log(dz / np.sqrt(2 * np.pi))
                     for j in range(n_levels)]
        log_lik_beta = np.sum(per_level, axis=0) - beta**2 / (2 * 2.0**2)
        exact.append(logsumexp(log_lik_beta) + np.log(dbeta) - (0 if flat else t**2 / 2))
    exact = np.array(exact)
    rel_l, rel_e = laplace - laplace.max(), exact - exact.max()
    assert np.abs(rel_l - rel_e).max() < 0.01, np.c_[np.exp(thetas), rel_l, rel_e]
    assert abs(thetas[np.argmax(laplace)] - thetas[np.argmax(exact)]) <= np.diff(thetas).max()


def test_sd_interval_contains_the_estimate_and_narrows_with_more_levels():
    widths = []
    for n_levels in (6, 40):
        model, _, _ = _grouped_model(n_levels=n_levels, n_per_level=80, seed=3)
        fit = fit_laplace(model)
        C = log_sd_covariance(model, fit.params)
        assert np.isfinite(C).all() and C[0, 0] > 0
        widths.append(np.sqrt(C[0, 0]))
    assert widths[1] < 0.6 * widths[0]


@pytest.mark.parametrize("n_levels", [3, 30])
def test_search_converges_inside_the_bounds(n_levels):
    model, _, _ = _grouped_model(n_levels=n_levels, n_per_level=50, sd=0.01, seed=4)  # SD near zero: the prior holds it
    fit = fit_laplace(model)
    assert fit.converged, fit.message
    assert np.exp(fit.params[1]) < 0.5
