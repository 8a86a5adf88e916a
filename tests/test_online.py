"""Online sessions without a browser: the export, the trial lists (the lab's, in the lab's order), the
server's refusals of bad input (nothing written outside the data folder, no recorded trial changed)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from contracts.session import read_session_info, read_trials
from contracts.stimulus_set import load_stimulus_set
from experiment.config import load_design
from experiment.design import correct_assignment, derive_seed, write_conditions_csv
from experiment.storage import new_session
from online.config import OnlineConfigError, load_online_config
from online.export import ExportError, design_images, export_study
from online.server import MAX_BODY, StudyServer
from online.sessions import OnlineStudy
from session_builders import finished_lab_session

ROOT = Path(__file__).resolve().parents[1]


def post(url: str, path: str, body, raw: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def answer(trial, pid: str, run: int = 0) -> dict:
    a = correct_assignment(trial.candidate_units)
    clicks = [c for i in range(3) for c in ([0.5 + i, "candidate", a[i]], [0.9 + i, "reference", i])] + [[4.0, "confirm", None]]
    return {"params": {"PROLIFIC_PID": pid}, "run": run, "trial_index": trial.trial_index, "clicks": clicks, "assignment": a,
            "onset": "2026-12-02T05:00:00.000+00:00", "paused_s": 0,
            "frames": {"frames": 240, "frames_dropped": 1, "frame_interval_mean_ms": 16.7, "frame_interval_sd_ms": 0.4}}


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


# --- export ---------------------------------------------------------------------------------------

def test_export_copies_only_the_design_images_checked_against_the_manifest(online_study, fixture_set):
    study = json.loads((online_study / "study.json").read_text())
    stimset = load_stimulus_set(fixture_set)
    used = design_images(load_design("demo"), stimset)
    assert sorted(study["images"]) == used
    assert not any("natural_min" in f for f in used)  # never shown, so never exported
    for rel, entry in study["images"].items():
        data = (online_study / entry["url"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] == stimset.manifest["files"][rel]
    # named by content: an image two units share is stored once
    assert len(list((online_study / "img").iterdir())) == len({e["sha256"] for e in study["images"].values()})
    # the set's manifest byte for byte: online sessions record the lab's manifest sha256
    assert (online_study / "stimuli" / "manifest.json").read_bytes() == (fixture_set / "manifest.json").read_bytes()
    for lib in ("jspsych.js", "jspsych.css", "plugin-virtual-chinrest.js", "plugin-preload.js"):
        assert (online_study / "lib" / lib).stat().st_size > 1000
    assert study["software"]["jspsych"] == json.loads((ROOT / "online/web/package.json").read_text())["dependencies"]["jspsych"]


def test_export_refuses_a_changed_image(fixture_set, tmp_path):
    import shutil

    bad = tmp_path / "set"
    shutil.copytree(fixture_set, bad)
    stimset = load_stimulus_set(bad)
    victim = design_images(load_design("demo"), stimset)[3]
    (bad / victim).write_bytes((bad / victim).read_bytes() + b"x")
    with pytest.raises(ExportError, match=victim.replace("/", ".") + ".*sha256"):
        export_study(stimset, load_design("demo"), tmp_path / "study", load_online_config(None))
    assert not (tmp_path / "study").exists() and not (tmp_path / "study.partial").exists()


def test_online_config_errors_name_the_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[online]\nmin_width_px = 10\n")
    with pytest.raises(OnlineConfigError, match="online.min_width_px"):
        load_online_config(cfg)
    cfg.write_text("[online]\ncompletion_link = 'x'\n")
    with pytest.raises(OnlineConfigError, match="online.completion_link.*unknown"):
        load_online_config(cfg)


# --- the same trials as the lab ----------------------------------------------------------------------

def test_served_trials_are_the_lab_plan_in_the_lab_order(online_study, fixture_set, tmp_path):
    """For the same design, participant (so seed) and counterbalance index, the browser gets exactly the lab's
    trials in the lab's order: compared with the lab runner's plan and with its conditions-file export."""
    study = OnlineStudy(online_study, tmp_path / "data")
    stimset = load_stimulus_set(fixture_set)
    design = load_design("demo")
    urls = {rel: e["url"] for rel, e in study.study["images"].items()}
    for k, pid in enumerate(["P01", "abc", "P02"]):
        got = study.start({"params": {"participant": pid}})
        lab = new_session(tmp_path / "lab", study.experiment, pid, 1, design, stimset, counterbalance=k)
        served = study._plans[pid]
        assert served.info["design"]["counterbalance"] == k  # assigned in balance: 0, 1, 2, ...
        assert served.info["seed"] == lab.info["seed"] == derive_seed(design.seed, study.experiment, pid, 1)
        assert [dataclasses.asdict(t) for t in served.trials] == [dataclasses.asdict(t) for t in lab.trials]
        assert served.info["design_sha256"] == lab.info["design_sha256"]
        assert served.info["stimulus_set"]["manifest_sha256"] == lab.info["stimulus_set"]["manifest_sha256"]
        # what the browser shows: the lab's files, row by row, in order
        assert len(got["trials"]) == len(lab.trials)
        for b, t in zip(got["trials"], lab.trials):
            assert b["trial_index"] == t.trial_index and b["n_images"] == t.n_images and b["block"] == t.block
            assert b["reference"] == [[urls[f] for f in row] for row in t.reference_files]
            assert b["candidate"] == [[urls[f] for f in row] for row in t.candidate_files]
            assert "units" not in b and "candidate_units" not in b  # no answer in the page
    # and the lab's command line agrees (its conditions file for P02, counterbalance 2)
    cond = tmp_path / "P02.csv"
    out = subprocess.run([sys.executable, "-m", "experiment.cli", "--stimuli", str(fixture_set), "--design", "demo",
                          "--participant", "P02", "--counterbalance", "2", "--check-only", "--export-conditions", str(cond),
                          "--data-dir", str(tmp_path / "lab2")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    write_conditions_csv(study._plans["P02"].trials, tmp_path / "served.csv", image_root=str(fixture_set.resolve()))
    assert (tmp_path / "served.csv").read_text() == cond.read_text()


# --- the server -----------------------------------------------------------------------------------

@pytest.fixture()
def served(online_study, tmp_path):
    data = tmp_path / "data"
    study = OnlineStudy(online_study, data)
    with StudyServer(study, port=0, quiet=True) as srv:
        yield srv.url, study, data


def test_trials_are_written_as_they_arrive_and_the_session_completes(served):
    url, study, data = served
    code, start = post(url, "api/start", {"params": {"PROLIFIC_PID": "5f1e2d3c4b5a69788796a5b4", "STUDY_ID": "s1"}})
    assert code == 200 and start["start_index"] == 0
    pid = "5f1e2d3c4b5a69788796a5b4"
    folder = data / study.experiment / f"sub-{pid}_ses-01"
    plan = study._plans[pid]
    for i, t in enumerate(plan.trials):
        code, res = post(url, "api/trial", answer(t, pid))
        assert code == 200, res
        assert len(read_trials(folder)) == i + 1  # on disk when the answer comes
        assert ("feedback" in res) == t.is_practice
    code, res = post(url, "api/finish", {"params": {"PROLIFIC_PID": pid}, "run": 0})
    assert code == 200 and res["completion_url"] == "https://example.org/done?cc=TEST"
    info = read_session_info(folder)
    assert info["status"] == "completed" and info["mode"] == "online" and info["n_trials_completed"] == len(plan.trials)
    rows = read_trials(folder)
    assert rows.trial_correct.all() and list(rows.trial_index) == list(range(len(plan.trials)))
    stim = json.loads(rows.stimuli.iloc[0])
    assert {s["file"] for s in stim} == {f for r in plan.trials[0].reference_files + plan.trials[0].candidate_files for f in r}
    # one participation per id
    code, res = post(url, "api/start", {"params": {"PROLIFIC_PID": pid}})
    assert code == 409 and "already took part" in res["error"]


def test_reload_resumes_after_the_last_saved_trial(served):
    url, study, data = served
    post(url, "api/start", {"params": {"workerId": "A1B2C3"}})
    plan = study._plans["A1B2C3"]
    for t in plan.trials[:4]:
        assert post(url, "api/trial", answer(t, "A1B2C3"))[0] == 200
    study._plans.clear()  # as after a server restart: the plan comes back from disk
    code, res = post(url, "api/start", {"params": {"workerId": "A1B2C3"}})
    assert code == 200 and res["resumed"] and res["start_index"] == 4
    assert post(url, "api/trial", answer(plan.trials[4], "A1B2C3", run=1))[0] == 200
    info = read_session_info(data / study.experiment / "sub-A1B2C3_ses-01")
    assert len(info["runs"]) == 2 and info["runs"][1]["start_index"] == 4


@pytest.mark.parametrize("case", ["replay", "skip", "no_such_trial", "not_a_trial", "bad_json", "not_object", "huge",
                                  "path_id", "bad_clicks", "assignment_mismatch", "confirm_early", "bad_onset",
                                  "unknown_participant", "no_length", "not_json_type", "bad_event", "old_tab"])
def test_bad_input_is_refused_and_changes_nothing(served, case):
    url, study, data = served
    post(url, "api/start", {"params": {"participant": "P05"}})
    plan = study._plans["P05"]
    for t in plan.trials[:2]:
        assert post(url, "api/trial", answer(t, "P05"))[0] == 200
    before = snapshot(data)
    outside = snapshot(data.parent)
    good = answer(plan.trials[2], "P05")
    expect = 400
    if case == "replay":
        body, expect = answer(plan.trials[1], "P05"), 409
        body["assignment"] = body["assignment"][::-1]  # a different answer for a recorded trial
    elif case == "skip":
        body, expect = answer(plan.trials[4], "P05"), 409
    elif case == "no_such_trial":
        body, expect = {**good, "trial_index": len(plan.trials) + 3}, 404
    elif case == "not_a_trial":
        body, expect = {**good, "trial_index": "2"}, 404
    elif case == "path_id":
        body = {**good, "params": {"participant": "../../etc/passwd"}}
    elif case == "bad_clicks":
        body = {**good, "clicks": [[0.1, "reference", 7], [0.2, "confirm", None]]}
    elif case == "assignment_mismatch":
        body = {**good, "assignment": good["assignment"][::-1]}
    elif case == "confirm_early":
        body = {**good, "clicks": [[0.1, "candidate", 0], [0.2, "confirm", None]]}
    elif case == "bad_onset":
        body = {**good, "onset": "yesterday"}
    elif case == "unknown_participant":
        body, expect = {**good, "params": {"participant": "P99"}}, 404
    elif case == "old_tab":  # the link was opened again elsewhere: the first page may no longer record
        assert post(url, "api/start", {"params": {"participant": "P05"}})[0] == 200
        before, outside = snapshot(data), snapshot(data.parent)
        body, expect = good, 409
    elif case == "bad_event":
        code, res = post(url, "api/event", {"params": {"participant": "P05"}, "run": 0, "kind": "calibration", "calibration": {"px_per_cm": -3}})
        assert code == 400 and "px_per_cm" in res["error"]
        assert snapshot(data) == before
        return
    if case == "bad_json":
        code, res = post(url, "api/trial", None, raw=b"{not json")
    elif case == "not_object":
        code, res = post(url, "api/trial", [1, 2, 3])
    elif case == "huge":
        code, res = post(url, "api/trial", None, raw=b"x" * (MAX_BODY + 1))
        expect = 413
    elif case == "not_json_type":
        code, res = post(url, "api/trial", good, headers={"Content-Type": "text/plain"})
        expect = 415
    elif case == "no_length":
        import http.client

        host, port = url.split("//")[1].rstrip("/").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.putrequest("POST", "/api/trial")
        conn.putheader("Content-Type", "application/json")
        conn.endheaders()
        r = conn.getresponse()
        code, res = r.status, json.loads(r.read())
        conn.close()
        expect = 411
    else:
        code, res = post(url, "api/trial", body)
    assert code == expect, res
    assert res["error"]
    assert snapshot(data) == before  # no recorded trial changed, nothing new written
    assert snapshot(data.parent) == outside  # nothing written outside the data folder either


def test_static_files_only(served):
    url, _, _ = served
    with urllib.request.urlopen(url + "task.js", timeout=10) as r:
        assert r.status == 200 and b"PairingState" in r.read()
    for path in ("study.json", "stimuli/images.csv", "../../etc/passwd", "%2e%2e/study.json", "img/../study.json"):
        try:
            urllib.request.urlopen(url + path, timeout=10)
            raise AssertionError(f"{path} was served")
        except urllib.error.HTTPError as e:
            assert e.code == 404


# --- session contract 1.3: mode; lab and online together in the analysis -----------------------------------

def _lab_session(data: Path, experiment: str, pid: str, k: int, fixture_set: Path, old_schema: bool = False) -> Path:
    """A finished lab session (session_builders), straight across on every third trial; ``old_schema``: as written
    before session schema 1.3, without mode."""
    return finished_lab_session(
        data, experiment, pid, k, fixture_set,
        assignment=lambda t: correct_assignment(t.candidate_units) if t.trial_index % 3 else [0, 1, 2],
        onset="2026-12-02T05:00:00+00:00", older=("mode", "1.2") if old_schema else None)


def test_session_mode_lab_online_and_older_sessions(served, fixture_set):
    from contracts.common import ContractError
    from contracts.session import read_session_info, session_mode, write_session_info

    url, study, data = served
    lab = _lab_session(data, study.experiment, "L01", 5, fixture_set)
    old = _lab_session(data, study.experiment, "L02", 6, fixture_set, old_schema=True)
    assert session_mode(read_session_info(lab)) == "lab" and session_mode(read_session_info(old)) == "lab"
    info = read_session_info(lab)
    info.pop("schema"), info.pop("schema_version")
    with pytest.raises(ContractError, match="'mode'"):
        write_session_info(lab, {**info, "mode": "kiosk"})


def test_analysis_reads_lab_and_online_sessions_with_mode(served, fixture_set, tmp_path):
    from analysis.load import load_sessions
    from analysis.pipeline import AnalysisOptions, run_analysis

    url, study, data = served
    _lab_session(data, study.experiment, "L01", 5, fixture_set)
    _lab_session(data, study.experiment, "L02", 6, fixture_set, old_schema=True)
    for pid in ("W01", "W02"):
        post(url, "api/start", {"params": {"participant": pid}})
        for t in study._plans[pid].trials:
            assert post(url, "api/trial", answer(t, pid))[0] == 200
        assert post(url, "api/finish", {"params": {"participant": pid}, "run": 0})[0] == 200
    loaded = load_sessions([data / study.experiment])
    assert dict(zip(loaded.sessions.participant, loaded.sessions["mode"])) == {"L01": "lab", "L02": "lab", "W01": "online", "W02": "online"}
    assert set(loaded.trials["mode"]) == {"lab", "online"}
    res = run_analysis([data / study.experiment], tmp_path / "res",
                       AnalysisOptions(n_boot=20, fit_models=False, figures=False))
    report = (tmp_path / "res" / "report.md").read_text()
    assert "Lab and online sessions" in report and "online" in report
    results = json.loads((tmp_path / "res" / "results.json").read_text())
    assert results["inputs"]["session_modes"] == {"lab": 2, "online": 2}
    assert not res.warnings or not any("different designs" in w for w in res.warnings)


def test_online_command_help_and_no_torch():
    code = ("import sys, online.cli, online.server, online.sessions, online.export, online.config\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'psychopy'))\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    out = subprocess.run([sys.executable, "-m", "online.cli", "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0 and "examples:" in out.stdout


def test_counterbalance_indices_are_assigned_in_balance_under_concurrency(served):
    import threading

    url, study, data = served
    codes = []
    threads = [threading.Thread(target=lambda i=i: codes.append(post(url, "api/start", {"params": {"participant": f"C{i:02d}"}})[0]))
               for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert codes == [200] * 8
    ks = sorted(read_session_info(f)["design"]["counterbalance"] for f in (data / study.experiment).iterdir())
    assert ks == list(range(8))  # each index once, none skipped


# --- one writer per session across processes: the lab's session lock -----------------------------------------

def test_a_session_held_by_another_process_is_refused_and_unchanged(served):
    """A lab runner (here: another process holding the lab's experiment.session_lock) writes the session: the server
    refuses to write it meanwhile, changes nothing, and records again once the lock is released."""
    import os

    url, study, data = served
    pid = "LOCK1"
    assert post(url, "api/start", {"params": {"participant": pid}})[0] == 200
    plan = study._plans[pid]
    assert post(url, "api/trial", answer(plan.trials[0], pid))[0] == 200
    folder = data / study.experiment / f"sub-{pid}_ses-01"
    assert not (folder / "session.lock").exists()  # held only during a request
    before = snapshot(folder)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", "import sys\nfrom experiment.session_lock import SessionLock\n"
                               "lock = SessionLock(sys.argv[1]).acquire()\nprint('held', flush=True)\nsys.stdin.read()",
                               str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        for path, body in (("api/trial", answer(plan.trials[1], pid)), ("api/start", {"params": {"participant": pid}}),
                           ("api/event", {"params": {"participant": pid}, "run": 0, "kind": "focus_loss"})):
            code, res = post(url, path, body)
            assert code == 409 and res.get("locked") and "being written by another process" in res["error"], (path, res)
        assert snapshot(folder) == {**before, "session.lock": snapshot(folder)["session.lock"]}  # only the holder's note
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert post(url, "api/trial", answer(plan.trials[1], pid))[0] == 200
    assert list(read_trials(folder).trial_index) == [0, 1]


def test_a_session_written_by_a_lab_runner_meanwhile_is_read_again_not_duplicated(served, fixture_set):
    """Between two posts a lab runner resumed the online session and saved trial 2 (under the lab's lock, with the
    lab's storage code): the server must see that before writing, so trial 2 is never written twice."""
    from contracts.session import TrialLog
    from experiment.session_lock import SessionLock
    from experiment.storage import resume_session, save_info, trial_row

    url, study, data = served
    pid = "LAB2"
    post(url, "api/start", {"params": {"participant": pid}})
    plan = study._plans[pid]
    for t in plan.trials[:2]:
        assert post(url, "api/trial", answer(t, pid))[0] == 200
    with SessionLock(data / study.experiment / f"sub-{pid}_ses-01"):
        lab = resume_session(data, study.experiment, pid, 1, load_stimulus_set(online_study_set(study)))
        lab.info.setdefault("runs", []).append({"started": "2026-12-02T06:00:00+00:00", "start_index": 2})
        t = lab.trials[2]
        frames = {"frames": 1, "frames_dropped": 0, "frame_interval_mean_ms": 16.7, "frame_interval_sd_ms": 0.1}
        with TrialLog(lab.folder / "trials.csv") as log:
            log.append(trial_row(lab, t, [], [[1.0, "confirm", None]], correct_assignment(t.candidate_units),
                                 "2026-12-02T06:00:01+00:00", frames))
        lab.info["n_trials_completed"] = 3
        save_info(lab)
    code, res = post(url, "api/trial", answer(plan.trials[2], pid))  # the browser's answer to the same trial
    assert code == 409 and res.get("superseded"), res  # the lab runner's run is now the latest
    rows = read_trials(data / study.experiment / f"sub-{pid}_ses-01")
    assert list(rows.trial_index) == [0, 1, 2] and json.loads(rows.clicks[2]) == [[1.0, "confirm", None]]


def online_study_set(study) -> Path:
    return study.study_dir / "stimuli"
