"""Each file contract: write one, read it back, and reject malformed files with a clear message."""

import json
import shutil

import pandas as pd
import pytest

from contracts import ContractError
from contracts import results as R
from contracts import session as S
from contracts.stimulus_set import load_stimulus_set


# ---- 1. stimulus set -------------------------------------------------------------------------

def test_stimulus_set_round_trip(fixture_set):
    s = load_stimulus_set(fixture_set)
    assert s.set_id == "fixture-set" and s.random_weights
    assert len(s.units) == 12 and set(s.units.group) == {"early", "middle", "late"}
    assert set(s.images.kind) == {"natural_max", "natural_min", "feature_vis"}
    assert s.verify_files() == []
    top = s.unit_images(s.units.unit_id[0], "natural_max")
    assert list(top["rank"]) == list(range(10)) and top.activation.is_monotonic_decreasing


@pytest.fixture
def set_copy(fixture_set, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(fixture_set, dst)
    return dst


def test_stimulus_set_tampered_image_is_reported(set_copy):
    s = load_stimulus_set(set_copy)
    victim = s.images.file.iloc[3]
    (set_copy / victim).write_bytes(b"not the same image")
    (set_copy / s.images.file.iloc[5]).unlink()
    problems = load_stimulus_set(set_copy).verify_files()
    assert f"changed file (sha256 differs from manifest): {victim}" in problems
    assert any(p.startswith("missing file: ") and s.images.file.iloc[5] in p for p in problems)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.pop("layer_groups"), "missing field 'layer_groups'"),
        (lambda m: m.update(schema_version="2.0"), "schema_version 2.0 is not supported"),
        (lambda m: m.update(random_weights=False), "'random_weights' disagrees"),
        (lambda m: m["model"]["weights"].update(source="magic"), "model.weights.source"),
    ],
)
def test_stimulus_set_bad_manifest(set_copy, edit, message):
    m = json.loads((set_copy / "manifest.json").read_text())
    edit(m)
    (set_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ContractError, match=message) as e:
        load_stimulus_set(set_copy)
    assert "manifest.json" in str(e.value)


def test_stimulus_set_bad_images_table(set_copy):
    df = pd.read_csv(set_copy / "images.csv")
    df.loc[4, "kind"] = "natural_mid"
    df.to_csv(set_copy / "images.csv", index=False)
    with pytest.raises(ContractError, match=r"images.csv: column 'kind', row 5: 'natural_mid'"):
        load_stimulus_set(set_copy)
    df.loc[4, "kind"] = "natural_max"
    df.loc[4, "file"] = "../../etc/passwd"
    df.to_csv(set_copy / "images.csv", index=False)
    with pytest.raises(ContractError, match="must be a relative path inside the set"):
        load_stimulus_set(set_copy)


def test_stimulus_set_not_json(set_copy):
    (set_copy / "manifest.json").write_text("{broken")
    with pytest.raises(ContractError, match="manifest.json: not valid JSON"):
        load_stimulus_set(set_copy)


# ---- 2. session data -------------------------------------------------------------------------

def trial_row(i: int, cand=(2, 0, 1), assign=(1, 2, 0)) -> dict:
    row = {c: "" for c in S.TRIAL_COLUMNS}
    correct = [cand[assign[r]] == r for r in range(3)]
    row.update(experiment="demo", participant="P01", session=1, trial_index=i, block=0, is_practice=False,
               is_catch=False, trial_type="exemplar", layer_group="early", n_images=3,
               unit_0="a_c0001", unit_1="a_c0002", unit_2="a_c0003", layer_0="a", layer_1="a", layer_2="a",
               channel_0=1, channel_1=2, channel_2=3, candidate_units=list(cand), assignment=list(assign),
               correct_0=correct[0], correct_1=correct[1], correct_2=correct[2], n_correct=sum(correct),
               trial_correct=all(correct), rt_first_click=1.25, rt_confirm=4.5, paused_s=0.0, clicks=[[1.25, "candidate", 0]],
               stimuli=[{"side": "reference", "row": 0, "unit": "a_c0001", "file": "x.png", "x": -3.0, "y": 2.0}],
               frames=270, frames_dropped=0, frame_interval_mean_ms=16.7, frame_interval_sd_ms=0.2,
               onset=S.now_iso())
    return row


def session_info(**over) -> dict:
    info = dict(experiment="demo", participant="P01", session=1, status="running", started=S.now_iso(), ended=None,
                stimulus_set={"set_id": "s", "path": "data/stimuli/s", "manifest_sha256": "0" * 64, "random_weights": True},
                design={"seed": 3}, seed=3, monitor={"name": "test", "distance_cm": 60, "width_cm": 50, "resolution": [1920, 1080]},
                software={}, n_trials_planned=10, n_trials_completed=0, frame_stats={}, simulated="oracle")
    info.update(over)
    return info


def test_session_round_trip(tmp_path):
    folder = S.session_dir(tmp_path, "demo", "P01", 1)
    assert folder == tmp_path / "demo" / "sub-P01_ses-01"
    folder.mkdir(parents=True)
    S.write_session_info(folder, session_info())
    with S.TrialLog(folder / S.TRIALS_FILE) as log:
        log.append(trial_row(0))
        log.append(trial_row(1, assign=(2, 0, 1)))  # candidate rows 2,0,1 -> units 1,2,0: all wrong
    with S.TrialLog(folder / S.TRIALS_FILE) as log:  # a resumed session appends to the same table
        log.append(trial_row(2, assign=(1, 0, 2)))
    df = S.read_trials(folder)
    assert list(df.trial_index) == [0, 1, 2]
    assert list(df.n_correct) == [3, 0, 1] and df.trial_correct.tolist() == [True, False, False]
    assert df.rt_confirm.dtype == float and df.is_practice.dtype == bool
    assert json.loads(df.stimuli[0])[0]["file"] == "x.png"
    assert S.read_session_info(folder)["simulated"] == "oracle"


