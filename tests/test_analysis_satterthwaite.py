"""Satterthwaite denominator df (analysis.satterthwaite): known answers and the pieces the GLMM feeds it."""

import numpy as np
import pytest

from analysis.glmm import ModelOptions, fit_trial_glmm
from analysis.satterthwaite import contrast_ddf, cov_jacobian, sd_covariance
from analysis.simulate import SimulationSpec, simulate_trials


@pytest.mark.parametrize("nu", [4.0, 12.0, 60.0])
def test_ddf_of_a_variance_estimated_with_nu_df(nu):
    """V = sd^2 M with sd estimated like the root of a chi-square variance with nu df (var(sd) ~ sd^2 / (2 nu)):
    the Satterthwaite df of any contrast is nu, also for a 2-df test with equal components."""
    sd, M = 0.7, np.array([[2.0, 0.3], [0.3, 1.0]])
    A = np.array([[sd**2 / (2 * nu)]])
    dV = [2 * sd * M]
    assert contrast_ddf(np.array([[1.0, 0.0]]), sd**2 * M, dV, A) == pytest.approx(nu)
    assert contrast_ddf(np.eye(2), sd**2 * M, dV, A) == pytest.approx(nu)


def test_ddf_of_a_covariance_that_does_not_depend_on_the_sds():
    V = np.eye(2)
    assert contrast_ddf(np.eye(2), V, [np.zeros((2, 2))], np.array([[0.1]])) == np.inf
    assert contrast_ddf(np.eye(2), V, [], np.zeros((0, 0))) == np.inf  # every SD at the boundary
    # a component with nu <= 2 makes the whole test's ddf 2 (lmerTest's rule)
    dV = [np.diag([1.0, 0.0])]
    assert contrast_ddf(np.eye(2), V, dV, np.array([[10.0]])) == 2.0


def test_sd_covariance_of_a_quadratic_objective_and_boundary():
    C = np.array([[0.04, 0.01], [0.01, 0.09]])
    P = np.linalg.inv(C)
    sd0 = np.array([0.5, 0.8])
    f = lambda s: -0.5 * (s - sd0) @ P @ (s - sd0)  # noqa: E731
    A, comps = sd_covariance(f, sd0)
    assert list(comps) == [0, 1] and np.allclose(A, C, rtol=1e-6)
    A, comps = sd_covariance(f, np.array([0.5, 0.0]))  # an SD at 0 is held fixed
    assert list(comps) == [0] and A.shape == (1, 1)
    J = cov_jacobian(lambda s: np.diag(s**2), sd0, np.array([0, 1]))
    assert np.allclose(J[0], np.diag([1.0, 0.0])) and np.allclose(J[1], np.diag([0.0, 1.6]))


def test_sd_covariance_agrees_with_the_likelihood_ratio_interval():
    """The curvature the df rest on describes the same likelihood as the reported SD intervals: the interval's
    half-width is about 1.96 curvature SEs when it does not reach 0."""
    spec = SimulationSpec(n_participants=30, reps_per_cell=4, units_per_group=10, sd_participant=1.0)
    trials, _ = simulate_trials(spec, seed=12)
    main = trials[~trials.is_practice & ~trials.is_catch]
    from analysis import glmm

    seen = {}
    orig = glmm.sd_covariance

    def spy(objective, sd, **k):
        seen["A"], seen["comps"] = orig(objective, sd, **k)
        return seen["A"], seen["comps"]

    glmm.sd_covariance = spy
    try:
        fit = fit_trial_glmm(main, ModelOptions())
    finally:
        glmm.sd_covariance = orig
    rnd = fit.random.set_index("component")
    lo, hi = rnd.loc["participant", ["sd_ci_low", "sd_ci_high"]]
    se = np.sqrt(seen["A"][list(seen["comps"]).index(0), list(seen["comps"]).index(0)])
    assert 0.8 < (hi - lo) / (2 * 1.96 * se) < 1.25, ((hi - lo) / 2, se)
