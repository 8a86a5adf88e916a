"""JATOS: the study archive (.jzip: a .jas and the assets folder) and the conversion of a JATOS results export into
session folders. The results file is what the real task page appends (headless chromium, the page's own code, a stub
`jatos` object that records each appendResultData); the conversion is then tested on that file and on damaged copies
of it (malformed, duplicated, truncated lines; a browser that died mid-session)."""

from __future__ import annotations

import functools
import json
import threading
import time
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from contracts.session import read_session_info, read_trials
from experiment.design import correct_assignment
from webdriver_client import CHROMEDRIVER, CHROMIUM, Browser

SMALL_DESIGN = """[design]
name = "jatos"
seed = 3
trial_types = ["exemplar", "feature_vis"]
layer_groups = ["early"]
n_images = [1]
trials_per_cell = 2
blocks = 2
max_triplet_uses = 8
fv_source = "random"
shared_images = "allow"
practice_units = "main"
[practice]
trials = 2
trial_types = ["exemplar", "feature_vis"]
n_images = [1]
[catch]
per_block = 1
n_images = 1
[monitor]
distance_cm = 57.0
width_cm = 34.0
resolution = [1280, 800]
fullscreen = false
[timing]
iti_s = 0.1
feedback_s = 0.3
min_break_s = 0.0
"""

# The jatos.js stub the page loads in the test: what the page appends is kept in localStorage (it survives a
# reload, as JATOS's stored result does), and so are the study session and batch session data.
JATOS_STUB = """
(function () {
  const store = (k, v) => (v === undefined ? JSON.parse(localStorage.getItem(k) || "null") : localStorage.setItem(k, JSON.stringify(v)));
  window.jatos = {
    workerId: 41, studyResultId: 1234, batchId: 1,
    urlQueryParameters: Object.fromEntries(new URLSearchParams(window.location.search)),
    studySessionData: store("study_session") || {},
    onLoad(cb) { window.addEventListener("load", cb); },
    appendResultData(text) { store("lines", (store("lines") || []).concat([text])); return Promise.resolve(); },
    setStudySessionData(d) { store("study_session", d); this.studySessionData = d; return Promise.resolve(); },
    batchSession: { get: (k) => (store("batch") || {})[k], set: (k, v) => { const b = store("batch") || {}; b[k] = v; store("batch", b); return Promise.resolve(); } },
    endStudy() { store("ended", "endStudy"); },
    endStudyAndRedirect(url) { store("ended", url); },
  };
})();
"""


@pytest.fixture(scope="module")
def small_study(fixture_set, tmp_path_factory) -> Path:
    from contracts.stimulus_set import load_stimulus_set
    from experiment.config import load_design
    from online.config import load_online_config
    from online.export import NODE_MODULES, export_study

    if not (NODE_MODULES / "jspsych" / "package.json").is_file():
        pytest.skip("jsPsych is not installed: run `make online-deps` (npm ci in online/web)")
    base = tmp_path_factory.mktemp("jatos")
    (base / "jatos.toml").write_text(SMALL_DESIGN)
    out = base / "study"
    export_study(load_stimulus_set(fixture_set), load_design(str(base / "jatos.toml")), out,
                 load_online_config(None, {"blindspot_reps": 0, "completion_url": "https://example.org/done?cc=J"}))
    return out


@pytest.fixture(scope="module")
def jzip(small_study, tmp_path_factory) -> Path:
    from online.cli import main

    out = tmp_path_factory.mktemp("jzip") / "study.jzip"
    assert main(["jatos-export", str(small_study), "--slots", "3", "--out", str(out)]) == 0
    return out


