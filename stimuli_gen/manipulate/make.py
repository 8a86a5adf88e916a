"""Make a manipulated model: every check first, then the named stages, then one atomic write.

``make_silent(opts)``: base network -> silent filters (seeded) -> natural maxima by streaming the
collection's bias images as the exemplar pass streams images -> biases -> verification (bias
images, held-out images, feature visualizations) -> ``weights.pt`` + ``manipulation.json`` +
verification report.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from contracts.common import sha256_json, software_versions
from stimuli_gen.collection import ImageDataset, Preprocess, list_collection, make_loader, prefetch_to_device
from stimuli_gen.manipulate import silent as S
from stimuli_gen.manipulate import store
from stimuli_gen.manipulate import verify as V
from stimuli_gen.models import RANDOM_WEIGHTS_WARNING, load_model


@dataclass
class CommonOptions:
    out: str
    units: list[str]  # "layer:channel"
    collection: str = "builtin"
    builtin_dir: str = "data/collections/builtin"
    model: str = "torchvision_googlenet"
    weights: str = "pretrained"
    seed: int = 0
    holdout_fraction: float = 0.2
    min_images: int = 50  # fewest natural images allowed to set the biases / train the classifier
    resize: int = 256
    crop: int = 224
    batch_size: int = 32
    workers: int = 0
    device: str = "cpu"
    fv_per_unit: int = 2
    fv_steps: int = 128
    fv_size: int = 128
    overwrite: bool = False
    progress: bool = True


@dataclass
class SilentOptions(CommonOptions):
    lam: float = S.DEFAULT_LAMBDA
    gain: float = S.DEFAULT_GAIN
    margin: float = S.DEFAULT_MARGIN


def parse_units(specs: list[str]) -> list[tuple[str, int]]:
    out = []
    for spec in specs:
        parts = spec.strip().split(":")
        if len(parts) != 2 or not parts[1].strip().lstrip("-").isdigit():
            raise ValueError(f"unit {spec!r}: expected 'layer:channel', e.g. inception3a:5")
        out.append((parts[0].strip(), int(parts[1])))
    if not out:
        raise ValueError("no units given (--units layer:channel,...)")
    return out


def split_collection(n: int, holdout_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of collection indices into (bias / training images, held-out images), each sorted."""
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {holdout_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    k = max(1, int(round(holdout_fraction * n)))
    return sorted(int(i) for i in perm[k:]), sorted(int(i) for i in perm[:k])


def stream(paths: list[str], indices: list[int], pp: Preprocess, batch_size: int, workers: int,
           device: torch.device, skipped: list) -> Iterator[torch.Tensor]:
    """Batches in [0, 1] of the images ``indices``, decoded as the exemplar pass decodes them;
    unreadable files are appended to ``skipped`` (index, reason)."""
    loader = make_loader(ImageDataset(paths, indices, pp, "pil"), batch_size, workers, device)
    for batch, crops, index in prefetch_to_device(loader, paths, pp, device):
        skipped += batch.skipped
        if len(index):
            yield crops.float().div_(255.0)


def _collection(opts: CommonOptions) -> tuple[list[str], str]:
    source = opts.collection
    if source == "builtin":
        from stimuli_gen.builtin_collection import write_builtin_collection

        write_builtin_collection(opts.builtin_dir)
        source = opts.builtin_dir
    paths, _ = list_collection(source)
    return paths, str(source)


def _check_common(opts: CommonOptions) -> None:
    out = Path(opts.out)
    if out.exists() and not opts.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if opts.model != "torchvision_googlenet":
        raise ValueError(f"manipulation of {opts.model} is not implemented yet (torchvision_googlenet only)")


def make_silent(opts: SilentOptions) -> Path:
    """Build, verify and save a silent-units model; returns its folder."""
    # ---- checks before any work ----
    _check_common(opts)
    units = parse_units(opts.units)
    device = torch.device(opts.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = load_model(opts.model, opts.weights, seed=opts.seed, device=device)
    base.check_units(units)
    paths, source = _collection(opts)
    bias_idx, held_idx = split_collection(len(paths), opts.holdout_fraction, opts.seed)
    if len(bias_idx) < opts.min_images:
        raise ValueError(f"collection {source} is too small to set the biases: {len(bias_idx)} of its {len(paths)} "
                         f"images are left after holding out {opts.holdout_fraction:.0%}, at least {opts.min_images} "
                         f"are needed (--min-images)")
    pp = Preprocess(resize=opts.resize, crop=opts.crop)
    notes = [RANDOM_WEIGHTS_WARNING] if base.random_weights else []
    say = print if opts.progress else (lambda *a, **k: None)

    # ---- silent filters, natural maxima, biases ----
    net, specs = S.add_silent_filters(base.net, units, seed=opts.seed, lam=opts.lam, gain=opts.gain)
    net.to(device)
    skipped: list = []
    say(f"measuring the silent filters' natural maxima on {len(bias_idx)} images of {source}")
    n_bias = S.measure_maxima(net, specs, stream(paths, bias_idx, pp, opts.batch_size, opts.workers, device, skipped))
    if n_bias < opts.min_images:
        raise ValueError(f"collection {source}: only {n_bias} readable images to set the biases "
                         f"({len(skipped)} skipped), at least {opts.min_images} needed")
    S.set_biases(net, specs, opts.margin)

    # ---- verification ----
    trips = lambda x: S.silent_trips(net, x, [S.deepest(net, specs)])  # noqa: E731
    say("verifying on the bias images and the held-out images")
    on_bias = V.natural_check(base.net, net, units, stream(paths, bias_idx, pp, opts.batch_size, opts.workers, device, []), trips)
    if not on_bias["bitwise_equal"] or on_bias["n_tripped"]:
        raise RuntimeError(f"silent filters are not silent on the images that set their biases ({on_bias}); nothing written")
    held = V.natural_check(base.net, net, units, stream(paths, held_idx, pp, opts.batch_size, opts.workers, device, []), trips)
    fv_orig = fv_manip = None
    fv = None
    if opts.fv_per_unit > 0:
        say(f"rendering {opts.fv_per_unit} visualizations per unit through both networks ({opts.fv_steps} steps, {opts.fv_size} px)")
        from stimuli_gen.render import RenderConfig

        rcfg = RenderConfig.from_preset("lucid", n_vis=opts.fv_per_unit, steps=opts.fv_steps, size=opts.fv_size,
                                        out_size=opts.fv_size, seed=opts.seed)
        fv_orig, fv_manip = V.render_pair(base.net, net, units, rcfg, device)
        fv = {"parameters": {"n_vis": rcfg.n_vis, "steps": rcfg.steps, "size": rcfg.size, "preset": rcfg.preset,
                             "seed": rcfg.seed},
              "units": V.fv_check(base.net, net, units, fv_orig, fv_manip, rcfg.n_vis, trips)}

    # ---- description and report, written together ----
    desc = {"kind": "silent_units", "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "base_model": base.name, "base_weights": base.weights, "random_weights": base.random_weights,
            "units": [s.to_dict() for s in specs],
            "parameters": {"lambda": opts.lam, "gain": opts.gain, "margin": opts.margin, "seed": opts.seed,
                           "direction": "seeded Gaussian, projected orthogonal to the BatchNorm-folded filter, same norm",
                           "placement": "parallel to the unit's last conv+BN in its inception branch, added before the block's ReLU"},
            "collection": {"source": source, "n_listed": len(paths), "paths_sha256": sha256_json(paths),
                           "bias_images": n_bias, "held_out_images": held["n_images"], "skipped": len(skipped),
                           "holdout_fraction": opts.holdout_fraction, "split_seed": opts.seed,
                           "preprocess": pp.to_dict()},
            "software": software_versions(["torch", "torchvision"]), "notes": notes}
    report = {"kind": "silent_units", "base_model": base.name, "base_identity": base.weights["identity"],
              "random_weights": base.random_weights, "units": [f"{l}:{c}" for l, c in units],
              "bias_images": on_bias, "held_out": held, "feature_vis": fv, "notes": notes}
    folder = store.save(Path(opts.out), net, desc, lambda tmp: V.write_report(tmp, report, fv_orig, fv_manip),
                        overwrite=opts.overwrite)
    say(V.to_markdown(report))
    say(f"manipulated model written to {folder}")
    return folder
