"""One report comparing a study on the original network's stimulus set with the same study on a manipulated
network's set (a control, ``stimuli_gen/manipulate``): accuracy by condition side by side, and the sets'
path-similarity checks side by side. ``make demo-control`` ends with it.

What a working control shows: exemplar trials alike in both (the manipulated network has the original's
natural exemplars), feature-visualization trials lower on the manipulated set, and the manipulated set's
visualizations flagged by the path-similarity check. The tables come from the same pure functions as the
main report (``analysis.accuracy``); each study is loaded and validated as ``fvmatch-analyze`` loads it.

    python -m analysis.control_compare --original data/sessions/control-original \\
        --manipulated data/sessions/control-silent --out data/results/control
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.accuracy import condition_accuracy, main_trials, participant_accuracy
from analysis.report import Block, write_report

KEYS = ("trial_type", "layer_group")
LABELS = ("original", "manipulated")


def accuracy_table(studies: dict[str, pd.DataFrame], n_boot: int = 2000, seed: int = 1) -> pd.DataFrame:
    """Per study x trial type x layer group (and over all layer groups, ``layer_group = "all"``) x level: accuracy
    with its bootstrap CI over participants, chance and counts (``analysis.accuracy``)."""
    parts = []
    for label, trials in studies.items():
        t = main_trials(trials)
        if t.empty:
            raise ValueError(f"{label}: no main trials to compare")
        by_group = condition_accuracy(participant_accuracy(t, KEYS), KEYS, n_boot, seed)
        overall = condition_accuracy(participant_accuracy(t, ("trial_type",)), ("trial_type",), n_boot, seed)
        parts += [by_group.assign(study=label), overall.assign(layer_group="all", study=label)]
    out = pd.concat(parts, ignore_index=True)
    return out[["study", *KEYS, "level", "accuracy", "ci_low", "ci_high", "chance", "n_participants", "n_observations"]]


def side_by_side(table: pd.DataFrame, level: str = "row") -> pd.DataFrame:
    """One row per trial type x layer group: each study's accuracy [95% CI] in its own column, and the difference."""
    t = table[table.level == level]
    studies = list(dict.fromkeys(t.study))
    cell = lambda r: f"{r.accuracy:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"  # noqa: E731
    rows = []
    for (tt, g), d in t.groupby(["trial_type", "layer_group"], sort=False):
        d = d.set_index("study")
        row = {"trial type": tt, "layer group": g, "chance": round(float(d.chance.iloc[0]), 3)}
        row |= {s: cell(d.loc[s]) if s in d.index else "" for s in studies}
        if len(studies) == 2 and all(s in d.index for s in studies):
            row[f"{studies[1]} - {studies[0]}"] = round(float(d.loc[studies[1]].accuracy - d.loc[studies[0]].accuracy), 3)
        rows.append(row)
    order = {"exemplar": 0, "feature_vis": 1, "early": 0, "middle": 1, "late": 2, "all": 3}
    out = pd.DataFrame(rows)
    return out.sort_values(["trial type", "layer group"], key=lambda c: c.map(order).fillna(9)).reset_index(drop=True)


def path_similarity_table(sets: dict[str, Path | None]) -> pd.DataFrame:
    """Per study and layer group: units, median normalised path similarity at the units' own layer and at the
    logits, and how many units the check flagged (``validation.csv``). Studies whose set has no check: absent."""
    rows = []
    for label, root in sets.items():
        if root is None or not (root / "path_similarity.csv").is_file():
            continue
        t = pd.read_csv(root / "path_similarity.csv")
        val = root / "validation.csv"
        flags = pd.read_csv(val) if val.is_file() else pd.DataFrame()
        flagged = set(flags.unit_id[flags.path_similarity_flag.astype(str).str.lower() == "true"]) \
            if "path_similarity_flag" in flags else set()
        last = t.layer.iloc[-1] if "logits" not in set(t.layer) else "logits"
        for g, tg in t.groupby("group", sort=False):
            rows.append({"study": label, "layer group": g, "units": tg.unit_id.nunique(),
                         "median at own layer": float(tg[tg.layer == tg.unit_layer].normalised.median()),
                         f"median at {last}": float(tg[tg.layer == last].normalised.median()),
                         "flagged": len(set(tg.unit_id) & flagged)})
    return pd.DataFrame(rows)