def test_the_archive_is_a_jatos_study_with_the_lab_trial_lists(jzip, small_study, fixture_set):
    from contracts.stimulus_set import load_stimulus_set
    from experiment.storage import new_session
    from online.jatos_export import slot_seed
    from online.sessions import OnlineStudy, browser_trial

    z = zipfile.ZipFile(jzip)
    names = z.namelist()
    jas_names = [n for n in names if n.endswith(".jas")]
    assert len(jas_names) == 1 and "/" not in jas_names[0]
    jas = json.loads(z.read(jas_names[0]))
    d = jas["data"]
    assert jas["version"] == "3" and {"uuid", "title", "dirName", "componentList", "batchList"} <= set(d)
    comp = d["componentList"][0]
    assert comp["htmlFilePath"] == "index.html" and comp["reloadable"] and f"{d['dirName']}/index.html" in names
    assert all(n == jas_names[0] or n.startswith(d["dirName"] + "/") for n in names)
    html = z.read(f"{d['dirName']}/index.html").decode()
    assert html.index('src="jatos.js"') < html.index('src="task.js"')
    assert not any(n.endswith(("study.json", "units.csv", "images.csv", "manifest.json")) for n in names)  # units never revealed
    # slot k: the lab's trial list for counterbalance index k and the slot's seed
    study = OnlineStudy(small_study, small_study / ".x")
    for k in range(3):
        plan = json.loads(z.read(f"{d['dirName']}/plans/slot-{k:03d}.json"))
        lab = new_session(small_study / ".x", "e", "L1", 1, study.design, load_stimulus_set(fixture_set), counterbalance=k,
                          seed=slot_seed(study, k))
        assert plan["trials"] == [browser_trial(t, study.urls) for t in lab.trials] and plan["counterbalance"] == k
        assert set(plan["practice_answers"]) == {str(t.trial_index) for t in lab.trials if t.is_practice}
        assert "unit" not in json.dumps(plan["trials"])


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _serve(folder: Path):
    handler = functools.partial(_Quiet, directory=str(folder))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _answer(b: Browser, i: int, answer: list[int], wrong: bool) -> None:
    deadline = time.monotonic() + 20
    while not b.js(f"return !!document.querySelector(\"#fv-stage[data-trial='{i}'][data-ready='1']\")"):
        assert time.monotonic() < deadline, b.text()
        if b.js("return !!document.querySelector('#jspsych-html-button-response-btngroup button')"):
            b.click("#jspsych-html-button-response-btngroup button")  # instructions, practice intro, breaks
        time.sleep(0.05)
    a = [answer[1], answer[0], answer[2]] if wrong else answer
    for ref in (0, 1, 2):
        b.click(f"#fv-candidate-{a[ref]}")
        b.click(f"#fv-reference-{ref}")
    b.click("#fv-confirm:not(.disabled)")


