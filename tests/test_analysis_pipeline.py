"""End to end through the CLI: simulated sessions on disk -> results in the contract layout -> report."""

import json

import pandas as pd
import pytest

from analysis.cli import main
from analysis.simulate import SimulationSpec, write_sessions
from contracts.results import load_results


@pytest.fixture(scope="module")
def demo_results(tmp_path_factory):
    """Demo-sized: 4 simulated participants, one trial per cell; one of them inattentive."""
    base = tmp_path_factory.mktemp("demo")
    spec = SimulationSpec(n_participants=4, reps_per_cell=1, n_practice=2, n_catch=4, n_inattentive=1,
                          experiment="demo")
    write_sessions(base / "sessions", spec, seed=6)
    out = base / "results"
    rc = main([str(base / "sessions" / "demo"), "--out", str(out), "--n-boot", "300", "--seed", "3"])
    assert rc == 0
    return base, out


def test_results_follow_the_contract(demo_results):
    base, out = demo_results
    info, tables = load_results(out)
    cond, part, fx = tables["accuracy_by_condition.csv"], tables["accuracy_by_participant.csv"], tables["fixed_effects.csv"]
    assert set(cond.level) == {"row", "trial"} and len(cond) == 36
    assert dict(cond.groupby("level").chance.first().round(4)) == {"row": 0.3333, "trial": 0.1667}
    assert set(part.participant) == {"S01", "S02", "S03"}  # S04 answered at random, also on catch trials
    # mixedlm_cells and glmm_row: uncalibrated tests, not reported (glmm_row on request: below)
    assert set(fx.model) == {"glmm_trial"}
    assert set(pd.read_csv(out / "model_tests.csv").model) == {"glmm_trial"}
    assert {"status", "scale", "se_method"} <= set(fx.columns)
    for rel in info["outputs"]:
        assert (out / rel).is_file()
    for stem in ("accuracy_summary", "accuracy", "rt", "model_means"):
        assert f"figures/{stem}.png" in info["outputs"] and f"figures/{stem}.svg" in info["outputs"]


def test_per_row_model_only_on_request_and_flagged_as_uncalibrated(demo_results, tmp_path):
    """glmm_row's tests do not hold their level (issue 13; analysis/README.md): the report fits it only with
    --models, says so next to its tests, and records the choice."""
    base, out = demo_results
    assert "| glmm_row |" not in (out / "report.md").read_text() and "Caution: glmm_row" not in (out / "report.md").read_text()
    both = tmp_path / "both"
    assert main([str(base / "sessions" / "demo"), "--out", str(both), "--n-boot", "50", "--no-figures",
                 "--models", "glmm_trial", "glmm_row"]) == 0
    tests = pd.read_csv(both / "model_tests.csv")
    assert set(tests.model) == {"glmm_trial", "glmm_row"}
    assert "Caution: glmm_row was fitted on request; its tests are not calibrated" in (both / "report.md").read_text()
    assert json.loads((both / "results.json").read_text())["options"]["models"] == ["glmm_trial", "glmm_row"]
    with pytest.raises(SystemExit):
        main([str(base / "sessions" / "demo"), "--out", str(tmp_path / "x"), "--models", "mixedlm_cells"])


def test_provenance_and_exclusions_recorded(demo_results):
    base, out = demo_results
    info = json.loads((out / "results.json").read_text())
    assert len(info["inputs"]["sessions"]) == 4
    assert info["inputs"]["stimulus_sets"][0]["manifest_sha256"] == "0" * 64
    assert info["inputs"]["simulated_sessions"] == 4 and info["inputs"]["random_weight_sets"] == ["sim-random-weights"]
    assert [e["participant"] for e in info["exclusions"]["excluded_participants"]] == ["S04"]
    assert info["options"]["seed"] == 3 and info["options"]["n_boot"] == 300
    assert info["software"]["statsmodels"] != "not installed" and "seaborn" in info["software"]
    assert any("only 3 participants" in w for w in info["warnings"])  # small data: surfaced, not swallowed


def test_report_states_simulation_and_is_self_contained(demo_results):
    base, out = demo_results
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for text in (md, html):
        assert "SIMULATED PARTICIPANTS" in text and "RANDOM-WEIGHT" in text
        assert "S04 (catch-trial accuracy" in text
        assert "layer group (main effect)" in text and "trial type x layer group (interaction)" in text
    assert md.index("SIMULATED PARTICIPANTS") < md.index("## Accuracy by condition")
    assert "mixedlm" not in md.lower()  # its layer test rejected a true null in 59-73% of simulations
    assert "type[T.feature_vis] is the feature-vis minus exemplar difference at the early layer" in md
    assert "model_contrasts.csv" in md and "trial_type[feature_vis]" not in md
    assert html.count("src='data:image/png;base64,") == 4 and "src='figures/" not in html
    assert "![" in md and "(figures/accuracy.png)" in md


