"""Exclusion rules shared by lab and online sessions (analysis/exclusions.toml, analysis.exclusions): each rule
trips on a session made to trip it and passes one made to pass; a lab and an online session are judged by the
same code; a bad rules file names the file and key; the analysis records the file's sha256 and lists who was
excluded and why."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from analysis.exclusion_rules import RULE_KEYS, SHIPPED_RULES, ExclusionRules, RulesError, load_rules
from analysis.exclusions import evaluate_session
from session_builders import finished_lab_session

T0 = dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.timezone.utc)


def make_trials(n: int = 20, n_catch: int = 4, catch_right: int = 4, assignments=None, seconds_per_trial: float = 10.0):
    """A session's trials.csv rows as the rules see them: n non-practice trials (the first n_catch are catch
    trials, catch_right of them right), two practice trials first, one trial every seconds_per_trial."""
    perms = ["0;1;2", "0;2;1", "1;0;2", "1;2;0", "2;0;1", "2;1;0"]
    rows = []
    for i in range(n + 2):
        practice, catch = i < 2, 2 <= i < 2 + n_catch
        a = assignments[i] if assignments else perms[i % 6]
        rows.append({"trial_index": i, "is_practice": practice, "is_catch": catch,
                     "trial_correct": (i - 2 < catch_right) if catch else True, "assignment": a,
                     "onset": (T0 + dt.timedelta(seconds=30 + seconds_per_trial * i)).isoformat(),
                     "rt_confirm": 5.0, "paused_s": 0.0})
    return pd.DataFrame(rows)


def make_info(instructions_s=60.0, minutes: float | None = 20.0, status="completed", n_planned=22, simulated=None,
              runs=None):
    info = {"status": status, "n_trials_planned": n_planned, "simulated": simulated, "instructions_s": instructions_s,
            "started": T0.isoformat(), "ended": None}
    if runs is None and minutes is not None:
        runs = [{"started": T0.isoformat(), "ended": (T0 + dt.timedelta(minutes=minutes)).isoformat(), "start_index": 0}]
    info["runs"] = runs or []
    return info


RULES = ExclusionRules(total_min_minutes=5.0)  # the defaults, plus a minimum time so that bound is tested too


@pytest.mark.parametrize("rule, trip, passing", [
    ("catch", dict(trials=make_trials(catch_right=2)), dict(trials=make_trials(catch_right=3))),  # 0.5 / 0.75 vs 0.7
    ("instructions", dict(info=make_info(instructions_s=4.0)), dict(info=make_info(instructions_s=10.0))),
    ("total_time (max)", dict(info=make_info(minutes=121)), dict(info=make_info(minutes=119))),
    ("total_time (min)", dict(info=make_info(minutes=4)), dict(info=make_info(minutes=6))),
    ("choice_variability", dict(trials=make_trials(assignments=["0;1;2"] * 15 + ["1;2;0"] * 7)),  # 13/20 > 0.6
     dict(trials=make_trials(assignments=["0;1;2"] * 14 + ["1;2;0"] * 8))),  # 12/20 = 0.6: not above
])
def test_each_rule_trips_and_passes(rule, trip, passing):
    def judge(case):
        return evaluate_session(case.get("trials", make_trials()), case.get("info", make_info()), RULES)

    bad, good = judge(trip), judge(passing)
    assert bad.excluded and len(bad.reasons) == 1, bad
    key = rule.split()[0]
    word = {"catch": "catch-trial accuracy", "instructions": "on the instructions", "total_time": "min",
            "choice_variability": "the same pairing"}[key]
    assert word in bad.reasons[0]
    assert not good.excluded and good.reasons == [] and key not in good.not_evaluated, good


def test_runs_are_summed_and_a_run_without_an_end_ends_at_its_last_trial():
    trials = make_trials(n=20, seconds_per_trial=60)  # trial i at T0 + 30 s + i min, answered 5 s later
    runs = [{"started": T0.isoformat(), "ended": None, "start_index": 0},  # the browser died after trial 9
            {"started": (T0 + dt.timedelta(days=1)).isoformat(), "start_index": 10,
             "ended": (T0 + dt.timedelta(days=1, minutes=30)).isoformat()}]
    v = evaluate_session(trials[trials.trial_index < 10].pipe(lambda d: pd.concat([d, trials[trials.trial_index >= 10]])),
                         make_info(runs=runs), RULES)
    assert v.measures["session_minutes"] == pytest.approx(9 + 35 / 60 + 30, abs=1e-3)  # the day between does not count
    assert not v.excluded


def test_rules_that_cannot_be_evaluated_say_why_and_keep_the_session():
    old_lab = make_info()
    old_lab.pop("instructions_s")  # a lab session written before session schema 1.5
    v = evaluate_session(make_trials(n=8, n_catch=0), old_lab, RULES)
    assert not v.excluded
    assert v.not_evaluated == {"catch": "no catch trials",
                               "instructions": "not recorded (a lab session written before session schema 1.5)",
                               "choice_variability": "8 non-practice trials < 12"}
    online_13 = {**old_lab, "online": {"instructions_s": 3.0}}  # online sessions recorded it since 1.3
    assert "on the instructions" in evaluate_session(make_trials(), online_13, RULES).reasons[0]
    sim = evaluate_session(make_trials(), make_info(instructions_s=0.2, minutes=0.5, simulated="noisy:0.8"), RULES)
    assert not sim.excluded and "unpaced" in sim.not_evaluated["instructions"] and "unpaced" in sim.not_evaluated["total_time"]
    aborted = evaluate_session(make_trials(), make_info(minutes=2, status="aborted", n_planned=40), RULES)
    assert not aborted.excluded and "incomplete" in aborted.not_evaluated["total_time"]


def test_shipped_file_holds_the_documented_defaults():
    rules = load_rules()
    assert rules.source == str(SHIPPED_RULES) and rules.sha256 == hashlib.sha256(SHIPPED_RULES.read_bytes()).hexdigest()
    assert {k: v for k, v in rules.as_dict().items() if k not in ("source", "sha256")} == \
        {k: v for k, v in ExclusionRules().as_dict().items() if k not in ("source", "sha256")}
    assert ExclusionRules().catch_min_accuracy == RULE_KEYS["catch"]["min_accuracy"][0]


@pytest.mark.parametrize("text, match", [
    ("[catch]\nmin_accuracy = 1.5\n", r"key 'catch\.min_accuracy': must be a number in \[0, 1\] \(got 1\.5\)"),
    ("[catch]\nmin_accuracy = \"high\"\n", r"key 'catch\.min_accuracy': must be a number"),
    ("[catch]\nmin_acuracy = 0.5\n", r"key 'catch\.min_acuracy': unknown; expected one of catch\.min_accuracy"),
    ("[attention]\nx = 1\n", r"unknown table \[attention\]"),
    ("[choice_variability]\nmin_trials = 2.5\n", r"key 'choice_variability\.min_trials': must be an integer"),
    ("[total_time]\nmin_minutes = 30\nmax_minutes = 20\n", r"key 'total_time\.min_minutes': 30 is above"),
    ("[instructions]\nmin_seconds = true\n", r"key 'instructions\.min_seconds'"),
    ("[catch\n", r"not valid TOML"),
])
def test_bad_rules_files_name_the_file_and_key(tmp_path, text, match):
    p = tmp_path / "prereg.toml"
    p.write_text(text)
    with pytest.raises(RulesError, match=match) as e:
        load_rules(p)
    assert str(p) in str(e.value)
    with pytest.raises(RulesError, match="not found"):
        load_rules(tmp_path / "missing.toml")


# --- a lab and an online session, judged by the same code in the analysis --------------------------------------

def _lab_session(data: Path, experiment: str, pid: str, k: int, fixture_set: Path, assignment=None,
                 instructions_s: float | None = 42.0, old_schema: bool = False) -> Path:
    """A finished lab session (session_builders); ``old_schema``: as written before session schema 1.5, without
    instructions_s."""
    from contracts.session import now_iso

    started = now_iso()
    return finished_lab_session(
        data, experiment, pid, k, fixture_set, assignment=(lambda t: assignment) if assignment else None,
        finish_info=lambda: {"ended": now_iso(), "instructions_s": instructions_s,
                             "runs": [{"started": started, "ended": now_iso(), "start_index": 0, "status": "completed"}]},
        older=("instructions_s", "1.4") if old_schema else None)


def _online_session(study, pid: str, instructions_s: float) -> None:
    """An online session through the server's own request handlers (what the browser posts)."""
    from experiment.design import correct_assignment

    params = {"PROLIFIC_PID": pid}
    study.start({"params": params, "client": {"user_agent": "test"}})
    study.record_event({"params": params, "run": 0, "kind": "instructions", "seconds": instructions_s})
    for t in study._plans[pid].trials:
        a = correct_assignment(t.candidate_units)
        clicks = [c for i in range(3) for c in ([0.5 + i, "candidate", a[i]], [0.9 + i, "reference", i])] + [[4.0, "confirm", None]]
        study.record_trial({"params": params, "run": 0, "trial_index": t.trial_index, "clicks": clicks, "assignment": a,
                            "onset": dt.datetime.now().astimezone().isoformat(), "paused_s": 0,
                            "frames": {"frames": 10, "frames_dropped": 0, "frame_interval_mean_ms": 16.7,
                                       "frame_interval_sd_ms": 0.1}})
    study.finish({"params": params, "run": 0})


