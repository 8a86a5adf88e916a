"""Levels of the reported tests and coverage of the intervals, on both generators of analysis.simulate
(the primary GLMM's own model and an independent row-recognition process), and a zero-SD case.
The slow studies print the tables quoted in analysis/README.md."""

import dataclasses
import os

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis.glmm import ModelOptions, fit_trial_glmm
from analysis.power import coverage, rejection_rates, run_study, sd_coverage
from analysis.simulate import SimulationSpec, simulate_trials, true_fixed_effects

NULL = dict(b_middle=0.0, b_late=0.0, b_fv_middle=0.0, b_fv_late=0.0)
# 200 replicates per model and generator (the standard). FVMATCH_SLOW_REPLICATES overrides it for a
# quicker look (the per-row model takes ~5-15 s per replicate on 2 shared cores).
N_REPLICATES = int(os.environ.get("FVMATCH_SLOW_REPLICATES", "200"))


def _null_spec(generator: str) -> SimulationSpec:
    # the default design (72 main trials per participant), 24 participants, 10 units per layer group
    return SimulationSpec.from_design(n_participants=24, generator=generator, **NULL)


def _main(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[~trials.is_practice & ~trials.is_catch]


def coverage_bounds(replicates: int, terms: int, nominal: float = 0.95, familywise: float = 0.01) -> tuple[float, float]:
    """Range of one term's observed coverage that a correctly calibrated 95% interval leaves with probability
    1 - familywise/terms on each side (binomial over replicates, Bonferroni over terms). A fixed floor of 0.90 at 100
    replicates fails a perfectly calibrated interval with probability 0.0115 per term, about 0.19 for one of 18 terms:
    the glmm_trial study failed that way (n[T.5] 0.89 at 100 replicates; 0.925 at 200 and 0.938 [0.909, 0.959] at
    400, analysis/README.md). At 200 replicates and 18 terms the range is [0.89, 0.995]."""
    lo = stats.binom.ppf(familywise / (2 * terms), replicates, nominal)
    hi = stats.binom.isf(familywise / (2 * terms), replicates, nominal)
    return float(lo / replicates), float(min(hi, replicates) / replicates)


# ---------------------------------------------------------------------------------------------------------
# fast checks of the machinery

def test_rejection_rates_and_coverage_tables():
    tests = pd.DataFrame({"seed": [1, 2, 3, 4], "model": "m", "test": "t", "p_value": [0.01, 0.2, np.nan, 0.04]})
    r = rejection_rates(tests, 0.05).iloc[0]
    assert r.rejection == 0.5 and r.replicates == 4  # a failed fit (NaN) counts as not rejecting
    fixed = pd.DataFrame({"seed": [1, 2], "model": "m", "term": "a", "estimate": [0.1, -0.1], "se": 0.1,
                          "ci_low": [-0.1, -0.3], "ci_high": [0.3, -0.05]})
    c = coverage(fixed, {"a": 0.0}).iloc[0]
    assert c.coverage == 0.5 and c.mean_estimate == pytest.approx(0.0)
    rnd = pd.DataFrame({"seed": [1, 2], "model": "m", "component": "unit", "sd": [0.0, 0.2],
                        "sd_ci_low": [0.0, 0.05], "sd_ci_high": [0.3, 0.5]})
    s = sd_coverage(rnd, {"unit": 0.0}).iloc[0]
    assert s.coverage == 0.5 and s.interval_reaches_0 == 0.5


def test_coverage_bounds_follow_the_binomial():
    lo, hi = coverage_bounds(200, 18)
    assert 0.88 <= lo <= 0.90 and hi > 0.99
    lo100, _ = coverage_bounds(100, 18)
    assert lo100 < 0.89 < 0.90  # the fixed 0.90 floor failed a calibrated interval by chance at 100 replicates
    assert coverage_bounds(2000, 18)[0] > 0.93  # more replicates, a tighter floor


def test_run_study_records_every_seed_and_model():
    spec = SimulationSpec(n_participants=6, reps_per_cell=1, units_per_group=4)
    res = run_study(spec, [3, 4], ["glmm_trial", "mixedlm_cells"])
    assert set(res.tests.seed) == {3, 4} and set(res.tests.model) == {"glmm_trial", "mixedlm_cells"}
    assert {"layer group (main effect)", "trial type x layer group (interaction)"} <= set(res.tests.test)
    with pytest.raises(ValueError, match="unknown model"):
        run_study(spec, [1], ["glmm_nope"])


@pytest.mark.parametrize("generator", ["trial", "rows"])
def test_generators_are_permutation_valid_and_selectable(generator):
    spec = SimulationSpec(n_participants=6, reps_per_cell=2, generator=generator)
    trials, _ = simulate_trials(spec, seed=2)
    assert set(trials.n_correct) <= {0, 1, 3} and 2 not in set(trials.n_correct)
    assert (trials.trial_correct == (trials.n_correct == 3)).all()
    with pytest.raises(ValueError, match="generator"):
        SimulationSpec(generator="nope")


def test_rows_generator_recognition_limits():
    """Rows recognised with certainty: every trial right. Never recognised: a uniform shuffle, 1/3 of rows and
    1/6 of trials right by luck."""
    kw = dict(n_participants=10, reps_per_cell=4, generator="rows", sd_participant=0, sd_unit=0, b_feature_vis=0,
              b_middle=0, b_late=0, b_fv_middle=0, b_fv_late=0, b_n=0)
    sure, _ = simulate_trials(SimulationSpec(intercept=20, **kw), seed=1)
    assert _main(sure).trial_correct.all()
    blind, _ = simulate_trials(SimulationSpec(intercept=-20, **kw), seed=1)
    m = _main(blind)
    assert abs(m.n_correct.mean() / 3 - 1 / 3) < 0.03 and abs(m.trial_correct.mean() - 1 / 6) < 0.03
    one, _ = simulate_trials(SimulationSpec(intercept=0, **kw), seed=1)  # p = 1/2 per row
    p = 0.5
    expected = p**3 + 3 * p**2 * (1 - p) + 3 * p * (1 - p) ** 2 / 2 + (1 - p) ** 3 / 6
    assert abs(_main(one).trial_correct.mean() - expected) < 0.04


def test_zero_sd_intervals_reach_zero():
    """Random observers (true SDs 0): the SDs are estimated at or near 0 and their intervals reach 0. With the
    former N(0, 1) prior on log SD they were 0.09-0.25 with intervals excluding 0."""
    trials, _ = simulate_trials(SimulationSpec(n_participants=20, reps_per_cell=4, random_observer=True), seed=4)
    fit = fit_trial_glmm(_main(trials), ModelOptions())
    rnd = fit.random.set_index("component")
    assert (rnd.sd_ci_low == 0).all(), rnd
    assert (rnd.sd < 0.1).all(), rnd
    assert (rnd.sd_ci_high > rnd.sd).all()
    old = fit_trial_glmm(_main(trials), ModelOptions(vcp_prior_sd=1.0)).random.set_index("component")
    assert (old.sd_ci_low > 0).all()  # the log-normal prior (still selectable) cannot reach 0


def test_sd_interval_excludes_zero_when_the_sd_is_clear():
    spec = SimulationSpec(n_participants=30, reps_per_cell=4, units_per_group=10, sd_participant=1.0)
    trials, _ = simulate_trials(spec, seed=12)
    rnd = fit_trial_glmm(_main(trials), ModelOptions()).random.set_index("component")
    lo, hi = rnd.loc["participant", ["sd_ci_low", "sd_ci_high"]]
    assert 0.4 < lo < 1.0 < hi < 2.0, rnd


# ---------------------------------------------------------------------------------------------------------
# slow studies (make test-slow)

def _print(title: str, df: pd.DataFrame) -> None:
    print(f"\n{title}\n" + df.round(3).to_string(index=False))


@pytest.mark.slow
@pytest.mark.parametrize("model,generator", [
    ("glmm_trial", "trial"),
    # On the independent generator the layer test on the containment df (units - layer groups) rejected a true null
    # in 0.10 of these 200 replicates (chi-square 0.125), F on Satterthwaite df 0.03, the reported p-value 0.055
    # (issue 13; analysis/README.md).
    ("glmm_trial", "rows"),
    # The per-row model (fitted by the report only on request, since its tests fail here), re-measured under the
    # current priors on the first 100 of these seeds (issue 13; analysis/README.md). Known failures, strict so that a
    # fix asks for the marker to go:
    pytest.param("glmm_row", "trial", marks=pytest.mark.xfail(
        strict=True, reason="per-row layer test too conservative on the trial generator: 0/100 (chi-square 0/100; "
                            "its layer SEs 1.08-1.11 of the empirical SD)")),
    pytest.param("glmm_row", "rows", marks=pytest.mark.xfail(
        strict=True, reason="per-row interaction test anticonservative on the rows generator: 0.10 at 100 "
                            "replicates; type x middle-layer terms' sandwich SEs 0.78-0.84 of the empirical SD"))])
def test_reported_tests_hold_their_level_under_the_null(model, generator):
    """No layer effect and no interaction, 200 replicates: the layer and interaction tests of each reported model
    reject at 0.03-0.07 at alpha 0.05, and 95% intervals cover the known values. mixedlm_cells (removed from the
    report) is fitted with glmm_trial to record its rate."""
    spec = _null_spec(generator)
    seeds = range(20000, 20000 + N_REPLICATES) if generator == "trial" else range(30000, 30000 + N_REPLICATES)
    models = (model, "mixedlm_cells") if model == "glmm_trial" else (model,)
    opts = ModelOptions(sd_intervals=(model, generator) == ("glmm_trial", "trial"))  # SD coverage: that study only
    res = run_study(spec, seeds, models, opts, progress=True)
    if os.environ.get("FVMATCH_SLOW_OUT"):  # keep every replicate's tests and estimates for the README tables
        stem = f"{os.environ['FVMATCH_SLOW_OUT']}/null_{model}_{generator}"
        res.tests.to_csv(f"{stem}_tests.csv", index=False)
        res.fixed.to_csv(f"{stem}_fixed.csv", index=False)
    layer_tests = res.tests[res.tests.test.str.contains("layer")]
    chi2_only = layer_tests.assign(p_value=stats.chi2.sf(layer_tests.chi2, layer_tests.df.clip(lower=1)))
    rates = rejection_rates(layer_tests, 0.05).assign(at_0_10=rejection_rates(layer_tests, 0.10).rejection,
                                                      chi2_only=rejection_rates(chi2_only, 0.05).rejection)
    _print(f"{model}, {generator} generator, null, {N_REPLICATES} replicates ({res.seconds:.0f} s): rejection at 0.05",
           rates)
    # Terms involving layer are 0 by symmetry of the layer groups under both generators and both models; the
    # trial generator's other effects are exact only for glmm_trial (the row model is on another scale).
    zero = {t: 0.0 for t in res.fixed.term.unique() if "layer" in t}
    exact = true_fixed_effects(spec, "factor") if (generator, model) == ("trial", "glmm_trial") else zero
    cov = coverage(res.fixed[res.fixed.model == model], exact)
    _print(f"{model}, {generator} generator: coverage of 95% intervals", cov)
    if opts.sd_intervals:
        truth_sd = {"participant": spec.sd_participant, "unit": spec.sd_unit}
        _print("SD intervals (truth of the generator's own scale)", sd_coverage(res.random[res.random.model == model], truth_sd))
    reported = rates[rates.model == model].set_index("test").rejection
    assert 0.03 <= reported["trial type x layer group (interaction)"] <= 0.07, reported
    # The layer test: 0.03 (trial) and 0.055 (rows) on these seeds, 0.0425 and 0.05 over 400 (analysis/README.md).
    # F on Satterthwaite df, reported before, gave 0.015 and 0.03; F on the containment df 0.06 and 0.10.
    assert 0.03 <= reported["layer group (main effect)"] <= 0.07, reported
    floor, ceiling = coverage_bounds(N_REPLICATES, len(cov))
    assert cov.coverage.between(floor, ceiling).all(), (floor, ceiling, cov)
    assert 0.93 <= cov.coverage.mean() <= 0.97, cov  # the terms together: no systematic under- or over-coverage


@pytest.mark.slow
def test_zero_sd_case_over_replicates():
    """Random observers, 100 replicates: the SD intervals cover the true 0 (they reach 0) in about 95%."""
    spec = SimulationSpec.from_design(n_participants=24, random_observer=True)
    res = run_study(spec, range(40000, 40100), ["glmm_trial"], progress=True)
    sdc = sd_coverage(res.random, {"participant": 0.0, "unit": 0.0})
    _print("zero-SD case (random observers), 100 replicates", sdc)
    assert (sdc.coverage >= 0.9).all(), sdc
    rates = rejection_rates(res.tests, 0.05)
    _print("random observers: rejection at 0.05 (every effect is 0)", rates)
    within = rates[~rates.test.str.startswith("layer group")]
    assert within.rejection.between(0.01, 0.09).all(), rates
    # the layer F test is conservative when the unit SD is truly 0 (measured 0/100): never anticonservative
    assert rates.set_index("test").rejection["layer group (main effect)"] <= 0.09, rates


@pytest.mark.slow
def test_power_grows_with_participants():
    base = dataclasses.replace(SimulationSpec.from_design(), b_fv_late=-0.8)
    from analysis.power import power_grid

    p = power_grid(base, [8, 32], [10], replicates=30, seed=500)
    inter = p[p.test == "trial type x layer group (interaction)"].set_index("n_participants").rejection
    _print("power of the interaction test", p)
    assert inter[32] > inter[8]


def test_power_command_writes_table_figure_and_seeds(tmp_path):
    from analysis.power import main

    assert main(["--out", str(tmp_path), "--participants", "4", "6", "--units", "7", "--replicates", "2",
                 "--seed", "9", "--b-fv-late", "-1.0"]) == 0
    p = pd.read_csv(tmp_path / "power.csv")
    assert set(p.n_participants) == {4, 6} and (p.replicates == 2).all()
    assert {"layer group (main effect)", "trial type x layer group (interaction)"} <= set(p.test)
    assert (tmp_path / "power.png").stat().st_size > 10_000 and (tmp_path / "power.svg").is_file()
    info = __import__("json").loads((tmp_path / "power.json").read_text())
    assert info["seeds"].startswith("9..10") and info["spec"]["b_fv_late"] == -1.0
    assert info["simulated"] == "analysis.simulate:trial" and info["design"].endswith("default.toml")
    with pytest.raises(ValueError, match="units per group"):
        main(["--out", str(tmp_path), "--units", "4", "--replicates", "1"])
