"""Trial design, configs, pairing logic, simulated policies, session bookkeeping: pure Python, no window."""

from __future__ import annotations

import csv
import itertools
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contracts.session import TrialLog, now_iso, read_trials, write_session_info
from contracts.stimulus_set import load_stimulus_set
from experiment.config import ConfigError, design_from_dict, load_design, shipped_designs
from experiment.design import (
    abba_split,
    build_trials,
    check_set_for_design,
    correct_assignment,
    participant_triplets,
    score,
    triplet_study_order,
    triplets_needed,
    write_conditions_csv,
)
from experiment.layout import check_fits, screen_size_deg, trial_layout
from experiment.matching import PairingState
from experiment.simulate import PERMUTATIONS, SimulatedParticipant, parse_policy
from experiment.storage import (
    ResumeError,
    SessionExists,
    counterbalance_from_id,
    new_session,
    resume_session,
    set_fingerprints,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def stimset(fixture_set):
    return load_stimulus_set(fixture_set)


def cfg(**over) -> dict:
    """A small valid config as a dict; ``over`` maps 'table.key' to a value (None deletes the key)."""
    raw = {
        # practice on main units: the 4-unit fixture has too few units to reserve 3 per group for practice
        "design": {"name": "t", "seed": 3, "n_images": [1, 3, 5], "trials_per_cell": 1, "blocks": 2, "max_triplet_uses": 4,
                   "practice_units": "main"},
        "practice": {"trials": 2},
        "catch": {"per_block": 1},
        "monitor": {"distance_cm": 57.0, "width_cm": 34.0, "resolution": [1280, 800]},
        "display": {"image_deg": 2.2},
    }
    for key, value in over.items():
        table, k = key.split(".")
        raw.setdefault(table, {})
        if value is None:
            raw[table].pop(k, None)
        else:
            raw[table][k] = value
    return raw


# ----------------------------------------------------------------------------------------------- configs


def test_shipped_designs_load_and_default_is_a_full_study():
    assert {"default", "demo"} <= set(shipped_designs())
    d = load_design("default")
    assert d["design"]["trial_types"] == ["exemplar", "feature_vis"]
    assert d["design"]["layer_groups"] == ["early", "middle", "late"]
    assert d["design"]["n_images"] == [1, 3, 5]
    assert d["design"]["max_triplet_uses"] == 1  # a real study never repeats a triplet
    assert d["practice"]["trials"] > 0 and d["catch"]["per_block"] > 0 and d["design"]["blocks"] > 1
    demo = load_design("demo")
    assert demo.name == "demo"
    # every n of both designs fits on its monitor
    for design in (d, demo):
        m = design["monitor"]
        w, h = screen_size_deg(m["width_cm"], m["distance_cm"], m["resolution"])
        for n in design["design"]["n_images"]:
            assert check_fits(trial_layout(n, design["display"]), w, h) is None


@pytest.mark.parametrize("over, key", [
    ({"design.trials_per_cell": 0}, "design.trials_per_cell"),
    ({"design.n_images": [2]}, "design.n_images"),
    ({"design.trial_types": ["exemplar", "exemplar"]}, "design.trial_types"),
    ({"design.layer_groups": ["deep"]}, "design.layer_groups"),
    ({"design.seed": "7"}, "design.seed"),
    ({"design.seed": None}, "design.seed"),
    ({"design.blocks": 100}, "design.blocks"),
    ({"design.typo": 1}, "design.typo"),
    ({"catch.n_images": 4}, "catch.n_images"),
    ({"monitor.resolution": [1280]}, "monitor.resolution"),
    ({"monitor.distance_cm": True}, "monitor.distance_cm"),
    ({"display.pair_colors": ["red", "green", "blue"]}, "display.pair_colors"),
    ({"display.background": [0, 0, 2]}, "display.background"),
    ({"timing.iti_s": -1}, "timing.iti_s"),
])
def test_invalid_configs_name_file_and_key(over, key):
    with pytest.raises(ConfigError) as e:
        design_from_dict(cfg(**over), "study.toml")
    assert str(e.value).startswith("study.toml: key ") and f"'{key}'" in str(e.value)


def test_config_errors_from_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[design]\nname = 'x'\nseed = 1\ntrials_per_cell = 1\n[monitor]\ndistance_cm = 57\nwidth_cm = 34\nresolution = [800, 600]\n[extra]\na = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: key 'extra': unknown table"):
        load_design(str(bad))
    broken = tmp_path / "broken.toml"
    broken.write_text("[design\n")
    with pytest.raises(ConfigError, match="broken.toml.*not valid TOML"):
        load_design(str(broken))
    with pytest.raises(ConfigError, match="not a shipped design"):
        load_design("no_such_design")
    with pytest.raises(ConfigError, match="not found"):
        load_design(str(tmp_path / "missing.toml"))


# ----------------------------------------------------------------------------------------------- the trial list


def test_cells_balanced_blocks_practice_and_catch(stimset):
    d = design_from_dict(cfg(**{"design.trials_per_cell": 2, "design.n_images": [1, 3], "design.max_triplet_uses": 8}))
    trials = build_trials(d, stimset.units, stimset.images, counterbalance=0, session_seed=11)
    main = [t for t in trials if not t.is_practice and not t.is_catch]
    cells = Counter((t.trial_type, t.layer_group, t.n_images) for t in main)
    assert set(cells) == set(itertools.product(["exemplar", "feature_vis"], ["early", "middle", "late"], [1, 3]))
    assert set(cells.values()) == {2}
    # every block holds each cell once (2 trials per cell, 2 blocks)
    for b in (1, 2):
        blk = Counter((t.trial_type, t.layer_group, t.n_images) for t in main if t.block == b)
        assert set(blk.values()) == {1} and len(blk) == 12
    assert [t.trial_index for t in trials] == list(range(len(trials)))
    practice = [t for t in trials if t.is_practice]
    assert len(practice) == 2 and all(t.block == 0 for t in practice) and trials[:2] == practice
    catch = [t for t in trials if t.is_catch]
    assert Counter(t.block for t in catch) == {1: 1, 2: 1}
    blocks = [t.block for t in trials]
    assert blocks == sorted(blocks)
    for t in catch:  # trivial match: identical images, not at a block's first position
        assert t.trial_type == "exemplar"
        assert [sorted(t.candidate_files[j]) for j in range(3)] == [sorted(t.reference_files[t.candidate_units[j]]) for j in range(3)]
        assert trials[t.trial_index - 1].block == t.block


def test_trial_content_follows_rules(stimset):
    d = design_from_dict(cfg())
    units = stimset.units.set_index("unit_id")
    img = stimset.images.set_index("file")
    for t in build_trials(d, stimset.units, stimset.images, 0, 5):
        assert len(set(t.units)) == 3
        assert {units.at[u, "group"] for u in t.units} == {t.layer_group}
        assert list(t.layers) == [units.at[u, "layer"] for u in t.units]
        assert sorted(t.candidate_units) == [0, 1, 2]
        for r in range(3):
            assert len(t.reference_files[r]) == len(t.candidate_files[r]) == t.n_images
            ref = img.loc[list(t.reference_files[r])]
            assert set(ref.unit_id) == {t.units[r]} and set(ref.kind) == {"natural_max"}
            ref_ranks = sorted(ref["rank"])
            assert ref_ranks == sorted(abba_split(t.n_images, t.split_start)[0])
            cand = img.loc[list(t.candidate_files[r])]
            assert set(cand.unit_id) == {t.units[t.candidate_units[r]]}
            if t.is_catch:
                continue
            if t.trial_type == "exemplar":
                assert set(cand.kind) == {"natural_max"}
                assert sorted(cand["rank"]) == sorted(abba_split(t.n_images, t.split_start)[1])
            else:
                assert set(cand.kind) == {"feature_vis"} and cand["rank"].is_unique


@pytest.mark.parametrize("n", [1, 3, 5])
def test_abba_split_gives_both_sides_comparable_ranks(n):
    for s in (0, 1):
        ref, cand = abba_split(n, s)
        assert sorted(ref + cand) == list(range(2 * n))
        assert abs(sum(ref) - sum(cand)) <= 1
    # over the two start sides the sides are exactly exchangeable
    assert sorted(abba_split(n, 0)[0]) == sorted(abba_split(n, 1)[1])


def test_seeds_reproduce_and_differ(stimset):
    d = design_from_dict(cfg())
    a = build_trials(d, stimset.units, stimset.images, 0, 1)
    assert a == build_trials(d, stimset.units, stimset.images, 0, 1)
    b = build_trials(d, stimset.units, stimset.images, 0, 2)
    assert [t.units for t in a] != [t.units for t in b] or [t.candidate_units for t in a] != [t.candidate_units for t in b]
    assert [(t.trial_type, t.layer_group, t.n_images) for t in a] != [(t.trial_type, t.layer_group, t.n_images) for t in b]


def test_triplets_never_repeat_and_spread_evenly_over_participants():
    units = pd.DataFrame({"unit_id": [f"u{i:02d}" for i in range(10)], "group": "early", "layer": "l", "channel": range(10)})
    order = triplet_study_order(list(units.unit_id), seed=5, group="early")
    assert len(order) == len(set(order)) == 120
    assert order == triplet_study_order(list(units.unit_id)[::-1], seed=5, group="early")  # input order is irrelevant
    t = 28  # default study: trials per group per participant
    use = Counter()
    for k in range(30):  # 30 participants x 28 triplets = 7 full cycles of the 120 triplets
        mine = participant_triplets(order, k, t)
        assert len(set(mine)) == t  # no repeats within a participant
        per_unit = Counter(u for trip in mine for u in trip)
        assert max(per_unit.values()) - min(per_unit.get(u, 0) for u in units.unit_id) <= 3, per_unit  # balanced within a participant too
        use.update(mine)
    assert set(use.values()) == {7}  # every triplet used equally often, hence every unit as well


def test_set_checks_say_what_is_missing(stimset):
    d = design_from_dict(cfg(**{"design.max_triplet_uses": 1}))
    problems = check_set_for_design(d, stimset.units, stimset.images)
    assert problems and all("distinct triplets" in p for p in problems)
    assert any("layer group 'early'" in p for p in problems)
    # drop natural_max ranks 8, 9 of one unit and feature visualizations of another
    uid, uid2 = stimset.units.unit_id.iloc[0], stimset.units.unit_id.iloc[5]
    imgs = stimset.images[~((stimset.images.unit_id == uid) & (stimset.images.kind == "natural_max") & (stimset.images["rank"] >= 8))]
    imgs = imgs[~((imgs.unit_id == uid2) & (imgs.kind == "feature_vis") & (imgs["rank"] >= 2))]
    problems = check_set_for_design(design_from_dict(cfg()), stimset.units, imgs)
    assert any(uid in p and "missing rank(s) 8, 9" in p for p in problems)
    assert any(uid2 in p and "needs 5 feature_vis" in p and "has 2" in p for p in problems)
    with pytest.raises(ValueError, match="cannot serve this design"):
        build_trials(design_from_dict(cfg()), stimset.units, imgs, 0, 1)
    # n = 1 only needs ranks 0, 1 and one visualization
    small = design_from_dict(cfg(**{"design.n_images": [1], "practice.n_images": [1], "catch.n_images": 1}))
    assert check_set_for_design(small, stimset.units, imgs) == []


def test_triplets_needed_counts_practice_and_catch():
    d = design_from_dict(cfg())  # 2 types x 3 n x 1 = 6 per group; 2 practice + 2 catch cycle over the groups
    assert triplets_needed(d) == {"early": 8, "middle": 7, "late": 7}


def test_conditions_file_for_psychopy(stimset, tmp_path):
    d = design_from_dict(cfg())
    trials = build_trials(d, stimset.units, stimset.images, 0, 1)
    path = write_conditions_csv(trials, tmp_path / "cond.csv", image_root=str(stimset.root))
    from psychopy import data  # data imports without a display

    conds = data.importConditions(str(path))
    assert len(conds) == len(trials)
    for t, c in zip(trials, conds):
        assert c["trial_type"] == t.trial_type and c["n_images"] == t.n_images and c["unit_0"] == t.units[0]
        assert c["correct_assignment"] == ";".join(map(str, correct_assignment(t.candidate_units)))
        for r in range(3):
            for k in range(5):
                f = c[f"ref{r}_img{k}"]
                if k < t.n_images:
                    assert Path(f).is_file() and f.endswith(t.reference_files[r][k])
                else:
                    assert f in ("", None)


# ----------------------------------------------------------------------------------------------- UI logic, scoring, policies


def test_pairing_state_pairs_changes_and_completes():
    s = PairingState()
    s.click("candidate", 2)
    assert s.selected == ("candidate", 2)
    s.click("reference", 0)
    assert s.pairs == {0: 2} and s.selected is None
    s.click("reference", 1), s.click("candidate", 2)  # reference first works too; steals candidate 2
    assert s.pairs == {1: 2}
    s.click("candidate", 0), s.click("candidate", 1)  # same side moves the selection
    assert s.selected == ("candidate", 1)
    s.click("candidate", 1)  # clicking the selection again deselects
    assert s.selected is None
    s.click("candidate", 0), s.click("reference", 0), s.click("candidate", 1), s.click("reference", 2)
    assert s.complete and s.assignment() == [0, 2, 1]
    s.click("candidate", 2), s.click("reference", 0)  # changing a pair unpairs the old partners
    assert s.pairs == {0: 2, 2: 1} and not s.complete
    with pytest.raises(ValueError):
        s.assignment()


def test_score_and_correct_assignment():
    for cand in PERMUTATIONS:
        right = correct_assignment(cand)
        assert score(cand, right) == [True] * 3
        for a in PERMUTATIONS:
            assert sum(score(cand, a)) in (0, 1, 3)


def test_simulated_policies():
    assert parse_policy("noisy:0.8") == "noisy:0.8"
    for bad in ("noisy:1.5", "noisy:", "oracl", "noisy:-0.1"):
        with pytest.raises(ValueError, match="invalid --simulate"):
            parse_policy(bad)
    rng = np.random.default_rng(0)
    cands = [list(PERMUTATIONS[i]) for i in rng.integers(0, 6, 3000)]
    acc = {}
    for policy in ("oracle", "random", "noisy:0.8"):
        sim = SimulatedParticipant(policy, seed=1)
        right = [all(score(c, sim.choose_assignment(c))) for c in cands]
        acc[policy] = np.mean(right)
    assert acc["oracle"] == 1.0
    assert abs(acc["random"] - 1 / 6) < 0.03 and abs(acc["noisy:0.8"] - 0.8) < 0.03
    # catch trials are trivial: an attentive (noisy) participant gets them right, an inattentive (random) one does not
    catch = {p: np.mean([all(score(c, SimulatedParticipant(p, seed=2).choose_assignment(c, is_catch=True))) for c in cands[:600]])
             for p in ("noisy:0.3", "random")}
    assert catch["noisy:0.3"] == 1.0 and abs(catch["random"] - 1 / 6) < 0.05
    # a click plan replays to its assignment through the real pairing logic
    for policy in ("random", "oracle"):
        sim = SimulatedParticipant(policy, seed=3)
        for a in PERMUTATIONS:
            s = PairingState()
            plan = sim.click_plan(list(a))
            assert plan[-1] == ("confirm", None)
            for side, row in plan[:-1]:
                s.click(side, row)
            assert s.assignment() == list(a)


def test_layout_rows_do_not_overlap_and_hit_test():
    disp = load_design("default")["display"]
    for n in (1, 3, 5):
        lay = trial_layout(n, disp)
        ref, cand = lay.rows["reference"], lay.rows["candidate"]
        assert max(r.right for r in ref) < min(c.left for c in cand)
        for side in ("reference", "candidate"):
            rows = lay.rows[side]
            for a, b in zip(rows, rows[1:]):
                assert a.y - a.h / 2 > b.y + b.h / 2  # rows are separated vertically
            for r, rect in enumerate(rows):
                assert lay.hit(rect.x, rect.y) == (side, r)
                for x, y in lay.images[side][r]:
                    assert rect.contains(x - lay.image_deg / 2, y) and rect.contains(x + lay.image_deg / 2, y)
        assert lay.hit(lay.confirm.x, lay.confirm.y) == ("confirm", None) and lay.hit(0, 0) is None
        assert lay.confirm.y + lay.confirm.h / 2 < min(r.y - r.h / 2 for r in ref)
    assert "reduce display.image_deg" in check_fits(trial_layout(5, disp), 20, 20)


# ----------------------------------------------------------------------------------------------- bookkeeping


def test_counterbalance_rule():
    assert counterbalance_from_id("P07") == (7, "trailing number of the participant id")
    assert counterbalance_from_id("sim01")[0] == 1
    k, rule = counterbalance_from_id("anna")
    assert k == counterbalance_from_id("anna")[0] and "sha256" in rule


def test_new_session_refuses_existing_and_resume_checks_plan(stimset, tmp_path):
    d = load_design("demo")
    plan = new_session(tmp_path, "exp", "P03", 1, d, stimset, simulated="oracle")
    assert plan.info["design"]["counterbalance"] == 0 and plan.info["design"]["design"]["seed"] == d.seed
    assert plan.info["simulated"] == "oracle" and plan.info["n_trials_planned"] == len(plan.trials)
    plan.folder.mkdir(parents=True)
    write_session_info(plan.folder, plan.info)
    from experiment.storage import trial_row

    fr = {"frames": 1, "frames_dropped": 0, "frame_interval_mean_ms": None, "frame_interval_sd_ms": None}
    with TrialLog(plan.folder / "trials.csv") as log:
        for t in plan.trials[:3]:
            log.append(trial_row(plan, t, [], [[0.5, "confirm", None]], correct_assignment(t.candidate_units), now_iso(), fr))
    with pytest.raises(SessionExists, match="never overwritten"):
        new_session(tmp_path, "exp", "P03", 1, d, stimset)
    resumed = resume_session(tmp_path, "exp", "P03", 1, stimset)
    assert resumed.start_index == 3 and resumed.trials == plan.trials and resumed.resumed
    # a half-written last row (kill during a write) is dropped: that trial is run again
    with open(plan.folder / "trials.csv", "a") as f:
        f.write("exp,P03,1,3,1,0,0,exemplar")
    assert resume_session(tmp_path, "exp", "P03", 1, stimset).start_index == 3
    assert len(read_trials(plan.folder)) == 3
    # saved rows that do not match the regenerated plan: refused
    info = json.loads((plan.folder / "session.json").read_text())
    info["seed"] += 1
    write_session_info(plan.folder, {k: v for k, v in info.items() if k not in ("schema", "schema_version")})
    with pytest.raises(ResumeError, match="does not match the regenerated plan"):
        resume_session(tmp_path, "exp", "P03", 1, stimset)
    with pytest.raises(ResumeError, match="nothing to resume"):
        resume_session(tmp_path, "exp", "P04", 1, stimset)


@pytest.mark.parametrize("participant", ["../evil", "a/b", "", "x" * 65, "name with space", "ümlaut"])
def test_cli_refuses_bad_ids_before_touching_disk(participant, fixture_set, tmp_path, capsys):
    from experiment.cli import main

    rc = main(["--stimuli", str(fixture_set), "--design", "demo", "--participant", participant, "--data-dir",
               str(tmp_path / "data"), "--no-dialog", "--simulate", "oracle"])
    assert rc == 2 and "invalid participant id" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
    rc = main(["--stimuli", str(fixture_set), "--design", "demo", "--experiment", "../x", "--participant", "P1",
               "--data-dir", str(tmp_path / "data"), "--no-dialog"])
    assert rc == 2 and "invalid experiment name" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_cli_check_only_and_export(fixture_set, tmp_path, capsys):
    from experiment.cli import main

    out = tmp_path / "cond.csv"
    rc = main(["--stimuli", str(fixture_set), "--design", "demo", "--participant", "P2", "--data-dir", str(tmp_path / "d"),
               "--check-only", "--export-conditions", str(out), "--no-dialog"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "22 trials (18 main, 2 practice, 2 catch)" in text and "counterbalance 0" in text
    assert len(list(csv.DictReader(open(out)))) == 22 and not (tmp_path / "d").exists()
    rc = main(["--stimuli", str(fixture_set), "--design", "default", "--participant", "P2", "--check-only", "--no-dialog"])
    err = capsys.readouterr().err  # 4 units per group: 3 reserved for practice leave 1 for the main trials
    assert rc == 2 and "needs at least 10 units per layer group" in err and 'design.practice_units = "main"' in err


class _FakeGui:
    """Stands in for psychopy.gui: answers DlgFromDict/Dlg as a scripted experimenter would."""

    def __init__(self, answers: list[dict | None], resume_ok: bool = True):
        self.answers, self.resume_ok, self.asked = list(answers), resume_ok, []
        gui = self

        class DlgFromDict:
            def __init__(self, dictionary, title="", order=None, **kw):
                gui.asked.append(("DlgFromDict", dict(dictionary), title, order))
                answer = gui.answers.pop(0)
                self.OK = answer is not None
                if answer:
                    dictionary.update(answer)

        class Dlg:
            def __init__(self, title=""):
                self.text, self.OK = [], False
                gui.asked.append(("Dlg", title))

            def addText(self, text):
                self.text.append(text)

            def show(self):
                self.OK = gui.resume_ok
                return self.OK

        self.DlgFromDict, self.Dlg = DlgFromDict, Dlg


def test_dialog_asks_ids_validates_and_offers_resume(fixture_set, tmp_path, monkeypatch, capsys):
    import psychopy

    import experiment.runner
    from experiment.cli import main

    ran = []

    def fake_run(plan, stimset, **kw):  # the window is tested in test_experiment_session.py
        ran.append(plan)
        plan.info["n_trials_completed"] = plan.start_index
        return "running"

    monkeypatch.setattr(experiment.runner, "run_session", fake_run)
    args = ["--stimuli", str(fixture_set), "--design", "demo", "--data-dir", str(tmp_path)]

    fake = _FakeGui([{"participant": "P05", "session": 2}])
    monkeypatch.setitem(sys.modules, "psychopy.gui", fake)
    monkeypatch.setattr(psychopy, "gui", fake, raising=False)
    assert main(args) == 4
    assert fake.asked[0][0] == "DlgFromDict" and fake.asked[0][3] == ["participant", "session"]
    assert ran[-1].folder == tmp_path / "demo" / "sub-P05_ses-02" and ran[-1].info["design"]["counterbalance"] == 0

    for answer, msg in (({"participant": "../P05", "session": 1}, "invalid participant id"), (None, "cancelled")):
        fake.answers = [answer]
        assert main(args) == 2 and msg in capsys.readouterr().err

    # an existing session: the dialog offers to resume it; declining never touches it
    assert read_session_info_status(ran[-1].folder) == "running"  # written before the window opens
    fake.answers, fake.resume_ok = [{"participant": "P05", "session": 2}], False
    assert main(args) == 2 and "never overwritten" in capsys.readouterr().err
    fake.answers, fake.resume_ok = [{"participant": "P05", "session": 2}], True
    n = len(ran)
    assert main(args) == 4 and len(ran) == n + 1 and ran[-1].resumed
    assert fake.asked[-1] == ("Dlg", "Session exists")
    # --no-dialog never asks
    fake.asked.clear()
    assert main(args + ["--no-dialog"]) == 2 and fake.asked == []
    assert "--participant is required" in capsys.readouterr().err
    # a person's session is not continued by a simulation
    assert main(args + ["--participant", "P05", "--session", "2", "--resume", "--simulate", "oracle"]) == 2
    assert "would mix" in capsys.readouterr().err


def read_session_info_status(folder: Path) -> str:
    from contracts.session import read_session_info

    return read_session_info(folder)["status"]


def test_config_refuses_a_layout_that_does_not_fit_the_screen():
    with pytest.raises(ConfigError, match=r"key 'display': a trial with n=5 needs .* reduce display.image_deg"):
        design_from_dict(cfg(**{"display.image_deg": 3.0}), "small.toml")
    design_from_dict(cfg(**{"design.n_images": [1, 3], "practice.n_images": [1], "catch.n_images": 1, "display.image_deg": 3.0}))


def test_spare_images_are_never_shown(stimset):
    """stimuli_gen marks exemplars kept in reserve with spare = 1: a design must not count or show them."""
    imgs = stimset.images.copy()
    imgs["spare"] = ((imgs.kind == "natural_max") & (imgs["rank"] >= 8)).astype(float)
    imgs.loc[imgs.kind == "feature_vis", "spare"] = np.nan
    d = design_from_dict(cfg())
    problems = check_set_for_design(d, stimset.units, imgs)
    assert problems and all("missing rank(s) 8, 9" in p for p in problems)
    small = design_from_dict(cfg(**{"design.n_images": [1, 3], "practice.n_images": [3], "catch.n_images": 3}))
    spare_files = set(imgs.loc[imgs.spare == 1, "file"])
    for t in build_trials(small, stimset.units, imgs, 0, 4):
        shown = {f for rows in (t.reference_files, t.candidate_files) for row in rows for f in row}
        assert not shown & spare_files


@pytest.fixture(scope="module")
def shared_set(tmp_path_factory):
    """A 7-unit-per-group set in which early units A and B show the same photograph (B's natural_max_03 is
    A's natural_max_00) and early units A and C show a near duplicate (C's rank 1 is A's rank 2, one pixel changed)."""
    import shutil

    from PIL import Image

    from contracts.stimulus_set import write_stimulus_set
    from stimset_fixture import make_fixture_set

    base = tmp_path_factory.mktemp("shared")
    root = make_fixture_set(base / "set", base / "coll", units_per_group=7, size=96)
    s = load_stimulus_set(root)
    a, b, c = sorted(s.units.loc[s.units.group == "early", "unit_id"])[:3]
    shutil.copy(root / f"images/{a}/natural_max_00.png", root / f"images/{b}/natural_max_03.png")
    im = Image.open(root / f"images/{a}/natural_max_02.png").convert("RGB")
    im.putpixel((0, 0), (255, 0, 0))
    im.save(root / f"images/{c}/natural_max_01.png")
    write_stimulus_set(root, s.manifest, s.units, s.images)
    return root, (a, b, c)


def test_units_showing_the_same_photograph_never_share_a_trial(shared_set, tmp_path, capsys):
    from experiment.cli import main
    from experiment.overlap import check_trial, image_fingerprints

    root, (a, b, c) = shared_set
    s = load_stimulus_set(root)
    toml = tmp_path / "demo_exclude.toml"
    toml.write_text((ROOT / "experiment/designs/demo.toml").read_text().replace('shared_images = "allow"', 'shared_images = "exclude"'))
    design = load_design(str(toml))
    fp = image_fingerprints(root, s.manifest["files"], list(s.images.loc[s.images.kind == "natural_max", "file"]))
    seen_ab = seen_ac = 0
    for k in range(12):  # many participants: every window of the study order
        plan = new_session(tmp_path / "d", "demo", f"P{k}", 1, design, s, counterbalance=k)
        for t in plan.trials:
            rows = {u: [f for f in t.reference_files[i]] + list(t.candidate_files[t.candidate_units.index(i)])
                    for i, u in enumerate(t.units)}
            assert check_trial(rows, fp, 2) is None, (t.trial_index, rows)
            seen_ab += {a, b} <= set(t.units)
            seen_ac += {a, c} <= set(t.units)
    assert seen_ab == seen_ac == 0
    rep = plan.info["shared_images"]["early"]
    assert rep["triplets"] == 35 and rep["excluded"] == 5 + 5 - 1  # triplets with A&B or A&C (A,B,C counted once)
    assert sorted(tuple(p["units"]) for p in rep["pairs"]) == [(a, b), (a, c)]
    assert plan.info["shared_images"]["middle"]["excluded"] == 0
    # the plan printed by --check-only says it
    assert main(["--stimuli", str(root), "--design", str(toml), "--participant", "P1", "--check-only", "--no-dialog",
                 "--data-dir", str(tmp_path / "d")]) == 0
    assert "layer group early: 9 of 35 triplets left out" in capsys.readouterr().out
    # the shipped demo design allows them (its set has one triplet per group), and the plan warns
    assert main(["--stimuli", str(root), "--design", "demo", "--participant", "P1", "--check-only", "--no-dialog",
                 "--data-dir", str(tmp_path / "d")]) == 0
    assert "early: 9 of 35 triplets have two units showing the same" in capsys.readouterr().err


def test_too_few_triplets_without_shared_images_is_refused_with_the_reason(shared_set):
    root, (a, b, c) = shared_set
    s = load_stimulus_set(root)
    from experiment.storage import set_fingerprints

    raw = load_design("default").raw
    design = design_from_dict({**raw, "design": {**raw["design"], "practice_units": "main"}})  # all 7 units in main trials
    problems = check_set_for_design(design, s.units, s.images, set_fingerprints(design, s))
    assert any("early" in p and "26 distinct triplets" in p and "same or a near-duplicate photograph" in p for p in problems), problems


def _record(data_dir: Path, plan) -> None:
    """Write a planned session's session.json, as the CLI does before the window opens."""
    plan.folder.mkdir(parents=True, exist_ok=True)
    write_session_info(plan.folder, plan.info)


def test_counterbalance_indices_are_assigned_in_order_and_not_shared(stimset, tmp_path):
    from experiment.storage import CounterbalanceTaken

    d = load_design("demo")
    got = {}
    for pid in ("P5", "P005", "pilot05", "anna"):  # all "5" under the old trailing-number rule
        plan = new_session(tmp_path, "exp", pid, 1, d, stimset)
        _record(tmp_path, plan)
        got[pid] = (plan.info["design"]["counterbalance"], plan.info["design"]["reference_side"])
    assert got == {"P5": (0, "left"), "P005": (1, "right"), "pilot05": (2, "left"), "anna": (3, "right")}
    later = new_session(tmp_path, "exp", "P005", 2, d, stimset)  # a participant's next session keeps the index
    assert later.info["design"]["counterbalance"] == 1 and "earlier session" in later.info["design"]["counterbalance_rule"]
    with pytest.raises(CounterbalanceTaken, match="already used by participant.*P005"):
        new_session(tmp_path, "exp", "P9", 1, d, stimset, counterbalance=1)
    dup = new_session(tmp_path, "exp", "P9", 1, d, stimset, counterbalance=1, allow_duplicate_counterbalance=True)
    assert dup.info["design"]["counterbalance"] == 1 and "duplicate allowed" in dup.info["design"]["counterbalance_rule"]
    assert new_session(tmp_path, "other", "P9", 1, d, stimset, counterbalance=1).info["design"]["counterbalance"] == 1


def test_planned_participants_cover_the_triplets_evenly():
    ids = [f"u{i}" for i in range(7)]
    order = triplet_study_order(ids, 5, "early")
    t, planned = 6, 12  # 12 x 6 = 72 triplet uses over 35 triplets: each used 2 or 3 times
    uses = Counter(tr for k in range(planned) for tr in participant_triplets(order, k, t, planned))
    assert len(uses) == 35 and max(uses.values()) - min(uses.values()) <= 1
    # the old rule (consecutive windows) is kept for sessions recorded before participants_planned
    assert participant_triplets(order, 2, t, 0) == [order[(12 + i) % 35] for i in range(t)]
    # three participants no longer share most triplets: P01-P03 used to share 55 of 80 (default design)
    windows = [set(participant_triplets(order, k, t, planned)) for k in range(3)]
    assert all(not (a & b) for a, b in itertools.combinations(windows, 2))


def test_design_hash_leaves_out_the_monitor(stimset, tmp_path):
    raw = load_design("demo").raw
    booth2 = design_from_dict({**raw, "monitor": {**raw["monitor"], "distance_cm": 60.0, "name": "booth2"}})
    a = new_session(tmp_path, "exp", "P1", 1, load_design("demo"), stimset).info
    b = new_session(tmp_path, "exp", "P2", 1, booth2, stimset).info
    assert a["design_sha256"] == b["design_sha256"] and a["display_sha256"] != b["display_sha256"]
    other = design_from_dict({**raw, "design": {**raw["design"], "seed": 8}})
    assert new_session(tmp_path, "exp", "P3", 1, other, stimset).info["design_sha256"] != a["design_sha256"]


def test_sessions_recorded_before_the_new_design_keys_resume_with_their_old_trial_list(stimset, tmp_path):
    """A session.json written by fvmatch <= session 1.2 lacks shared_images, participants_planned,
    counterbalance and reference_side: resuming it must rebuild the list it started with."""

    d = load_design("demo")
    plan = new_session(tmp_path, "exp", "P7", 1, d, stimset)
    info = json.loads(json.dumps(plan.info))
    for key in ("shared_images", "participants_planned", "counterbalance"):
        del info["design"]["design"][key]
    del info["design"]["display"]["reference_side"]
    del info["design"]["reference_side"]
    for k in ("display_sha256", "shared_images"):
        info.pop(k, None)
    info["design"]["counterbalance"] = 7
    old_raw = {t: {k: v for k, v in info["design"][t].items()} for t in ("design", "practice", "catch", "display", "monitor", "timing")}
    old_raw["design"] = {**old_raw["design"], "shared_images": "allow", "participants_planned": 0, "counterbalance": "participant_number"}
    old_raw["display"] = {**old_raw["display"], "reference_side": "left"}
    old_trials = build_trials(design_from_dict(old_raw), stimset.units, stimset.images, 7, info["seed"])
    plan.folder.mkdir(parents=True)
    write_session_info(plan.folder, info)
    resumed = resume_session(tmp_path, "exp", "P7", 1, stimset)
    assert resumed.trials == old_trials


def test_dialog_asks_the_designs_participant_fields_and_records_them(fixture_set, tmp_path, monkeypatch):
    import psychopy

    import experiment.runner
    from experiment.cli import main

    ran = []
    monkeypatch.setattr(experiment.runner, "run_session", lambda plan, stimset, **kw: ran.append(plan) or "running")
    toml = tmp_path / "fields.toml"
    toml.write_text((ROOT / "experiment/designs/demo.toml").read_text() + '\n[participant]\nfields = ["age", "handedness"]\n')
    fake = _FakeGui([{"participant": "P1", "session": 1, "age": " 31 ", "handedness": ""}])
    monkeypatch.setitem(sys.modules, "psychopy.gui", fake)
    monkeypatch.setattr(psychopy, "gui", fake, raising=False)
    main(["--stimuli", str(fixture_set), "--design", str(toml), "--data-dir", str(tmp_path / "d")])
    assert fake.asked[0][3] == ["participant", "session", "age", "handedness"]
    assert ran[-1].info["participant_info"] == {"age": "31", "handedness": None}  # optional: empty is unknown
    main(["--stimuli", str(fixture_set), "--design", str(toml), "--data-dir", str(tmp_path / "d"), "--participant", "P2",
          "--no-dialog"])
    assert ran[-1].info["participant_info"] == {"age": None, "handedness": None}
    with pytest.raises(ConfigError, match="participant.fields"):
        design_from_dict(cfg(**{"participant.fields": ["session"]}))


def test_repetition_report_counts_repeated_images_and_memory_matchable_trials():
    from experiment.design import TrialSpec, repetition_report

    def trial(i, ref, cand, tt="exemplar"):
        return TrialSpec(trial_index=i, block=1, is_practice=False, is_catch=False, trial_type=tt, layer_group="early",
                         n_images=len(ref[0]), units=("a", "b", "c"), layers=("l",) * 3, channels=(0, 1, 2),
                         candidate_units=(0, 1, 2), reference_files=ref, candidate_files=cand, split_start=0)

    t0 = trial(0, (("a0",), ("b0",), ("c0",)), (("a1",), ("b1",), ("c1",)))
    t1 = trial(1, (("a0",), ("b2",), ("c2",)), (("a1",), ("b3",), ("c3",)))  # unit a: the same pair as in t0
    t2 = trial(2, (("a4",), ("b4",), ("c4",)), (("a5",), ("b5",), ("c5",)))  # all new
    rep = repetition_report([t0, t1, t2])
    assert rep == {"max_shows": 2, "images_shown": 16, "images_shown_more_than_once": 2, "memory_matchable": 1,
                   "rows_seen_before": 1, "main_exemplar_trials": 3}


# ---------------------------------------------------------------------------------------------
# Practice units reserved apart from the main trials (design.practice_units)


@pytest.fixture(scope="module")
def set10(tmp_path_factory):
    """10 units per group: 3 reserved for practice leave 7 (35 triplets) for the main trials."""
    from stimset_fixture import make_fixture_set

    base = tmp_path_factory.mktemp("set10")
    return load_stimulus_set(make_fixture_set(base / "set", base / "coll", units_per_group=10, size=32))


def test_reserved_practice_units_never_appear_in_main_or_catch_trials(set10, tmp_path, capsys):
    from experiment.cli import main as session_main
    from experiment.design import reserved_practice_units

    d = design_from_dict(cfg(**{"design.practice_units": "reserved", "design.max_triplet_uses": 1, "practice.trials": 4}))
    reserved = reserved_practice_units(d, set10.units)
    assert set(reserved) == {"early", "middle", "late"} and all(len(v) == 3 for v in reserved.values())
    plans = [new_session(tmp_path / "d", "exp", p, 1, d, set10) for p in ("P1", "P2")]
    for plan in plans:
        practice = [t for t in plan.trials if t.is_practice]
        rest = [t for t in plan.trials if not t.is_practice]
        assert len(practice) == 4
        assert all(sorted(t.units) == reserved[t.layer_group] for t in practice)
        shown_in_main = {u for t in rest for u in t.units}
        assert not shown_in_main & {u for us in reserved.values() for u in us}
        assert len(shown_in_main) == 21  # the 7 other units of each group
        rec = plan.info["practice_units"]
        assert rec["mode"] == "reserved" and rec["units"] == reserved and "seeded by design.seed" in rec["rule"]
        assert plan.info["design"]["design"]["practice_units"] == "reserved"
    # the rule depends on design.seed only: every participant practises on the same units
    other = design_from_dict(cfg(**{"design.practice_units": "reserved", "design.seed": 4, "practice.trials": 4}))
    assert reserved_practice_units(other, set10.units) != reserved
    # "main": practice shows main units, as before
    d_main = design_from_dict(cfg(**{"design.practice_units": "main", "design.max_triplet_uses": 1, "practice.trials": 4}))
    assert reserved_practice_units(d_main, set10.units) == {}
    # the --check-only plan names them
    toml = tmp_path / "reserved.toml"
    toml.write_text((ROOT / "experiment/designs/demo.toml").read_text().replace('practice_units = "main"',
                                                                                'practice_units = "reserved"'))
    rc = session_main(["--stimuli", str(set10.root), "--design", str(toml), "--participant", "P1", "--check-only",
                       "--no-dialog", "--data-dir", str(tmp_path / "d2")])
    out = capsys.readouterr().out
    assert rc == 0
    demo_reserved = reserved_practice_units(load_design(str(toml)), set10.units)
    assert "practice units (never in main trials): " + "; ".join(f"{g}: {', '.join(u)}" for g, u in demo_reserved.items()) in out


def test_too_few_units_to_reserve_practice_units_is_refused_with_how_many_are_needed(stimset):
    from experiment.design import units_per_group_needed

    d = design_from_dict(cfg(**{"design.practice_units": "reserved", "practice.trials": 4}))
    assert units_per_group_needed(d) == 4 + 3  # 6-7 main + catch trials per group, 4 uses: 4 units (2 would do 1), + 3
    with pytest.raises(ValueError, match=r"needs at least 7 units per layer group \(generate the set with "
                                         r"--units-per-group 7\), or set design.practice_units = \"main\""):
        build_trials(d, stimset.units, stimset.images, 0, 1)
    assert units_per_group_needed(load_design("default")) == 10  # 7 units (35 triplets) for 25-26 trials, + 3
    with pytest.raises(ConfigError, match="design.practice_units"):
        design_from_dict(cfg(**{"design.practice_units": "spare"}))


def test_sessions_recorded_before_practice_units_resume_with_practice_on_main_units(set10, tmp_path):
    """A session.json written before design.practice_units lacks the key: it ran practice on main units."""
    d = design_from_dict(cfg(**{"design.practice_units": "reserved", "design.max_triplet_uses": 1}))
    plan = new_session(tmp_path, "exp", "P3", 1, d, set10)
    info = json.loads(json.dumps(plan.info))
    del info["design"]["design"]["practice_units"]
    del info["practice_units"]
    old_raw = {t: dict(info["design"][t]) for t in ("design", "practice", "catch", "display", "monitor", "timing")}
    old_raw["design"]["practice_units"] = "main"
    old_trials = build_trials(design_from_dict(old_raw), set10.units, set10.images, info["design"]["counterbalance"],
                              info["seed"], set_fingerprints(d, set10))
    assert old_trials != plan.trials
    plan.folder.mkdir(parents=True)
    write_session_info(plan.folder, info)
    assert resume_session(tmp_path, "exp", "P3", 1, set10).trials == old_trials


def test_frame_timing_records_per_trial_and_over_runs():
    from experiment.frame_timing import add_trial, merge_frame_stats, new_run_totals, trial_frame_stats

    row = trial_frame_stats(3, [0.016, 0.018], dropped=1)
    assert row == {"frames": 3, "frames_dropped": 1, "frame_interval_mean_ms": 17.0, "frame_interval_sd_ms": 1.414}
    assert trial_frame_stats(1, [], 0)["frame_interval_mean_ms"] is None
    totals = new_run_totals()
    add_trial(totals, row, 2)
    add_trial(totals, trial_frame_stats(2, [0.020], 0), 1)
    merged = merge_frame_stats({"frames": 10, "frames_dropped": 2, "frame_intervals": 9, "frame_interval_sum_ms": 150.0}, totals)
    assert merged == {"frames": 15, "frames_dropped": 3, "frame_intervals": 12, "frame_interval_sum_ms": 204.0,
                      "frame_interval_mean_ms": 17.0}


def test_experiment_modules_hold_one_idea_each():
    """Team guide: a module over ~400 lines usually holds two ideas (runner.py held the session loop,
    text screens, the trial screen and frame records in 645 lines)."""
    # design.py (set requirements, triplets, the trial list, conditions file, repetition) is the next to split
    long = {p.name: n for p in (ROOT / "experiment").glob("*.py")
            if (n := len(p.read_text().splitlines())) > 420 and p.name != "design.py"}
    assert not long, long


def test_fresh_exemplar_ranks_bound_repetition_and_the_plan_shows_it(tmp_path):
    """design.exemplar_ranks = "fresh": a unit's images come from the rank pairs of its top-k seen least, so
    with a deep enough top-k no natural image repeats and no row pair can be matched from memory."""
    from experiment.design import repetition_report
    from stimset_fixture import make_fixture_set

    s = load_stimulus_set(make_fixture_set(tmp_path / "set", tmp_path / "coll", units_per_group=4, k=40, size=16))
    reps = {}
    for ranks in ("top", "fresh"):
        d = design_from_dict(cfg(**{"design.exemplar_ranks": ranks, "design.practice_units": "main"}))
        trials = build_trials(d, s.units, s.images, 0, 5)
        reps[ranks] = repetition_report(trials)
    assert reps["top"]["memory_matchable"] > 0 and reps["top"]["max_shows"] > 1
    assert reps["fresh"]["memory_matchable"] == 0 and reps["fresh"]["rows_seen_before"] == 0
    assert reps["fresh"]["max_shows"] == 1  # catch trials show the reference images on both sides: one show each
    # ABBA within a trial: both sides take one image of each chosen pair
    for t in trials:
        if t.trial_type == "exemplar" and not t.is_catch:
            for i in range(3):
                cand = t.candidate_files[t.candidate_units.index(i)]
                ref_pairs = sorted(int(f.rsplit("_", 1)[1][:2]) // 2 for f in t.reference_files[i])
                assert ref_pairs == sorted(int(f.rsplit("_", 1)[1][:2]) // 2 for f in cand)
    # a 10-deep top-k is used up: fresh still works, repeating the least shown pairs
    d = design_from_dict(cfg(**{"design.exemplar_ranks": "fresh", "design.practice_units": "main"}))
    small = load_stimulus_set(make_fixture_set(tmp_path / "set10", tmp_path / "coll10", units_per_group=4, k=10, size=16))
    assert repetition_report(build_trials(d, small.units, small.images, 0, 5))["max_shows"] > 1
    with pytest.raises(ConfigError, match="design.exemplar_ranks"):
        design_from_dict(cfg(**{"design.exemplar_ranks": "deep"}))


def test_session_contract_1_4_checks_practice_units(set10, tmp_path):
    from contracts.common import ContractError
    from contracts.session import SCHEMA_VERSION, read_session_info

    d = design_from_dict(cfg(**{"design.practice_units": "reserved", "design.max_triplet_uses": 1}))
    plan = new_session(tmp_path, "exp", "P4", 1, d, set10)
    plan.folder.mkdir(parents=True)
    write_session_info(plan.folder, plan.info)
    assert tuple(map(int, SCHEMA_VERSION.split("."))) >= (1, 4) and read_session_info(plan.folder)["practice_units"]["mode"] == "reserved"
    with pytest.raises(ContractError, match="field 'practice_units' must be an object"):
        write_session_info(plan.folder, {**plan.info, "practice_units": ["early"]})
