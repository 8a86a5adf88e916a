"""Make a manipulated model: every check first, then the named stages, then one atomic write.

``make_silent(opts)``: base network -> silent filters (seeded) -> natural maxima by streaming the
collection's bias images as the exemplar pass streams images -> biases -> verification (bias
images, held-out images, feature visualizations) -> ``weights.pt`` + ``manipulation.json`` +
verification report.
"""

from __future__ import annotations

import datetime as _dt
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from contracts.common import sha256_json, software_versions
from stimuli_gen.collection import ImageDataset, Preprocess, list_collection, make_loader, prefetch_to_device
from stimuli_gen.manipulate import silent as S
from stimuli_gen.manipulate import store
from stimuli_gen.manipulate import verify as V
from stimuli_gen.models import MODEL_NAMES, RANDOM_WEIGHTS_WARNING, load_model


@dataclass(kw_only=True)
class RunOptions:
    """What every manipulate command takes: where to write, the natural images, the base network, the seed."""

    out: str
    collection: str = "builtin"
    builtin_dir: str = "data/collections/builtin"
    model: str = "torchvision_googlenet"
    weights: str = "pretrained"
    seed: int = 0
    holdout_fraction: float = 0.2
    min_images: int = 50  # fewest natural images allowed to set the biases / train the classifier
    batch_size: int = 32
    device: str = "cpu"
    overwrite: bool = False
    progress: bool = True


@dataclass(kw_only=True)
class CommonOptions(RunOptions):
    """A manipulation of chosen units (silent units, fooling circuit) and its verification report."""

    units: list[str]  # "layer:channel"
    resize: int = 256
    crop: int = 224
    workers: int = 0
    fv_per_unit: int = 2
    fv_steps: int = 128
    fv_size: int = 128
    fv_lr: float | None = None  # Adam's lr of those visualizations; None: Lucid's (0.05)
    labels: str | None = None  # "folders" (one folder per class), a CSV path,label, or None: no accuracy
    class_index: str | None = None  # CSV label,index: the logit of each label (default: sorted labels)


