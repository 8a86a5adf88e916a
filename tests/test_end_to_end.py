"""The three workflows chained through their real commands and files, at toy scale.

stimuli (random weights, built-in photos, 3 units per group, few steps) -> three simulated participants
in the real PsychoPy window (different counterbalance indices) -> analysis report. Needs a display
(make test runs it under Xvfb).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from contracts.results import load_results
from contracts.session import read_session_info, read_trials
from contracts.stimulus_set import load_stimulus_set

BIN = Path(sys.executable).parent


def run(*args: str, cwd: Path) -> str:
    out = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, cwd=cwd, timeout=600)
    assert out.returncode == 0, f"{args[0]} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    log = run("fvmatch-stimuli", "--out", "data/stimuli/toy", "--collection", "builtin", "--weights", "random",
              "--units-per-group", "3", "--k", "10", "--fv-per-unit", "5", "--fv-steps", "3", "--fv-size", "48",
              "--seed", "1", "--no-progress", cwd=root)
    for i, policy in enumerate(["oracle", "noisy:0.7", "random"], start=1):
        run("fvmatch-session", "--stimuli", "data/stimuli/toy", "--design", "demo", "--experiment", "toy",
            "--participant", f"sim{i:02d}", "--session", "1", "--simulate", policy, "--data-dir", "data/sessions",
            "--no-dialog", cwd=root)
    run("fvmatch-analyze", "data/sessions/toy", "--out", "data/results/toy", cwd=root)
    return root, log


def test_stimulus_set_is_complete_and_says_random_weights(pipeline):
    root, log = pipeline
    s = load_stimulus_set(root / "data/stimuli/toy")
    assert s.verify_files() == []
    assert s.random_weights and "RANDOM WEIGHTS" in log
    assert any("RANDOM WEIGHTS" in n for n in s.manifest["notes"])
    counts = s.images.groupby(["unit_id", "kind"]).size().unstack()
    assert len(s.units) == 9 and sorted(s.units.group.value_counts()) == [3, 3, 3]
    assert (counts["feature_vis"] == 5).all() and (counts["natural_max"] >= 10).all()
    assert (root / "data/collections/builtin").is_dir()


def test_sessions_record_every_trial(pipeline):
    root, _ = pipeline
    folders = sorted((root / "data/sessions/toy").iterdir())
    assert [f.name for f in folders] == ["sub-sim01_ses-01", "sub-sim02_ses-01", "sub-sim03_ses-01"]
    infos = [read_session_info(f) for f in folders]
    assert {i["status"] for i in infos} == {"completed"}
    assert len({i["design"]["counterbalance"] for i in infos}) == 3 and len({i["design_sha256"] for i in infos}) == 1
    oracle = read_trials(folders[0])
    assert len(oracle) == infos[0]["n_trials_planned"] and oracle.trial_correct.all()
    assert set(oracle.n_images[~oracle.is_practice & ~oracle.is_catch]) == {1, 3, 5}


def test_report_and_tables(pipeline):
    root, _ = pipeline
    out = root / "data/results/toy"
    info, tables = load_results(out)
    assert len(info["inputs"]["sessions"]) == 3
    acc = tables["accuracy_by_condition.csv"]
    assert set(acc.level) == {"row", "trial"} and set(acc.trial_type) == {"exemplar", "feature_vis"}
    html = (out / "report.html").read_text()
    assert "<img" in html and "data:image/png;base64" in html
    assert "untrained (random-weight) network" in html.lower() and "simulated" in html.lower()
    assert json.loads((out / "results.json").read_text())["schema"] == "fvmatch.results"
