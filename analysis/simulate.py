"""Seeded simulator of matching sessions from known effects, written through ``contracts.session``.

Two generators (``SimulationSpec.generator``), both permutation-valid (n_correct is 0, 1 or 3):

``"trial"`` (default; the model the primary GLMM estimates, so the truth is exact for it):

* whole-trial correctness ``P(all three rows right) = logistic(eta)`` with
  ``eta = X beta + b_participant + mean(u_unit over the trial's three units)``,
  ``b ~ N(0, sd_participant^2)``, ``u ~ N(0, sd_unit^2)``;
* a trial that is not all right is one of the five wrong permutations: with probability
  ``p_one_right_given_wrong`` one with exactly one row right (3 exist), otherwise one with none (2 exist);
  0.6 makes the five equally likely, so a random observer (``eta = logit(1/6)``) picks a uniform permutation
  and is right on 1/3 of rows and 1/6 of trials.

``"rows"`` (an independent process, written apart from the models, to validate them on data they do not
assume): each row's reference unit is *recognised* with probability ``logistic(eta_row)``,
``eta_row = X beta + b_participant + u_row's unit`` (effects on the logit of recognising one row); recognised rows
are matched correctly, the unrecognised ones are shuffled among themselves (a uniform permutation, which may
leave a row right by luck). Exactly two right cannot happen (two recognised rows force the third). Neither GLMM
is the true model here; with no layer effect in ``eta_row``, the layer and interaction terms of both are 0 by
symmetry, which is what the slow tests check (levels and coverage).

Rows of one trial are therefore dependent as in the real task. No exact per-row logistic truth exists under
any permutation-valid generator; the per-row model is checked by the calibration of its standard errors.

``SimulationSpec.from_design`` takes trial counts, conditions, practice and catch trials from an
``experiment/designs/*.toml`` design, so simulated studies are the study a lab would run.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from contracts.common import software_versions

GENERATORS = ("trial", "rows")
DEFAULT_DESIGN = "default"  # experiment/designs/default.toml
DEFAULT_UNITS_PER_GROUP = 10  # fvmatch-stimuli's default --units-per-group
from contracts.session import TRIAL_COLUMNS, TrialLog, session_dir, write_session_info

LAYER_GROUPS = ("early", "middle", "late")
TRIAL_TYPES = ("exemplar", "feature_vis")
_LAYERS = {"early": ("conv3", "inception3a"), "middle": ("inception4a", "inception4c"), "late": ("inception5a", "inception5b")}
PERMS = [tuple(p) for p in itertools.permutations(range(3))]
_WRONG_ONE = [p for p in PERMS if sum(p[i] == i for i in range(3)) == 1]
_WRONG_NONE = [p for p in PERMS if sum(p[i] == i for i in range(3)) == 0]


@dataclass
class SimulationSpec:
    """Everything that shapes simulated data. Effects are on the logit of whole-trial correctness."""

    n_participants: int = 30
    reps_per_cell: int = 8  # trials per trial type x layer group x n cell (432 trials = 24 reps)
    n_levels: tuple[int, ...] = (1, 3, 5)
    n_practice: int = 4
    n_catch: int = 6
    units_per_group: int = 8
    intercept: float = 0.5  # exemplar, early, n = n_center
    b_feature_vis: float = -0.6
    b_middle: float = -0.3
    b_late: float = -0.6
    b_fv_middle: float = -0.2
    b_fv_late: float = -0.5
    b_n: float = 0.15  # per image, linear in n
    n_center: float = 3.0
    sd_participant: float = 0.5
    sd_unit: float = 0.6
    p_one_right_given_wrong: float = 0.6
    p_catch: float = 0.99  # attentive participants on catch trials
    n_inattentive: int = 0  # participants who answer at random on every trial (catch trials included)
    n_aborted: int = 0  # participants whose session stops half-way (status "aborted")
    random_observer: bool = False  # every participant answers at random (chance-level check)
    generator: str = "trial"  # "trial": the primary GLMM's model; "rows": independent row recognition (see above)
    trial_types: tuple[str, ...] = ("exemplar", "feature_vis")
    layer_groups: tuple[str, ...] = ("early", "middle", "late")
    design: str = ""  # the design file the counts were taken from ("" = SimulationSpec's own defaults)
    experiment: str = "sim"
    set_id: str = "sim-random-weights"
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.generator not in GENERATORS:
            raise ValueError(f"generator must be one of {GENERATORS}, not {self.generator!r}")
        if self.units_per_group < 3:
            raise ValueError(f"units_per_group must be >= 3 (a trial shows three units), not {self.units_per_group}")

    @classmethod
    def from_design(cls, design: str = DEFAULT_DESIGN, units_per_group: int | None = None, **overrides) -> "SimulationSpec":
        """A spec with the trial counts and conditions of an experiment design (a shipped name or a TOML path):
        trials per cell, n levels, trial types, layer groups, practice trials and catch trials (per block x
        blocks). ``units_per_group`` defaults to the stimulus generator's default (10); it must be
        enough for no triplet to repeat within a participant (the design's ``max_triplet_uses``)."""
        from math import comb

        from experiment.config import load_design  # pure TOML + validation: no PsychoPy, no torch

        d = load_design(design)
        per_group = len(d["design"]["trial_types"]) * len(d["design"]["n_images"]) * d["design"]["trials_per_cell"]
        units_per_group = DEFAULT_UNITS_PER_GROUP if units_per_group is None else units_per_group
        if comb(units_per_group, 3) * d["design"]["max_triplet_uses"] < per_group:
            raise ValueError(f"{d.path}: {per_group} trials per layer group and participant need more than "
                             f"{units_per_group} units per group for triplets not to repeat (max_triplet_uses "
                             f"{d['design']['max_triplet_uses']})")
        return cls(reps_per_cell=d["design"]["trials_per_cell"], n_levels=tuple(d["design"]["n_images"]),
                   n_practice=d["practice"]["trials"], n_catch=d["catch"]["per_block"] * d["design"]["blocks"],
                   units_per_group=units_per_group, trial_types=tuple(d["design"]["trial_types"]),
                   layer_groups=tuple(d["design"]["layer_groups"]), design=d.path, **overrides)

    def eta_fixed(self, trial_type: str, layer: str, n: float) -> float:
        fv = trial_type == "feature_vis"
        eta = self.intercept + self.b_feature_vis * fv + self.b_n * (n - self.n_center)
        eta += {"early": 0.0, "middle": self.b_middle, "late": self.b_late}[layer]
        eta += fv * {"early": 0.0, "middle": self.b_fv_middle, "late": self.b_fv_late}[layer]
        return float(eta)


def _logistic(x):
    return 1.0 / (1.0 + np.exp(-x))


def unit_pool(spec: SimulationSpec) -> pd.DataFrame:
    rows = []
    for g in spec.layer_groups:
        for k in range(spec.units_per_group):
            layer = _LAYERS[g][k % 2]
            ch = 10 * k + LAYER_GROUPS.index(g)
            rows.append({"unit_id": f"{layer}_c{ch:04d}", "group": g, "layer": layer, "channel": ch})
    return pd.DataFrame(rows)


def simulate_trials(spec: SimulationSpec, seed: int) -> tuple[pd.DataFrame, dict]:
    """Trials of every participant as contract rows (pure: no I/O) and the realised random effects."""
    rng = np.random.default_rng(seed)
    units = unit_pool(spec)
    u_unit = dict(zip(units.unit_id, rng.normal(0, spec.sd_unit, len(units))))
    pools = {g: list(units.unit_id[units.group == g]) for g in spec.layer_groups}
    layer_of = dict(zip(units.unit_id, units.layer))
    channel_of = {u: int(c) for u, c in zip(units.unit_id, units.channel)}
    pids = [f"S{i + 1:02d}" for i in range(spec.n_participants)]
    b_part = dict(zip(pids, rng.normal(0, spec.sd_participant, len(pids))))
    inattentive = set(pids[len(pids) - spec.n_inattentive:]) if spec.n_inattentive else set()
    aborted = set(pids[:spec.n_aborted])
    start = _dt.datetime(2026, 1, 5, 9, 0, tzinfo=_dt.timezone.utc)
    out = []
    for pi, pid in enumerate(pids):
        cells = [(t, g, n) for t in spec.trial_types for g in spec.layer_groups for n in spec.n_levels] * spec.reps_per_cell
        order = rng.permutation(len(cells))
        main = [(cells[i], False, False) for i in order]
        catch_pos = np.sort(rng.choice(len(main) + 1, size=spec.n_catch, replace=True)) if spec.n_catch else []
        for k, pos in enumerate(catch_pos[::-1]):
            g = spec.layer_groups[k % len(spec.layer_groups)]
            main.insert(int(pos), (("exemplar", g, spec.n_levels[-1]), False, True))
        practice = [((spec.trial_types[k % len(spec.trial_types)], spec.layer_groups[k % len(spec.layer_groups)],
                      spec.n_levels[k % len(spec.n_levels)]), True, False)
                    for k in range(spec.n_practice)]
        plan = practice + main
        if pid in aborted:
            plan = plan[: len(plan) // 2]
        speed = rng.normal(0, 0.15)
        t_now = start + _dt.timedelta(days=pi)
        for idx, ((ttype, group, n), is_practice, is_catch) in enumerate(plan):
            pool = pools[group]
            trial_units = [pool[k] for k in rng.permutation(len(pool))[:3]]
            if spec.random_observer or pid in inattentive:
                perceived = PERMS[rng.integers(6)]  # a uniform permutation: 1/3 per row, 1/6 per trial
            elif spec.generator == "rows" and not is_catch:
                eta = spec.eta_fixed(ttype, group, n) + b_part[pid] + np.array([u_unit[u] for u in trial_units])
                perceived = _recognise_rows(rng.random(3) < _logistic(eta), rng)
            else:
                if is_catch:
                    p = spec.p_catch
                else:
                    eta = spec.eta_fixed(ttype, group, n) + b_part[pid] + np.mean([u_unit[u] for u in trial_units])
                    p = float(_logistic(eta))
                if rng.random() < p:
                    perceived = (0, 1, 2)
                elif rng.random() < spec.p_one_right_given_wrong:
                    perceived = _WRONG_ONE[rng.integers(3)]
                else:
                    perceived = _WRONG_NONE[rng.integers(2)]
            cand = [int(x) for x in rng.permutation(3)]  # candidate row j shows unit_<cand[j]>
            assignment = [cand.index(perceived[i]) for i in range(3)]
            correct = [cand[assignment[i]] == i for i in range(3)]
            rt_confirm = float(np.exp(np.log(3.0 + 1.2 * n + 1.5 * (ttype == "feature_vis")) + speed + rng.normal(0, 0.35)))
            rt_first = float(rt_confirm * rng.uniform(0.15, 0.45))
            t_now += _dt.timedelta(seconds=rt_confirm + 1.0)
            row = {
                "experiment": spec.experiment, "participant": pid, "session": 1, "trial_index": idx,
                "block": 0 if is_practice else 1 + (idx - spec.n_practice) // 50,
                "is_practice": is_practice, "is_catch": is_catch, "trial_type": ttype, "layer_group": group,
                "n_images": int(n),
                **{f"unit_{i}": trial_units[i] for i in range(3)},
                **{f"layer_{i}": layer_of[trial_units[i]] for i in range(3)},
                **{f"channel_{i}": channel_of[trial_units[i]] for i in range(3)},
                "candidate_units": cand, "assignment": assignment,
                **{f"correct_{i}": bool(correct[i]) for i in range(3)},
                "n_correct": int(sum(correct)), "trial_correct": bool(all(correct)),
                "rt_first_click": round(rt_first, 4), "rt_confirm": round(rt_confirm, 4), "paused_s": 0.0,
                "clicks": [[round(rt_first, 3), "candidate", 0], [round(rt_confirm, 3), "confirm", -1]],
                "stimuli": [], "frames": int(rt_confirm * 60), "frames_dropped": 0,
                "frame_interval_mean_ms": 16.67, "frame_interval_sd_ms": 0.1, "onset": t_now.isoformat(),
            }
            out.append(row)
    truth = {"participant_effects": b_part, "unit_effects": u_unit, "inattentive": sorted(inattentive),
             "aborted": sorted(aborted)}
    return pd.DataFrame(out, columns=list(TRIAL_COLUMNS)), truth


def _recognise_rows(recognised: np.ndarray, rng: np.random.Generator) -> tuple[int, ...]:
    """The independent-process generator's trial: recognised rows keep their own candidate; the others are
    shuffled among themselves by a uniform permutation."""
    free = [i for i in range(3) if not recognised[i]]
    perm = list(range(3))
    for i, j in zip(free, rng.permutation(free)):
        perm[i] = int(j)
    return tuple(perm)


def write_sessions(sessions_root: Path | str, spec: SimulationSpec, seed: int) -> list[Path]:
    """Simulate and write one session folder per participant; returns the folders."""
    trials, truth = simulate_trials(spec, seed)
    folders = []
    design = {"simulator": "analysis.simulate", "spec": _jsonable(asdict(spec)), "seed": seed}
    for pid, df in trials.groupby("participant", sort=True):
        folder = session_dir(sessions_root, spec.experiment, pid, 1)
        folder.mkdir(parents=True, exist_ok=True)
        aborted = pid in truth["aborted"]
        planned = len(df) if not aborted else 2 * len(df)
        info = {
            "experiment": spec.experiment, "participant": pid, "session": 1,
            "status": "aborted" if aborted else "completed",
            "started": df.onset.iloc[0], "ended": df.onset.iloc[-1],
            "stimulus_set": {"set_id": spec.set_id, "path": f"data/stimuli/{spec.set_id}",
                             "manifest_sha256": "0" * 64, "random_weights": True},
            "design": design, "seed": seed,
            "monitor": {"name": "simulated", "distance_cm": 60, "width_cm": 50, "resolution": [1920, 1080]},
            "software": software_versions(["statsmodels"]),
            "n_trials_planned": int(planned), "n_trials_completed": int(len(df)), "frame_stats": {},
            "simulated": ("analysis.simulate:random" if spec.random_observer
                          else "analysis.simulate:glmm" if spec.generator == "trial" else "analysis.simulate:rows"),
        }
        write_session_info(folder, info)
        with TrialLog(folder / "trials.csv") as log:
            for row in df.to_dict("records"):
                log.append(row)
        folders.append(folder)
    return folders


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def true_fixed_effects(spec: SimulationSpec, n_as: str = "numeric", rhs: str = "type * layer * n") -> dict[str, float]:
    """The simulator's fixed effects expressed in the model's parameterisation (term -> value, logit of
    whole-trial correctness), by solving the design on the grid of conditions exactly."""
    import patsy

    from analysis.glmm import model_frame

    if spec.generator != "trial":
        raise ValueError("true_fixed_effects: only the 'trial' generator has GLMM effects as its truth")
    cells = pd.DataFrame([(t, g, n) for t in spec.trial_types for g in spec.layer_groups for n in spec.n_levels],
                         columns=["trial_type", "layer_group", "n_images"])
    frame = model_frame(cells.assign(participant="x"), n_as)
    X = patsy.dmatrix(rhs, frame, return_type="dataframe")
    eta = np.array([spec.eta_fixed(t, g, n) for t, g, n in cells.itertuples(index=False)])
    beta, *_ = np.linalg.lstsq(X.to_numpy(), eta, rcond=None)
    if not np.allclose(X.to_numpy() @ beta, eta):
        raise ValueError(f"the simulator's effects are not representable by {rhs!r} with n as {n_as}")
    return {k: float(v) for k, v in zip(X.columns, np.round(beta, 12))}
