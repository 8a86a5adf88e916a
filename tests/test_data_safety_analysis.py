"""The analysis is never silently wrong (issue 11): folders without session.json, sessions that ended before
their first trial, torn rows, short 'completed' sessions, impossible values, sessions lacking design_sha256."""

import json
import shutil

import pandas as pd
import pytest

from analysis.load import InputError, load_sessions
from analysis.pipeline import AnalysisOptions, run_analysis
from analysis.simulate import SimulationSpec, write_sessions
from contracts import ContractError
from contracts.session import read_trials


@pytest.fixture
def sessions(tmp_path):
    spec = SimulationSpec(n_participants=3, reps_per_cell=1, n_practice=2, n_catch=2, experiment="exp")
    folders = write_sessions(tmp_path / "sessions", spec, seed=4)
    return tmp_path / "sessions" / "exp", folders


def _info(folder, **changes):
    p = folder / "session.json"
    info = json.loads(p.read_text())
    for k, v in changes.items():
        if v is None:
            info.pop(k, None)
        else:
            info[k] = v
    p.write_text(json.dumps(info))
    return info


def _edit_trials(folder, fn):
    path = folder / "trials.csv"
    df = fn(pd.read_csv(path, dtype=str, keep_default_na=False))
    df.to_csv(path, index=False)


def test_folder_without_session_json_is_reported(sessions, tmp_path):
    root, folders = sessions
    lone = root / "sub-S09_ses-01"
    lone.mkdir()
    (lone / "session.json.tmp").write_text('{"schema": "fvmatch.se')  # killed during the first write
    (root / "sub-S08_ses-01").mkdir()  # an empty session folder
    loaded = load_sessions([root])
    assert len(loaded.sessions) == 3
    probs = {p["folder"].split("/")[-1]: p for p in loaded.problems}
    assert set(probs) == {"sub-S08_ses-01", "sub-S09_ses-01"}
    assert "session.json.tmp" in probs["sub-S09_ses-01"]["problem"] and probs["sub-S08_ses-01"]["handling"] == "not analysed"
    assert any("sub-S09_ses-01" in w for w in loaded.warnings)
    res = run_analysis([root], tmp_path / "out", AnalysisOptions(n_boot=20, fit_models=False, figures=False))
    assert len(res.info["exclusions"]["session_problems"]) == 2
    assert "sub-S09_ses-01" in (tmp_path / "out" / "report.md").read_text()


def test_session_ended_before_its_first_trial_does_not_block_the_others(sessions):
    root, folders = sessions
    (folders[1] / "trials.csv").unlink()
    _info(folders[1], status="running", n_trials_completed=0)
    loaded = load_sessions([root])
    assert len(loaded.sessions) == 2 and "before its first trial" in loaded.problems[0]["problem"]
    for f in (folders[0], folders[2]):
        (f / "trials.csv").unlink()
        _info(f, status="running", n_trials_completed=0)
    with pytest.raises(InputError, match="no session could be analysed"):
        load_sessions([root])


@pytest.mark.parametrize("cut_in", ["frame_interval_sd_ms", "onset"])
def test_torn_last_row_is_refused_by_the_reader_and_reported_by_the_analysis(cut_in, sessions):
    root, folders = sessions
    path = folders[0] / "trials.csv"
    lines = path.read_bytes().splitlines(keepends=True)
    last = lines[-1].rstrip(b"\r\n")
    cells = last.split(b",")
    n_keep = len(cells) - (1 if cut_in == "onset" else 2)  # up to the cell being written when the kill came
    torn = b",".join(cells[:n_keep]) + b"," + cells[n_keep][: max(len(cells[n_keep]) // 2, 1)]
    path.write_bytes(b"".join(lines[:-1]) + torn)
    n_complete = len(lines) - 2
    with pytest.raises(ContractError, match=f"row {n_complete + 1}: incomplete last row"):
        read_trials(folders[0])
    assert len(read_trials(folders[0], torn_last_row="drop")) == n_complete
    loaded = load_sessions([root])
    assert (loaded.trials.session_folder == str(folders[0].resolve())).sum() == n_complete
    assert any(f"row {n_complete + 1} is incomplete" in p["problem"] for p in loaded.problems)


def test_row_with_missing_cells_is_refused(sessions):
    root, folders = sessions
    path = folders[0] / "trials.csv"
    lines = path.read_text().splitlines(keepends=True)
    cells = lines[3].rstrip("\r\n").split(",")
    lines[3] = ",".join(cells[:-2]) + "\n"  # complete line, cells missing
    path.write_text("".join(lines))
    with pytest.raises(ContractError, match="row 3: .* cells but the header has"):
        load_sessions([root])


def test_completed_session_with_missing_rows_is_flagged_incomplete(sessions, tmp_path):
    root, folders = sessions
    _edit_trials(folders[2], lambda d: d.iloc[:-3])
    loaded = load_sessions([root])
    assert any("marked completed but trials.csv holds" in p["problem"] for p in loaded.problems)
    res = run_analysis([root], tmp_path / "out", AnalysisOptions(n_boot=20, fit_models=False, figures=False,
                                                                    incomplete="exclude"))
    inc = res.info["exclusions"]["incomplete_sessions"]
    assert [i["participant"] for i in inc] == [json.loads((folders[2] / "session.json").read_text())["participant"]]
    assert inc[0]["handling"] == "session excluded"


@pytest.mark.parametrize("col, value, message", [
    ("n_images", "7", r"column 'n_images', row 4: 7 is not one of the design's n_images \[1, 3, 5\]"),
    ("trial_index", "999", r"column 'trial_index', row 4: 999 is outside the session's plan"),
    ("rt_confirm", "inf", r"column 'rt_confirm', row 4: inf is not a finite time >= 0 s"),
    ("rt_first_click", "-1.5", r"column 'rt_first_click', row 4: -1.5 is not a finite time >= 0 s"),
])
def test_values_outside_the_sessions_design_are_refused(col, value, message, sessions):
    root, folders = sessions
    for f in folders:  # a design recorded as the experiment records it (sim sessions record their simulator spec)
        info = json.loads((f / "session.json").read_text())
        _info(f, design={**info["design"], "design": {"n_images": [1, 3, 5], "trial_types": ["exemplar", "feature_vis"]},
                         "practice": {"trials": 2, "n_images": [3]}, "catch": {"per_block": 1, "n_images": 3}})
    assert len(load_sessions([root]).sessions) == 3
    _edit_trials(folders[1], lambda d: d.assign(**{col: d[col].where(d.index != 3, value)}))
    with pytest.raises(ContractError, match=f"sub-S02_ses-01/trials.csv: {message}"):
        load_sessions([root])


def test_session_without_design_sha256_is_not_called_a_different_design(sessions):
    root, folders = sessions
    sha = "a" * 64
    for f in folders:
        _info(f, design_sha256=sha)
    _info(folders[0], design_sha256=None)  # written before session schema 1.1
    loaded = load_sessions([root])
    assert any("lack design_sha256" in w for w in loaded.warnings)
    d = json.loads((folders[0] / "session.json").read_text())["design"]
    _info(folders[0], design={**d, "spec": {**d["spec"], "n_catch": 9}})  # and really a different design
    with pytest.raises(InputError, match="different designs.*lack design_sha256"):
        load_sessions([root])
