"""The trial list of one participant's session. Pure Python (numpy, pandas), no PsychoPy, no I/O.

Rules (each documented where it is implemented):

* **Cells.** Every cell of trial type x layer group x n has ``design.trials_per_cell`` main trials.
* **Blocks.** Main trials are sorted by cell (cells in random order) and dealt round-robin to the
  blocks, so every block holds each cell about equally often; order is shuffled within each block.
  ``catch.per_block`` catch trials go to random positions inside each block. Practice is block 0.
* **Units.** Per layer group, all triplets of its units are put in one *study order* that depends
  only on ``design.seed`` (shared by all participants) and keeps unit use even along the order.
  Participant ``K`` (counterbalance index) takes ``t`` consecutive triplets (cyclically; ``t`` =
  that group's trials per participant) from a start that rotates over
  ``design.participants_planned`` participants (``participant_triplets``), so over the planned
  participants every triplet is used equally often (within one), and a triplet is used at most
  ``design.max_triplet_uses`` times per participant (1 by default: never repeats).
* **Rows.** The three units go to reference rows in random order; candidate rows are a random
  permutation ``candidate_units`` (candidate row j shows unit ``candidate_units[j]``).
* **Exemplar ranks (ABBA split).** For n images per side, the 2n most activating natural images
  (ranks 0..2n-1) form pairs (0,1), (2,3), ...; the reference side takes the first image of pair k
  when ``k + s`` is even and the second otherwise, the candidate side the other one, with ``s`` in
  {0, 1} drawn per trial. Both sides get equally strong exemplars on average (rank sums differ by at
  most 1). Feature-visualization and catch trials use the same reference ranks, so the reference
  side has the same statistics in every trial type.
* **Fresh exemplars** (``design.exemplar_ranks = "fresh"``; default ``"top"`` is the rule above):
  each trial takes, per unit, the n rank pairs of its whole top-k that this participant has seen
  least (ties: the more activating), split ABBA as above. Until a unit's top-k is used up no
  natural image of it is shown twice, so no row pair can be matched from memory of an earlier
  trial; the plan's repetition report shows how far the set's k goes. Shared images are then checked
  over all ranks a trial may show (``natural_depth``).
* **Feature visualizations.** n of the unit's visualizations, a seeded random choice
  (``design.fv_source = "random"``) or ranks 0..n-1 (``"first"``).
* **Shared images.** Two units of a group that show the same photograph (or a near duplicate) in
  the shown ranks never appear in one trial: with ``design.shared_images = "exclude"`` (default)
  every triplet containing such a pair is left out of the study order, and every built trial is
  checked again (``experiment.overlap``). ``shared_image_report`` says how many were left out.
* **Practice units.** With ``design.practice_units = "reserved"`` (default) each layer group with
  practice trials reserves 3 units (``reserved_practice_units``: a seeded rule, the same for every
  participant); its practice trials all show that triplet (rows, images and sides drawn per trial),
  and main and catch trials use only the other units, so practice feedback reveals nothing about
  the main trials. ``"main"``: practice trials take triplets from the participant's window like the
  main trials (sessions recorded before the key existed).
* **Catch trials** are exemplar trials whose candidate rows show exactly the reference images
  (trivial matches, an attention check).
* Images within a row are shown in random order on both sides.

Randomness: ``design.seed`` fixes the study order of triplets; the session seed fixes everything
else for one participant and session. Both are recorded in session.json.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from experiment.config import Design
from experiment.overlap import check_trial, conflicting_pairs

KIND_NATURAL = "natural_max"
KIND_FV = "feature_vis"


@dataclass(frozen=True)
class TrialSpec:
    """One planned trial. Files are relative to the stimulus set; rows run top to bottom."""

    trial_index: int
    block: int
    is_practice: bool
    is_catch: bool
    trial_type: str
    layer_group: str
    n_images: int
    units: tuple[str, str, str]  # unit of reference row 0, 1, 2
    layers: tuple[str, str, str]
    channels: tuple[int, int, int]
    candidate_units: tuple[int, int, int]  # candidate row j shows units[candidate_units[j]]
    reference_files: tuple[tuple[str, ...], ...]  # [row][k], display order left to right
    candidate_files: tuple[tuple[str, ...], ...]  # [candidate row][k]
    split_start: int  # s of the ABBA split (see module doc)


def derive_seed(*parts: object) -> int:
    """A stable 31-bit seed from any values (sha256 of their text), e.g. (design seed, participant, session)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


