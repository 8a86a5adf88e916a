"""Generate a whole stimulus set: units, natural exemplars, feature visualizations, manifest.

Order of work: every check that can fail (output folder, collection, weights, layer groups, units,
k against the collection) runs before the first image is decoded. Under torchrun each rank streams
its shard of the collection, the candidate lists are merged exactly, rank 0 re-scores the
candidates in fp32 and writes the crops, every rank takes part in rendering, and rank 0 writes the
set through ``contracts.stimulus_set.write_stimulus_set``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from contracts.common import sha256_json, software_versions
from contracts.stimulus_set import _SET_ID, image_relpath, write_stimulus_set
from stimuli_gen import distributed as D
from stimuli_gen.collection import DECODERS, Preprocess, list_collection
from stimuli_gen.config import GeneratorConfig
from stimuli_gen.exemplars import POST_TIE_RULE, PassOptions, choose_exemplars, pass_fingerprint, rescore, run_pass, write_crops
from stimuli_gen.models import (DEFAULT_LAYER_GROUPS, RANDOM_WEIGHTS_WARNING, RELU_MODES, TORCHVISION_WEIGHTS_FILE,
                                LoadedModel)
from stimuli_gen.manipulate.store import load_any
from stimuli_gen.saved_activations import (CONVERTED_TABLE, SKIPPED_TABLE, activation_range_problem, combine_activations,
                                          lists_from_saved)
from stimuli_gen.safety import check_output_folder, exemplar_overlap_note
from stimuli_gen.topk import EMPTY_INDEX
from stimuli_gen.render_stage import natural_targets, render_stage  # noqa: F401 (natural_targets: re-exported)
from stimuli_gen.units import RESERVE_RULE, SAMPLING_RULES, parse_unit_list, read_unit_file, reserve_units, sample_units

WORK_DIR = ".work"  # checkpoints inside the output folder, removed when the set is complete
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


@dataclasses.dataclass
class _Run:
    """What every stage of one generation run shares (set up by the first stages)."""

    cfg: GeneratorConfig
    info: D.DistInfo
    device: torch.device
    say: Any
    out: Path
    decoder: str
    notes: list[str] = dataclasses.field(default_factory=list)
    source: str = ""
    paths: list[str] = dataclasses.field(default_factory=list)
    root: Path | None = None
    pp: Preprocess | None = None
    model: LoadedModel | None = None
    work: Path | None = None

    def warn(self, msg: str, label: str = "WARNING") -> None:
        self.notes.append(msg)
        self.say(f"{label}: {msg}", file=sys.stderr)


@dataclasses.dataclass
class _PassResult:
    lists: Any
    skipped: list
    converted: list
    seconds: float
    n_seen: int
    zero_counts: Any
    opts: PassOptions
    precision: str
    all_channels: dict | None


def _generate(cfg: GeneratorConfig, info: D.DistInfo, device: torch.device, say, t_start: float) -> Path | None:
    run = _check_settings(cfg, info, device, say)  # every check that can fail, before any work
    _open_collection(run)
    groups = _load_model(run)
    units = _units(cfg, run.model, groups)
    reserves = reserve_units(units, run.model.net.channels, cfg.units.reserve, _unit_seed(cfg))
    candidates = pd.concat([units, reserves], ignore_index=True)  # the pass finds exemplars of the reserves too
    _calibrate_random_network(run)
    run.work = _clear_output(run)
    pas = _exemplar_pass(run, candidates, groups, units, reserves)
    natural, bottom_ties = _choose_natural(run, pas, candidates) if info.is_main else (None, None)
    units, fv_rows, fv_params, val, replaced = render_stage(cfg, run.model, units, reserves, natural, run.out,
                                                             run.work, device, info, say)
    if not info.is_main:
        D.barrier(info)
        return None
    natural = _write_final_crops(run, natural, units, bottom_ties, replaced)
    extra, val, ps_params = _write_tables(run, pas, units, natural, fv_rows, val)
    images = _concat_keeping_ints([natural, fv_rows] if fv_rows is not None else [natural])
    manifest = _manifest(run, pas, groups, units, bottom_ties, replaced, fv_params, ps_params, extra)
    write_stimulus_set(run.out, manifest, units, images)
    shutil.rmtree(run.work, ignore_errors=True)
    _summary(run, pas, val, time.perf_counter() - t_start)
    D.barrier(info)
    return run.out


def _check_settings(cfg: GeneratorConfig, info: D.DistInfo, device: torch.device, say) -> _Run:
    """Refuse settings no run can use and an output folder that must not be written, before any work."""
    ex, col = cfg.exemplars, cfg.collection
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
    return _Run(cfg, info, device, say, out, decoder)


def _open_collection(run: _Run) -> None:
    """List the collection (writing the built-in one first) and check it holds enough images."""
    col, ex = run.cfg.collection, run.cfg.exemplars
    source = col.source
    if source == "builtin":
        if run.info.is_main:
            from stimuli_gen.builtin_collection import write_builtin_collection

            write_builtin_collection(col.builtin_dir)
        D.barrier(run.info)
        source = col.builtin_dir
    run.source = source
    run.paths, run.root = list_collection(source)
    n_needed = ex.k + ex.spares
    if n_needed > len(run.paths):
        raise ValueError(f"k + spares = {n_needed} exemplars per side requested but the collection {source} "
                         f"has only {len(run.paths)} images")
    run.pp = Preprocess(resize=col.resize, crop=col.crop, min_side=col.min_side, background=tuple(col.background))


def _load_model(run: _Run) -> dict[str, list[str]]:
    """Load the network (a manipulated-model folder too), say loudly what is unusual about its weights,
    and return its layer groups."""
    cfg = run.cfg
    weights, weights_note = resolve_weights(cfg.model.name, cfg.model.weights)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning is printed below, louder
        model = load_any(cfg.model.name, weights, seed=cfg.run.seed, device="cpu")
    groups = _layer_groups(cfg, model)
    model.layer_groups = groups
    run.model = model
    manipulation = getattr(model, "manipulation", None)
    if manipulation:
        run.notes.append(manipulation["statement"])
        run.say(f"{RANDOM_BANNER}\n{manipulation['statement']}\n{RANDOM_BANNER}", file=sys.stderr)
    if model.random_weights:
        run.notes.append(RANDOM_WEIGHTS_WARNING)
        if weights_note:
            run.notes.append(weights_note)
        run.say(f"{RANDOM_BANNER}\n{' '.join(run.notes)}\n{RANDOM_BANNER}", file=sys.stderr)
    return groups


def _calibrate_random_network(run: _Run) -> None:
    """Random weights: BatchNorm statistics re-estimated on the collection (stimuli_gen.random_net); a
    manipulated model was calibrated before it was manipulated and is left alone."""
    if run.model.random_weights and not getattr(run.model, "manipulation", None):
        from stimuli_gen.random_net import calibrate_on_collection

        calibration = calibrate_on_collection(run.model, run.paths, run.pp)
        if calibration:
            run.say(f"random network: {calibration['method']}")


def _clear_output(run: _Run) -> Path:
    """Every check has passed on every rank: only now may --overwrite remove the old set. Returns the
    work folder (checkpoints, removed when the set is complete)."""
    D.barrier(run.info)
    if run.info.is_main and run.cfg.run.overwrite and not run.cfg.run.resume and run.out.exists():
        shutil.rmtree(run.out)
    D.barrier(run.info)
    work = run.out / WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    return work


def _exemplar_pass(run: _Run, candidates: pd.DataFrame, groups: dict, units: pd.DataFrame,
                   reserves: pd.DataFrame) -> _PassResult:
    """One pass over this rank's shard of the collection (or an earlier set's saved activations),
    merged across ranks: each candidate unit's top and bottom candidate images."""
    cfg, info, model = run.cfg, run.info, run.model
    ex, col = cfg.exemplars, cfg.collection
    opts = PassOptions(statistic=ex.statistic, relu=ex.relu, precision=ex.precision, channels_last=ex.channels_last,
                       batch_size=col.batch_size, workers=_workers(col.workers), decoder=run.decoder,
                       keep=min(ex.k + ex.spares + ex.resolved_margin, len(run.paths)), checkpoint_every_s=ex.checkpoint_every_s)
    precision = opts.resolved_precision(run.device)
    run.say(f"model {model.name} ({model.weights['identity']}), device {run.device}, {info.world_size} process(es), "
            f"{len(units)} units in {units.group.nunique()} groups"
            + (f" (+{len(reserves)} reserve)" if len(reserves) else "")
            + f", {len(run.paths)} images from {run.source}, decoder {run.decoder}, {precision}, "
            f"{opts.workers} loader workers")
    all_channels = ({l: model.net.channels[l] for l in model.net.layer_names if any(l in v for v in groups.values())}
                    if ex.save_activations and not ex.activations_from else None)
    if ex.activations_from:
        t0 = time.perf_counter()
        lists, skipped, converted = lists_from_saved(Path(ex.activations_from), run.paths, run.pp, model, ex,
                                                      candidates, opts.keep)
        # saved post-ReLU activations cannot break ties at 0
        return _PassResult(lists, skipped, converted, time.perf_counter() - t0, len(run.paths), None, opts,
                           precision, all_channels)
    fingerprint = pass_fingerprint(paths=sha256_json(run.paths), units=candidates.to_dict("list"), pp=run.pp.to_dict(),
                                   opts=vars(opts) | {"checkpoint_every_s": None, "workers": None, "batch_size": None},
                                   model=model.name, weights=model.weights, world=info.world_size, rank=info.rank,
                                   all_channels=all_channels, activations_dtype=ex.activations_dtype)
    res = run_pass(model.net, run.paths, D.shard(list(range(len(run.paths))), info), candidates, run.pp, opts,
                   run.device, checkpoint_path=run.work / f"pass_rank{info.rank}.pt", resume=cfg.run.resume,
                   fingerprint=fingerprint, progress=cfg.run.progress and info.is_main,
                   activations_path=run.work / f"activations_rank{info.rank}.npy" if all_channels else None,
                   all_channels=all_channels, activations_dtype=ex.activations_dtype)
    lists = D.merge_across_ranks(res.lists.to("cpu"), info)
    gathered = D.gather_objects({"skipped": res.skipped, "converted": res.converted, "n": res.n_seen,
                                 "seconds": res.seconds, "zeros": res.zero_counts}, info)
    return _PassResult(lists, sorted(s for g in gathered for s in g["skipped"]),
                       sorted(s for g in gathered for s in g["converted"]), max(g["seconds"] for g in gathered),
                       sum(g["n"] for g in gathered),
                       sum(g["zeros"] for g in gathered) if ex.relu == "post" else None, opts, precision, all_channels)