def manipulation_effect(root: Path | None) -> tuple[pd.DataFrame | None, str]:
    """Did the manipulation act on the visualizations the observer saw? Per manipulated unit of the set at
    ``root``: how many of its saved visualizations switch its silent filter on and are dominated by it
    (``stimuli_gen.manipulate.effect``), and one sentence for the report. ``(None, why not)`` when it cannot
    be measured (no set folder, not a silent-units network, model folder gone)."""
    if root is None:
        return None, "not measured: the manipulated study's stimulus set folder was not found"
    try:
        from stimuli_gen.manipulate import effect as E

        per_unit = E.summarize_units(E.set_effect(root))
    except (ValueError, OSError) as e:
        return None, f"not measured: {e}"
    n, trip, dom = int(per_unit.n_images.sum()), int(per_unit.tripped.sum()), int(per_unit.dominated.sum())
    units_dom = int((per_unit.dominated == per_unit.n_images).sum())
    verdict = ("the manipulation acted on every visualization" if dom == n else
               "the manipulation acted on most of the set" if 2 * dom >= n else
               "the manipulation acted on part of the set only" if dom else
               "the manipulation did NOT act: the visualizations stayed in the natural range")
    return per_unit, (f"{trip} of {n} feature visualizations of the {len(per_unit)} manipulated units switch their "
                      f"unit's silent filter on, and in {dom} of {n} it drives the unit more than the rest of the unit's "
                      f"activation does (silent share > {E.DOMINATED}; all visualizations of {units_dom} of {len(per_unit)} "
                      f"units): {verdict}.")


def accuracy_figure(table: pd.DataFrame, path: Path, level: str = "row") -> None:
    """Accuracy by layer group, one panel per trial type, the studies side by side with CIs and chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table[(table.level == level)]
    studies = list(dict.fromkeys(t.study))
    types = [x for x in ("exemplar", "feature_vis") if x in set(t.trial_type)]
    groups = [g for g in ("early", "middle", "late", "all") if g in set(t.layer_group)]
    fig, axes = plt.subplots(1, len(types), figsize=(4.2 * len(types), 3.4), sharey=True, constrained_layout=True,
                             squeeze=False)
    colors = ["#1b9e77", "#d95f02", "#7570b3"]
    w = 0.8 / max(len(studies), 1)
    for ax, tt in zip(axes[0], types):
        for k, s in enumerate(studies):
            d = t[(t.trial_type == tt) & (t.study == s)].set_index("layer_group").reindex(groups)
            x = np.arange(len(groups)) + (k - (len(studies) - 1) / 2) * w
            ax.bar(x, d.accuracy, w * 0.9, color=colors[k % 3], label=s)
            ax.errorbar(x, d.accuracy, yerr=[d.accuracy - d.ci_low, d.ci_high - d.accuracy], fmt="none", color="k", lw=1)
        ax.axhline(float(t.chance.iloc[0]), color="0.3", ls="--", lw=0.8)
        ax.set_xticks(range(len(groups)), groups)
        ax.set_title(tt.replace("_", " ") + " trials", fontsize=10)
        ax.set_ylim(0, 1.05)
    axes[0][0].set_ylabel(f"{level} accuracy (dashed: chance)")
    axes[0][-1].legend(fontsize=8, frameon=False)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _set_of(loaded, folder: str | Path | None = None) -> tuple[dict, Path | None]:
    """The study's stimulus set: its record in session.json, and its folder (``folder``, else the recorded path)."""
    sets = loaded.stimulus_sets
    if len(sets) != 1:
        raise ValueError(f"a study for the comparison uses one stimulus set; these sessions use {len(sets)}")
    info = loaded.infos[0]["stimulus_set"]
    root = Path(folder) if folder else Path(info.get("path") or "")
    return info, (root if (folder or info.get("path")) and root.is_dir() else None)