def score(candidate_units: tuple[int, ...] | list[int], assignment: tuple[int, ...] | list[int]) -> list[bool]:
    """correct[i]: reference row i was paired with the candidate row showing unit i."""
    return [candidate_units[assignment[i]] == i for i in range(3)]


# ---------------------------------------------------------------------------------------------
# What a design needs from a stimulus set


def required_images(design: Design) -> tuple[int, int]:
    """(natural_max ranks 0..k-1 needed per unit, feature_vis images needed per unit)."""
    d, p = design["design"], design["practice"]
    ns_all = list(d["n_images"]) + (list(p["n_images"]) if p["trials"] else [])
    if design["catch"]["per_block"]:
        ns_all.append(design["catch"]["n_images"])
    ns_fv = [n for n in d["n_images"] if "feature_vis" in d["trial_types"]]
    if p["trials"] and "feature_vis" in p["trial_types"]:
        ns_fv += list(p["n_images"])
    return 2 * max(ns_all), max(ns_fv, default=0)


def triplets_needed(design: Design) -> dict[str, int]:
    """Trials per participant in each layer group (practice and catch trials included)."""
    d = design["design"]
    groups = d["layer_groups"]
    per_group = len(d["trial_types"]) * len(d["n_images"]) * d["trials_per_cell"]
    need = {g: per_group for g in groups}
    extra = design["practice"]["trials"] + design["catch"]["per_block"] * d["blocks"]
    for i in range(extra):  # practice and catch trials cycle through the groups (see build_trials)
        need[groups[i % len(groups)]] += 1
    return need


def practice_trials_per_group(design: Design) -> dict[str, int]:
    """Practice trials in each layer group (they cycle through the groups, see build_trials)."""
    groups = design["design"]["layer_groups"]
    out = {g: 0 for g in groups}
    for i in range(design["practice"]["trials"]):
        out[groups[i % len(groups)]] += 1
    return out


def reserves_practice_units(design: Design) -> bool:
    return design["design"]["practice_units"] == "reserved" and design["practice"]["trials"] > 0


def main_triplets_needed(design: Design) -> dict[str, int]:
    """Triplets a participant takes from each group's study order: all trials of the group, but the
    practice trials when they use reserved units (``design.practice_units = "reserved"``)."""
    need = triplets_needed(design)
    if reserves_practice_units(design):
        for g, n in practice_trials_per_group(design).items():
            need[g] -= n
    return need


def units_per_group_needed(design: Design) -> int:
    """Units per layer group a set needs for this design, ignoring the shared-image exclusion: enough
    main units for the triplets a participant takes (each used at most ``max_triplet_uses`` times),
    plus the 3 reserved practice units."""
    t = max(main_triplets_needed(design).values())
    m = 3
    while m * (m - 1) * (m - 2) // 6 * design["design"]["max_triplet_uses"] < t:
        m += 1
    return m + (PRACTICE_UNITS_PER_GROUP if reserves_practice_units(design) else 0)


PRACTICE_UNITS_PER_GROUP = 3  # one triplet: a group's practice trials all show it (rows, images and sides re-drawn)