def _exact_pass(run: _Run, pas: _PassResult) -> bool:
    """The pass scored exactly the PIL crops in fp32 (no re-scoring needed); saved activations are float16."""
    return pas.precision == "fp32" and run.decoder == "pil" and not run.cfg.exemplars.activations_from


def _choose_natural(run: _Run, pas: _PassResult, candidates: pd.DataFrame) -> tuple[pd.DataFrame, dict | None]:
    """Rank 0: re-score the candidate images in fp32 where the pass was not exact, choose each unit's
    exemplars, break and count bottom ties; returns the natural rows (files not written yet)."""
    ex, paths = run.cfg.exemplars, run.paths
    res_lists = pas.lists.result()
    cand = sorted({int(i) for side in res_lists.values() for i in side[1].flatten() if int(i) != EMPTY_INDEX})
    exact = _exact_pass(run, pas)
    # hashes only for near-duplicate skipping
    values, hashes = rescore(run.model.net, paths, cand, candidates, run.pp, ex.statistic, ex.relu, run.device,
                             run.cfg.collection.batch_size, with_values=not exact,
                             with_hashes=ex.dedupe_hamming >= 0, workers=pas.opts.workers)
    natural = choose_exemplars(pas.lists, None if exact else values, hashes, candidates, ex.k + ex.spares,
                               ex.dedupe_hamming)
    bottom_ties = _bottom_ties(natural, pas.zero_counts, candidates, pas.n_seen - len(pas.skipped), ex.relu)
    if bottom_ties and bottom_ties["warning"]:
        run.warn(bottom_ties["warning"])
    natural["file"] = [image_relpath(u, k, r) for u, k, r in zip(natural.unit_id, natural.kind, natural["rank"])]
    natural["source"] = [_relative_source(paths[i], run.root) for i in natural.image_index]
    natural["spare"] = (natural["rank"] >= ex.k).astype(int)  # 0/1 like the contract booleans
    n_changed = int((natural.activation != natural.pass_activation).sum())
    if natural.attrs["boundary"] and not exact:
        run.warn(f"the last of the {pas.opts.keep} candidates was chosen for {len(natural.attrs['boundary'])} unit "
                 f"side(s) (e.g. {natural.attrs['boundary'][0]}): the fp32 ranking may reach beyond the "
                 f"candidates there; run again with a larger --margin (now {ex.resolved_margin})")
    run.say(f"exemplars: {len(natural)} chosen from {len(cand)} candidates" + (
        "" if exact else f"; fp32 re-scoring changed {n_changed} values of the {pas.precision} pass"))
    return natural, bottom_ties