def test_tables_written_before_1_2_read_with_unknown_pauses(tmp_path):
    """A 1.1 table (no paused_s) is still analysable: paused_s reads as NaN (unknown, not zero). A 1.2 run
    does not append to it: the columns would disagree."""
    p = tmp_path / "trials.csv"
    with S.TrialLog(p) as log:
        log.append(trial_row(0, assign=(1, 0, 2)))
    pd.read_csv(p, dtype=str, keep_default_na=False).drop(columns="paused_s").to_csv(p, index=False)
    df = S.read_trials(p)
    assert list(df.columns) == list(S.TRIAL_COLUMNS) and df.paused_s.isna().all() and df.n_correct.tolist() == [1]
    with pytest.raises(ContractError, match="lacks paused_s: it was written by an older fvmatch"):
        S.TrialLog(p)


def test_trial_log_drops_half_written_row(tmp_path):
    p = tmp_path / "trials.csv"
    with S.TrialLog(p) as log:
        log.append(trial_row(0))
    with open(p, "a") as f:
        f.write("demo,P01,1,1,0,0,0,exem")  # killed mid-write
    with S.TrialLog(p) as log:
        log.append(trial_row(1))
    assert list(S.read_trials(p).trial_index) == [0, 1]


@pytest.mark.parametrize("bad", ["../evil", "a/b", "", "P 01", "x" * 65, "..", "é"])
def test_ids_cannot_escape_the_data_folder(tmp_path, bad):
    with pytest.raises(ValueError, match="invalid participant id"):
        S.session_dir(tmp_path, "demo", bad, 1)


def test_session_malformed_files(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    with S.TrialLog(folder / S.TRIALS_FILE) as log:
        log.append(trial_row(0))
        log.append(trial_row(0))
    with pytest.raises(ContractError, match="trials.csv: column 'trial_index', row 2: trial 0 appears twice"):
        S.read_trials(folder)
    df = pd.read_csv(folder / S.TRIALS_FILE).drop(columns=["rt_confirm"]).iloc[:1]
    df.to_csv(folder / S.TRIALS_FILE, index=False)
    with pytest.raises(ContractError, match="missing column\\(s\\) rt_confirm"):
        S.read_trials(folder)
    (folder / S.TRIALS_FILE).write_text("")
    with pytest.raises(ContractError, match="trials.csv: file is empty"):
        S.read_trials(folder)
    with pytest.raises(ContractError, match="field 'status'"):
        S.write_session_info(folder, session_info(status="done"))


def test_session_inconsistent_correctness(tmp_path):
    p = tmp_path / "trials.csv"
    row = trial_row(0)
    row["correct_0"] = not row["correct_0"]
    with S.TrialLog(p) as log:
        log.append(row)
    with pytest.raises(ContractError, match="row 1: correct_0..2 .* disagree"):
        S.read_trials(p)


def test_session_bad_number(tmp_path):
    p = tmp_path / "trials.csv"
    row = trial_row(0)
    row["rt_confirm"] = "fast"
    with S.TrialLog(p) as log:
        log.append(row)
    with pytest.raises(ContractError, match="column 'rt_confirm', row 1: 'fast' is not a number"):
        S.read_trials(p)


# ---- 3. analysis results ---------------------------------------------------------------------

def test_results_round_trip_and_rejection(tmp_path):
    rows = {name: pd.DataFrame([{c: (0.5 if k == "float" else 1 if k == "int" else "x") for c, k in cols.items()}])
            for name, cols in R.TABLES.items()}
    rows["accuracy_by_condition.csv"]["level"] = "row"
    rows["accuracy_by_participant.csv"]["level"] = "trial"
    for name, df in rows.items():
        df.to_csv(tmp_path / name, index=False)
    info = {"created": "now", "inputs": {"sessions": []}, "exclusions": {}, "options": {"seed": 0}, "software": {},
            "outputs": list(R.TABLES)}
    R.write_results_info(tmp_path, info)
    got, tables = R.load_results(tmp_path)
    assert got["schema_version"] == R.SCHEMA_VERSION
    assert tables["accuracy_by_condition.csv"].accuracy.iloc[0] == 0.5
    rows["accuracy_by_condition.csv"]["level"] = "block"
    rows["accuracy_by_condition.csv"].to_csv(tmp_path / "accuracy_by_condition.csv", index=False)
    with pytest.raises(ContractError, match="accuracy_by_condition.csv: column 'level', row 1: 'block'"):
        R.load_results(tmp_path)


def test_design_sha256_is_path_independent_and_validated(tmp_path):
    a = S.design_sha256({"design": {"name": "x", "seed": 1}, "monitor": {"distance_cm": 57}})
    b = S.design_sha256({"monitor": {"distance_cm": 57}, "design": {"seed": 1, "name": "x"}})
    assert a == b and len(a) == 64
    assert a != S.design_sha256({"design": {"name": "x", "seed": 2}, "monitor": {"distance_cm": 57}})
    with pytest.raises(ContractError, match="design_sha256"):
        S.write_session_info(tmp_path, session_info(design_sha256="abc"))
    S.write_session_info(tmp_path, session_info(design_sha256=a))
    assert S.read_session_info(tmp_path)["design_sha256"] == a
