"""Generate a whole stimulus set: units, natural exemplars, feature visualizations, manifest.

Order of work: every check that can fail (output folder, collection, weights, layer groups, units,
k against the collection) runs before the first image is decoded. Under torchrun each rank streams
its shard of the collection, the candidate lists are merged exactly, rank 0 re-scores the
candidates in fp32 and writes the crops, every rank takes part in rendering, and rank 0 writes the
set through ``contracts.stimulus_set.write_stimulus_set``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from contracts.common import sha256_json, software_versions
from contracts.stimulus_set import _SET_ID, image_relpath, write_stimulus_set
from stimuli_gen import distributed as D
from stimuli_gen.collection import DECODERS, Preprocess, list_collection
from stimuli_gen.config import GeneratorConfig
from stimuli_gen.exemplars import (POST_TIE_RULE, PassOptions, choose_exemplars, lists_from_activations, pass_fingerprint, rescore,
                                   run_pass, write_crops)
from stimuli_gen.models import (DEFAULT_LAYER_GROUPS, RANDOM_WEIGHTS_WARNING, RELU_MODES, TORCHVISION_WEIGHTS_FILE,
                                LoadedModel)
from stimuli_gen.manipulate.store import load_any
from stimuli_gen.safety import check_output_folder, exemplar_overlap_note
from stimuli_gen.topk import EMPTY_INDEX
from stimuli_gen.units import (RESERVE_RULE, SAMPLING_RULES, next_reserves, parse_unit_list, read_unit_file,
                               reserve_units, sample_units)

WORK_DIR = ".work"  # checkpoints inside the output folder, removed when the set is complete
SKIPPED_TABLE = "skipped_files.csv"
CONVERTED_TABLE = "converted_files.csv"
COLLECTION_TABLE = "collection_files.csv"
VALIDATION_TABLE = "validation.csv"

RANDOM_BANNER = "!" * 100


def resolve_weights(name: str, weights: str) -> tuple[str, str | None]:
    """``auto``: pretrained when torchvision's cache already holds the file, else random (with a note)."""
    if weights != "auto":
        return weights, None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_WEIGHTS_FILE
    if name == "torchvision_googlenet" and cached.is_file():
        return "pretrained", None
    why = (f"{cached} is not in torchvision's cache" if name == "torchvision_googlenet"
           else "lucid_inceptionv1 has no download")
    return "random", f"--weights auto fell back to RANDOM WEIGHTS because {why} (demo only)."


def _layer_groups(cfg: GeneratorConfig, model: LoadedModel) -> dict[str, list[str]]:
    groups = cfg.model.layer_groups or DEFAULT_LAYER_GROUPS[model.name]
    for group, layers in groups.items():
        for layer in layers:
            if layer not in model.net.channels:
                raise ValueError(f"layer group {group!r}: unknown layer {layer!r} for {model.name}; "
                                 f"layers: {list(model.net.layer_names)}")
    return {g: list(v) for g, v in groups.items()}


def _units(cfg: GeneratorConfig, model: LoadedModel, groups: dict[str, list[str]]) -> pd.DataFrame:
    if cfg.units.explicit:
        units = parse_unit_list(cfg.units.explicit, groups)
    elif cfg.units.file:
        units = read_unit_file(cfg.units.file, groups)
    else:
        return sample_units(groups, model.net.channels, cfg.units.per_group, _unit_seed(cfg), cfg.units.method)
    model.check_units(zip(units.layer, units.channel))
    bad = units[~units.group.isin(list(groups))]
    if len(bad):
        raise ValueError(f"unit {bad.unit_id.iloc[0]}: group {bad.group.iloc[0]!r} is not a layer group {list(groups)}")
    return units


def _unit_seed(cfg: GeneratorConfig) -> int:
    return cfg.run.seed if cfg.units.seed is None else cfg.units.seed