def _write_final_crops(run: _Run, natural: pd.DataFrame, units: pd.DataFrame, bottom_ties: dict | None,
                       replaced: list[dict]) -> pd.DataFrame:
    """The exemplar crops of the final units (reserves that were not needed are dropped)."""
    keep = set(units.unit_id)
    natural = natural[natural.unit_id.isin(keep)].reset_index(drop=True)
    if bottom_ties and bottom_ties.get("counts"):
        bottom_ties["counts"] = {u: c for u, c in bottom_ties["counts"].items() if u in keep}
    write_crops(natural, run.paths, run.pp, run.out)
    overlap = exemplar_overlap_note(natural, run.cfg.exemplars.k)
    if overlap:
        run.warn(overlap)
    if replaced:
        run.warn(f"{len(replaced)} unit(s) replaced by a reserve unit of the same layer because their feature "
                 f"visualizations did not beat their best natural exemplar: "
                 + ", ".join(f"{r['unit_id']} -> {r['replaced_by']}" for r in replaced[:5])
                 + (" ..." if len(replaced) > 5 else "") + " (manifest: parameters.sampling.replaced)", label="NOTE")
    return natural


def _write_tables(run: _Run, pas: _PassResult, units: pd.DataFrame, natural: pd.DataFrame,
                  fv_rows: pd.DataFrame | None, val: pd.DataFrame | None):
    """The set's extra tables: skipped/converted/collection files, the path-similarity check (adds
    columns to the validation table), validation.csv, saved activations. Returns
    ``(extra file names, validation table, path-similarity parameters)``."""
    out, paths, root = run.out, run.paths, run.root
    extra = [SKIPPED_TABLE, CONVERTED_TABLE, COLLECTION_TABLE]
    pd.DataFrame([(i, _relative_source(paths[i], root), r) for i, r in pas.skipped],
                 columns=["index", "source", "reason"]).to_csv(out / SKIPPED_TABLE, index=False)
    pd.DataFrame([(i, _relative_source(paths[i], root), r) for i, r in pas.converted],
                 columns=["index", "source", "conversion"]).to_csv(out / CONVERTED_TABLE, index=False)
    pd.DataFrame({"index": range(len(paths)), "source": [_relative_source(p, root) for p in paths]}).to_csv(
        out / COLLECTION_TABLE, index=False)
    ps_files, ps_params = [], {"skipped": "no feature visualizations" if val is None else "disabled"}
    if val is not None and run.cfg.path_similarity.enabled:  # Geirhos et al. 2023 check
        from stimuli_gen.path_similarity_set import check_at_generation, options_from_config

        val, ps_files, ps_params = check_at_generation(out, run.model, units, natural, fv_rows, val, paths, run.pp,
                                                       run.device, options_from_config(run.cfg),
                                                       run.cfg.run.progress, run.say)
    extra += ps_files
    if val is not None:
        val.to_csv(out / VALIDATION_TABLE, index=False)
        extra.append(VALIDATION_TABLE)
    if pas.all_channels:
        ex = run.cfg.exemplars
        extra += combine_activations(out, run.work, pas.all_channels, len(paths), run.info.world_size,
                                      ex.activations_dtype)
        problem = activation_range_problem(out / "activations.npy")
        if problem:
            run.warn(problem)
    return extra, val, ps_params


