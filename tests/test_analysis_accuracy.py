"""Simulator structure, chance levels of 3-way matching, exclusions and the bootstrap."""

import numpy as np
import pandas as pd

from analysis.accuracy import condition_accuracy, participant_accuracy
from analysis.exclusions import apply_exclusions
from analysis.glmm import ModelOptions, fit_trial_glmm
from analysis.load import load_sessions
from analysis.simulate import SimulationSpec, simulate_trials, write_sessions
from contracts.session import parse_int_list, read_trials


def test_simulated_trials_are_permutations_and_pass_the_contract(tmp_path):
    spec = SimulationSpec(n_participants=2, reps_per_cell=2, experiment="perm")
    folders = write_sessions(tmp_path, spec, seed=3)
    df = read_trials(folders[0])  # the contract reader checks correct_i against candidate_units/assignment
    assert set(df.n_correct) <= {0, 1, 3} and (df.n_correct == 3).eq(df.trial_correct).all()
    assert df.is_practice.sum() == spec.n_practice and df.is_catch.sum() == spec.n_catch
    assert df.trial_index.tolist() == list(range(len(df)))
    for cu, a, n in zip(df.candidate_units, df.assignment, df.n_correct):
        cand, asg = parse_int_list(cu), parse_int_list(a)
        assert sum(cand[asg[i]] == i for i in range(3)) == n
    main = df[~df.is_practice & ~df.is_catch]
    assert main.groupby(["trial_type", "layer_group", "n_images"]).size().eq(spec.reps_per_cell).all()
    for i in range(3):  # the three units of a trial are distinct and from the trial's layer group
        assert (main[f"unit_{i}"] != main[f"unit_{(i + 1) % 3}"]).all()


def test_random_observer_is_at_chance():
    spec = SimulationSpec(n_participants=40, reps_per_cell=4, random_observer=True)
    trials, _ = simulate_trials(spec, seed=21)
    main = trials[~trials.is_practice & ~trials.is_catch]
    n = len(main)
    # A uniform permutation: rows right 1/3, trial right 1/6; n_correct 0/1/3 with prob 1/3, 1/2, 1/6.
    row_acc = main.n_correct.sum() / (3 * n)
    assert abs(row_acc - 1 / 3) < 3 * np.sqrt(1 / 9 / n)  # var(n_correct) = 1 for a uniform permutation
    assert abs(main.trial_correct.mean() - 1 / 6) < 3 * np.sqrt(5 / 36 / n)
    freq = main.n_correct.value_counts(normalize=True)
    assert abs(freq[0] - 1 / 3) < 0.03 and abs(freq[1] - 1 / 2) < 0.03 and 2 not in freq
    part = participant_accuracy(main)
    cond = condition_accuracy(part, n_boot=1000, seed=0)
    covered = (cond.ci_low <= cond.chance) & (cond.chance <= cond.ci_high)
    assert covered.mean() > 0.85, cond[~covered]
    assert set(cond.chance.round(4)) == {0.3333, 0.1667}
    fit = fit_trial_glmm(main, ModelOptions(n_as="factor"))
    means = fit.contrasts[fit.contrasts.contrast.str.startswith("mean |")]
    assert ((means.prob_ci_low < 1 / 6) & (1 / 6 < means.prob_ci_high)).mean() >= 5 / 6
    assert fit.tests.set_index("test").loc["layer group (main effect)", "p_value"] > 0.001


def test_exclusions_catch_practice_incomplete(tmp_path):
    spec = SimulationSpec(n_participants=6, reps_per_cell=1, n_catch=8, n_practice=3, n_inattentive=2, n_aborted=1,
                          experiment="ex")
    write_sessions(tmp_path, spec, seed=8)
    loaded = load_sessions([tmp_path / "ex"])
    res = apply_exclusions(loaded.trials, loaded.sessions, min_catch_accuracy=0.7, incomplete="include")
    assert [e["participant"] for e in res.summary["excluded_participants"]] == ["S05", "S06"]
    assert res.summary["practice_trials_dropped"] == 6 * 3  # the aborted session stops half-way, after practice
    assert [i["participant"] for i in res.summary["incomplete_sessions"]] == ["S01"]
    assert not res.trials.is_practice.any() and not res.trials.is_catch.any()
    assert set(res.trials.participant) == {"S01", "S02", "S03", "S04"}
    dropped = apply_exclusions(loaded.trials, loaded.sessions, min_catch_accuracy=0.7, incomplete="exclude")
    assert set(dropped.trials.participant) == {"S02", "S03", "S04"}
    assert dropped.summary["incomplete_sessions"][0]["handling"] == "session excluded"
    none = apply_exclusions(loaded.trials, loaded.sessions, min_catch_accuracy=0.0)
    assert none.summary["excluded_participants"] == []


def test_bootstrap_is_seeded_and_sane():
    trials, _ = simulate_trials(SimulationSpec(n_participants=8, reps_per_cell=2), seed=2)
    main = trials[~trials.is_practice & ~trials.is_catch]
    part = participant_accuracy(main)
    a, b = condition_accuracy(part, n_boot=300, seed=5), condition_accuracy(part, n_boot=300, seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert ((a.ci_low <= a.accuracy) & (a.accuracy <= a.ci_high)).all()
    assert (a.n_participants == 8).all() and len(a) == 2 * 18
    assert list(a.layer_group[:9]) == ["early"] * 3 + ["middle"] * 3 + ["late"] * 3
    row = a[a.level == "row"].n_observations
    assert (row == 8 * 2 * 3).all()
    one = condition_accuracy(part[part.participant == "S01"], n_boot=100, seed=0)
    assert one.ci_low.isna().all() and one.accuracy.notna().all()
