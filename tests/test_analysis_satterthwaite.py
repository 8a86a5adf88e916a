"""Satterthwaite denominator df (analysis.satterthwaite): known answers and the pieces the GLMM feeds it."""

import numpy as np
import pytest

from analysis.glmm import ModelOptions, fit_trial_glmm
from scipy import stats

from analysis.satterthwaite import Reference, contrast_ddf, contrast_reference, cov_jacobian, partly_known_p_value, sd_covariance
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


def test_reference_splits_the_variance_into_a_known_and_an_estimated_part():
    """V = B + sd^2 M (B: the Bernoulli part, no SD in it): the SD part's share of l'Vl and its df (nu, as for a
    variance estimated with nu df); Satterthwaite's ddf of the whole is smaller by the share squared."""
    sd, nu = 0.6, 9.0
    B, M = np.diag([0.02, 0.03]), np.array([[0.05, 0.01], [0.01, 0.08]])
    A = np.array([[sd**2 / (2 * nu)]])
    l = np.array([[1.0, 0.0]])
    ref = contrast_reference(l, B + sd**2 * M, [2 * sd * M], A, np.array([sd]))
    share = sd**2 * 0.05 / (0.02 + sd**2 * 0.05)
    assert ref.sd_share == pytest.approx(share) and ref.sd_df == pytest.approx(nu)
    assert ref.ddf == pytest.approx(nu / share**2)
    capped = ref.capped(5.0)
    assert capped.sd_df == 5.0 and capped.ddf == 5.0 and capped.sd_share == ref.sd_share
    none = contrast_reference(l, B, [np.zeros((2, 2))], A, np.array([sd]))  # V independent of the SD
    assert none.sd_share == 0 and none.sd_df == np.inf


@pytest.mark.parametrize("q", [1, 2])
def test_partly_known_p_value_is_f_when_all_estimated_and_chi2_when_none(q):
    for chi2 in (0.3, 4.0, 15.0):
        for nu in (0.7, 4.0, 30.0):
            assert partly_known_p_value(chi2, q, Reference(nu, 1.0, nu)) == pytest.approx(stats.f.sf(chi2 / q, q, nu), rel=1e-3, abs=1e-6)
        assert partly_known_p_value(chi2, q, Reference(5.0, 0.0, 5.0)) == pytest.approx(stats.chi2.sf(chi2, q))
    # in between for a share in between, and monotone in it
    ps = [partly_known_p_value(8.0, q, Reference(6.0, f, 6.0)) for f in (0.0, 0.3, 0.7, 1.0)]
    assert ps == sorted(ps) and ps[0] < ps[-1]


@pytest.mark.parametrize("share, nu", [(0.8, 4.0), (0.5, 12.0)])
def test_partly_known_p_value_is_uniform_under_its_model(share, nu):
    """Wald statistics made exactly as the reference assumes (contrast ~ N(0, 1), its variance estimated as
    1 - f + f s, s ~ chi2_nu / nu): p-values uniform, so a 5% test rejects 5%. F on Satterthwaite's df of the whole
    variance (nu / f^2) rejects fewer: the over-correction the partly known reference removes."""
    rng = np.random.default_rng(3)
    n, q = 2000, 2
    z2 = rng.chisquare(q, n)
    s = rng.chisquare(nu, n) / nu
    chi2 = z2 / (1 - share + share * s)
    ref = Reference(nu / share**2, share, nu)
    p = np.array([partly_known_p_value(c, q, ref) for c in chi2])
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert abs(np.mean(p < 0.05) - 0.05) < 0.012
    p_f = stats.f.sf(chi2 / q, q, ref.ddf)
    assert np.mean(p_f < 0.05) < np.mean(p < 0.05)