def reserved_practice_units(design: Design, units: pd.DataFrame,
                            excluded: dict[str, list[tuple]] | None = None) -> dict[str, list[str]]:
    """Per layer group with practice trials, the 3 units reserved for practice (they never appear in
    main or catch trials); empty when ``design.practice_units = "main"``.

    Rule (the same for every participant of a design): the group's unit ids in a random order seeded
    by ``(design.seed, "practice-units", group)``; the reserved units are the first triplet, in the
    order of ``itertools.combinations`` over that list, that holds no ``excluded`` pair (two units
    showing the same photograph). A group with fewer than 4 units or no such triplet reserves none
    (``check_set_for_design`` reports it).
    """
    if not reserves_practice_units(design):
        return {}
    excluded = excluded or {}
    out = {}
    for g, n in practice_trials_per_group(design).items():
        if not n:
            continue
        ids = sorted(units.loc[units.group == g, "unit_id"])
        rng = np.random.default_rng(derive_seed("practice-units", design["design"]["seed"], g))
        shuffled = [ids[i] for i in rng.permutation(len(ids))]
        bad = {frozenset(p[:2]) for p in excluded.get(g, [])}
        for c in itertools.combinations(shuffled, PRACTICE_UNITS_PER_GROUP):
            if len(ids) > PRACTICE_UNITS_PER_GROUP and not any(frozenset(q) in bad for q in itertools.combinations(c, 2)):
                out[g] = sorted(c)
                break
    return out


def main_units(units: pd.DataFrame, reserved: dict[str, list[str]]) -> pd.DataFrame:
    """The units main and catch trials may use: all but the reserved practice units."""
    taken = {u for us in reserved.values() for u in us}
    return units[~units.unit_id.isin(taken)]


PRACTICE_RULE = ("per layer group with practice trials, 3 units reserved for practice: the first triplet (no two "
                 "units sharing a photograph) of the group's unit ids in an order seeded by design.seed; they never "
                 "appear in main or catch trials")


def usable_images(images: pd.DataFrame) -> pd.DataFrame:
    """Images a trial may show: rows marked ``spare = 1`` (an optional column, written by stimuli_gen for
    exemplars beyond k kept in reserve) are never shown."""
    if "spare" in images.columns:
        return images[~(pd.to_numeric(images["spare"], errors="coerce").fillna(0) == 1)]
    return images


def least_shown_pairs(uses: list[int], n: int) -> list[int]:
    """``design.exemplar_ranks = "fresh"``: the n rank pairs of a unit shown least so far to this
    participant (``uses[p]``: times pair p was shown), ties to the more activating pair; in rank order."""
    return sorted(sorted(range(len(uses)), key=lambda p: (uses[p], p))[:n])


def _full_pairs(ranks: dict[int, str]) -> int:
    """Rank pairs (0,1), (2,3), ... a unit has without a gap."""
    p = 0
    while 2 * p in ranks and 2 * p + 1 in ranks:
        p += 1
    return p


