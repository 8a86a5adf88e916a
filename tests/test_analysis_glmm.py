"""The model machinery: Hessian, sandwich, Wald tests, degenerate designs."""

import numpy as np
import pandas as pd
import pytest

from analysis import glmm
from analysis.accuracy import rows_long
from analysis.contrasts import wald
from analysis.glmm import ModelOptions, fit_bayes_glmm, fit_mixedlm_cells, fit_row_glmm, fit_trial_glmm
from analysis.simulate import SimulationSpec, simulate_trials


@pytest.fixture(scope="module")
def main_trials():
    trials, _ = simulate_trials(SimulationSpec(n_participants=16, reps_per_cell=4), seed=9)
    return trials[~trials.is_practice & ~trials.is_catch].reset_index(drop=True)


def test_analytic_hessian_matches_numerical_gradient(main_trials, monkeypatch):
    seen = {}
    orig = glmm.neg_hessian

    def spy(model, params):
        A, lik = orig(model, params)
        g = model.logposterior_grad
        num = np.empty_like(A)
        for j in range(len(params)):
            h = 1e-5 * max(1.0, abs(params[j]))
            up, dn = params.copy(), params.copy()
            up[j] += h
            dn[j] -= h
            num[:, j] = -(g(up) - g(dn)) / (2 * h)
        seen["err"] = np.abs(A - (num + num.T) / 2).max() / np.abs(A).max()
        return A, lik

    monkeypatch.setattr(glmm, "neg_hessian", spy)
    fit_trial_glmm(main_trials, ModelOptions(n_as="numeric"))
    assert seen["err"] < 1e-6


def test_sandwich_inflates_only_when_rows_are_dependent(main_trials):
    """Permutation data: rows of a trial are positively dependent, so clustered SEs exceed model SEs. With
    independent rows (same marginal accuracy), the sandwich reduces to the model covariance."""
    fit = fit_row_glmm(main_trials, ModelOptions(n_as="numeric"))
    fx = fit.fixed.set_index("term")
    ratio = fx.se / fx.se_model
    assert ratio["type[T.feature_vis]"] > 1.15 and ratio.median() > 1.1, ratio

    rows = rows_long(main_trials)
    rng = np.random.default_rng(0)
    y = (rng.random(len(rows)) < rows.correct.mean()).astype(int)  # independent Bernoulli rows
    frame = glmm.model_frame(rows, "numeric")
    p, pl = pd.factorize(rows.participant, sort=True)
    blocks = {"participant": (glmm._indicator(p, len(pl)), list(pl))}
    ind = fit_bayes_glmm("ind", "row", frame, y, blocks, ModelOptions(), clusters=rows.trial_uid.to_numpy())
    r = (ind.fixed.se / ind.fixed.se_model)
    assert 0.85 < r.median() < 1.15, r


def test_wald_test_known_values():
    b = np.array([1.0, 2.0])
    V = np.diag([0.25, 1.0])
    chi2, df, p = wald(np.eye(2), b, V)
    assert chi2 == pytest.approx(1 / 0.25 + 4 / 1.0) and df == 2
    chi2, df, _ = wald(np.array([[1.0, 0.0], [2.0, 0.0]]), b, V)  # redundant rows: rank 1
    assert df == 1 and chi2 == pytest.approx(4.0)
    assert np.isnan(wald(np.eye(2), b, np.full((2, 2), np.nan))[0])


def test_empty_cells_fall_back_to_an_estimable_design(main_trials):
    sparse = main_trials[~((main_trials.trial_type == "feature_vis") & (main_trials.layer_group == "late")
                           & (main_trials.n_images == 5))]
    fit = fit_trial_glmm(sparse, ModelOptions(n_as="factor"))
    assert "three-way interaction dropped" in " ".join(fit.warnings)
    assert fit.formula.startswith("trial_correct ~ (type + layer + n) ** 2")
    one_layer = main_trials[main_trials.layer_group == "early"]
    fit = fit_trial_glmm(one_layer, ModelOptions())
    assert "'layer' has a single level" in " ".join(fit.warnings)
    tests = fit.tests.set_index("test")
    assert tests.loc["layer group (main effect)", "df"] == 0
    assert tests.loc["layer group (main effect)", "method"].startswith("not testable")


def test_separation_and_constant_outcomes_are_reported(main_trials):
    d = main_trials.copy()
    cell = (d.trial_type == "exemplar") & (d.layer_group == "early")
    for c in ("correct_0", "correct_1", "correct_2", "trial_correct"):
        d.loc[cell, c] = True
    d.loc[cell, "n_correct"] = 3
    fit = fit_trial_glmm(d, ModelOptions())
    assert fit.status == "separation"
    assert any(w.startswith("complete separation in 3 of 18 cells: exemplar/early/1 (all correct") for w in fit.warnings)
    assert np.isfinite(fit.fixed.estimate).all() and fit.fixed.estimate.abs().max() < 40  # the prior keeps it finite
    allright = main_trials.assign(trial_correct=True, n_correct=3, correct_0=True, correct_1=True, correct_2=True)
    for fn in (fit_trial_glmm, fit_row_glmm, fit_mixedlm_cells):
        f = fn(allright, ModelOptions())
        assert f.status == "not_estimable" and f.fixed.empty, f.warnings
    solo = fit_trial_glmm(main_trials[main_trials.participant == "S01"], ModelOptions())
    assert "only one participant: no participant random effect in the model" in solo.warnings
    assert "(1|participant)" not in solo.formula


