"""The path-similarity check as part of a stimulus set: run it at the end of generation or on an
existing set (``fvmatch-stimuli --path-similarity SET``), and write ``path_similarity.csv``, the
figure, ``path_similarity.md`` and the ``path_similarity_*`` columns of ``validation.csv``.

Nothing is written until every check has passed and the whole computation has finished.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stimuli_gen import path_similarity as PS
from stimuli_gen.path_similarity_run import (CheckOptions, activation_vectors, compute_table, figure, make_plan,
                                             path_layers, unit_seed)

TABLE = "path_similarity.csv"
FIGURE = "path_similarity.png"
SUMMARY = "path_similarity.md"
VALIDATION = "validation.csv"
SUMMARY_COLUMNS = ["path_similarity_first_depth", "path_similarity_own_layer", "path_similarity_flag",
                   "path_similarity_note"]


@dataclass
class CheckResult:
    table: pd.DataFrame
    summary: pd.DataFrame  # per unit (SUMMARY_COLUMNS)
    parameters: dict
    seconds: float
    files: list[str] = field(default_factory=list)


def collection_pool(paths: list[str], pp, n: int, seed: int) -> tuple[list[torch.Tensor], list[int]] | None:
    """``n`` natural images of the collection (seeded order; unreadable files are passed over), as the
    network saw them for the exemplars. None when the collection cannot give ``n`` images."""
    from stimuli_gen.collection import SkipImage, load_crop

    order = np.random.default_rng(unit_seed(seed, "unrelated-pool")).permutation(len(paths))
    crops, ids = [], []
    for i in order:
        if len(crops) == n:
            break
        try:
            crops.append(load_crop(paths[int(i)], pp)[0])
            ids.append(int(i))
        except (SkipImage, OSError):
            continue
    return (crops, ids) if len(crops) == n else None


def run_check(model, units: pd.DataFrame, images: pd.DataFrame, root: Path, opts: CheckOptions,
              device: torch.device | str = "cpu", pool: tuple[list, list[str]] | None = None,
              progress: bool = False, random_weights: bool = False) -> CheckResult:
    """Plan (checks first), one batched pass over every image, the tables. Writes nothing."""
    opts.check()
    t0 = time.perf_counter()
    plan = make_plan(units, images, root, opts, *(pool if pool is not None else (None, None)))
    size = opts.size or 224
    vectors = activation_vectors(model.net, model.name, plan.images, size, opts.pooling, opts.batch_size, device,
                                 progress)
    table = compute_table(vectors, plan, units, opts.metric)
    table.insert(len(table.columns), "pooling", opts.pooling)
    summary = PS.unit_summary(table, units, opts.threshold)
    params = {**opts.to_dict(), "size": size, "layers": path_layers(model.name, model.net),
              "unrelated_source": plan.unrelated_source, "n_images_in_pass": len(plan.images),
              "device": str(device), "random_weights": random_weights,
              "top_exemplars": "natural_max ranks below k (spares left out)",
              "normalised": "(rho_fv - rho_unrelated) / (rho_related - rho_unrelated); empty where the references "
                            f"differ by less than {PS.MIN_SEPARATION}",
              "summary": f"first relative depth with normalised > {opts.threshold}; flag: never above it up to "
                         "the unit's own layer"}
    return CheckResult(table, summary, params, time.perf_counter() - t0)


def merge_validation(val: pd.DataFrame | None, summary: pd.DataFrame) -> pd.DataFrame:
    """``validation.csv`` with the per-unit summary columns (replacing earlier ones)."""
    if val is None:
        return summary.copy()
    val = val.drop(columns=[c for c in SUMMARY_COLUMNS if c in val.columns])
    return val.merge(summary, on="unit_id", how="left")


def write_outputs(root: Path, result: CheckResult, set_id: str, random_weights: bool,
                  val: pd.DataFrame | None, settings: str = "`parameters.path_similarity` of `manifest.json`") -> list[str]:
    """Write the table, the figure, the summary page and the validation columns into ``root`` (each via a
    temporary file and a rename). Returns the relative paths written."""
    import matplotlib.pyplot as plt

    title = f"{set_id}: path similarity ({result.parameters['metric']}, {result.parameters['pooling']} pooling)"
    if random_weights:
        title += "\nRANDOM WEIGHTS: untrained network, meaningless for a study"
    fig = figure(result.table, title, result.parameters["threshold"])
    written = {}
    tmp = root / (FIGURE + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    written[FIGURE] = tmp
    for name, df, fmt in ((TABLE, result.table, "%.6g"), (VALIDATION, merge_validation(val, result.summary), None)):
        tmp = root / (name + ".tmp")
        df.to_csv(tmp, index=False, float_format=fmt)
        written[name] = tmp
    tmp = root / (SUMMARY + ".tmp")
    tmp.write_text(summary_markdown(result, random_weights, settings), encoding="utf-8")
    written[SUMMARY] = tmp
    for name, t in written.items():
        os.replace(t, root / name)
    return list(written)


def summary_lines(result: CheckResult) -> list[str]:
    """What the check found, in words (console and ``path_similarity.md``)."""
    s, t, p = result.summary, result.table, result.parameters
    n = len(s)
    flagged = s[s.path_similarity_flag]
    lines = [f"path similarity ({p['metric']}, {p['pooling']} pooling, {len(p['layers'])} stages, "
             f"{p['n_unrelated']} unrelated images per unit from {p['unrelated_source']}): {n} units, "
             f"{result.seconds:.1f} s"]
    for g, tg in t.groupby("group", sort=False):
        own = tg[tg.layer == tg.unit_layer].normalised
        lines.append(f"  {g} units: normalised similarity at their own layer median {own.median():.2f}; "
                     f"at the logits median {tg[tg.layer == p['layers'][-1]].normalised.median():.2f}")
    lines.append(f"  flagged units (visualizations processed like unrelated natural images up to the unit's own "
                 f"layer): {len(flagged)}/{n}")
    lines += [f"    {r.unit_id}: {r.path_similarity_note}" for r in flagged.itertuples(index=False)][:20]
    return lines


def summary_markdown(result: CheckResult, random_weights: bool,
                     settings: str = "`parameters.path_similarity` of `manifest.json`") -> str:
    warn = ("> **RANDOM WEIGHTS: the network is untrained; this check says nothing about a real network.**\n\n"
            if random_weights else "")
    return (f"# Path similarity of the feature visualizations\n\n{warn}"
            "Does the network process each unit's feature visualizations along the same path as the unit's "
            "top natural exemplars? Per stage of the network, the similarity between visualizations and top "
            "exemplars is placed between two references: 1 = as similar as the unit's top exemplars are to "
            "each other, 0 = as similar as unrelated natural images (Geirhos et al. 2023). It is a necessary "
            "condition, not proof that a visualization explains the unit.\n\n"
            f"![path similarity]({FIGURE})\n\n```\n" + "\n".join(summary_lines(result)) + "\n```\n\n"
            f"Per unit and stage: `{TABLE}`; per unit: the `path_similarity_*` columns of `{VALIDATION}`; "
            f"settings: {settings}.\n")


def options_from_config(cfg) -> CheckOptions:
    """Check options from the generator's ``[path_similarity]`` section; the run's seed picks the unrelated images."""
    ps = cfg.path_similarity
    return CheckOptions(metric=ps.metric, pooling=ps.pooling, n_unrelated=ps.n_unrelated, seed=cfg.run.seed,
                        batch_size=min(cfg.collection.batch_size, 64))


# ---- entry points ---------------------------------------------------------------------------------

def check_at_generation(out: Path, model, units: pd.DataFrame, natural: pd.DataFrame, fv_rows: pd.DataFrame,
                        val: pd.DataFrame, paths: list[str], pp, device, opts: CheckOptions, progress: bool,
                        say=print) -> tuple[pd.DataFrame, list[str], dict]:
    """At the end of ``fvmatch-stimuli``: returns ``validation`` with the summary columns, the files
    written and the manifest entry ``parameters.path_similarity``."""
    images = pd.concat([natural[["unit_id", "kind", "rank", "file", "spare", "source"]],
                        fv_rows[["unit_id", "kind", "rank", "file"]]], ignore_index=True)
    if opts.size is None:
        opts.size = pp.crop
    n_own = int(natural.groupby("unit_id").size().max())
    found = collection_pool(paths, pp, min(opts.n_unrelated + n_own, len(paths)), opts.seed)
    # the collection index identifies an image in both the exemplars and the pool
    images["source"] = [str(int(i)) if pd.notna(i) else "" for i in
                        pd.concat([natural.image_index, pd.Series([pd.NA] * len(fv_rows))], ignore_index=True)]
    pool = (found[0], [str(i) for i in found[1]]) if found is not None else None
    try:
        result = run_check(model, units, images, out, opts, device, pool, progress, model.random_weights)
    except ValueError as e:  # e.g. k = 1: no upper reference; the rendered set is kept without the check
        say(f"WARNING: path-similarity check skipped: {e}")
        return val, [], {"skipped": str(e)}
    files = write_outputs(out, result, out.name, model.random_weights, val)  # the pipeline hashes validation.csv
    val = merge_validation(val, result.summary)
    for line in summary_lines(result):
        say(line)
    return val, [f for f in files if f != VALIDATION], result.parameters


def check_existing_set(root: os.PathLike | str, opts: CheckOptions, device: str = "auto", progress: bool = True,
                       weights: str | None = None, out: os.PathLike | str | None = None,
                       overwrite: bool = False) -> CheckResult:
    """``fvmatch-stimuli --path-similarity SET``: the check on a set already written, without re-rendering.
    Loads the set's own network and weights (checked against the manifest), writes the outputs and
    records them in the manifest. With ``out`` (``--out DIR``) the set is only read: the outputs go to
    ``out`` with ``path_similarity.json`` saying which set (manifest content hash) was checked."""
    from contracts.stimulus_set import add_files_to_set, load_stimulus_set
    from stimuli_gen.collection import Preprocess

    root = Path(root)
    if out is not None:
        _check_out_folder(root, Path(out), overwrite)
    s = load_stimulus_set(root)
    images = s.images.copy()
    problems = s.verify_files()
    if problems:
        raise ValueError(f"{root}: the set does not match its manifest ({problems[0]}); not touching it")
    model = _load_set_model(s.manifest, weights)
    coll = s.manifest["parameters"].get("collection", {})
    pp_d = {k: v for k, v in coll.get("preprocess", {}).items() if k in ("resize", "crop", "min_side", "background")}
    pp = Preprocess(**{**pp_d, "background": tuple(pp_d.get("background", (255, 255, 255)))}) if pp_d else None
    if opts.size is None:
        opts.size = pp.crop if pp else int(s.manifest["parameters"].get("size", 224))
    pool, note = None, ""
    cpath = root / "collection_files.csv"
    if pp is not None and cpath.is_file() and "source" in images:
        croot = Path(coll.get("root", ""))
        sources = pd.read_csv(cpath).source.astype(str).tolist()
        paths = [str(croot / x) if not Path(x).is_absolute() else x for x in sources]
        n_own = int(images[images.kind.str.startswith("natural")].groupby("unit_id").size().max())
        if all(Path(p).is_file() for p in paths[:50]):
            found = collection_pool(paths, pp, min(opts.n_unrelated + n_own, len(paths)), opts.seed)
            if found is not None:
                pool = (found[0], [sources[i] for i in found[1]])
        if pool is None:
            note = f"the collection ({croot}) is not readable here: unrelated images are other units' exemplars"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    result = run_check(model, s.units, images, root, opts, device, pool, progress, s.random_weights)
    if note:
        result.parameters["note"] = note
    val_path = root / VALIDATION
    val = pd.read_csv(val_path) if val_path.is_file() else None
    if out is not None:
        result.files = _write_elsewhere(Path(out), root, s, result, val)
        return result
    result.files = write_outputs(root, result, s.set_id, s.random_weights, val)
    add_files_to_set(root, result.files, {"path_similarity": result.parameters})
    return result


RECORD = "path_similarity.json"  # with --out: which set was checked, and the settings


def _check_out_folder(root: Path, out: Path, overwrite: bool) -> None:
    """``--out`` must leave the set untouched: not the set's folder nor inside it; an earlier check there is
    replaced only with ``--overwrite``."""
    r, o = root.resolve(), out.resolve()
    if o == r or r in o.parents:
        raise ValueError(f"--out {out} is inside the stimulus set {root}; choose a folder outside it "
                         f"(or leave --out away to record the check in the set)")
    if (out / RECORD).exists() and not overwrite:
        raise FileExistsError(f"{out / RECORD} exists (an earlier check); pass --overwrite to replace it")


def _write_elsewhere(out: Path, root: Path, s, result: CheckResult, val: pd.DataFrame | None) -> list[str]:
    """The outputs of a check in ``out`` (the set's ``validation.csv`` with the summary columns included), and
    ``path_similarity.json``: the set's id, path, manifest sha256s and the check's settings."""
    from contracts.common import sha256_file, software_versions, write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    files = write_outputs(out, result, s.set_id, s.random_weights, val, settings=f"`{RECORD}`")
    record = {"stimulus_set": {"set_id": s.set_id, "path": str(root.resolve()),
                               "manifest_content_sha256": s.manifest.get("content_sha256"),
                               "manifest_sha256": sha256_file(root / "manifest.json"),
                               "random_weights": s.random_weights, "manipulation": s.manifest.get("manipulation")},
              "checked": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "seconds": round(result.seconds, 2), "path_similarity": result.parameters, "files": files,
              "software": software_versions(["torch", "torchvision"])}
    write_json_atomic(out / RECORD, record)
    return files + [RECORD]


def _load_set_model(manifest: dict, weights: str | None):
    """The set's network with the weights the manifest names (sha256 checked), or ``weights`` when given: a
    manipulated set's own manipulated model, and a random network recalibrated exactly as generation did."""
    import warnings

    from stimuli_gen.manipulate.store import load_any

    name, w = manifest["model"]["name"], manifest["model"]["weights"]
    manipulation = manifest.get("manipulation")
    source = weights or (manipulation["folder"] if manipulation else
                         {"random": "random", "pretrained": "pretrained"}.get(w["source"], w.get("identity")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_any(name, source, seed=w.get("seed") or 0)
    if w.get("sha256") and model.weights.get("sha256") != w["sha256"]:
        raise ValueError(f"weights {source}: sha256 {model.weights.get('sha256')} differs from the set's "
                         f"{w['sha256']}; pass --weights PATH to the file the set was made with")
    if w.get("calibration") and not manipulation:
        _recalibrate_as_generated(model, manifest)
    return model


def _recalibrate_as_generated(model, manifest: dict) -> None:
    """Random torchvision weights were recalibrated on the collection at generation (random_net.py); the check
    must see that network, so the same images are used again. Without the collection it cannot: say so."""
    from stimuli_gen.collection import Preprocess, list_collection
    from stimuli_gen.random_net import calibrate_on_collection

    col = manifest["parameters"]["collection"]
    cal = manifest["model"]["weights"]["calibration"]
    try:
        paths, _ = list_collection(col["source"])
    except (OSError, ValueError) as e:
        raise ValueError(f"the set's random network was recalibrated on its collection {col['source']}, which cannot "
                         f"be read here ({e}); run the check where the collection is, or pass --weights") from None
    fields = set(Preprocess.__dataclass_fields__)
    kw = {k: v for k, v in col["preprocess"].items() if k in fields}
    pp = Preprocess(**{**kw, "background": tuple(kw.get("background", Preprocess().background))})
    record = calibrate_on_collection(model, paths, pp, size=cal["size"])
    if record is None or record["image_indices"] != cal["image_indices"]:
        raise ValueError(f"the collection {col['source']} is not the one the set's random network was recalibrated "
                         "on (other calibration images); run the check on the original collection")


def print_summary(result: CheckResult, root: Path, in_set: bool = True) -> None:
    print("\n".join(summary_lines(result)))
    print(f"  written to {root}: {', '.join(result.files)}"
          + (" (manifest updated: its sha256 changed)" if in_set else " (the stimulus set was not changed)"))
