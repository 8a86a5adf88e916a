"""Online sessions on the server side: start or resume a participant, validate and record each trial.

No HTTP here (``online/server.py`` maps requests to these methods; errors are ``RequestError`` with an
HTTP status). Sessions are made and resumed with the lab's storage code (``experiment.storage``), the trial
list comes from the lab's ``build_trials``, and every trial is appended with ``contracts.session.TrialLog``
(fsync'd) before the answer is sent. Rules that keep data safe:

* a trial is recorded only when it is the next one of the participant's plan (replays and skips are
  refused; a replay of the last saved trial says so, so a browser whose answer was lost moves on);
* the pairing is recomputed from the clicks with the lab's ``PairingState``; stimuli and positions come
  from the plan and the lab's layout, never from the browser;
* one participation per participant id: a completed session is never reopened;
* one writer per session, across processes: every request that writes holds the lab's per-session ``flock``
  (``experiment.session_lock``), so a lab runner (``fvmatch-session``) and this server never write the same
  session at once; a session a lab runner holds is refused (409), and one changed on disk since the server last
  wrote it is read again from disk before anything is written.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import threading
from contextlib import contextmanager
from pathlib import Path

from contracts.common import ContractError
from contracts.online_study import read_study
from contracts.session import SESSION_FILE, TRIALS_FILE, TrialLog, now_iso, read_session_info, session_dir, validate_id
from contracts.stimulus_set import load_stimulus_set
from experiment.config import Design, design_from_dict
from experiment.design import TrialSpec, correct_assignment, score
from experiment.layout import trial_layout
from experiment.matching import PairingState
from experiment.session_lock import SessionLock, SessionLocked
from experiment.storage import ResumeError, SessionPlan, new_session, resume_session, save_info, trial_row

SESSION_NUMBER = 1  # one participation per participant id
ID_PARAMS = ("PROLIFIC_PID", "workerId", "participant")  # Prolific, MTurk, generic (first present wins)
EXTRA_ID_PARAMS = ("STUDY_ID", "SESSION_ID", "assignmentId", "hitId")
MAX_CLICKS = 1000
EVENT_KINDS = ("calibration", "focus_loss", "instructions")


class RequestError(Exception):
    """A refused request: HTTP ``status`` and a sentence for the client (and the log)."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def _num(value, what: str, lo: float = 0.0, hi: float = 1e7) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not lo <= value <= hi:
        raise RequestError(400, f"{what} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _int(value, what: str, lo: int = 0, hi: int = 10**7) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RequestError(400, f"{what} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _text(value, what: str, max_len: int = 300) -> str:
    if not isinstance(value, str) or len(value) > max_len:
        raise RequestError(400, f"{what} must be a string of at most {max_len} characters")
    return value


def participant_from_params(params: dict) -> tuple[str, str, dict]:
    """(participant id, the URL parameter it came from, the other platform ids) from the page's URL parameters."""
    if not isinstance(params, dict):
        raise RequestError(400, "'params' must be an object of URL parameters")
    for name in ID_PARAMS:
        if params.get(name):
            pid = _text(params[name], name, 200)
            try:
                validate_id(pid)
            except ValueError as e:
                raise RequestError(400, f"URL parameter {name}: {e}") from e
            extra = {k: _text(params[k], k, 200) for k in EXTRA_ID_PARAMS if params.get(k)}
            return pid, name, extra
    raise RequestError(400, f"no participant id in the link: add one of the URL parameters {', '.join(ID_PARAMS)}")


def replay_clicks(clicks) -> list[int]:
    """The assignment the clicks make (lab pairing rules); the last click must be the confirm of a complete pairing."""
    if not isinstance(clicks, list) or not 1 <= len(clicks) <= MAX_CLICKS:
        raise RequestError(400, f"'clicks' must be a list of 1..{MAX_CLICKS} clicks")
    state, last_t = PairingState(), 0.0
    for i, c in enumerate(clicks):
        if not isinstance(c, list) or len(c) != 3:
            raise RequestError(400, f"click {i}: expected [t, kind, row]")
        t, kind, row = c
        t = _num(t, f"click {i} time", 0.0, 86400.0)
        if t < last_t:
            raise RequestError(400, f"click {i}: time {t} is before the previous click ({last_t})")
        last_t = t
        if kind == "confirm":
            if i != len(clicks) - 1 or row is not None:
                raise RequestError(400, f"click {i}: a confirm must be the last click, with row null")
            if not state.complete:
                raise RequestError(400, "the confirm click came before all three rows were paired")
            return state.assignment()
        if kind not in ("reference", "candidate") or isinstance(row, bool) or row not in (0, 1, 2):
            raise RequestError(400, f"click {i}: kind must be reference|candidate|confirm and row 0-2, got {kind!r} {row!r}")
        state.click(kind, row)
    raise RequestError(400, "the clicks do not end with a confirm")


def browser_trial(t: TrialSpec, urls: dict[str, str]) -> dict:
    """What the browser needs to show a trial: image URLs per row, no unit ids and no answer."""
    return {"trial_index": t.trial_index, "block": t.block, "is_practice": t.is_practice, "n_images": t.n_images,
            "reference": [[urls[f] for f in row] for row in t.reference_files],
            "candidate": [[urls[f] for f in row] for row in t.candidate_files]}


def layout_json(n: int, display: dict) -> dict:
    """The lab's trial layout (degrees, origin at the centre, y up) as JSON for the browser."""
    return dataclasses.asdict(trial_layout(n, display))


def stimuli_of(t: TrialSpec, display: dict) -> list[dict]:
    """The ``stimuli`` cell of trials.csv, as the lab runner writes it (positions and size in degrees)."""
    lay = trial_layout(t.n_images, display)
    out = []
    for side, rows in (("reference", t.reference_files), ("candidate", t.candidate_files)):
        for r, files in enumerate(rows):
            unit = t.units[r] if side == "reference" else t.units[t.candidate_units[r]]
            for k, rel in enumerate(files):
                x, y = lay.images[side][r][k]
                out.append({"side": side, "row": r, "unit": unit, "file": rel, "x": round(x, 3), "y": round(y, 3),
                            "size": lay.image_deg})
    return out


class OnlineStudy:
    """One exported study served to participants; thread-safe (one lock per participant, one for new sessions)."""

    def __init__(self, study_dir: Path, data_dir: Path):
        self.study_dir, self.data_dir = Path(study_dir), Path(data_dir)
        self.study = read_study(self.study_dir)
        self.stimset = load_stimulus_set(self.study_dir / "stimuli")
        if self.stimset.manifest_sha256 != self.study["stimulus_set"]["manifest_sha256"]:
            raise ContractError(self.study_dir / "stimuli" / "manifest.json", "differs from the manifest recorded in study.json")
        raw = design_from_dict(self.study["design"], f"{self.study_dir / 'study.json'} (design)").raw
        self.design = Design(path=self.study["design_file"], raw=raw)
        self.experiment = validate_id(self.study["experiment"], "experiment name")
        self.urls = {rel: e["url"] for rel, e in self.study["images"].items()}
        self.config = self.study["online"]
        self._new_lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._plans: dict[str, SessionPlan] = {}
        self._seen: dict[str, tuple] = {}  # participant -> _disk_state after this server's last write

    # --- helpers ----------------------------------------------------------------------------
    def _lock(self, pid: str) -> threading.Lock:
        with self._new_lock:
            return self._locks.setdefault(pid, threading.Lock())

    def _folder(self, pid: str) -> Path:
        return session_dir(self.data_dir, self.experiment, pid, SESSION_NUMBER)

    @contextmanager
    def _writing(self, pid: str):
        """The participant's thread lock, then the lab's per-session flock for the request: no other process (a
        lab runner, a second server) writes the session meanwhile; one that holds it gets the request refused."""
        with self._lock(pid):
            try:
                lock = SessionLock(self._folder(pid)).acquire()
            except SessionLocked as e:
                raise RequestError(409, f"participant {pid}: the session is being written by another process; "
                                        "nothing was recorded", locked=True) from e
            try:
                yield
            finally:
                lock.release()

    def _disk_state(self, pid: str) -> tuple:
        """What identifies the session's files as this server last wrote them (size and mtime of both)."""
        out = []
        for name in (SESSION_FILE, TRIALS_FILE):
            try:
                st = (self._folder(pid) / name).stat()
                out.append((st.st_size, st.st_mtime_ns))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def _save(self, pid: str, plan: SessionPlan) -> None:
        save_info(plan)
        self._seen[pid] = self._disk_state(pid)

    def next_counterbalance(self) -> int:
        """The smallest counterbalance index no session of this experiment has: participants get consecutive
        windows of the study order, as lab participants numbered P00, P01, ... do."""
        used = set()
        for p in (self.data_dir / self.experiment).glob(f"*/{SESSION_FILE}"):
            try:
                used.add(int(read_session_info(p.parent)["design"]["counterbalance"]))
            except (ContractError, ValueError, KeyError, TypeError):
                continue
        k = 0
        while k in used:
            k += 1
        return k

    def _plan(self, pid: str) -> SessionPlan:
        """The participant's plan in memory, or resumed from disk (after a server restart)."""
        plan = self._plans.get(pid)
        if plan is not None and self._seen.get(pid) != self._disk_state(pid):
            del self._plans[pid]  # written by another process since (a lab runner): read it again
            plan = None
        if plan is None:
            if not (self._folder(pid) / SESSION_FILE).is_file():
                raise RequestError(404, f"participant {pid} has no session; open the study link first")
            info = read_session_info(self._folder(pid))
            if info["status"] == "completed":
                raise RequestError(409, f"participant {pid} already completed the study")
            try:
                plan = resume_session(self.data_dir, self.experiment, pid, SESSION_NUMBER, self.stimset)
            except ResumeError as e:
                raise RequestError(409, str(e)) from e
            self._plans[pid] = plan
            self._seen[pid] = self._disk_state(pid)
        return plan

    # --- requests ---------------------------------------------------------------------------
    def start(self, body: dict, slot: dict | None = None, at: str | None = None) -> dict:
        """A participant opens (or reopens) the study link: a new session, or the saved one resumed.

        ``slot`` (JATOS import, ``online.jatos_import``): the precomputed plan the page ran, {"counterbalance",
        "seed", "rule"}, instead of the next free index and the lab's seed rule; ``at``: the page's time of the
        start (ISO), instead of the server's clock."""
        pid, id_param, platform_ids = participant_from_params(body.get("params"))
        client = body.get("client") or {}
        if not isinstance(client, dict):
            raise RequestError(400, "'client' must be an object")
        run = {"started": at or now_iso(), "user_agent": _text(client.get("user_agent", ""), "client.user_agent", 400)}
        with self._writing(pid):
            folder = self._folder(pid)
            if (folder / SESSION_FILE).is_file():
                info = read_session_info(folder)
                if info["status"] == "completed":
                    raise RequestError(409, f"participant {pid} already took part in this study (one participation per id)")
                self._plans.pop(pid, None)
                plan = self._plan(pid)
                if slot and (plan.info["design"]["counterbalance"], plan.info["seed"]) != (slot["counterbalance"], slot["seed"]):
                    raise RequestError(409, f"participant {pid}: reopened with another plan (counterbalance "
                                            f"{slot['counterbalance']}, seed {slot['seed']}) than the session's")
                resumed = True
            else:
                with self._new_lock:  # counterbalance indices are assigned one at a time
                    k = slot["counterbalance"] if slot else self.next_counterbalance()
                    plan = new_session(self.data_dir, self.experiment, pid, SESSION_NUMBER, self.design, self.stimset,
                                       counterbalance=k, seed=slot["seed"] if slot else None,
                                       allow_duplicate_counterbalance=bool(slot))
                    plan.info["design"]["counterbalance_rule"] = (slot["rule"] if slot else
                                                                  "assigned by fvmatch-online serve: smallest index unused in this experiment")
                    if at:
                        plan.info["started"] = at
                    plan.info["stimulus_set"]["path"] = str((self.study_dir / "stimuli").resolve())
                    plan.info["mode"] = "online"
                    plan.info["monitor"] = {"name": "browser", "distance_cm": None, "width_cm": None, "resolution": None}
                    plan.info["software"] = dict(self.study["software"])
                    plan.info["online"] = {"id_param": id_param, "platform_ids": platform_ids, "user_agent": run["user_agent"],
                                           "focus_losses": 0, "instructions_s": None, "calibration": None}
                    plan.folder.mkdir(parents=True, exist_ok=True)
                    self._save(pid, plan)
                    TrialLog(plan.folder / TRIALS_FILE).close()  # the header, so the table exists from the start
                self._plans[pid] = plan
                resumed = False
            run["start_index"] = plan.start_index
            plan.info.setdefault("runs", []).append(run)
            plan.info["status"] = "running"
            self._save(pid, plan)
            return {"participant": pid, "experiment": self.experiment, "resumed": resumed, "run": len(plan.info["runs"]) - 1,
                    "start_index": plan.info["n_trials_completed"], **self.page_plan(plan.trials)}

    def page_plan(self, trials: list[TrialSpec]) -> dict:
        """What the page needs to run a trial list (no unit ids, no answers): the start answer, and the JATOS
        package's precomputed plans."""
        ns = sorted({t.n_images for t in trials})
        return {
            "n_trials": len(trials), "trials": [browser_trial(t, self.urls) for t in trials],
            "layouts": {str(n): layout_json(n, self.design["display"]) for n in ns},
            "display": self.design["display"], "timing": self.design["timing"],
            "assumed_distance_cm": self.design["monitor"]["distance_cm"],
            "online": {k: self.config[k] for k in ("min_width_px", "min_height_px", "blindspot_reps")},
            "random_weights": self.study["stimulus_set"]["random_weights"],
        }

    def record_trial(self, body: dict) -> dict:
        pid, _, _ = participant_from_params(body.get("params"))
        with self._writing(pid):
            plan = self._plan(pid)
            if plan.info["status"] == "completed":
                raise RequestError(409, f"participant {pid}: the session is completed; nothing more is recorded")
            self._check_run(plan, body)
            n_saved = plan.info["n_trials_completed"]
            i = body.get("trial_index")
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(plan.trials):
                raise RequestError(404, f"trial {i!r} does not exist (the plan has trials 0..{len(plan.trials) - 1})")
            if i < n_saved:
                raise RequestError(409, f"trial {i} is already recorded; nothing was changed", next_index=n_saved)
            if i > n_saved:
                raise RequestError(409, f"trial {i} is out of order: the next trial to record is {n_saved}", next_index=n_saved)
            t = plan.trials[i]
            clicks = body.get("clicks")
            assignment = replay_clicks(clicks)
            if body.get("assignment") != assignment:
                raise RequestError(400, f"'assignment' {body.get('assignment')!r} disagrees with the clicks ({assignment})")
            onset = _text(body.get("onset"), "onset", 40)
            try:
                _dt.datetime.fromisoformat(onset)
            except ValueError as e:
                raise RequestError(400, f"'onset' {onset!r} is not an ISO time") from e
            fr = body.get("frames")
            if not isinstance(fr, dict):
                raise RequestError(400, "'frames' must be an object")
            frames = {"frames": _int(fr.get("frames"), "frames.frames"),
                      "frames_dropped": _int(fr.get("frames_dropped"), "frames.frames_dropped"),
                      "frame_interval_mean_ms": _opt_num(fr.get("frame_interval_mean_ms"), "frames.frame_interval_mean_ms"),
                      "frame_interval_sd_ms": _opt_num(fr.get("frame_interval_sd_ms"), "frames.frame_interval_sd_ms")}
            paused = _num(body.get("paused_s", 0.0), "paused_s", 0.0, 86400.0)
            row = trial_row(plan, t, stimuli_of(t, self.design["display"]), [[round(c[0], 4), c[1], c[2]] for c in clicks],
                            assignment, onset, frames, paused_s=paused)
            with TrialLog(plan.folder / TRIALS_FILE) as log:
                log.append(row)  # fsync'd before the answer
            plan.info["n_trials_completed"] = i + 1
            self._save(pid, plan)
            out = {"saved": i, "next_index": i + 1}
            if t.is_practice:
                out["feedback"] = {"correct": score(t.candidate_units, assignment),
                                   "answer": correct_assignment(t.candidate_units)}
            return out

    @staticmethod
    def _check_run(plan: SessionPlan, body: dict) -> None:
        """Only the latest opening of the link may record: a page left open in another tab or window (or an old
        retry from it) is refused, so one participant never answers from two screens at once."""
        run = body.get("run")
        latest = len(plan.info.get("runs", [])) - 1
        if isinstance(run, bool) or not isinstance(run, int):
            raise RequestError(400, f"'run' must be the run number the start answer gave, got {run!r}")
        if run != latest:
            raise RequestError(409, "the study was opened again in another tab or window; continue there "
                                    "(this page no longer records answers)", superseded=True)

    def record_event(self, body: dict) -> dict:
        """Calibration, focus losses and time on the instructions, into session.json ``online``."""
        pid, _, _ = participant_from_params(body.get("params"))
        kind = body.get("kind")
        if kind not in EVENT_KINDS:
            raise RequestError(400, f"'kind' must be one of {EVENT_KINDS}, got {kind!r}")
        with self._writing(pid):
            plan = self._plan(pid)
            self._check_run(plan, body)
            on = plan.info.setdefault("online", {})
            if kind == "focus_loss":
                on["focus_losses"] = int(on.get("focus_losses") or 0) + 1
            elif kind == "instructions":
                on["instructions_s"] = round((on.get("instructions_s") or 0.0) + _num(body.get("seconds"), "seconds", 0, 86400), 3)
                plan.info["instructions_s"] = on["instructions_s"]  # session schema 1.5: where both modes record it
            else:
                c = body.get("calibration")
                if not isinstance(c, dict):
                    raise RequestError(400, "'calibration' must be an object")
                cal = {"px_per_cm": _num(c.get("px_per_cm"), "px_per_cm", 1, 1000),
                       "viewing_distance_cm": _num(c.get("viewing_distance_cm"), "viewing_distance_cm", 10, 1000),
                       "distance_measured": bool(c.get("distance_measured")),
                       "px_per_deg": _num(c.get("px_per_deg"), "px_per_deg", 1, 10000),
                       "screen_px": [_int(v, "screen_px", 100, 100000) for v in _pair(c.get("screen_px"), "screen_px")],
                       "window_px": [_int(v, "window_px", 100, 100000) for v in _pair(c.get("window_px"), "window_px")],
                       "device_pixel_ratio": _num(c.get("device_pixel_ratio", 1.0), "device_pixel_ratio", 0.1, 10)}
                on["calibration"] = cal
                plan.info["monitor"] = {"name": "browser", "distance_cm": cal["viewing_distance_cm"],
                                        "width_cm": round(cal["screen_px"][0] / cal["px_per_cm"], 2),
                                        "resolution": cal["screen_px"]}
                if plan.info.get("runs"):
                    plan.info["runs"][-1]["calibration"] = cal
            self._save(pid, plan)
            return {"ok": True}

    def finish(self, body: dict, at: str | None = None) -> dict:
        pid, _, _ = participant_from_params(body.get("params"))
        with self._writing(pid):
            plan = self._plan(pid)
            self._check_run(plan, body)
            n = plan.info["n_trials_completed"]
            if n != len(plan.trials):
                raise RequestError(409, f"participant {pid}: {n} of {len(plan.trials)} trials recorded; the session is not finished",
                                   next_index=n)
            plan.info["status"], plan.info["ended"] = "completed", at or now_iso()
            if plan.info.get("runs"):
                plan.info["runs"][-1].update(ended=plan.info["ended"], status="completed")
            self._save(pid, plan)
            self._plans.pop(pid, None)
            return {"completed": True, "completion_url": self.config["completion_url"]}


def _opt_num(v, what: str):
    return None if v is None else round(_num(v, what, 0, 1e6), 3)


def _pair(v, what: str) -> list:
    if not isinstance(v, list) or len(v) != 2:
        raise RequestError(400, f"{what} must be [width, height]")
    return v