def _manifest(run: _Run, pas: _PassResult, groups: dict, units: pd.DataFrame, bottom_ties: dict | None,
              replaced: list[dict], fv_params: dict | None, ps_params: dict, extra: list[str]) -> dict:
    """Everything that made the set (contracts/stimulus_set.py writes it with the tables' hashes)."""
    cfg, model = run.cfg, run.model
    ex = cfg.exemplars
    explicit = bool(cfg.units.explicit or cfg.units.file)
    seeds = {"run": cfg.run.seed, "units": _unit_seed(cfg), "weights": model.weights.get("seed"),
             "feature_vis": fv_params.get("seed", cfg.run.seed) if fv_params else None}
    parameters = {
        "config": cfg.to_dict(),
        "collection": {"source": str(run.source), "root": str(run.root), "n_listed": len(run.paths),
                       "n_used": pas.n_seen - len(pas.skipped), "n_skipped": len(pas.skipped),
                       "n_converted": len(pas.converted), "paths_sha256": sha256_json(run.paths),
                       "preprocess": run.pp.to_dict(), "decoder": run.decoder},
        "exemplars": {"statistic": ex.statistic, "relu": ex.relu, "k": ex.k, "spares": ex.spares,
                      "margin": ex.resolved_margin,
                      "candidates_per_side": pas.opts.keep, "pass_precision": pas.precision,
                      "final_precision": ("fp32 (the pass itself)" if _exact_pass(run, pas)
                                          else "fp32 (candidates re-scored, TF32 off)"),
                      "channels_last": ex.channels_last, "dedupe_hamming": ex.dedupe_hamming,
                      "tie_break": (POST_TIE_RULE if ex.relu == "post" else "equal activations: lower image index first"),
                      "bottom_ties": bottom_ties,
                      "save_activations": ex.save_activations, "activations_from": ex.activations_from},
        "sampling": {"per_group": cfg.units.per_group, "explicit": cfg.units.explicit, "file": cfg.units.file,
                     "method": cfg.units.method if not explicit else "explicit list",
                     "rule": SAMPLING_RULES.get(cfg.units.method) if not explicit else None,
                     "reserve_per_unit": cfg.units.reserve, "reserve_rule": RESERVE_RULE if cfg.units.reserve else None,
                     "replaced": replaced,
                     "units_per_layer": {g: {str(k): int(v) for k, v in units[units.group == g].groupby(
                         "layer", sort=False).size().items()} for g in groups}},
        "feature_vis": fv_params if fv_params is not None else {"per_unit": 0, "skipped": True},
        "path_similarity": ps_params,
        "distributed": {"world_size": run.info.world_size, "sharding": "strided by rank"},
        "device": str(run.device),
    }
    return {"set_id": run.out.name, "model": {"name": model.name, "weights": model.weights},
            "random_weights": model.random_weights, "manipulation": getattr(model, "manipulation", None),
            "layer_groups": groups, "parameters": parameters, "seeds": seeds,
            "software": software_versions(["torch", "torchvision", "scikit-image", "pillow"]),
            "notes": run.notes, "extra_files": extra}