def compare(original: list[str], manipulated: list[str], out: str | Path, n_boot: int = 2000, seed: int = 1,
            set_folders: tuple[str | None, str | None] = (None, None)) -> list[Path]:
    """Load both studies (validated), compute and write ``accuracy_comparison.csv``, the figure and the report.
    ``set_folders``: where each study's stimulus set is, when not at the path its sessions recorded."""
    from analysis.load import load_sessions

    out = Path(out)
    loaded = {label: load_sessions(inputs) for label, inputs in zip(LABELS, (original, manipulated))}
    for label, ld in loaded.items():
        if ld.trials.empty:
            raise ValueError(f"{label}: no trials in {original if label == 'original' else manipulated}")
    sets = {label: _set_of(ld, f) for (label, ld), f in zip(loaded.items(), set_folders)}
    if sets["original"][0].get("manipulation"):
        raise ValueError(f"the original study's stimulus set {sets['original'][0]['set_id']} is itself manipulated")
    if not sets["manipulated"][0].get("manipulation"):
        raise ValueError(f"the manipulated study's stimulus set {sets['manipulated'][0]['set_id']} is not a manipulated "
                         "network's (its manifest has no manipulation)")
    table = accuracy_table({label: ld.trials for label, ld in loaded.items()}, n_boot, seed)
    ps = path_similarity_table({label: s[1] for label, s in sets.items()})
    effect = manipulation_effect(sets["manipulated"][1])
    (out / "figures").mkdir(parents=True, exist_ok=True)
    if effect[0] is not None:
        effect[0].to_csv(out / "manipulation_effect.csv", index=False, float_format="%.6g")
    else:
        (out / "manipulation_effect.csv").unlink(missing_ok=True)  # not an earlier run's, under this report
    table.to_csv(out / "accuracy_comparison.csv", index=False, float_format="%.6g")
    if len(ps):
        ps.to_csv(out / "path_similarity_comparison.csv", index=False, float_format="%.6g")
    accuracy_figure(table, out / "figures" / "accuracy_comparison.png")
    blocks = report_blocks(loaded, sets, table, ps, out, effect)
    return write_report(blocks, out, "fvmatch control comparison")