def test_lab_and_online_sessions_are_judged_by_the_same_rules(online_study, fixture_set, tmp_path):
    from analysis.cli import main
    from contracts.session import read_session_info
    from online.sessions import OnlineStudy

    data = tmp_path / "data"
    study = OnlineStudy(online_study, data)
    _online_session(study, "W01", instructions_s=3.0)  # clicked the instructions away: excluded
    _online_session(study, "W02", instructions_s=25.0)  # kept
    exp = data / study.experiment
    assert read_session_info(exp / "sub-W01_ses-01")["instructions_s"] == 3.0  # 1.5: where both modes record it
    _lab_session(data, study.experiment, "L01", 5, fixture_set, assignment=[0, 1, 2])  # straight across every time
    _lab_session(data, study.experiment, "L02", 6, fixture_set, instructions_s=2.5)  # excluded like W01
    _lab_session(data, study.experiment, "L03", 7, fixture_set, old_schema=True)  # kept: instructions not recorded

    rules = tmp_path / "prereg.toml"
    rules.write_text("[total_time]\nmax_minutes = 60\n")  # the other keys: shipped defaults
    out = tmp_path / "res"
    assert main([str(exp), "--out", str(out), "--exclusions", str(rules), "--no-models", "--no-figures",
                 "--n-boot", "20"]) == 0
    info = json.loads((out / "results.json").read_text())
    ex = info["exclusions"]
    assert ex["rules"]["sha256"] == hashlib.sha256(rules.read_bytes()).hexdigest() and ex["rules"]["source"] == str(rules)
    assert ex["rules"]["total_max_minutes"] == 60 and ex["rules"]["instructions_min_seconds"] == 10.0
    why = {e["participant"]: e["reasons"] for e in ex["excluded_participants"]}
    assert set(why) == {"W01", "L01", "L02"}
    assert why["W01"] == ["3.0 s on the instructions < 10 s"] and why["L02"] == ["2.5 s on the instructions < 10 s"]
    assert why["L01"][-1] == "the same pairing (0;1;2) on 100% of 20 trials > 60%"  # (and catch trials wrong)
    assert {(n["participant"], n["rule"]) for n in ex["not_evaluated"]} >= {("L03", "instructions")}
    table = pd.read_csv(out / "exclusions.csv")
    assert set(table[table.excluded].participant) == {"W01", "L01", "L02"}
    assert set(table["mode"]) == {"lab", "online"} and "exclusions.csv" in info["outputs"]
    assert set(info["inputs"]["sessions"][i]["participant"] for i in range(5)) == {"W01", "W02", "L01", "L02", "L03"}
    analysed = pd.read_csv(out / "accuracy_by_participant.csv")
    assert set(analysed.participant) == {"W02", "L03"}
    md = (out / "report.md").read_text()
    assert "W01 (3.0 s on the instructions < 10 s)" in md and f"sha256 {ex['rules']['sha256'][:16]}" in md
    assert "instructions for L03 ses 1 (not recorded (a lab session written before session schema 1.5))" in md


def test_bad_rules_file_stops_the_analysis_naming_file_and_key(tmp_path, capsys):
    from analysis.cli import main

    p = tmp_path / "rules.toml"
    p.write_text("[choice_variability]\nmax_same_fraction = 2\n")
    assert main(["--simulate", "2", "--out", str(tmp_path / "r"), "--exclusions", str(p), "--no-models",
                 "--no-figures", "--n-boot", "10"]) == 2
    err = capsys.readouterr().err
    assert str(p) in err and "choice_variability.max_same_fraction" in err
