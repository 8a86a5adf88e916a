"""The report's stimulus section: the path-similarity check of the stimulus set(s) the sessions used
(Geirhos et al. 2023), read from the set's ``path_similarity.csv`` / ``.png`` and ``validation.csv``.
Reads files only (no torch); a set that is not reachable from here, or that was made before the check
existed, is said so."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from analysis.report import Block

HEADING = "Stimuli: are the feature visualizations processed like natural images?"


def stimulus_blocks(infos: list[dict], out: Path) -> tuple[list[Block], list[Path]]:
    """Blocks for every stimulus set named in the sessions' ``session.json``, and the figures copied into ``out``."""
    blocks: list[Block] = [Block("h2", HEADING), Block("p", (
        "Path similarity (Geirhos et al. 2023): at every stage of the network, how similar a unit's feature "
        "visualizations are to its top natural exemplars, on a scale from 0 (like unrelated natural images) to 1 "
        "(like the unit's own top exemplars). Visualizations that stay near 0 up to the unit's own layer are not "
        "processed like the natural images they are meant to explain. Passing is a necessary condition, not proof "
        "that a visualization explains the unit."))]
    written: list[Path] = []
    seen = set()
    for info in infos:
        st = info["stimulus_set"]
        key = (st["set_id"], st.get("path"))
        if key in seen:
            continue
        seen.add(key)
        root = Path(st.get("path") or "")
        table = root / "path_similarity.csv"
        if not st.get("path") or not root.is_dir():
            blocks.append(Block("p", f"Stimulus set {st['set_id']}: not found at {st.get('path')!r} from here; "
                                     "no path-similarity results shown."))
            continue
        val_path = root / "validation.csv"
        val = pd.read_csv(val_path) if val_path.is_file() else pd.DataFrame()
        blocks += set_record_blocks(root, st["set_id"], val)
        if not table.is_file():
            blocks.append(Block("p", f"Stimulus set {st['set_id']}: no path-similarity check in the set (made before "
                                     f"it existed, or without feature visualizations); `fvmatch-stimuli "
                                     f"--path-similarity {root}` adds it."))
            continue
        t = pd.read_csv(table)
        if st.get("random_weights"):
            blocks.append(Block("alert", f"Stimulus set {st['set_id']}: RANDOM WEIGHTS; the path-similarity check "
                                         "of an untrained network says nothing about a real one."))
        fig = root / "path_similarity.png"
        if fig.is_file():
            dest = out / "figures" / f"stimuli_{st['set_id']}_path_similarity.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fig, dest)
            written.append(dest)
            blocks.append(Block("figure", dest.relative_to(out).as_posix(),
                                f"Stimulus set {st['set_id']}: normalised path similarity against relative depth, "
                                "mean over units per layer group with 95% interval; dotted: the units' own layers."))
        own = t[t.layer == t.unit_layer]
        rows = own.groupby("group", sort=False).normalised.agg(["count", "median", "min", "max"]).reset_index()
        if "path_similarity_flag" in val:
            flags = val.assign(group=val.unit_id.map(dict(zip(t.unit_id, t.group))))
            n_flag = flags.groupby("group").path_similarity_flag.sum()
            rows["flagged"] = rows.group.map(n_flag).fillna(0).astype(int)
            flagged = flags[flags.path_similarity_flag.astype(str).str.lower() == "true"]
        else:
            flagged = pd.DataFrame()
        blocks.append(Block("table", rows.rename(columns={"count": "units", "median": "median at own layer",
                                                          "min": "min", "max": "max"}),
                            f"Stimulus set {st['set_id']}: normalised path similarity at each unit's own layer "
                            f"({t.metric.iloc[0]}); flagged = never above 0.5 up to its own layer."))
        if len(flagged):
            blocks.append(Block("list", [f"{r.unit_id}: {r.path_similarity_note}" for r in flagged.itertuples()]))
    return blocks, written


def set_record_blocks(root: Path, set_id: str, val: pd.DataFrame) -> list[Block]:
    """What the generator recorded about a set that a reader of the results must know: how many units'
    feature visualizations all beat their best natural exemplar (``validation.csv``), units replaced by
    reserves, and the set's other notes (``manifest.json``; the random-weights warning is an alert of
    its own). ``val``: the set's validation table (empty when it has none)."""
    import json

    items = []
    if "all_fv_exceed_natural" in val and len(val):
        ok = val.all_fv_exceed_natural.astype(str).str.lower() == "true"
        items.append(f"every feature visualization beats the unit's most activating natural image for "
                     f"{int(ok.sum())} of {len(val)} units" + ("" if ok.all() else
                     f" (not: {', '.join(val.unit_id[~ok].astype(str))})"))
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    replaced = ((manifest.get("parameters") or {}).get("sampling") or {}).get("replaced") or []
    if replaced:
        items.append(f"{len(replaced)} unit(s) replaced by a reserve unit of the same layer because their feature "
                     "visualizations lost to a natural image: "
                     + ", ".join(f"{r['unit_id']} by {r['replaced_by']}" for r in replaced))
    items += [n for n in manifest.get("notes") or []
              if not n.startswith("RANDOM WEIGHTS:") and "replaced by a reserve unit" not in n]
    if not items:
        return []
    return [Block("p", f"Stimulus set {set_id}, as recorded when it was made:"), Block("list", items)]


def insert_before(blocks: list[Block], heading: str, new: list[Block]) -> list[Block]:
    """``new`` just before the h2 ``heading`` (at the end when there is none)."""
    at = next((i for i, b in enumerate(blocks) if b.kind == "h2" and b.content == heading), len(blocks))
    return blocks[:at] + new + blocks[at:]