def test_mixedlm_cross_check_agrees_in_direction(main_trials):
    t = fit_trial_glmm(main_trials, ModelOptions()).fixed.set_index("term").estimate
    m = fit_mixedlm_cells(main_trials, ModelOptions()).fixed.set_index("term").estimate
    assert np.sign(t["type[T.feature_vis]"]) == np.sign(m["type[T.feature_vis]"]) == -1


def test_default_fixed_effect_prior_does_not_move_estimates():
    """12 participants of the default design: the default prior gives the estimates of a practically flat prior
    (fe_prior_sd = 1000, what glmer does) to a few hundredths of a logit. statsmodels' N(0, 2^2), the former
    default, moved them by 0.1-0.5 and depended on which levels are the reference."""
    spec = SimulationSpec.from_design(n_participants=12)
    trials, _ = simulate_trials(spec, seed=3)
    main = trials[~trials.is_practice & ~trials.is_catch]
    est = {sd: fit_trial_glmm(main, ModelOptions(fe_prior_sd=sd, sd_intervals=False)).fixed.set_index("term").estimate
           for sd in (1000.0, 2.0)}
    default = fit_trial_glmm(main, ModelOptions(sd_intervals=False)).fixed.set_index("term").estimate
    assert (default - est[1000.0]).abs().max() < 0.04, (default - est[1000.0])
    assert (est[2.0] - est[1000.0]).abs().max() > 0.1  # what the former default did


def test_layer_test_uses_satterthwaite_df_capped_by_the_units(main_trials):
    """Every test is F on Satterthwaite denominator df; the layer main effect (a between-unit contrast) has few:
    fewer than the containment df units - layer groups, which alone still rejected a true null in 10% of 200
    studies on the independent generator (issue 13). Its p-value treats only the unit-variance part of the
    contrast's variance as estimated (analysis.satterthwaite.partly_known_p_value): between the chi-square's and
    F's on Satterthwaite df, which over-corrected (1.5% level). Within-unit tests have so many df that they are
    the chi-square."""
    from scipy import stats

    from analysis.satterthwaite import Reference, partly_known_p_value

    fit = fit_trial_glmm(main_trials, ModelOptions(sd_intervals=False))
    t = fit.tests.set_index("test")
    lay = t.loc["layer group (main effect)"]
    assert 2 < lay.ddf < fit.n_units - 3 == 21, lay  # the former test used exactly 21
    assert lay.F == pytest.approx(lay.chi2 / lay.df) and "Satterthwaite" in lay.method
    assert 0.3 < lay.sd_share < 1 and 1 < lay.sd_df <= 21, lay  # mostly unit variance
    assert lay.p_value == pytest.approx(partly_known_p_value(lay.chi2, int(lay.df), Reference(lay.ddf, lay.sd_share, lay.sd_df)))
    assert stats.f.sf(lay.F, lay.df, lay.ddf) > lay.p_value > stats.chi2.sf(lay.chi2, lay.df)
    inter = t.loc["trial type x layer group (interaction)"]
    assert inter.ddf > 500 and inter.sd_share < 0.05
    assert inter.p_value == pytest.approx(stats.chi2.sf(inter.chi2, inter.df), rel=0.05)


def test_layer_test_with_the_unit_sd_at_the_boundary_is_f_on_the_containment_df():
    """A unit SD estimated at 0 carries no curvature: the layer contrast's variance then looks like Bernoulli and
    participant variance only (sd_share 0.02 here), and the partly-known reference would be nearly the chi-square,
    although the unit SD is only unseen, not known to be 0 (in the null studies such replicates rejected in most
    cases). The layer test then keeps F on the containment df, as the code's fallback intends."""
    from scipy import stats

    trials, _ = simulate_trials(SimulationSpec.from_design(n_participants=12), seed=1)
    fit = fit_trial_glmm(trials[~trials.is_practice & ~trials.is_catch], ModelOptions(sd_intervals=False))
    assert fit.random.set_index("component").sd["unit"] < 0.05  # the case: unit SD at the boundary
    lay = fit.tests.set_index("test").loc["layer group (main effect)"]
    assert lay.ddf == fit.n_units - 3 and lay.p_value == pytest.approx(stats.f.sf(lay.F, lay.df, fit.n_units - 3), rel=1e-3)


def test_layer_df_falls_back_to_the_containment_df_without_sd_curvature(main_trials):
    """With the log-normal SD prior (no restricted-likelihood curvature here) the layer test keeps F on
    (df, units - layer groups) and the within-unit tests stay chi-square."""
    fit = fit_trial_glmm(main_trials, ModelOptions(sd_intervals=False, vcp_prior_sd=1.0))
    t = fit.tests.set_index("test")
    assert t.loc["layer group (main effect)", "ddf"] == fit.n_units - 3
    assert np.isnan(t.loc["trial type x layer group (interaction)", "ddf"])