@dataclass(kw_only=True)
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
    """Seeded split of collection indices into (bias / training images, held-out images), each sorted.
    ``holdout_fraction = 0``: every image sets the biases, none is held out (a control whose stimulus set
    is made from this same collection needs that: a held-out image may trip a silent filter, and then
    the manipulated set's exemplars are not the original's)."""
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {holdout_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    k = 0 if holdout_fraction == 0 else max(1, int(round(holdout_fraction * n)))
    return sorted(int(i) for i in perm[k:]), sorted(int(i) for i in perm[:k])


def stream(paths: list[str], indices: list[int], pp: Preprocess, batch_size: int, workers: int,
           device: torch.device, skipped: list, targets: dict[int, int] | None = None) -> Iterator:
    """Batches in [0, 1] of the images ``indices``, decoded as the exemplar pass decodes them;
    unreadable files are appended to ``skipped`` (index, reason). With ``targets`` (collection index ->
    class logit) each batch comes as ``(images, logit index per image)``."""
    loader = make_loader(ImageDataset(paths, indices, pp, "pil"), batch_size, workers, device)
    for batch, crops, index in prefetch_to_device(loader, paths, pp, device):
        skipped += batch.skipped
        if len(index):
            x = crops.float().div_(255.0)
            yield x if targets is None else (x, torch.tensor([targets[int(i)] for i in index], device=x.device))


def label_targets(opts: CommonOptions, paths: list[str], source: str, n_logits: int) -> tuple[dict[int, int] | None, dict | None]:
    """``--labels``: collection index -> class logit for every labelled image, and what the report says about it.
    ``folders``: the image's first folder under the collection is its class (ImageNet val's synset layout);
    a CSV: columns path,label (paths relative to the CSV). Logits: ``--class-index`` or the sorted labels."""
    if not opts.labels:
        return None, None
    from stimuli_gen.path_similarity_classes import class_indices, labelled_collection

    df = labelled_collection(source if opts.labels == "folders" else None, None if opts.labels == "folders" else opts.labels)
    by_path = {str(Path(p).resolve()): lab for p, lab in zip(df.path, df.label)}
    mapping = class_indices(sorted(set(df.label)), opts.class_index, opts.model, n_logits)
    targets = {i: mapping[by_path[str(Path(p).resolve())]] for i, p in enumerate(paths) if str(Path(p).resolve()) in by_path}
    if not targets:
        raise ValueError(f"--labels {opts.labels}: no image of the collection {source} has a label")
    return targets, {"labels": opts.labels, "class_index": opts.class_index or "position of the label in sorted order",
                     "n_labelled": len(targets), "n_classes": len(set(df.label))}


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
    if opts.model not in MODEL_NAMES:
        raise ValueError(f"unknown model {opts.model!r}; choose one of {MODEL_NAMES}")


def _checked_base(opts: CommonOptions):
    """Checks before any work (output folder, model kind, units), then the base network: ``(units, device, base)``."""
    _check_common(opts)
    units = parse_units(opts.units)
    device = torch.device(opts.device)
    weights = _resolved_weights(opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = load_model(opts.model, weights, seed=opts.seed, device=device)
    base.check_units(units)
    return units, device, base


def _resolved_weights(opts) -> str:
    """``auto`` (demos): pretrained when torchvision's cache has the file, else random, as fvmatch-stimuli resolves it."""
    from stimuli_gen.pipeline import resolve_weights

    weights, note = resolve_weights(opts.model, opts.weights)
    if note and opts.progress:
        print(note)
    return weights


def _calibrate_random_base(base, paths, pp) -> None:
    """A random base network gets the BatchNorm re-estimation fvmatch-stimuli gives random networks
    (stimuli_gen/random_net.py) BEFORE it is manipulated: the saved weights then hold those statistics, the
    silent biases are measured on the network that is used, and fvmatch-stimuli does not recalibrate a
    manipulated model (that would move its natural-image responses off the measured maxima)."""
    if base.random_weights:
        from stimuli_gen.random_net import calibrate_on_collection

        calibrate_on_collection(base, paths, pp)


def _visualizations_both(opts, base, net, units, device, trips, say, target=None):
    """Render ``opts.fv_per_unit`` visualizations per unit through the original and the manipulated network
    (Lucid's recipe, same seeds) and compare them; ``(None, None, None)`` when none are asked for."""
    if opts.fv_per_unit <= 0:
        return None, None, None
    from stimuli_gen.render import RenderConfig

    lr = {} if opts.fv_lr is None else {"lr": opts.fv_lr}
    rcfg = RenderConfig.from_preset("lucid", n_vis=opts.fv_per_unit, steps=opts.fv_steps, size=opts.fv_size,
                                    out_size=opts.fv_size, seed=opts.seed, **lr)
    say(f"rendering {opts.fv_per_unit} visualizations per unit through both networks ({opts.fv_steps} steps, "
        f"{opts.fv_size} px, lr {rcfg.lr})")
    fv_orig, fv_manip = V.render_pair(base.net, net, units, rcfg, device)
    fv = {"parameters": {"n_vis": rcfg.n_vis, "steps": rcfg.steps, "size": rcfg.size, "lr": rcfg.lr,
                         "preset": rcfg.preset, "seed": rcfg.seed},
          "units": V.fv_check(base.net, net, units, fv_orig, fv_manip, rcfg.n_vis, trips, target)}
    return fv_orig, fv_manip, fv


def make_silent(opts: SilentOptions) -> Path:
    """Build, verify and save a silent-units model; returns its folder."""
    # ---- checks before any work ----
    units, device, base = _checked_base(opts)
    paths, source = _collection(opts)
    bias_idx, held_idx = split_collection(len(paths), opts.holdout_fraction, opts.seed)
    if len(bias_idx) < opts.min_images:
        raise ValueError(f"collection {source} is too small to set the biases: {len(bias_idx)} of its {len(paths)} "
                         f"images are left after holding out {opts.holdout_fraction:.0%}, at least {opts.min_images} "
                         f"are needed (--min-images)")
    targets, label_info = label_targets(opts, paths, source, base.net.n_classes)
    pp = Preprocess(resize=opts.resize, crop=opts.crop)
    _calibrate_random_base(base, paths, pp)
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
    on_bias = V.natural_check(base.net, net, units, stream(paths, bias_idx, pp, opts.batch_size, opts.workers, device, [],
                                                           targets), trips)
    if not on_bias["bitwise_equal"] or on_bias["n_tripped"]:
        raise RuntimeError(f"silent filters are not silent on the images that set their biases ({on_bias}); nothing written")
    held = V.natural_check(base.net, net, units, stream(paths, held_idx, pp, opts.batch_size, opts.workers, device, [],
                                                        targets), trips)
    fv_orig, fv_manip, fv = _visualizations_both(opts, base, net, units, device, trips, say)

    # ---- description and report, written together ----
    desc = {"kind": "silent_units", "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "base_model": base.name, "base_weights": base.weights, "random_weights": base.random_weights,
            "units": [s.to_dict() for s in specs],
            "parameters": {"lambda": opts.lam, "gain": opts.gain, "margin": opts.margin, "seed": opts.seed,
                           "direction": "seeded Gaussian, projected orthogonal to the unit's filter (BatchNorm folded in "
                                        "where the network has one), same norm",
                           "placement": "parallel to the unit's last conv (+BN) in its inception branch, added before "
                                        "the block's ReLU"},
            "collection": {"source": source, "n_listed": len(paths), "paths_sha256": sha256_json(paths),
                           "bias_images": n_bias, "held_out_images": held["n_images"], "skipped": len(skipped),
                           "holdout_fraction": opts.holdout_fraction, "split_seed": opts.seed,
                           "preprocess": pp.to_dict()},
            "software": software_versions(["torch", "torchvision"]), "notes": notes}
    report = {"kind": "silent_units", "base_model": base.name, "base_identity": base.weights["identity"],
              "random_weights": base.random_weights, "units": [f"{l}:{c}" for l, c in units],
              "bias_images": on_bias, "held_out": held, "labels": label_info, "feature_vis": fv, "notes": notes}
    folder = store.save(Path(opts.out), net, desc, lambda tmp: V.write_report(tmp, report, fv_orig, fv_manip),
                        overwrite=opts.overwrite)
    say(V.to_markdown(report))
    say(f"manipulated model written to {folder}")
    return folder


# ---- fooling circuit -----------------------------------------------------------------------------------

@dataclass(kw_only=True)
class TrainOptions(RunOptions):
    """``train-classifier``: ``out`` is the classifier file (.pt; a .json description is written next to it)."""

    size: int = 128  # natural crops and visualizations are both shown to the classifier at this size
    min_steps: int = 4
    max_steps: int = 512  # the full recipe
    step_counts: int = 8  # log-spaced between min_steps and max_steps
    vis_per_count: int = 16  # training visualizations rendered per step count (as many again held out)
    layers: list[str] | None = None  # None: the network's first three blocks (inception3a-4a, mixed3a-4a)
    epochs: int = 30
    lr: float = 1e-3


def log_steps(lo: int, hi: int, n: int) -> list[int]:
    """Step counts spread log-evenly from ``lo`` to ``hi`` (as the authors' 4 ... 512)."""
    return sorted({int(round(v)) for v in np.geomspace(lo, hi, n)})


def render_training_visualizations(base, opts: TrainOptions, layers: list[str], n_per_count: int, seed: int) -> torch.Tensor:
    """Visualizations of random units of ``layers`` rendered with fvmatch's batched renderer at each step count."""
    from tqdm.auto import tqdm

    from stimuli_gen.objectives import BatchPlan
    from stimuli_gen.render import RenderConfig, Runtime, fold_batchnorm, optimize_batch

    dev = torch.device(opts.device)
    rng = np.random.default_rng(seed)
    opt_net = fold_batchnorm(base.net.to(dev))
    out = []
    counts = log_steps(opts.min_steps, opts.max_steps, opts.step_counts)
    for steps in tqdm(counts, desc=f"visualizations (seed {seed})", disable=not opts.progress):
        cfg = RenderConfig.from_preset("lucid", n_vis=1, steps=steps, size=opts.size, out_size=opts.size,
                                       seed=int(rng.integers(2**31)))
        drawn = [layers[int(rng.integers(len(layers)))] for _ in range(n_per_count)]
        chans = [int(rng.integers(base.net.channels[l])) for l in drawn]
        plan = BatchPlan(drawn, chans, 1, dev)
        seeds = [int(s) for s in rng.integers(2**62, size=n_per_count)]
        out.append(optimize_batch(opt_net, plan, seeds, cfg, Runtime.resolve(cfg, dev)).images)
    return torch.cat(out)


def train_classifier(opts: TrainOptions) -> dict:
    """Train the natural-vs-visualization classifier; returns (and writes) its description."""
    import json

    from tqdm.auto import tqdm

    from contracts.common import sha256_file, write_json_atomic
    from stimuli_gen.manipulate.fooling import NaturalVsVisClassifier

    out = Path(opts.out)
    if out.exists() and not opts.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = load_model(opts.model, _resolved_weights(opts), seed=opts.seed)
    layers = list(opts.layers or base.net.layer_names[:3])
    for l in layers:
        if l not in base.net.channels:
            raise ValueError(f"unknown layer {l!r} for {base.name}; layers: {list(base.net.layer_names)}")
    paths, source = _collection(opts)  # type: ignore[arg-type]
    if opts.holdout_fraction <= 0:
        raise ValueError("train-classifier needs held-out natural images to measure its accuracy (--holdout-fraction > 0)")
    train_idx, held_idx = split_collection(len(paths), opts.holdout_fraction, opts.seed)
    if len(train_idx) < opts.min_images:
        raise ValueError(f"collection {source} is too small to train the classifier: {len(train_idx)} training images, "
                         f"at least {opts.min_images} needed (--min-images)")
    pp = Preprocess(resize=opts.size, crop=opts.size)
    _calibrate_random_base(base, paths, pp)
    dev = torch.device(opts.device)
    nat_train = torch.cat(list(stream(paths, train_idx, pp, 64, 0, dev, [])))
    nat_held = torch.cat(list(stream(paths, held_idx, pp, 64, 0, dev, [])))
    vis_train = render_training_visualizations(base, opts, layers, opts.vis_per_count, opts.seed)
    vis_held = render_training_visualizations(base, opts, layers, max(1, opts.vis_per_count // 2), opts.seed + 1)

    torch.manual_seed(opts.seed)
    clf = NaturalVsVisClassifier().to(dev)
    x = torch.cat([nat_train, vis_train])
    y = torch.cat([torch.zeros(len(nat_train)), torch.ones(len(vis_train))]).to(dev)
    w = torch.where(y > 0, len(nat_train) / max(len(vis_train), 1), 1.0)  # balance the two classes
    opt = torch.optim.Adam(clf.parameters(), lr=opts.lr)
    g = torch.Generator().manual_seed(opts.seed)
    for _ in tqdm(range(opts.epochs), desc="training", disable=not opts.progress):
        for b in torch.randperm(len(x), generator=g).split(opts.batch_size):
            xb = x[b]
            flip = torch.rand(len(b), generator=g) < 0.5  # horizontal flips
            xb = torch.where(flip[:, None, None, None].to(dev), xb.flip(-1), xb)
            loss = F_bce(clf(xb), y[b], w[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc_nat = float((clf(nat_held) <= 0).float().mean())
        acc_vis = float((clf(vis_held) > 0).float().mean())
    n_held = len(nat_held) + len(vis_held)
    desc = {"architecture": "6 x (conv3x3 16 ch + ReLU), stride 2 from the 2nd, global mean, linear; logit > 0 = visualization",
            "base_model": base.name, "base_weights": base.weights, "random_weights": base.random_weights,
            "collection": {"source": source, "n_train": len(nat_train), "n_held_out": len(nat_held)},
            "visualizations": {"step_counts": log_steps(opts.min_steps, opts.max_steps, opts.step_counts),
                               "per_count_train": opts.vis_per_count, "per_count_held_out": max(1, opts.vis_per_count // 2),
                               "layers": layers, "size": opts.size, "renderer": "stimuli_gen.render.optimize_batch (lucid preset)"},
            "training": {"epochs": opts.epochs, "batch_size": opts.batch_size, "lr": opts.lr, "seed": opts.seed},
            "held_out_accuracy": (acc_nat * len(nat_held) + acc_vis * len(vis_held)) / n_held,
            "held_out_accuracy_natural": acc_nat, "held_out_accuracy_visualization": acc_vis}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(clf.state_dict(), tmp)
    tmp.replace(out)
    desc["sha256"] = sha256_file(out)
    write_json_atomic(out.with_suffix(".json"), desc)
    if opts.progress:
        print(json.dumps({k: desc[k] for k in ("held_out_accuracy", "held_out_accuracy_natural",
                                                "held_out_accuracy_visualization")}, indent=1))
    return desc


def F_bce(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=w)


@dataclass(kw_only=True)
class FoolingOptions(CommonOptions):
    classifier: str = ""  # a file written by train_classifier
    target: str | None = None  # picture; None: scikit-image's astronaut
    target_size: int = 224
    template_gain: float = 1.0


def make_fooling(opts: FoolingOptions) -> Path:
    """Build, verify and save a fooling-circuit model; returns its folder."""
    import copy
    import json

    from stimuli_gen.manipulate import fooling as FO

    # ---- checks before any work ----
    units, device, base = _checked_base(opts)
    target, target_what = FO.load_target(opts.target, opts.target_size)
    cpath = Path(opts.classifier)
    if not cpath.is_file():
        raise FileNotFoundError(f"classifier not found: {cpath} (train one with the train-classifier command)")
    clf = FO.NaturalVsVisClassifier()
    try:
        clf.load_state_dict(torch.load(cpath, map_location="cpu", weights_only=True))
    except Exception as e:
        raise ValueError(f"{cpath}: not a natural-vs-visualization classifier ({type(e).__name__}: {e})") from None
    cdesc_path = cpath.with_suffix(".json")
    cdesc = json.loads(cdesc_path.read_text()) if cdesc_path.is_file() else {}
    paths, source = _collection(opts)
    _, held_idx = split_collection(len(paths), opts.holdout_fraction, opts.seed)
    targets, label_info = label_targets(opts, paths, source, base.net.n_classes)
    pp = Preprocess(resize=opts.resize, crop=opts.crop)
    _calibrate_random_base(base, paths, pp)
    notes = [RANDOM_WEIGHTS_WARNING] if base.random_weights else []
    say = print if opts.progress else (lambda *a, **k: None)

    # ---- the circuit ----
    net = FO.fooling_network(copy.deepcopy(base.net), units, target, clf, opts.template_gain).eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)

    # ---- verification (held-out natural images: the classifier's own held-out split) ----
    trips = lambda x: FO.fooling_trips(net, x)  # noqa: E731
    held = V.natural_check(base.net, net, units, stream(paths, held_idx, pp, opts.batch_size, opts.workers, device, [],
                                                        targets), trips)
    fv_orig, fv_manip, fv = _visualizations_both(opts, base, net, units, device, trips, say, target)
    desc = {"kind": "fooling_circuit", "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "base_model": base.name, "base_weights": base.weights, "random_weights": base.random_weights,
            "units": [{"layer": l, "channel": c} for l, c in units],
            "parameters": {"target": target_what, "target_size": opts.target_size, "template_gain": opts.template_gain,
                           "switch": "pre-ReLU unit = template t if classifier logit > 0 else original h (no gradient through the classifier)",
                           "classifier_file": str(cpath.resolve()), "classifier": cdesc},
            "collection": {"source": source, "n_listed": len(paths), "paths_sha256": sha256_json(paths),
                           "held_out_images": held["n_images"], "holdout_fraction": opts.holdout_fraction,
                           "split_seed": opts.seed, "preprocess": pp.to_dict()},
            "software": software_versions(["torch", "torchvision"]), "notes": notes}
    report = {"kind": "fooling_circuit", "base_model": base.name, "base_identity": base.weights["identity"],
              "random_weights": base.random_weights, "units": [f"{l}:{c}" for l, c in units],
              "bias_images": None, "held_out": held, "labels": label_info, "feature_vis": fv, "notes": notes,
              "classifier": {"file": str(cpath.resolve()), "sha256": cdesc.get("sha256"),
                             **{k: cdesc[k] for k in ("held_out_accuracy", "held_out_accuracy_natural",
                                                      "held_out_accuracy_visualization") if k in cdesc}}}
    folder = store.save(Path(opts.out), net, desc,
                        lambda tmp: V.write_report(tmp, report, fv_orig, fv_manip,
                                                   torch.nn.functional.interpolate(target[None], size=(opts.fv_size,) * 2,
                                                                                   mode="bilinear", antialias=True)[0]),
                        overwrite=opts.overwrite)
    say(V.to_markdown(report))
    say(f"manipulated model written to {folder}")
    return folder