def test_same_inputs_same_numbers(demo_results, tmp_path):
    base, out = demo_results
    assert main([str(base / "sessions" / "demo"), "--out", str(tmp_path), "--n-boot", "300", "--seed", "3",
                 "--no-models", "--no-figures"]) == 0
    a = pd.read_csv(out / "accuracy_by_condition.csv")
    b = pd.read_csv(tmp_path / "accuracy_by_condition.csv")
    pd.testing.assert_frame_equal(a, b)
    _, tables = load_results(tmp_path)
    assert tables["fixed_effects.csv"].empty


def test_unestimable_models_are_reported_not_fatal(tmp_path, capsys):
    spec = SimulationSpec(n_participants=2, reps_per_cell=1, n_catch=0, intercept=15.0, b_feature_vis=0, b_middle=0,
                          b_late=0, b_fv_middle=0, b_fv_late=0, b_n=0, sd_participant=0, sd_unit=0, experiment="oracle")
    write_sessions(tmp_path / "s", spec, seed=1)
    assert main([str(tmp_path / "s" / "oracle"), "--out", str(tmp_path / "r"), "--n-boot", "100"]) == 0
    err = capsys.readouterr().err
    assert "warning: glmm_trial: not estimable" in err
    _, tables = load_results(tmp_path / "r")
    fx = tables["fixed_effects.csv"]
    assert (fx.status == "not_estimable").all() and (fx.term == "(not estimable)").all() and fx.estimate.isna().all()
    md = (tmp_path / "r" / "report.md").read_text()
    assert "glmm_trial — not_estimable" in md and "(model not estimable)" in md


def test_everyone_excluded_still_writes_valid_results(tmp_path, capsys):
    spec = SimulationSpec(n_participants=2, reps_per_cell=1, n_catch=4, n_inattentive=2, experiment="inatt")
    write_sessions(tmp_path / "s", spec, seed=2)
    assert main([str(tmp_path / "s" / "inatt"), "--out", str(tmp_path / "r"), "--n-as", "numeric"]) == 0
    assert "no trials left to analyse" in capsys.readouterr().err
    info, tables = load_results(tmp_path / "r")
    assert all(t.empty for t in tables.values())
    assert len(info["exclusions"]["excluded_participants"]) == 2
    assert "S01 (catch-trial accuracy" in (tmp_path / "r" / "report.md").read_text()


def test_simulate_follows_the_default_design(tmp_path):
    """--simulate N: the trial counts of experiment/designs/default.toml (72 main trials, 4 catch, 4 practice per
    participant; 10 units per layer group), recorded in the sessions."""
    out = tmp_path / "r"
    assert main(["--simulate", "3", "--out", str(out), "--n-boot", "50", "--no-models", "--no-figures"]) == 0
    from contracts.session import read_trials

    folders = sorted((out / "sessions" / "sim").iterdir())
    t = read_trials(folders[0] / "trials.csv")
    assert (len(t), int(t.is_practice.sum()), int(t.is_catch.sum())) == (80, 4, 4)
    main_trials = t[~t.is_practice & ~t.is_catch]
    assert main_trials.groupby(["trial_type", "layer_group", "n_images"]).size().eq(4).all()
    assert len({u for c in ("unit_0", "unit_1", "unit_2") for u in t[c]}) == 30
    info = json.loads((folders[0] / "session.json").read_text())
    assert info["design"]["spec"]["design"].endswith("experiment/designs/default.toml")


def test_simulate_takes_a_design_file_and_names_a_bad_one(tmp_path, capsys):
    from experiment.config import DESIGNS_DIR

    text = (DESIGNS_DIR / "default.toml").read_text().replace("trials_per_cell = 4", "trials_per_cell = 2")
    (tmp_path / "lab.toml").write_text(text)
    out = tmp_path / "r"
    assert main(["--simulate", "2", "--design", str(tmp_path / "lab.toml"), "--out", str(out), "--no-models",
                 "--no-figures", "--n-boot", "20"]) == 0
    info = json.loads((out / "results.json").read_text())
    assert info["exclusions"]["n_trials_analysed"] == 2 * 36
    assert main(["--simulate", "2", "--design", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "x")]) == 2
    assert "nope.toml" in capsys.readouterr().err
    assert main(["--simulate", "2", "--units-per-group", "4", "--out", str(tmp_path / "y")]) == 2
    assert "units per group" in capsys.readouterr().err


def test_analysis_imports_neither_torch_nor_psychopy_visual():
    """--simulate reads the design through experiment.config: the analysis must stay light."""
    import subprocess
    import sys

    code = ("import sys; import analysis.cli, analysis.pipeline, analysis.power, analysis.simulate; "
            "from analysis.simulate import SimulationSpec; SimulationSpec.from_design(); "
            "bad = [m for m in ('torch', 'psychopy.visual', 'psychopy') if m in sys.modules]; print(bad); "
            "sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