def _summary(run: _Run, pas: _PassResult, val: pd.DataFrame | None, total: float) -> None:
    say, out = run.say, run.out
    say(f"summary: {pas.n_seen} images read in the pass ({len(pas.skipped)} skipped, {len(pas.converted)} converted) "
        f"in {pas.seconds:.1f} s = {pas.n_seen / max(pas.seconds, 1e-9):.1f} images/s; total {total:.1f} s; "
        f"set written to {out}")
    if pas.skipped:
        say(f"skipped files ({len(pas.skipped)}), see {out / SKIPPED_TABLE}:")
        for i, r in pas.skipped[:10]:
            say(f"  {run.paths[i]}: {r}")
    if val is not None:
        try:
            from stimuli_gen.render import summarize_validation

            say(summarize_validation(val))
        except ImportError:
            say(val.describe(include="all").to_string())
        say(f"  per unit: {out / VALIDATION_TABLE}")
    if run.notes:
        say(f"{RANDOM_BANNER}\nNOTES: {' '.join(run.notes)}\n{RANDOM_BANNER}", file=sys.stderr)


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


def _concat_keeping_ints(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate image rows of different kinds. Integer columns of one kind (image_index, the
    renderer's 64-bit seeds) would turn into floats next to the other kind's empty cells and lose
    digits; they become nullable integers instead."""
    ints = {c for f in frames for c in f.columns if pd.api.types.is_integer_dtype(f[c]) or pd.api.types.is_bool_dtype(f[c])}
    frames = [f.astype({c: "Int64" for c in ints if c in f.columns}) for f in frames]
    return pd.concat(frames, ignore_index=True)


