"""Loading sessions: real folders written through the contract, and malformed input with clear errors."""

import json
import shutil

import pandas as pd
import pytest

from analysis.cli import main
from analysis.load import InputError, load_sessions
from analysis.simulate import SimulationSpec, write_sessions
from contracts import ContractError


@pytest.fixture
def sessions(tmp_path):
    spec = SimulationSpec(n_participants=3, reps_per_cell=1, n_practice=2, n_catch=2, experiment="exp")
    folders = write_sessions(tmp_path / "sessions", spec, seed=4)
    return tmp_path / "sessions" / "exp", folders


def _edit_trials(folder, fn):
    path = folder / "trials.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df = fn(df)
    df.to_csv(path, index=False)


def test_loads_folder_and_list_of_sessions(sessions):
    root, folders = sessions
    a = load_sessions([root])
    b = load_sessions([str(f) for f in folders])
    c = load_sessions([folders[0] / "session.json", folders[1] / "trials.csv"])
    assert len(a.trials) == len(b.trials) == 3 * (18 + 2 + 2)
    assert len(c.sessions) == 2
    assert a.stimulus_sets == [{"set_id": "sim-random-weights", "manifest_sha256": "0" * 64, "random_weights": True,
                              "manipulation": None}]
    assert set(a.trials.n_correct) <= {0, 1, 3} and a.warnings == []


def test_missing_column_names_file_and_column(sessions):
    root, folders = sessions
    _edit_trials(folders[1], lambda d: d.drop(columns=["n_correct"]))
    with pytest.raises(ContractError, match=r"sub-S02_ses-01/trials.csv: missing column\(s\) n_correct"):
        load_sessions([root])


def test_wrong_type_names_row_and_column(sessions):
    root, folders = sessions
    _edit_trials(folders[0], lambda d: d.assign(n_images=d.n_images.where(d.index != 2, "three")))
    with pytest.raises(ContractError, match=r"column 'n_images', row 3: 'three' is not an integer"):
        load_sessions([root])


def test_duplicate_trial_is_refused(sessions):
    root, folders = sessions
    _edit_trials(folders[2], lambda d: pd.concat([d, d.iloc[[5]]], ignore_index=True))
    with pytest.raises(ContractError, match=r"column 'trial_index', row 23: trial 5 appears twice"):
        load_sessions([root])


def test_inconsistent_outcomes_are_refused(sessions):
    root, folders = sessions

    def break_n(d):
        i = d.index[d.n_correct == "0"][0]
        d.loc[i, "n_correct"] = "1"
        return d

    _edit_trials(folders[0], break_n)
    with pytest.raises(ContractError, match=r"column 'n_correct', row \d+: 1 but correct_0..2 sum to 0"):
        load_sessions([root])


def test_ids_must_agree_with_session_json(sessions):
    root, folders = sessions
    _edit_trials(folders[0], lambda d: d.assign(participant="S99"))
    with pytest.raises(ContractError, match=r"column 'participant', row 1: 'S99' differs from session.json \('S01'\)"):
        load_sessions([root])


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: no session folders found"):
        load_sessions([tmp_path / "empty"])
    with pytest.raises(InputError, match="nope: no such file or folder"):
        load_sessions([tmp_path / "nope"])
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2


def test_mixed_stimulus_sets_refused_unless_allowed(sessions):
    root, folders = sessions
    info = json.loads((folders[2] / "session.json").read_text())
    info["stimulus_set"]["set_id"] = "other-set"
    info["stimulus_set"]["manifest_sha256"] = "1" * 64
    (folders[2] / "session.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="different stimulus sets: .*other-set.*--allow-mixed-sets"):
        load_sessions([root])
    loaded = load_sessions([root], allow_mixed_sets=True)
    assert len(loaded.stimulus_sets) == 2 and any("allow-mixed-sets" in w for w in loaded.warnings)


def test_mixed_designs_refused_unless_allowed(sessions):
    root, folders = sessions
    info = json.loads((folders[0] / "session.json").read_text())
    info["design"]["spec"]["reps_per_cell"] = 99
    info["design"]["seed"] = 12345  # seeds may differ between participants: not a different design
    (folders[0] / "session.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match="different designs"):
        load_sessions([root])
    assert len(load_sessions([root], allow_mixed_designs=True).sessions) == 3
    info["design"]["spec"]["reps_per_cell"] = 1
    (folders[0] / "session.json").write_text(json.dumps(info))
    assert load_sessions([root]).sessions.design_hash.nunique() == 1


def test_same_session_twice_is_refused(sessions, tmp_path):
    root, folders = sessions
    shutil.copytree(folders[0], tmp_path / "copy" / "sub-S01_ses-01")
    with pytest.raises(InputError, match="duplicate session"):
        load_sessions([root, tmp_path / "copy"])


def test_missing_trials_file_and_bad_session_json(sessions):
    root, folders = sessions
    (folders[0] / "trials.csv").unlink()
    with pytest.raises(ContractError, match=r"sub-S01_ses-01/trials.csv: file not found"):
        load_sessions([root])
    info = json.loads((folders[1] / "session.json").read_text())
    info["status"] = "finished"
    (folders[1] / "session.json").write_text(json.dumps(info))
    with pytest.raises(ContractError, match=r"sub-S02_ses-01/session.json: field 'status' is 'finished'"):
        load_sessions([folders[1]])