def report_blocks(loaded: dict, sets: dict, table: pd.DataFrame, ps: pd.DataFrame, out: Path,
                  effect: tuple[pd.DataFrame | None, str] = (None, "not measured")) -> list[Block]:
    import shutil

    man = sets["manipulated"][0]["manipulation"]
    blocks = [Block("h1", "Control: original vs manipulated network"),
              Block("p", "The same design run on two stimulus sets made from the same natural-image collection: one from "
                         "the original network, one from a network manipulated so that the feature visualizations of its "
                         "units mislead while its behaviour on natural images is unchanged (Geirhos et al. 2023). A "
                         "working control: exemplar trials alike, feature-visualization trials lower on the manipulated "
                         "set, and its visualizations flagged by the path-similarity check.")]
    if any(s[0].get("random_weights") for s in sets.values()):
        blocks.append(Block("alert", "RANDOM WEIGHTS: the networks are untrained; this comparison shows the machinery, "
                                     "not a result about GoogLeNet."))
    blocks.append(Block("p", f"Manipulation: {man.get('kind')} of units {', '.join(man.get('units', []))}. "
                             f"{man.get('statement', '')}"))
    blocks += [Block("h2", "Did the manipulation act on the visualizations?"), Block("p", effect[1])]
    if effect[0] is not None:
        shown = effect[0].copy()
        for c in ("mean_activation", "mean_silent_part", "min_reach"):  # up to 1e10 when earlier silent filters are on
            shown[c] = shown[c].map(lambda v: f"{v:.3g}")
        blocks.append(Block("table", shown.rename(columns={"n_images": "visualizations", "tripped": "silent filter on",
                                                               "dominated": "silent-dominated"}),
                            "Per manipulated unit, measured in the manipulated network on the set's saved visualizations "
                            "(manipulation_effect.csv): silent share = silent part / (silent part + |rest|) of the unit's "
                            "activation, where the rest is the unit's own filter on inputs that the silent filters of "
                            "earlier manipulated units may have changed; min_reach = the smallest, over the unit's "
                            "visualizations, of its silent filter's largest response over its natural maximum (>= 1: on)."))
    study_rows = []
    for label, ld in loaded.items():
        s = ld.sessions
        sim = sorted(set(s.simulated.fillna("person"))) if "simulated" in s else []
        obs = {json_key(i.get("simulated_observer")) for i in ld.infos if i.get("simulated_observer")}
        study_rows.append({"study": label, "stimulus set": sets[label][0]["set_id"], "sessions": len(s),
                           "participants": s.participant.nunique(), "main trials": len(main_trials(ld.trials)),
                           "simulated": ", ".join(sim), "observer network": "; ".join(sorted(obs)) or "-"})
    blocks += [Block("h2", "Studies"), Block("table", pd.DataFrame(study_rows))]
    blocks += [Block("h2", "Accuracy by condition"),
               Block("figure", "figures/accuracy_comparison.png",
                     "Row accuracy (one matched row; chance 1/3) of main trials, mean over participants with 95% "
                     "bootstrap CI; 'all' pools the layer groups."),
               Block("table", side_by_side(table, "row"), "Row accuracy [95% CI] (chance 1/3)."),
               Block("table", side_by_side(table, "trial"), "Whole-trial accuracy [95% CI] (chance 1/6)."),
               Block("h2", "Path similarity of the feature visualizations")]
    if len(ps):
        blocks.append(Block("table", ps, "Normalised path similarity (0 = like unrelated natural images, 1 = like the "
                                         "unit's own top exemplars); flagged = never above 0.5 up to the unit's own layer."))
    for label, (info, root) in sets.items():
        fig = root / "path_similarity.png" if root is not None else None
        if fig is not None and fig.is_file():
            dest = out / "figures" / f"path_similarity_{label}.png"
            shutil.copyfile(fig, dest)
            blocks.append(Block("figure", f"figures/path_similarity_{label}.png",
                                f"{label}: {info['set_id']}, normalised path similarity against relative depth."))
        else:
            blocks.append(Block("p", f"{label}: no path-similarity check found for {info['set_id']} "
                                     f"(set at {info.get('path')!r})."))
    warns = [w for ld in loaded.values() for w in ld.warnings]
    if warns:
        blocks += [Block("h2", "Warnings"), Block("list", warns)]
    return blocks


def json_key(rec: dict | None) -> str:
    if not rec:
        return ""
    w = rec.get("weights", {})
    return f"{rec.get('network')} {rec.get('layer')} ({w.get('identity')}, state sha256 {str(w.get('state_sha256'))[:12]})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.control_compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original", nargs="+", required=True, help="sessions on the original network's set")
    p.add_argument("--manipulated", nargs="+", required=True, help="sessions on the manipulated network's set")
    p.add_argument("--out", required=True, help="folder for the comparison report (created)")
    p.add_argument("--original-set", help="the original study's stimulus set folder (default: the path its sessions recorded)")
    p.add_argument("--manipulated-set", help="the manipulated study's stimulus set folder (default: as recorded)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of participants (default 2000)")
    p.add_argument("--seed", type=int, default=1, help="bootstrap seed (default 1)")
    args = p.parse_args(argv)
    from contracts.common import ContractError

    try:
        files = compare(args.original, args.manipulated, args.out, args.n_boot, args.seed,
                        (args.original_set, args.manipulated_set))
    except (ValueError, ContractError, FileNotFoundError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 1
    effect = " manipulation_effect.csv," if (Path(args.out) / "manipulation_effect.csv").is_file() else ""
    print(f"control comparison: {files[1]} (also {files[0].name}, accuracy_comparison.csv,{effect} figures/)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