@pytest.fixture(scope="module")
def page_lines(jzip, tmp_path_factory):
    """A whole session run by the real page from the JATOS archive, against the stub: the lines it appended, with a
    reload (the browser closed and the link opened again) after trial 2."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (make test installs them as root)")
    root = tmp_path_factory.mktemp("jatos_served")
    with zipfile.ZipFile(jzip) as z:
        z.extractall(root)
    assets = next(p for p in root.iterdir() if p.is_dir())
    (assets / "jatos.js").write_text(JATOS_STUB)
    httpd = _serve(assets)
    url = f"http://127.0.0.1:{httpd.server_address[1]}/index.html?PROLIFIC_PID=J07&STUDY_ID=S9"
    b = Browser()
    try:
        b.get(url.replace("index.html", "plans/index.json"))  # the origin, before the page runs
        b.js("localStorage.setItem('batch', JSON.stringify({fvmatch_next_slot: 4}))")  # 4 % 3 slots: slot 1
        b.get(url)
        b.click("#jspsych-fullscreen-btn")
        b.click("#end_resize_phase")
        deadline = time.monotonic() + 20
        while not b.js("return window.fvmatch && window.fvmatch.study"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        plan = b.js("return window.fvmatch.study")
        answers = {int(k): v for k, v in plan["practice_answers"].items()}
        # main trials' answers are not in the page: the test takes them from the lab's design code
        truth = _truth(jzip.parent, plan)
        for i in range(3):
            _answer(b, i, answers.get(i) or truth[i], wrong=(i == 1))
        deadline = time.monotonic() + 10
        while len(b.js("return JSON.parse(localStorage.getItem('lines'))")) < 3 + 3:  # start, instructions, calibration
            assert time.monotonic() < deadline
            time.sleep(0.05)
        b.get(url)  # the browser reloads: the page continues after the last appended trial
        b.click("#jspsych-fullscreen-btn")
        b.click("#end_resize_phase")
        b.find("#jspsych-html-button-response-btngroup button")
        assert "continues with trial 4 of" in b.text()
        for i in range(3, plan["n_trials"]):
            _answer(b, i, truth[i], wrong=False)
        deadline = time.monotonic() + 15
        while not b.js("return localStorage.getItem('ended')"):
            assert time.monotonic() < deadline, b.text()
            time.sleep(0.05)
        ended = json.loads(b.js("return localStorage.getItem('ended')"))
        lines = b.js("return JSON.parse(localStorage.getItem('lines'))")
    finally:
        b.quit()
        httpd.shutdown()
    assert ended == "https://example.org/done?cc=J"
    return lines, plan


_TRUTH: dict = {}


def _truth(base: Path, plan: dict) -> list[list[int]]:
    """The right answers of the slot's trials, from the lab's design code (what the experimenter knows)."""
    from experiment.design import build_trials
    from experiment.storage import set_fingerprints
    from online.sessions import OnlineStudy

    study = OnlineStudy(_TRUTH["study"], _TRUTH["study"] / ".x")
    trials = build_trials(study.design, study.stimset.units, study.stimset.images, plan["counterbalance"], plan["seed"],
                          set_fingerprints(study.design, study.stimset))
    return [correct_assignment(t.candidate_units) for t in trials]


@pytest.fixture(scope="module", autouse=True)
def _truth_study(small_study):
    _TRUTH["study"] = small_study


def _import(lines: list[str], tmp_path: Path, small_study: Path, name="results.txt", zipped=False):
    from online.jatos_import import import_results

    f = tmp_path / name
    text = "".join(lines)
    if zipped:  # a JATOS results archive: one data.txt per component result
        with zipfile.ZipFile(f, "w") as z:
            z.writestr("study_result_1234/comp-result_1/data.txt", text)
    else:
        f.write_text(text)
    data = tmp_path / "sessions"
    sessions, unused = import_results(f, small_study, data)
    return sessions, unused, data


def test_import_of_what_the_page_appended(page_lines, small_study, tmp_path):
    from analysis.cli import main

    lines, plan = page_lines
    kinds = [json.loads(x)["fvmatch"] for x in lines]
    assert kinds.count("start") == 2 and kinds.count("trial") == plan["n_trials"] and kinds[-1] == "finish"
    assert all(x.endswith("\n") for x in lines)  # one JSON line per append
    sessions, unused, data = _import(lines, tmp_path, small_study, "results.zip", zipped=True)
    assert unused == [] and len(sessions) == 1
    s = sessions[0]
    assert (s.participant, s.status, s.trials, s.duplicates, s.problems) == ("J07", "completed", plan["n_trials"], 0, [])
    folder = Path(s.folder)
    info = read_session_info(folder)
    assert info["mode"] == "online" and info["status"] == "completed" and info["design"]["counterbalance"] == 1
    assert info["seed"] == plan["seed"] and "JATOS slot 1" in info["design"]["counterbalance_rule"]
    assert len(info["runs"]) == 2 and info["runs"][1]["start_index"] == 3
    assert info["instructions_s"] > 0 and info["online"]["calibration"]["px_per_deg"] > 5
    assert info["online"]["platform_ids"] == {"STUDY_ID": "S9"} and info["online"]["jatos"]["partial"] is False
    rows = read_trials(folder)
    assert list(rows.trial_index) == list(range(plan["n_trials"]))
    assert list(rows.trial_correct) == [i != 1 for i in range(plan["n_trials"])]  # trial 1 was answered wrong on purpose
    assert main([str(data / info["experiment"]), "--out", str(tmp_path / "res"), "--no-models", "--no-figures",
                 "--n-boot", "20"]) == 0


def test_damaged_results_are_reported_never_silently_dropped(page_lines, small_study, tmp_path):
    lines, plan = page_lines
    trial_at = [i for i, x in enumerate(lines) if json.loads(x)["fvmatch"] == "trial"]
    damaged = list(lines)
    damaged.insert(trial_at[4] + 1, lines[trial_at[4]])  # an exact repeat (the page retried an append)
    other = json.loads(lines[trial_at[5]])
    other["clicks"][0][0] += 0.5
    damaged.insert(trial_at[5] + 2, json.dumps(other) + "\n")  # the same trial again with other clicks
    damaged.insert(1, "not json at all\n")
    damaged.insert(2, json.dumps({"something": "else"}) + "\n")
    sessions, unused, data = _import(damaged, tmp_path, small_study)
    s = sessions[0]
    assert s.status == "completed" and s.trials == plan["n_trials"] and s.duplicates == 1
    assert len(s.problems) == 1 and f"trial {5} again with other clicks; the first answer is kept" in s.problems[0]
    assert len(unused) == 2 and "results.txt:2: not a JSON line" in unused[0] and "not an fvmatch line" in unused[1]
    rows = read_trials(Path(s.folder))
    first = json.loads(lines[trial_at[5]])["clicks"]
    assert json.loads(rows.clicks[5]) == [[round(c[0], 4), c[1], c[2]] for c in first]  # the first answer kept
    assert read_session_info(Path(s.folder))["online"]["jatos"]["problems"] == s.problems
    # the same results again: the folder exists, nothing is changed
    before = (Path(s.folder) / "trials.csv").read_bytes()
    from online.jatos_import import import_results

    again, _ = import_results(tmp_path / "results.txt", small_study, data)
    assert again[0].status == "skipped" and "left untouched" in again[0].problems[0]
    assert (Path(s.folder) / "trials.csv").read_bytes() == before


def test_a_browser_that_died_mid_session_gives_a_kept_partial_session(page_lines, small_study, tmp_path):
    from analysis.load import load_sessions

    lines, plan = page_lines
    trial_at = [i for i, x in enumerate(lines) if json.loads(x)["fvmatch"] == "trial"]
    cut = lines[:trial_at[5]] + [lines[trial_at[5]][:40]]  # trials 0-4, then half a line: the export was cut there
    sessions, unused, data = _import(cut, tmp_path, small_study)
    s = sessions[0]
    assert s.status == "aborted" and s.trials == 5 and len(unused) == 1 and "not a JSON line" in unused[0]
    info = read_session_info(Path(s.folder))
    assert info["status"] == "aborted" and info["online"]["jatos"]["partial"] is True
    assert "stopped after trial 4" in info["online"]["jatos"]["why_partial"]
    loaded = load_sessions([data / info["experiment"]])
    assert loaded.sessions.status.tolist() == ["aborted"] and len(loaded.trials) == 5  # read, listed as incomplete


def test_results_of_another_study_are_refused(page_lines, small_study, tmp_path):
    lines, _ = page_lines
    wrong = [x.replace('"plan_id":"', '"plan_id":"0') for x in lines]
    sessions, _, data = _import(wrong, tmp_path, small_study)
    assert sessions[0].status == "skipped" and "not from a jatos-export of this study" in sessions[0].problems[0]
    assert not (data / "jatos").exists() or not any((data / "jatos").iterdir())


def test_a_design_with_some_layer_groups_starts_sessions(small_study, tmp_path):
    """The lab's design code reads the natural images of every layer group of the set (the shared-photograph check),
    not only the design's: the export carries them (unserved), so a one-group design serves sessions."""
    from online.server import _STATIC
    from online.sessions import OnlineStudy

    study = OnlineStudy(small_study, tmp_path / "data")
    answer = study.start({"params": {"participant": "G1"}})
    assert answer["n_trials"] == 8 and not answer["resumed"]
    unserved = [p for p in (small_study / "stimuli").rglob("*.png")]
    assert unserved and not any(_STATIC.match(p.relative_to(small_study).as_posix()) for p in unserved)