def natural_depth(design: Design, images: pd.DataFrame) -> int:
    """How many natural_max ranks (0..depth-1) a trial of this design may show: the top 2n for the
    largest n, or with ``design.exemplar_ranks = "fresh"`` every full rank pair a unit of the set has."""
    k_nat, _ = required_images(design)
    if design["design"]["exemplar_ranks"] != "fresh":
        return k_nat
    nat = usable_images(images)
    nat = nat[nat.kind == KIND_NATURAL]
    return max(k_nat, 2 * (int(pd.to_numeric(nat["rank"]).max() + 1) // 2) if len(nat) else 0)


def shared_pairs(design: Design, units: pd.DataFrame, images: pd.DataFrame,
                 fingerprints: dict | None) -> dict[str, list[tuple[str, str, str, str]]]:
    """Per group, the unit pairs that show the same or a near-duplicate image in the shown ranks
    (``experiment.overlap``); none without fingerprints."""
    if fingerprints is None:
        return {g: [] for g in design["design"]["layer_groups"]}
    k_nat = natural_depth(design, images)
    pairs = conflicting_pairs(units, usable_images(images), k_nat, fingerprints, design["design"]["near_duplicate_bits"])
    return {g: pairs.get(g, []) for g in design["design"]["layer_groups"]}


def excluded_pairs(design: Design, units: pd.DataFrame, images: pd.DataFrame,
                   fingerprints: dict | None) -> dict[str, list[tuple[str, str, str, str]]]:
    """Per group, the unit pairs that may not share a trial: the shared pairs, unless
    ``design.shared_images = "allow"``."""
    if design["design"]["shared_images"] == "allow":
        return {g: [] for g in design["design"]["layer_groups"]}
    return shared_pairs(design, units, images, fingerprints)


def _allowed_triplets(ids: list[str], pairs: list[tuple]) -> list[tuple[str, str, str]]:
    bad = {frozenset(p[:2]) for p in pairs}
    return [c for c in itertools.combinations(sorted(ids), 3)
            if not any(frozenset(q) in bad for q in itertools.combinations(c, 2))]


def shared_image_report(design: Design, units: pd.DataFrame, images: pd.DataFrame, fingerprints: dict | None) -> dict:
    """Per group: triplets of its units, how many contain two units sharing an image (``with_shared``)
    and how many were excluded for it (``excluded``: 0 when the design allows them), and the pairs why."""
    out = {}
    exclude = design["design"]["shared_images"] == "exclude"
    shared = shared_pairs(design, units, images, fingerprints)
    units = main_units(units, reserved_practice_units(design, units, excluded_pairs(design, units, images, fingerprints)))
    for g, pairs in shared.items():
        ids = sorted(units.loc[units.group == g, "unit_id"])  # main units: the triplets of the study order
        n_all = len(ids) * (len(ids) - 1) * (len(ids) - 2) // 6
        n_shared = n_all - len(_allowed_triplets(ids, pairs))
        out[g] = {"triplets": n_all, "with_shared": n_shared, "excluded": n_shared if exclude else 0,
                  "pairs": [{"units": [a, b], "files": [fa, fb]} for a, b, fa, fb in pairs]}
    return out


def check_set_for_design(design: Design, units: pd.DataFrame, images: pd.DataFrame,
                         fingerprints: dict | None = None) -> list[str]:
    """Everything the stimulus set lacks for this design, as sentences (empty: the set is enough).
    With ``fingerprints`` (``experiment.overlap.image_fingerprints``) triplets whose units share an
    image are not counted as available."""
    images = usable_images(images)
    problems = []
    k_nat, k_fv = required_images(design)
    need = main_triplets_needed(design)
    max_uses = design["design"]["max_triplet_uses"]
    pairs = excluded_pairs(design, units, images, fingerprints)
    reserved = reserved_practice_units(design, units, pairs)
    for g, n_practice in practice_trials_per_group(design).items():
        if reserves_practice_units(design) and n_practice and g not in reserved:
            n_units = int((units.group == g).sum())
            problems.append(
                f"layer group {g!r}: {n_units} unit(s) in the set, too few to reserve {PRACTICE_UNITS_PER_GROUP} "
                f"practice units (that never appear in main trials) apart from the main trials' units"
                + (" (every candidate triplet has two units sharing a photograph)" if n_units > PRACTICE_UNITS_PER_GROUP else "")
                + f": this design needs at least {units_per_group_needed(design)} units per layer group (generate the set "
                f"with --units-per-group {units_per_group_needed(design)}), or set design.practice_units = \"main\" to "
                f"practise on the main units")
    main = main_units(units, reserved)
    for g, t in need.items():
        ids = sorted(main.loc[main.group == g, "unit_id"])
        if len(ids) < 3:
            problems.append(f"layer group {g!r}: {len(ids)} unit(s) in the set" + (
                f" besides the {PRACTICE_UNITS_PER_GROUP} reserved practice units {', '.join(reserved[g])}, a trial needs 3: "
                f"this design needs at least {units_per_group_needed(design)} units per layer group (generate the set with "
                f"--units-per-group {units_per_group_needed(design)}), or set design.practice_units = \"main\" to practise "
                f"on the main units" if g in reserved else ", a trial needs 3"))
            continue
        n_all = len(ids) * (len(ids) - 1) * (len(ids) - 2) // 6
        n_trip = len(_allowed_triplets(ids, pairs[g]))
        shared = (f" ({n_all - n_trip} of {n_all} left out because two of their units show the same or a "
                  f"near-duplicate photograph, e.g. {pairs[g][0][2]} and {pairs[g][0][3]})") if n_trip < n_all else ""
        if n_trip * max_uses < t:
            practice = (f" besides the {PRACTICE_UNITS_PER_GROUP} reserved practice units {', '.join(reserved[g])}"
                        if g in reserved else "")
            problems.append(
                f"layer group {g!r}: {len(ids)} units{practice} give {n_trip} distinct triplets{shared}, but a participant has "
                f"{t} main and catch trials in this group and design.max_triplet_uses = {max_uses}: add units to the set "
                f"(this design needs at least {units_per_group_needed(design)} units per layer group), reduce the trials, "
                f"or allow repeats" + (" (or set design.practice_units = \"main\")" if g in reserved else ""))
    for g in need:
        for uid in sorted(units.loc[units.group == g, "unit_id"]):
            nat = set(images.loc[(images.unit_id == uid) & (images.kind == KIND_NATURAL), "rank"])
            missing = [r for r in range(k_nat) if r not in nat]
            if missing:
                problems.append(f"unit {uid}: needs natural_max ranks 0..{k_nat - 1} (n up to {k_nat // 2} on both sides), "
                                f"missing rank(s) {', '.join(map(str, missing))}")
            n_fv = int(((images.unit_id == uid) & (images.kind == KIND_FV)).sum())
            if n_fv < k_fv:
                problems.append(f"unit {uid}: needs {k_fv} feature_vis images for n={k_fv}, has {n_fv}")
    return problems


# ---------------------------------------------------------------------------------------------
# Triplets


def triplet_study_order(unit_ids: list[str], seed: int, group: str,
                        excluded: list[tuple] = ()) -> list[tuple[str, str, str]]:
    """All triplets of a group's units (but those containing an ``excluded`` pair), ordered so that unit
    use stays even along the order.

    Greedy: the next triplet is the remaining one whose units have been used least so far (sum of
    counts), ties broken by a random order seeded by ``(seed, group)``. The same for all participants.
    """
    ids = sorted(unit_ids)
    allowed = set(_allowed_triplets(ids, list(excluded)))
    combos = np.array([c for c in itertools.combinations(range(len(ids)), 3)
                       if tuple(ids[j] for j in c) in allowed], dtype=np.int64).reshape(-1, 3)
    rng = np.random.default_rng(derive_seed("triplet-order", seed, group))
    combos = combos[rng.permutation(len(combos))]
    counts = np.zeros(len(ids), dtype=np.int64)
    remaining = np.ones(len(combos), dtype=bool)
    order = []
    for _ in range(len(combos)):
        cost = counts[combos].sum(1) * 4 + counts[combos].max(1)  # prefer low totals, then no overused unit
        cost = np.where(remaining, cost, np.iinfo(np.int64).max)
        i = int(np.argmin(cost))  # first minimum = seeded tie-break
        remaining[i] = False
        counts[combos[i]] += 1
        order.append(tuple(ids[j] for j in combos[i]))
    return order


def rotation_slots(planned: int) -> list[int]:
    """The slots 0..planned-1 in the order participants take them: each next slot is the free one
    farthest (cyclically) from all taken ones (ties: the lowest), so any first few participants are
    spread over the whole study order, and ``planned`` participants take every slot once."""
    slots, free = [0], set(range(1, planned))
    while free:
        def gap(j: int) -> int:
            return min(min((j - s) % planned, (s - j) % planned) for s in slots)
        j = max(sorted(free), key=gap)
        slots.append(j)
        free.remove(j)
    return slots[:planned]


def participant_triplets(order: list[tuple[str, str, str]], counterbalance: int, t: int,
                         planned: int = 0) -> list[tuple[str, str, str]]:
    """Participant K's t triplets: t consecutive positions of the study order (cyclically) from a start
    that rotates over ``planned`` participants (a Latin-square-like rotation): participant K takes slot
    ``rotation_slots(planned)[K mod planned]`` and starts at ``slot * len(order) // planned``, so the
    planned participants' windows are spread evenly over the order (every triplet used about
    ``planned * t / len(order)`` times, within one) and the first few participants overlap least.
    ``planned = 0``: start ``K * t`` (consecutive windows; sessions recorded before
    ``design.participants_planned`` existed)."""
    if planned:
        start = rotation_slots(planned)[counterbalance % planned] * len(order) // planned
    else:
        start = counterbalance * t
    return [order[(start + i) % len(order)] for i in range(t)]


# ---------------------------------------------------------------------------------------------
# The trial list


def abba_split(n: int, s: int, pairs: list[int] | None = None) -> tuple[list[int], list[int]]:
    """Reference and candidate natural_max ranks for n images per side (see module doc), from the rank
    pairs ``(2p, 2p + 1)`` for p in ``pairs`` (default 0..n-1: the top 2n ranks)."""
    ref, cand = [], []
    for k, p in enumerate(range(n) if pairs is None else pairs):
        a, b = 2 * p, 2 * p + 1
        if (k + s) % 2 == 0:
            ref.append(a), cand.append(b)
        else:
            ref.append(b), cand.append(a)
    return ref, cand


def build_trials(design: Design, units: pd.DataFrame, images: pd.DataFrame, counterbalance: int,
                 session_seed: int, fingerprints: dict | None = None) -> list[TrialSpec]:
    """The full, ordered trial list (practice, then blocks with catch trials) of one session.

    ``fingerprints`` (file -> (sha256, dhash), ``experiment.overlap.image_fingerprints``) enables the
    shared-image rule. Raises ValueError listing what the set lacks when it cannot serve this design.
    """
    problems = check_set_for_design(design, units, images, fingerprints)
    if problems:
        raise ValueError("the stimulus set cannot serve this design:\n  - " + "\n  - ".join(problems))
    if counterbalance < 0:
        raise ValueError(f"counterbalance index must be >= 0, got {counterbalance}")
    d, prac, catch = design["design"], design["practice"], design["catch"]
    rng = np.random.default_rng(derive_seed("session", session_seed))
    groups = list(d["layer_groups"])

    # Abstract trials: (kind, trial_type, group, n, block); kind in practice|main|catch.
    practice_cells = list(itertools.product(prac["trial_types"], prac["n_images"]))
    rng.shuffle(practice_cells)
    plan_practice = []
    for i in range(prac["trials"]):  # practice cycles through its cells and through the layer groups
        tt, n = practice_cells[i % len(practice_cells)]
        plan_practice.append(("practice", tt, groups[i % len(groups)], n, 0))

    cells = list(itertools.product(d["trial_types"], groups, d["n_images"]))
    cell_order = rng.permutation(len(cells))
    main_sorted = [cells[c] for c in cell_order for _ in range(d["trials_per_cell"])]
    blocks: list[list[tuple]] = [[] for _ in range(d["blocks"])]
    for m, (tt, g, n) in enumerate(main_sorted):
        blocks[m % d["blocks"]].append(("main", tt, g, n, m % d["blocks"] + 1))
    # catch trials cycle through the groups after the practice trials (as counted in triplets_needed)
    c_i = prac["trials"]
    for b, block in enumerate(blocks):
        order = [block[i] for i in rng.permutation(len(block))]
        for _ in range(catch["per_block"]):
            pos = int(rng.integers(1, len(order) + 1)) if order else 0  # never the first trial of a block
            order.insert(pos, ("catch", "exemplar", groups[c_i % len(groups)], catch["n_images"], b + 1))
            c_i += 1
        blocks[b] = order
    plan = plan_practice + [t for block in blocks for t in block]

    # Triplets: the participant's window of the study order, randomly assigned to that group's trials.
    # With reserved practice units, practice trials show the group's reserved triplet and the window
    # holds only main and catch trials (main_triplets_needed); otherwise practice draws from the window.
    need = main_triplets_needed(design)
    pairs = excluded_pairs(design, units, images, fingerprints)
    reserved = reserved_practice_units(design, units, pairs)
    main = main_units(units, reserved)
    pools: dict[str, list] = {}
    for g in groups:
        ids = list(main.loc[main.group == g, "unit_id"])
        window = participant_triplets(triplet_study_order(ids, d["seed"], g, pairs[g]), counterbalance, need[g],
                                      d["participants_planned"])
        pools[g] = [window[i] for i in rng.permutation(len(window))]
    assert all(sum(1 for t in plan if t[2] == g and not (t[0] == "practice" and reserved)) == need[g] for g in groups)

    unit_info = units.set_index("unit_id")
    files: dict[tuple[str, str], dict[int, str]] = {}
    for (uid, kind), sel in usable_images(images).groupby(["unit_id", "kind"]):
        files[(uid, kind)] = dict(zip(sel["rank"].astype(int), sel["file"]))

    # design.exemplar_ranks = "fresh": per unit, how often each full rank pair (2p, 2p + 1) was shown
    fresh = d["exemplar_ranks"] == "fresh"
    pair_uses = {uid: [0] * _full_pairs(nat) for (uid, kind), nat in files.items() if kind == KIND_NATURAL}
    trials = []
    for idx, (kind, tt, g, n, block) in enumerate(plan):
        triplet = list(reserved[g]) if kind == "practice" and reserved else list(pools[g].pop())
        row_units = [triplet[i] for i in rng.permutation(3)]
        cand_perm = tuple(int(x) for x in rng.permutation(3))
        s = int(rng.integers(0, 2))
        ref_ranks, cand_ranks = abba_split(n, s)
        ref_rows, cand_by_unit = [], []
        for uid in row_units:
            nat = files[(uid, KIND_NATURAL)]
            if fresh:
                chosen = least_shown_pairs(pair_uses[uid], n)
                for p in chosen:
                    pair_uses[uid][p] += 1
                ref_ranks, cand_ranks = abba_split(n, s, chosen)
            ref_rows.append([nat[r] for r in ref_ranks])
            if kind == "catch":
                cand_by_unit.append(list(ref_rows[-1]))
            elif tt == "exemplar":
                cand_by_unit.append([nat[r] for r in cand_ranks])
            else:
                fv = files[(uid, KIND_FV)]
                avail = sorted(fv)
                picks = avail[:n] if d["fv_source"] == "first" else sorted(rng.choice(avail, size=n, replace=False).tolist())
                cand_by_unit.append([fv[r] for r in picks])
        if fingerprints is not None and d["shared_images"] == "exclude":
            shown = {u: ref_rows[i] + cand_by_unit[i] for i, u in enumerate(row_units)}
            problem = check_trial(shown, fingerprints, d["near_duplicate_bits"])
            if problem:
                raise ValueError(f"trial {idx}: {problem}")  # cannot happen after the triplet exclusion: a bug
        ref_rows = [tuple(row[i] for i in rng.permutation(n)) for row in ref_rows]
        cand_rows = [tuple(cand_by_unit[u][i] for i in rng.permutation(n)) for u in cand_perm]
        trials.append(TrialSpec(
            trial_index=idx, block=block, is_practice=kind == "practice", is_catch=kind == "catch",
            trial_type=tt, layer_group=g, n_images=n, units=tuple(row_units),
            layers=tuple(str(unit_info.at[u, "layer"]) for u in row_units),
            channels=tuple(int(unit_info.at[u, "channel"]) for u in row_units),
            candidate_units=cand_perm, reference_files=tuple(ref_rows), candidate_files=tuple(cand_rows),
            split_start=s))
    return trials


# ---------------------------------------------------------------------------------------------
# PsychoPy conditions file


def conditions_rows(trials: list[TrialSpec], image_root: str = "") -> list[dict]:
    """One dict per trial with flat columns a PsychoPy Builder loop can use.

    Image columns ``ref{row}_img{k}`` / ``cand{row}_img{k}`` (k < the largest n; empty when a trial
    has fewer images) hold paths joined to ``image_root`` (relative to the stimulus set when empty).
    """
    n_max = max((t.n_images for t in trials), default=1)
    rows = []
    for t in trials:
        row = {
            "trial_index": t.trial_index, "block": t.block, "is_practice": int(t.is_practice),
            "is_catch": int(t.is_catch), "trial_type": t.trial_type, "layer_group": t.layer_group,
            "n_images": t.n_images,
            **{f"unit_{i}": t.units[i] for i in range(3)},
            **{f"layer_{i}": t.layers[i] for i in range(3)},
            **{f"channel_{i}": t.channels[i] for i in range(3)},
            "candidate_units": ";".join(map(str, t.candidate_units)),
            "correct_assignment": ";".join(map(str, correct_assignment(t.candidate_units))),
        }
        for side, rows_files in (("ref", t.reference_files), ("cand", t.candidate_files)):
            for r in range(3):
                for k in range(n_max):
                    f = rows_files[r][k] if k < len(rows_files[r]) else ""
                    row[f"{side}{r}_img{k}"] = (os.path.join(image_root, f) if image_root and f else f)
        rows.append(row)
    return rows


def correct_assignment(candidate_units: tuple[int, ...]) -> list[int]:
    """The assignment a perfect participant gives: reference row i -> the candidate row showing unit i."""
    return [list(candidate_units).index(i) for i in range(3)]


def write_conditions_csv(trials: list[TrialSpec], path: os.PathLike | str, image_root: str = "") -> Path:
    """Write the trial list as a PsychoPy conditions file (CSV, one row per trial)."""
    path = Path(path)
    rows = conditions_rows(trials, image_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial_index"])
        w.writeheader()
        w.writerows(rows)
    return path


# ---------------------------------------------------------------------------------------------
# Repetition within one session


def repetition_report(trials: list[TrialSpec]) -> dict:
    """How often the participant sees the same natural images (all trials, practice included).

    ``max_shows``: the most times one image file is shown; ``images_shown_more_than_once`` of
    ``images_shown``; ``memory_matchable``: main exemplar trials (of ``main_exemplar_trials``) in which
    some unit's candidate row holds an image that an earlier trial showed for the same unit as an image
    now on that unit's reference row (in one row, or on its two paired rows), so that pair of rows can
    be matched from memory of the earlier trial rather than from what the images share;
    ``rows_seen_before``: main exemplar trials in which both rows of some unit show exactly images
    (as a set) that an earlier trial showed on one row.
    """
    shows: dict[str, int] = {}
    together: set[frozenset] = set()
    rows_seen: set[frozenset] = set()
    matchable = repeated = n_ex = 0
    for t in trials:
        if t.trial_type == "exemplar" and not t.is_practice and not t.is_catch:
            n_ex += 1
            cands = [t.candidate_files[t.candidate_units.index(i)] for i in range(3)]
            matchable += any(frozenset((a, b)) in together for i in range(3) for a in t.reference_files[i] for b in cands[i])
            repeated += any(frozenset(t.reference_files[i]) in rows_seen and frozenset(cands[i]) in rows_seen for i in range(3))
        rows_seen.update(frozenset(r) for r in t.reference_files)
        if t.trial_type == "exemplar":
            rows_seen.update(frozenset(r) for r in t.candidate_files)
        for i in range(3):  # the images shown for unit i (both sides; natural images only)
            shown = list(t.reference_files[i])
            if t.trial_type == "exemplar" and not t.is_catch:
                shown += list(t.candidate_files[t.candidate_units.index(i)])
            for f in shown:
                shows[f] = shows.get(f, 0) + 1
            together.update(frozenset(p) for p in itertools.combinations(set(shown), 2))
    return {"max_shows": max(shows.values(), default=0), "images_shown": len(shows),
            "images_shown_more_than_once": sum(v > 1 for v in shows.values()),
            "memory_matchable": matchable, "rows_seen_before": repeated, "main_exemplar_trials": n_ex}