def _workers(n: int) -> int:
    """-1: the node's cores (less one) shared among the ranks torchrun started on this node, at most 16."""
    if n >= 0:
        return n
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(((os.cpu_count() or 1) - 1) // max(per_node, 1), 16))


def _relative_source(path: str, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return path


def generate(cfg: GeneratorConfig) -> Path | None:
    """Run the whole generator. Returns the set folder on rank 0 (None on other ranks)."""
    t_start = time.perf_counter()
    info, device = D.init_from_env(cfg.run.device)
    say = print if info.is_main else (lambda *a, **k: None)
    try:
        return _generate(cfg, info, device, say, t_start)
    finally:
        D.shutdown(info)


def _generate(cfg: GeneratorConfig, info: D.DistInfo, device: torch.device, say, t_start: float) -> Path | None:
    ex, col = cfg.exemplars, cfg.collection
    # ---- checks before any work ----
    if not cfg.run.out:
        raise ValueError("no output folder: pass --out DIR (or [run] out in the config)")
    out = Path(cfg.run.out)
    if not _SET_ID.match(out.name):
        raise ValueError(f"output folder name {out.name!r} is not a valid set id (letters, digits, '_', '-', '.')")
    if ex.statistic not in ("mean", "max"):
        raise ValueError(f"statistic must be 'mean' or 'max', got {ex.statistic!r}")
    if ex.relu not in RELU_MODES:
        raise ValueError(f"relu must be one of {RELU_MODES}, got {ex.relu!r}")
    if ex.k < 1 or ex.spares < 0:
        raise ValueError(f"k must be >= 1 and spares >= 0 (got k={ex.k}, spares={ex.spares})")
    if cfg.path_similarity.enabled:
        from stimuli_gen.path_similarity_set import options_from_config

        options_from_config(cfg).check()
    decoder = col.decoder if col.decoder != "auto" else ("torchvision" if device.type == "cuda" else "pil")
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be 'auto' or one of {DECODERS}, got {col.decoder!r}")
    # never the collection or a folder around it; --overwrite only of a stimulus set (stimuli_gen.safety)
    check_output_folder(out, col.source, col.builtin_dir, cfg.run.overwrite, cfg.run.resume)
    source = col.source
    if source == "builtin":
        if info.is_main:
            from stimuli_gen.builtin_collection import write_builtin_collection

            write_builtin_collection(col.builtin_dir)
        D.barrier(info)
        source = col.builtin_dir
    paths, root = list_collection(source)
    n_needed = ex.k + ex.spares
    if n_needed > len(paths):
        raise ValueError(f"k + spares = {n_needed} exemplars per side requested but the collection {source} "
                         f"has only {len(paths)} images")
    weights, weights_note = resolve_weights(cfg.model.name, cfg.model.weights)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning is printed below, louder
        model = load_any(cfg.model.name, weights, seed=cfg.run.seed, device="cpu")  # a manipulated-model folder too
    groups = _layer_groups(cfg, model)
    model.layer_groups = groups
    units = _units(cfg, model, groups)
    reserves = reserve_units(units, model.net.channels, cfg.units.reserve, _unit_seed(cfg))
    candidates = pd.concat([units, reserves], ignore_index=True)  # the pass finds exemplars of the reserves too
    manipulation = getattr(model, "manipulation", None)
    notes = [manipulation["statement"]] if manipulation else []
    if manipulation:
        say(f"{RANDOM_BANNER}\n{manipulation['statement']}\n{RANDOM_BANNER}", file=sys.stderr)
    if model.random_weights:
        notes.append(RANDOM_WEIGHTS_WARNING)
        if weights_note:
            notes.append(weights_note)
        say(f"{RANDOM_BANNER}\n{' '.join(notes)}\n{RANDOM_BANNER}", file=sys.stderr)
    pp = Preprocess(resize=col.resize, crop=col.crop, min_side=col.min_side, background=tuple(col.background))
    if model.random_weights and not manipulation:  # a manipulated model was calibrated before it was manipulated
        from stimuli_gen.random_net import calibrate_on_collection

        calibration = calibrate_on_collection(model, paths, pp)
        if calibration:
            say(f"random network: {calibration['method']}")
    margin = ex.k if ex.margin is None else ex.margin
    opts = PassOptions(statistic=ex.statistic, relu=ex.relu, precision=ex.precision, channels_last=ex.channels_last,
                       batch_size=col.batch_size, workers=_workers(col.workers), decoder=decoder,
                       keep=min(n_needed + margin, len(paths)), checkpoint_every_s=ex.checkpoint_every_s)
    precision = opts.resolved_precision(device)
    say(f"model {model.name} ({model.weights['identity']}), device {device}, {info.world_size} process(es), "
        f"{len(units)} units in {units.group.nunique()} groups" + (f" (+{len(reserves)} reserve)" if len(reserves) else "")
        + f", {len(paths)} images from {source}, decoder {decoder}, "
        f"{precision}, {opts.workers} loader workers")

    # ---- the exemplar pass over this rank's shard ----
    # every check has passed on every rank: only now may --overwrite remove the old set
    D.barrier(info)
    if info.is_main and cfg.run.overwrite and not cfg.run.resume and out.exists():
        shutil.rmtree(out)
    D.barrier(info)
    work = out / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    all_channels = ({l: model.net.channels[l] for l in model.net.layer_names if any(l in v for v in groups.values())}
                    if ex.save_activations and not ex.activations_from else None)
    fingerprint = pass_fingerprint(paths=sha256_json(paths), units=candidates.to_dict("list"), pp=pp.to_dict(),
                                   opts=vars(opts) | {"checkpoint_every_s": None, "workers": None, "batch_size": None},
                                   model=model.name, weights=model.weights, world=info.world_size, rank=info.rank,
                                   all_channels=all_channels, activations_dtype=ex.activations_dtype)
    if ex.activations_from:
        t0 = time.perf_counter()
        lists, skipped, converted = _lists_from_saved(Path(ex.activations_from), paths, pp, model, ex, candidates, opts.keep)
        pass_seconds, n_seen = time.perf_counter() - t0, len(paths)
        zero_counts = None  # saved post-ReLU activations cannot break ties at 0
    else:
        zero_counts = None
        indices = D.shard(list(range(len(paths))), info)
        res = run_pass(model.net, paths, indices, candidates, pp, opts, device,
                       checkpoint_path=work / f"pass_rank{info.rank}.pt", resume=cfg.run.resume, fingerprint=fingerprint,
                       progress=cfg.run.progress and info.is_main,
                       activations_path=work / f"activations_rank{info.rank}.npy" if all_channels else None,
                       all_channels=all_channels, activations_dtype=ex.activations_dtype)
        lists = D.merge_across_ranks(res.lists.to("cpu"), info)
        gathered = D.gather_objects({"skipped": res.skipped, "converted": res.converted, "n": res.n_seen,
                                     "seconds": res.seconds, "zeros": res.zero_counts}, info)
        if ex.relu == "post":
            zero_counts = sum(g["zeros"] for g in gathered)
        skipped = sorted(s for g in gathered for s in g["skipped"])
        converted = sorted(s for g in gathered for s in g["converted"])
        pass_seconds = max(g["seconds"] for g in gathered)
        n_seen = sum(g["n"] for g in gathered)

    # ---- choose exemplars (fp32 re-scoring of the candidates) and write the crops ----
    natural = None
    if info.is_main:
        res_lists = lists.result()
        cand = sorted({int(i) for side in res_lists.values() for i in side[1].flatten() if int(i) != EMPTY_INDEX})
        # fp32 re-scoring is needed when the pass differs from the PIL crops in fp32 (bf16, or the
        # torchvision decoder); hashes only for near-duplicate skipping
        exact_pass = precision == "fp32" and decoder == "pil" and not ex.activations_from  # saved ones are float16
        values, hashes = rescore(model.net, paths, cand, candidates, pp, ex.statistic, ex.relu, device, col.batch_size,
                                 with_values=not exact_pass, with_hashes=ex.dedupe_hamming >= 0, workers=opts.workers)
        natural = choose_exemplars(lists, None if exact_pass else values, hashes, candidates, n_needed,
                                   ex.dedupe_hamming)
        bottom_ties = _bottom_ties(natural, zero_counts, candidates, n_seen - len(skipped), ex.relu)
        if bottom_ties and bottom_ties["warning"]:
            notes.append(bottom_ties["warning"])
            say(f"WARNING: {bottom_ties['warning']}", file=sys.stderr)
        natural["file"] = [image_relpath(u, k, r) for u, k, r in zip(natural.unit_id, natural.kind, natural["rank"])]
        natural["source"] = [_relative_source(paths[i], root) for i in natural.image_index]
        natural["spare"] = (natural["rank"] >= ex.k).astype(int)  # 0/1 like the contract booleans
        n_changed = int((natural.activation != natural.pass_activation).sum())
        if natural.attrs["boundary"] and not exact_pass:
            msg = (f"the last of the {opts.keep} candidates was chosen for {len(natural.attrs['boundary'])} unit "
                   f"side(s) (e.g. {natural.attrs['boundary'][0]}): the fp32 ranking may reach beyond the "
                   f"candidates there; run again with a larger --margin (now {margin})")
            notes.append(msg)
            say(f"WARNING: {msg}", file=sys.stderr)
        say(f"exemplars: {len(natural)} chosen from {len(cand)} candidates" + (
            "" if exact_pass else f"; fp32 re-scoring changed {n_changed} values of the {precision} pass"))

    else:
        bottom_ties = None
    # ---- feature visualizations (every rank; the renderer shards units) ----
    units, fv_rows, fv_params, val, replaced = _render_stage(cfg, model, units, reserves, natural, out, work, device,
                                                             info, say)

    if not info.is_main:
        D.barrier(info)
        return None

    # ---- the final units' exemplar crops (reserves that were not needed are dropped) ----
    natural = natural[natural.unit_id.isin(set(units.unit_id))].reset_index(drop=True)
    if bottom_ties and bottom_ties.get("counts"):
        bottom_ties["counts"] = {u: c for u, c in bottom_ties["counts"].items() if u in set(units.unit_id)}
    write_crops(natural, paths, pp, out)
    overlap = exemplar_overlap_note(natural, ex.k)
    if overlap:
        notes.append(overlap)
        say(f"WARNING: {overlap}", file=sys.stderr)
    if replaced:
        msg = (f"{len(replaced)} unit(s) replaced by a reserve unit of the same layer because their feature "
               f"visualizations did not beat their best natural exemplar: "
               + ", ".join(f"{r['unit_id']} -> {r['replaced_by']}" for r in replaced[:5])
               + (" ..." if len(replaced) > 5 else "") + " (manifest: parameters.sampling.replaced)")
        notes.append(msg)
        say(f"NOTE: {msg}", file=sys.stderr)

    # ---- write the set (rank 0) ----
    extra = [SKIPPED_TABLE, CONVERTED_TABLE, COLLECTION_TABLE]
    pd.DataFrame([(i, _relative_source(paths[i], root), r) for i, r in skipped],
                 columns=["index", "source", "reason"]).to_csv(out / SKIPPED_TABLE, index=False)
    pd.DataFrame([(i, _relative_source(paths[i], root), r) for i, r in converted],
                 columns=["index", "source", "conversion"]).to_csv(out / CONVERTED_TABLE, index=False)
    pd.DataFrame({"index": range(len(paths)), "source": [_relative_source(p, root) for p in paths]}).to_csv(
        out / COLLECTION_TABLE, index=False)
    ps_files, ps_params = [], {"skipped": "no feature visualizations" if val is None else "disabled"}
    if val is not None and cfg.path_similarity.enabled:  # Geirhos et al. 2023 check; adds columns to val
        from stimuli_gen.path_similarity_set import check_at_generation, options_from_config

        val, ps_files, ps_params = check_at_generation(out, model, units, natural, fv_rows, val, paths, pp, device,
                                                       options_from_config(cfg), cfg.run.progress, say)
    extra += ps_files
    if val is not None:
        val.to_csv(out / VALIDATION_TABLE, index=False)
        extra.append(VALIDATION_TABLE)
    if all_channels:
        extra += _combine_activations(out, work, all_channels, len(paths), info.world_size, ex.activations_dtype)
        problem = _activation_range_problem(out / "activations.npy")
        if problem:
            notes.append(problem)
            say(f"WARNING: {problem}", file=sys.stderr)
    images = _concat_keeping_ints([natural, fv_rows] if fv_rows is not None else [natural])
    seeds = {"run": cfg.run.seed, "units": cfg.run.seed if cfg.units.seed is None else cfg.units.seed,
             "weights": model.weights.get("seed"),
             "feature_vis": fv_params.get("seed", cfg.run.seed) if fv_params else None}
    parameters = {
        "config": cfg.to_dict(),
        "collection": {"source": str(source), "root": str(root), "n_listed": len(paths), "n_used": n_seen - len(skipped),
                       "n_skipped": len(skipped), "n_converted": len(converted), "paths_sha256": sha256_json(paths),
                       "preprocess": pp.to_dict(), "decoder": decoder},
        "exemplars": {"statistic": ex.statistic, "relu": ex.relu, "k": ex.k, "spares": ex.spares, "margin": margin,
                      "candidates_per_side": opts.keep, "pass_precision": precision,
                      "final_precision": "fp32 (the pass itself)" if exact_pass else "fp32 (candidates re-scored, TF32 off)", "channels_last": ex.channels_last,
                      "dedupe_hamming": ex.dedupe_hamming,
                      "tie_break": (POST_TIE_RULE if ex.relu == "post" else "equal activations: lower image index first"),
                      "bottom_ties": bottom_ties,
                      "save_activations": ex.save_activations, "activations_from": ex.activations_from},
        "sampling": {"per_group": cfg.units.per_group, "explicit": cfg.units.explicit, "file": cfg.units.file,
                     "method": (cfg.units.method if not (cfg.units.explicit or cfg.units.file) else "explicit list"),
                     "rule": SAMPLING_RULES.get(cfg.units.method) if not (cfg.units.explicit or cfg.units.file) else None,
                     "reserve_per_unit": cfg.units.reserve, "reserve_rule": RESERVE_RULE if cfg.units.reserve else None,
                     "replaced": replaced,
                     "units_per_layer": {g: {str(k): int(v) for k, v in units[units.group == g].groupby(
                         "layer", sort=False).size().items()} for g in groups}},
        "feature_vis": fv_params if fv_params is not None else {"per_unit": 0, "skipped": True},
        "path_similarity": ps_params,
        "distributed": {"world_size": info.world_size, "sharding": "strided by rank"},
        "device": str(device),
    }
    manifest = {"set_id": out.name, "model": {"name": model.name, "weights": model.weights},
                "random_weights": model.random_weights, "manipulation": manipulation, "layer_groups": groups, "parameters": parameters,
                "seeds": seeds, "software": software_versions(["torch", "torchvision", "scikit-image", "pillow"]),
                "notes": notes, "extra_files": extra}
    write_stimulus_set(out, manifest, units, images)
    shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t_start
    say(f"summary: {n_seen} images read in the pass ({len(skipped)} skipped, {len(converted)} converted) in "
        f"{pass_seconds:.1f} s = {n_seen / max(pass_seconds, 1e-9):.1f} images/s; total {total:.1f} s; "
        f"set written to {out}")
    if skipped:
        say(f"skipped files ({len(skipped)}), see {out / SKIPPED_TABLE}:")
        for i, r in skipped[:10]:
            say(f"  {paths[i]}: {r}")
    if val is not None:
        try:
            from stimuli_gen.render import summarize_validation

            say(summarize_validation(val))
        except ImportError:
            say(val.describe(include="all").to_string())
        say(f"  per unit: {out / VALIDATION_TABLE}")
    if notes:
        say(f"{RANDOM_BANNER}\nNOTES: {' '.join(notes)}\n{RANDOM_BANNER}", file=sys.stderr)
    D.barrier(info)
    return out


TIE_WARN_FRACTION = 0.05  # warn when more than this share of the collection ties at a unit's bottom


def _bottom_ties(natural: pd.DataFrame, zero_counts, units: pd.DataFrame, n_images: int, relu: str) -> dict | None:
    """With ``relu`` post, images whose post-ReLU activation is exactly 0 tie at the bottom: the exemplar
    rows keep the ranking key (``rank_key``) and their post-ReLU activation (0); count the ties per unit
    and say when they cover more than ``TIE_WARN_FRACTION`` of the collection."""
    if relu != "post":
        return None
    natural["rank_key"] = natural.activation
    natural["activation"] = natural.activation.clip(lower=0.0)
    natural["pass_activation"] = natural.pass_activation.clip(lower=0.0)
    if zero_counts is None:
        return {"counts": None, "warning": "ties at 0 of post-ReLU activations could not be counted or broken "
                                           "(activations re-used from --activations-from)"}
    counts = {u: int(c) for u, c in zip(units.unit_id, zero_counts.tolist())}
    many = {u: c for u, c in counts.items() if c > TIE_WARN_FRACTION * max(n_images, 1)}
    warning = None
    if many:
        worst = max(many, key=many.get)
        warning = (f"post-ReLU activation exactly 0 on more than {TIE_WARN_FRACTION:.0%} of the {n_images} images for "
                   f"{len(many)} unit(s) (e.g. {worst}: {many[worst]}); their bottom exemplars are ranked among "
                   f"those ties by the pre-ReLU statistic (manifest: exemplars.tie_break)")
    return {"counts": counts, "n_images": n_images, "warn_fraction": TIE_WARN_FRACTION, "warning": warning}


def natural_targets(natural: pd.DataFrame | None) -> dict[str, float]:
    """Each unit's best natural activation (the diversity search's target)."""
    if natural is None or not len(natural):
        return {}
    best = natural[natural.kind == "natural_max"].groupby("unit_id", sort=False).activation.max()
    return {str(u): float(v) for u, v in best.items()}


def _render_stage(cfg: GeneratorConfig, model: LoadedModel, units: pd.DataFrame, reserves: pd.DataFrame,
                  natural: pd.DataFrame | None, out: Path, work: Path, device: torch.device, info: D.DistInfo, say):
    """Feature visualizations of every unit (all ranks render; rank 0 validates). A unit whose FVs do
    not all beat its best natural exemplar is replaced by the next reserve of its layer while reserves
    last (``--reserve-units``); its images are removed. Returns ``(units, rows, parameters,
    validation, replaced)``; rows, parameters and validation are None when ``per_unit`` is 0."""
    if cfg.feature_vis.per_unit <= 0:
        return units, None, None, None, []
    from stimuli_gen.render import RenderConfig, render_feature_visualizations, validate_feature_vis

    ex = cfg.exemplars
    # the visualizations maximise and report the same unit activation (statistic, ReLU side) as the exemplars
    overrides = {"n_vis": cfg.feature_vis.per_unit, "seed": cfg.run.seed, "relu": ex.relu,
                 "statistic": ex.statistic, **cfg.feature_vis.overrides}
    rcfg = RenderConfig.from_preset(cfg.feature_vis.preset, **overrides)
    targets = D.gather_objects(natural_targets(natural) if info.is_main else None, info)[0]

    def render(todo: pd.DataFrame, round_: int) -> pd.DataFrame:
        return render_feature_visualizations(model, todo, rcfg, out, device=device,
                                             checkpoint_dir=work / ("fv" if round_ == 0 else f"fv_reserve{round_}"),
                                             progress=cfg.run.progress and info.is_main,
                                             resume=None if cfg.run.resume else False, targets=targets)

    rows = render(units, 0)
    replaced: list[dict] = []
    used: set[str] = set()
    for round_ in range(1, len(reserves) + 1):
        failed = _failed_units(rows, units)
        picks = next_reserves(failed, reserves, used)
        if not picks:
            break
        say(f"replacing {len(picks)} unit(s) whose feature visualizations lost to a natural exemplar "
            f"(reserve round {round_})")
        new_rows = render(pd.DataFrame([r for _, r in picks], columns=units.columns), round_)
        by = dict((f, r) for f, r in picks)
        for f, r in picks:
            lost = rows[rows.unit_id == f]
            replaced.append({"unit_id": f, "replaced_by": r["unit_id"], "round": round_,
                             "margin_min": float(lost.margin.min()),
                             "search_status": str(lost.search_status.iloc[0])})
            if info.is_main:
                for rel in lost.file:
                    (out / rel).unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # the folder of its images, when nothing else is in it
                    (out / Path(lost.file.iloc[0]).parent).rmdir()
        rows = pd.concat([rows[~rows.unit_id.isin(list(by))], new_rows], ignore_index=True)
        units = pd.DataFrame([by.get(u.unit_id, u._asdict()) for u in units.itertuples(index=False)],
                             columns=units.columns)
    pos = {u: i for i, u in enumerate(units.unit_id)}
    rows = rows.assign(_o=rows.unit_id.map(pos)).sort_values(["_o", "rank"]).drop(columns="_o").reset_index(drop=True)
    val = validate_feature_vis(rows, natural) if info.is_main else None
    return units, rows, rcfg.to_dict(), val, replaced


def _failed_units(rows: pd.DataFrame, units: pd.DataFrame) -> pd.DataFrame:
    """Units with a feature visualization that does not beat the unit's best natural exemplar."""
    bad = set(rows.loc[~(rows.margin > 0), "unit_id"])
    return units[units.unit_id.isin(bad)]


def _lists_from_saved(src: Path, paths: list[str], pp: Preprocess, model: LoadedModel, ex, units: pd.DataFrame,
                      keep: int):
    """Candidate lists from an earlier set's ``activations.npy``, after checking that it was made
    from the same collection, preprocessing, model, weights, statistic and ReLU side."""
    import json

    mpath = src / "manifest.json"
    if not (src / "activations.npy").is_file() or not mpath.is_file():
        raise ValueError(f"--activations-from {src}: no activations.npy / manifest.json there "
                         f"(make that set with --save-activations)")
    m = json.loads(mpath.read_text())
    p = m["parameters"]
    checks = {"collection files": (p["collection"]["paths_sha256"], sha256_json(paths)),
              "preprocessing": (p["collection"]["preprocess"], pp.to_dict()),
              "model": (m["model"]["name"], model.name),
              "weights": (m["model"]["weights"].get("sha256") or m["model"]["weights"].get("identity"),
                          model.weights.get("sha256") or model.weights.get("identity")),
              "statistic": (p["exemplars"]["statistic"], ex.statistic), "relu": (p["exemplars"]["relu"], ex.relu)}
    bad = [f"{k} ({a!r} there, {b!r} here)" for k, (a, b) in checks.items() if a != b]
    if bad:
        raise ValueError(f"--activations-from {src}: made differently: " + "; ".join(bad))
    arr = np.load(src / "activations.npy", mmap_mode="r")
    lists = lists_from_activations(arr, pd.read_csv(src / "activations_columns.csv"), units, keep)
    sk = pd.read_csv(src / SKIPPED_TABLE, dtype={"reason": str})
    cv = pd.read_csv(src / CONVERTED_TABLE, dtype={"conversion": str})
    return lists, list(zip(sk["index"].astype(int), sk.reason)), list(zip(cv["index"].astype(int), cv.conversion))


def _concat_keeping_ints(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate image rows of different kinds. Integer columns of one kind (image_index, the
    renderer's 64-bit seeds) would turn into floats next to the other kind's empty cells and lose
    digits; they become nullable integers instead."""
    ints = {c for f in frames for c in f.columns if pd.api.types.is_integer_dtype(f[c]) or pd.api.types.is_bool_dtype(f[c])}
    frames = [f.astype({c: "Int64" for c in ints if c in f.columns}) for f in frames]
    return pd.concat(frames, ignore_index=True)


def _activation_range_problem(path: Path) -> str | None:
    """float16 holds 6e-8..65504: say so when saved activations overflowed or mostly underflowed."""
    arr = np.load(path, mmap_mode="r")
    if arr.dtype != np.float16:
        return None
    n_inf = n_zero = n = 0
    for s in range(0, arr.shape[0], 4096):
        a = np.asarray(arr[s : s + 4096])
        n_inf += int(np.isinf(a).sum())
        n_zero += int((a == 0).sum())
        n += int((~np.isnan(a)).sum())
    if n_inf or n_zero > 0.5 * max(n, 1):
        return (f"activations.npy: float16 cannot hold these activations ({n_inf} infinite, {n_zero} of {n} zero); "
                f"save them again with activations_dtype = 'float32' before re-using them")
    return None


def _combine_activations(out: Path, work: Path, all_channels: dict[str, int], n: int, world: int,
                         dtype: str = "float16") -> list[str]:
    """One ``activations.npy`` (images x channels, NaN rows for skipped files) in collection
    order, from the per-rank shards (which need a shared file system under torchrun)."""
    arr = np.lib.format.open_memmap(out / "activations.npy", mode="w+", dtype=np.dtype(dtype),
                                    shape=(n, sum(all_channels.values())))
    for r in range(world):
        part = np.load(work / f"activations_rank{r}.npy", mmap_mode="r")
        arr[r::world] = part
    arr.flush()
    del arr
    pd.DataFrame([(layer, c) for layer, nc in all_channels.items() for c in range(nc)],
                 columns=["layer", "channel"]).rename_axis("column").to_csv(out / "activations_columns.csv")
    return ["activations.npy", "activations_columns.csv"]
