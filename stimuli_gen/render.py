"""Feature visualizations of many units at once: Lucid's recipe, batched for the GPU.

One batch element per (unit, visualization); a batch holds whole units (a unit's visualizations are
coupled by the diversity term) of any layers, and the network runs only to the deepest layer in
the batch. Every image has its own seed (recorded), which draws its initial spectrum and then all
its transforms, and every term of the loss is per unit, so a unit's images are the same alone or in
any batch (up to float rounding). On CUDA the network runs under bf16 autocast in channels_last
memory (spectrum, Adam state, FFT, transforms and loss stay float32), optionally compiled.

Where the speed comes from (notes: ``shared/notes/feature-visualization.md``): the batch; truncation
(units sorted by depth, batches stop at their deepest layer); frozen weights (input gradients only);
eval BatchNorm folded into the convs (``fold_batchnorm``); per-image transforms as one affine
``grid_sample`` at a fixed size (static shapes); bf16/channels_last; ``torch.compile`` with one
graph per deepest layer, used after the redirected-ReLU steps. "auto" compiles a graph only when
at least ``compile_min_steps`` steps stop at that layer: with eager ~12 and compiled ~22 vis/s
(notes, H100, batch 256) a 512-step batch saves ~10 s and a cold compile costs about a minute, so
it pays from about six batches. The CUDA path is written for, but was not run on, a GPU here:
measure with ``bench/render.py --device cuda`` (and ``--compile true``).

Public interface (used by the pipeline)::

    cfg = RenderConfig.from_preset("lucid", n_vis=5, steps=32, size=128)
    rows = render_feature_visualizations(model, units_df, cfg, set_root, device="cuda", checkpoint_dir=...)
    val = validate_feature_vis(rows, natural_rows); print(summarize_validation(val))
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from contracts.common import sha256_file, sha256_json, write_json_atomic
from contracts.stimulus_set import image_relpath
from stimuli_gen import transforms as T
from stimuli_gen.objectives import BatchPlan, redirected_relu, unit_activations, unit_gram_similarity, unit_objectives
from stimuli_gen.param import FourierImage

KIND = "feature_vis"
PRESETS = ("fvmatch", "lucid", "borowski2021")
DIVERSITY_MODES = ("fixed", "search")
CHECKPOINT_STATE = "render_checkpoint.json"
CHECKPOINT_VERSION = 2  # 2: rows carry the diversity weight, target and margin


class CheckpointError(RuntimeError):
    """A render checkpoint is missing, corrupt or from other settings; the message names the file."""


# ---- configuration ----------------------------------------------------------------------------------

@dataclass
class RenderConfig:
    """Every parameter of the feature-visualization recipe (all go into the manifest via ``to_dict``)."""

    preset: str = "lucid"
    n_vis: int = 10  # visualizations per unit (coupled by the diversity term)
    steps: int = 512
    lr: float = 0.05  # Adam
    size: int = 224  # render size (px) of the parameterized image
    out_size: int = 224  # saved PNG size
    crop_to_out: bool = False  # True: centre-crop size -> out_size (Borowski); False: bilinear resize if sizes differ
    decay_power: float = 1.0
    init_sd: float = 0.01
    # transformation robustness (Lucid's standard transforms), one draw per image and step
    pad: int = 12
    pad_value: float = 0.5
    jitter1: int = 8
    scales: tuple[float, ...] = tuple(1 + (i - 5) / 50 for i in range(11))
    angles: tuple[float, ...] = tuple(float(a) for a in range(-10, 11)) + (0.0,) * 5
    jitter2: int = 4
    net_size: int | None = None  # network input size; None = the transforms' field of view (size+2*pad-j1-j2)
    diversity_weight: float = 100.0  # "fixed": every unit's weight; "search": unused (searched per unit)
    # "fixed": Lucid's constant weight (the published presets). "search" (Zimmermann et al. 2023): per
    # unit, the largest weight whose weakest FV still beats the unit's best natural exemplar
    # (stimuli_gen.diversity_search); needs the natural targets.
    diversity: str = "fixed"
    search_rounds: int = 6  # optimizations per unit at most (each one a full run of ``steps``)
    # first diverse weight, in units of |weakest no-diversity FV| / (n_vis - 1): at 1 diversity could cost all
    # the unit reaches; measured, the largest passing weights lay at 1/8-1/4 of that (known-answer units) and
    # below 1/16 (the demo's early units), so starting at 1 spent two optimizations failing
    search_start: float = 0.125
    # diverse FVs must keep this share of the margin by which the no-diversity FVs beat the best natural
    # exemplar (0 = IMI's criterion: just beat it); see stimuli_gen.diversity_search
    search_retain: float = 0.5
    search_factor: float = 4.0  # exponential phase: x or / this factor
    search_ratio: float = 1.5  # binary phase stops when passing and failing weights are this close
    search_floor: float = 1.0 / 64  # below this multiple of the first weight the next try is weight 0
    # Early stopping (0 = off): a unit's images freeze once its objective rose by less than
    # ``plateau_tol`` (relative) between two consecutive windows of ``plateau_window`` steps.
    plateau_window: int = 0
    plateau_tol: float = 0.01
    # Lucid's redirected ReLU gradient is used while global_step <= 16, i.e. for the first 17 steps.
    redirect_relu_steps: int = 17
    relu: str = "pre"  # objective and reported activation: channel before ("pre") or after ("post") the ReLU
    statistic: str = "mean"  # the activation maximised and reported: channel spatial "mean" (Lucid) or "max"
    seed: int = 0
    batch_size: int | None = None  # images per batch (rounded down to whole units); None: from free memory
    max_batch_size: int = 512
    amp: bool | None = None  # bf16 autocast for the network; None: on CUDA only
    channels_last: bool | None = None  # None: on CUDA only
    compile: bool | str = "auto"  # "auto": on CUDA, compile the graph of a deepest layer when enough work stops there
    compile_backend: str = "inductor"
    compile_min_steps: int = 3000  # "auto": steps that must stop at that layer in all (a guess, untuned)
    curve_points: int = 33  # activation curve subsampled to this many steps
    fold_batchnorm: bool = True  # optimize through a copy with eval BatchNorm folded into the convs (same function)

    def __post_init__(self) -> None:
        self.scales = tuple(float(s) for s in self.scales)
        self.angles = tuple(float(a) for a in self.angles)
        problems = []
        for name in ("n_vis", "steps", "size", "out_size", "curve_points", "max_batch_size"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.relu not in ("pre", "post"):
            problems.append(f"relu must be 'pre' or 'post' (got {self.relu!r})")
        if self.statistic not in ("mean", "max"):
            problems.append(f"statistic must be 'mean' or 'max' (got {self.statistic!r})")
        if self.crop_to_out and self.out_size > self.size:
            problems.append(f"crop_to_out needs size >= out_size (got {self.size} < {self.out_size})")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch_size must be >= 1 or None (got {self.batch_size})")
        if self.compile not in (True, False, "auto"):
            problems.append(f"compile must be true, false or 'auto' (got {self.compile!r})")
        if self.diversity not in DIVERSITY_MODES:
            problems.append(f"diversity must be one of {DIVERSITY_MODES} (got {self.diversity!r})")
        if self.search_rounds < 1 or self.search_factor <= 1 or self.search_ratio <= 1 or self.search_start <= 0:
            problems.append("search_rounds >= 1, search_factor > 1, search_ratio > 1 and search_start > 0 needed "
                            f"(got {self.search_rounds}, {self.search_factor}, {self.search_ratio}, {self.search_start})")
        if not 0.0 <= self.search_retain < 1.0:
            problems.append(f"search_retain must be in [0, 1) (got {self.search_retain})")
        if self.plateau_window < 0 or self.plateau_tol < 0:
            problems.append(f"plateau_window and plateau_tol must be >= 0 (got {self.plateau_window}, {self.plateau_tol})")
        if self.lr <= 0:
            problems.append(f"lr must be > 0 (got {self.lr})")
        if problems:
            raise ValueError("feature-visualization config: " + "; ".join(problems))
        self.transform_spec().output_size(self.size)  # raises when the transforms leave no image

    @classmethod
    def from_preset(cls, name: str = "lucid", **overrides: Any) -> "RenderConfig":
        """``lucid``: Olah et al. 2017 defaults, fixed diversity weight 100 (as published). ``borowski2021``:
        the synthetic stimuli of Borowski et al. 2021 (2560 steps at 224+2*16 px, their transforms,
        centre crop to 224; fixed weight 100 as published). ``fvmatch`` (the generator's default): Lucid's
        recipe with the diversity weight searched per unit so that every FV beats the unit's best
        natural exemplar (Zimmermann et al. 2023), and early stopping of each optimization."""
        if name not in PRESETS:
            raise ValueError(f"unknown feature-visualization preset {name!r}; choose one of {PRESETS}")
        known = {f.name for f in dataclasses.fields(cls)} - {"preset"}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown feature-visualization parameter(s) {sorted(unknown)}; known: {sorted(known)}")
        base: dict[str, Any] = {}
        if name == "fvmatch":
            base = dict(diversity="search", plateau_window=max(8, int(overrides.get("steps", 512)) // 16))
        if name == "borowski2021":
            base = dict(steps=2560, size=224 + 2 * 16, out_size=224, crop_to_out=True, pad=0, jitter1=16,
                        scales=(1.0, 0.975, 1.025, 0.95, 1.05), angles=tuple(float(a) for a in range(-5, 6)),
                        jitter2=8)
        return cls(preset=name, **{**base, **overrides})

    def transform_spec(self) -> T.TransformSpec:
        return T.TransformSpec(pad=self.pad, pad_value=self.pad_value, jitter1=self.jitter1, scales=self.scales,
                               angles=self.angles, jitter2=self.jitter2)

    @property
    def field_of_view(self) -> int:
        return self.transform_spec().output_size(self.size)

    @property
    def out_transform(self) -> str:
        if self.size == self.out_size:
            return "none"
        return f"center crop {self.size}->{self.out_size}" if self.crop_to_out else f"bilinear resize {self.size}->{self.out_size}"

    def to_dict(self) -> dict:
        """JSON-able parameters for the manifest (plus the derived sizes and what they mean)."""
        d = dataclasses.asdict(self)
        d["scales"], d["angles"] = list(self.scales), list(self.angles)
        d.update(
            parameterization="Fourier (rfft, ortho, /4), decorrelated colour (Lucid matrix), sigmoid",
            objective=f"channel spatial {self.statistic}; per unit: mean_i a_i - w * sum_{{i!=j}} cos(Gram_i, Gram_j) / n_vis",
            diversity_rule=("w = diversity_weight for every unit (fixed, as published)" if self.diversity == "fixed" else
                            "w searched per unit (Zimmermann et al. 2023): first w = 0; a unit whose weakest FV "
                            "then does not beat its best natural exemplar t is reported (search_status 'failed'); "
                            "otherwise, with a0 the weakest FV at w = 0, the largest w (exponential then binary "
                            "search from search_start * |a0| / (n_vis - 1), at most search_rounds optimizations "
                            "in all) for which the weakest saved FV exceeds t + search_retain * (a0 - t); "
                            "w = 0 when no diverse weight does"),
            early_stopping=("off" if not self.plateau_window else
                            f"a unit freezes when its objective rose < {self.plateau_tol:g} (relative) between two "
                            f"windows of {self.plateau_window} steps"),
            net_input_size=self.net_size or self.field_of_view,
            out_transform=self.out_transform,
            transforms=T.describe(self.transform_spec()),
            seeds="per image: sha256('{seed}/{unit_id}/{rank}') -> initial spectrum, then its transforms",
            precision="network bf16 autocast when amp (Gram matmuls TF32 on CUDA); spectrum, Adam, FFT, "
                      "transforms and loss float32; reported activations float32 on the saved 8-bit PNG",
        )
        return d

    def image_fingerprint(self, model_identity: Any, amp: bool) -> str:
        """What determines the images (not batch size, compilation or memory layout): checkpoints must match it."""
        skip = {"batch_size", "max_batch_size", "compile", "compile_backend", "compile_min_steps", "amp",
                "channels_last"}
        cfg = {k: v for k, v in self.to_dict().items() if k not in skip}
        return sha256_json({"cfg": cfg, "amp_bf16": amp, "model": model_identity})


def image_seed(seed: int, unit_id: str, rank: int) -> int:
    """Seed of one visualization, independent of batching and of the other units."""
    return int(hashlib.sha256(f"{seed}/{unit_id}/{rank}".encode()).hexdigest()[:15], 16)


# ---- runtime choices ------------------------------------------------------------------------------

@dataclass
class Runtime:
    device: torch.device
    amp: bool
    channels_last: bool
    compile: bool | str
    compiled: dict = field(default_factory=dict)

    @classmethod
    def resolve(cls, cfg: RenderConfig, device: torch.device) -> "Runtime":
        cuda = device.type == "cuda"
        return cls(device=device, amp=cuda if cfg.amp is None else bool(cfg.amp),
                   channels_last=cuda if cfg.channels_last is None else bool(cfg.channels_last),
                   compile=(cuda and "auto") if cfg.compile == "auto" else bool(cfg.compile))

    def describe(self) -> dict:
        return {"device": str(self.device), "amp_bf16": self.amp, "channels_last": self.channels_last,
                "compile": self.compile, "compiled_up_to": sorted(k[0] for k in self.compiled)}


def _resolve_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _forward_fn(net, layers: tuple[str, ...], cfg: RenderConfig, rt: Runtime) -> Callable:
    def fwd(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.amp):
            return net.forward_layers(x, layers, relu=cfg.relu)

    return fwd


def fold_batchnorm(net):
    """A frozen copy of ``net`` with every ``conv -> bn`` pair (torchvision's BasicConv2d) folded into
    one conv: the same function with frozen eval-mode statistics, minus a memory-bound op (and its
    backward) per conv. Networks without BatchNorm come back as they are."""
    pairs = [m for m in net.modules() if isinstance(getattr(m, "conv", None), torch.nn.Conv2d)
             and isinstance(getattr(m, "bn", None), torch.nn.BatchNorm2d)]
    if not pairs:
        return net
    folded = copy.deepcopy(net)
    with torch.no_grad():
        for m in folded.modules():
            conv, bn = getattr(m, "conv", None), getattr(m, "bn", None)
            if not (isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)):
                continue
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            new = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                  conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
            new = new.to(conv.weight.device, conv.weight.dtype)
            new.weight.copy_(conv.weight * scale[:, None, None, None])
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            new.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
            m.conv, m.bn = new, torch.nn.Identity()
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded.eval()


def deepest_layer(net, layers) -> str:
    return max(layers, key=net.layer_names.index)


def _network(net, layers: tuple[str, ...], cfg: RenderConfig, rt: Runtime, redirect: bool, work_steps: int) -> Callable:
    """Eager for the redirected-ReLU steps; otherwise compiled when it pays.

    One compiled graph per deepest layer returns every layer up to it (computed anyway), so it
    serves every batch that stops there, whatever mix of layers it holds. "auto" compiles a graph
    only when the batches stopping at that layer run at least ``compile_min_steps`` steps in all.
    """
    if redirect or not rt.compile:
        return _forward_fn(net, layers, cfg, rt)
    deepest = deepest_layer(net, layers)
    key = (deepest, cfg.relu)
    if key not in rt.compiled:
        if rt.compile == "auto" and work_steps < cfg.compile_min_steps:
            return _forward_fn(net, layers, cfg, rt)
        upto = tuple(net.layer_names[:net.layer_names.index(deepest) + 1])
        rt.compiled[key] = torch.compile(_forward_fn(net, upto, cfg, rt), backend=cfg.compile_backend)
    return rt.compiled[key]


# ---- the optimization of one batch ------------------------------------------------------------------

@dataclass
class BatchResult:
    images: torch.Tensor  # B x 3 x size x size, float32 in [0, 1], CPU
    curve_steps: list[int]
    curves: torch.Tensor  # B x len(curve_steps): each image's (transformed) activation at those steps
    steps_run: torch.Tensor | None = None  # B: optimization steps each image took (early stopping)

    def curve(self, i: int) -> list[list[float]]:
        """Image ``i``'s activation curve ``[[step, value], ...]`` up to where it stopped."""
        last = int(self.steps_run[i]) - 1 if self.steps_run is not None else self.curve_steps[-1]
        return [[s, float(f"{float(v):.7g}")] for s, v in zip(self.curve_steps, self.curves[i]) if s <= last]


def curve_steps(steps: int, points: int) -> list[int]:
    return sorted({int(round(s)) for s in np.linspace(0, steps - 1, min(points, steps))})


def plateaued(history: torch.Tensor, window: int, tol: float) -> torch.Tensor:
    """Units (columns of ``history``, steps x U, the per-step objectives) whose mean objective over the
    last ``window`` steps rose by less than ``tol`` (relative) over the ``window`` steps before."""
    recent, before = history[-window:].mean(0), history[-2 * window:-window].mean(0)
    return (recent - before) < tol * recent.abs().clamp_min(1e-12)


@torch.enable_grad()
def optimize_batch(net, plan: BatchPlan, seeds: Sequence[int], cfg: RenderConfig, rt: Runtime,
                   on_step: Callable[[int], None] | None = None, work_steps: int = 0,
                   weights: torch.Tensor | None = None) -> BatchResult:
    """Run Lucid's optimization for the images of ``plan`` (``n_vis`` per unit, in unit order).

    ``weights``: a diversity weight per unit (default: ``cfg.diversity_weight`` for all). With
    ``cfg.plateau_window`` a unit whose objective has plateaued keeps its images from then on (its
    spectrum is restored after each step), so a unit's images do not depend on its batch; the batch
    ends when every unit has stopped.
    """
    if len(seeds) != plan.batch_size:
        raise ValueError(f"{len(seeds)} seeds for a batch of {plan.batch_size} images")
    dev = rt.device
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    image = FourierImage(gens, cfg.size, cfg.decay_power, cfg.init_sd, device=dev)
    spec = cfg.transform_spec()
    tparams = T.stack_params([T.draw_params(spec, cfg.steps, g) for g in gens]).to(dev)  # steps x B x 6
    net_size = cfg.net_size or spec.output_size(cfg.size)
    layers = tuple(sorted(set(plan.layers), key=net.layer_names.index))
    opt = torch.optim.Adam([image.spectrum], lr=cfg.lr)
    w = cfg.diversity_weight if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=dev)
    record = curve_steps(cfg.steps, cfg.curve_points)
    record_set, recorded = set(record), []
    window = cfg.plateau_window
    history: list[torch.Tensor] = []
    stopped = torch.zeros(plan.n_units, dtype=torch.bool)
    steps_run = torch.full((plan.n_units,), cfg.steps, dtype=torch.long)
    held = None
    with _tf32_matmul(rt.device.type == "cuda" and rt.amp):
        for step in range(cfg.steps):
            redirect = step < cfg.redirect_relu_steps
            fwd = _network(net, layers, cfg, rt, redirect, work_steps)
            x = T.transform_batch(image(), tparams[step], spec, net_size)
            if rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with net.relu_replaced(redirected_relu if redirect else F.relu):
                acts = fwd(x)
                per_unit, act = unit_objectives(acts, plan, w, cfg.statistic)
                opt.zero_grad(set_to_none=True)
                (-per_unit.sum()).backward()
            opt.step()
            if held is not None:  # stopped units keep their images
                with torch.no_grad():
                    keep = stopped.to(dev).repeat_interleave(plan.n_vis)
                    image.spectrum[keep] = held[keep]
            if step in record_set:
                recorded.append(act)
            if on_step is not None:
                on_step(step)
            if window:
                history.append(per_unit.detach().float().cpu())
                if step + 1 >= max(2 * window, cfg.redirect_relu_steps + window) and (step + 1) % window == 0:
                    new = plateaued(torch.stack(history), window, cfg.plateau_tol) & ~stopped
                    if new.any():
                        steps_run[new] = step + 1
                        stopped |= new
                        with torch.no_grad():
                            snap = image.spectrum.detach().clone()
                            held = snap if held is None else torch.where(
                                new.to(dev).repeat_interleave(plan.n_vis).view(-1, *[1] * (snap.dim() - 1)), snap, held)
                    if bool(stopped.all()):
                        break
    with torch.no_grad():
        final = image().detach().float().cpu()
    record = record[:len(recorded)]
    return BatchResult(images=final, curve_steps=record, curves=torch.stack(recorded, 1).cpu(),
                       steps_run=steps_run.repeat_interleave(plan.n_vis))


@contextlib.contextmanager
def _tf32_matmul(enabled: bool):
    """TF32 for float32 matmuls (the Gram matrices of the diversity term) while the network runs in
    bf16 anyway; the previous setting is restored."""
    prev = torch.backends.cuda.matmul.allow_tf32
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev


# ---- the diversity search (Zimmermann et al. 2023) ------------------------------------------------

@dataclass
class UnitOutcome:
    """How a unit's images were made: its diversity weight, its target and the search's verdict."""

    weight: float
    target: float  # best natural exemplar's activation (NaN when not given)
    status: str  # "passed" / "failed" (search) or "fixed" (a preset's constant weight)
    tries: list = field(default_factory=list)  # [(weight, weakest FV activation, passed), ...]


def search_batch(opt_net, net, plan: BatchPlan, seeds: Sequence[int], cfg: RenderConfig, rt: Runtime,
                 targets: Sequence[float], on_step: Callable[[int], None] | None = None,
                 work_steps: int = 0) -> tuple[BatchResult, list[UnitOutcome]]:
    """Per unit, the largest diversity weight whose weakest saved FV beats ``targets[u]``
    (``stimuli_gen.diversity_search``). One optimization per round for the units still searching,
    each with its own weight; the images kept are those of the largest passing weight (or, for a
    unit that never passed, those of its best try)."""
    from stimuli_gen import diversity_search as S

    n = plan.n_vis
    states = [S.UnitSearch(float(t), retain=cfg.search_retain, start=cfg.search_start, n_vis=n) for t in targets]
    kept: dict[int, tuple[float, BatchResult, int, float]] = {}  # unit -> (weakest, result, position, weight)
    for _ in range(cfg.search_rounds):
        todo = [(u, S.next_weight(st, cfg.search_factor, cfg.search_ratio, cfg.search_floor))
                for u, st in enumerate(states)]
        todo = [(u, w) for u, w in todo if w is not None]
        if not todo:
            break
        sub = BatchPlan([plan.layers[u] for u, _ in todo], [plan.channels[u] for u, _ in todo], n, rt.device)
        sub_seeds = [seeds[u * n + r] for u, _ in todo for r in range(n)]
        res = optimize_batch(opt_net, sub, sub_seeds, cfg, rt, on_step=on_step, work_steps=work_steps,
                             weights=torch.tensor([w for _, w in todo]))
        acts, _ = measure(net, sub, to_output(res.images, cfg).float() / 255, cfg, rt.device, grams=False)
        weakest = acts.reshape(len(todo), n).amin(1)
        for j, (u, w) in enumerate(todo):
            passed = S.record(states[u], w, float(weakest[j]))
            best = kept.get(u)
            # keep the largest passing weight's images; before any pass, the strongest try's
            if (passed and states[u].lo == w) or (states[u].lo is None and (best is None or weakest[j] > best[0])):
                kept[u] = (float(weakest[j]), res, j, w)
    idx = [kept[u][2] * n + r for u in range(plan.n_units) for r in range(n)]
    images = torch.stack([kept[u][1].images[kept[u][2] * n + r] for u in range(plan.n_units) for r in range(n)])
    steps_run = torch.stack([kept[u][1].steps_run[kept[u][2] * n + r] for u in range(plan.n_units) for r in range(n)])
    record = curve_steps(cfg.steps, cfg.curve_points)
    curves = torch.full((plan.batch_size, len(record)), float("nan"))
    for i, u in enumerate(u for u in range(plan.n_units) for _ in range(n)):
        r_, pos = kept[u][1], idx[i]
        curves[i, :r_.curves.shape[1]] = r_.curves[pos]
    outcomes = [UnitOutcome(kept[u][3], st.target, st.status, st.tries) for u, st in enumerate(states)]
    return BatchResult(images=images, curve_steps=record, curves=curves, steps_run=steps_run), outcomes


# ---- output images and their measurements (pure) -------------------------------------------------

def to_output(images: torch.Tensor, cfg: RenderConfig) -> torch.Tensor:
    """Rendered images -> saved size: centre crop (Borowski) or bilinear resize; quantized to 8 bit."""
    x = images
    if cfg.size != cfg.out_size:
        if cfg.crop_to_out:
            o = (cfg.size - cfg.out_size) // 2
            x = x[..., o:o + cfg.out_size, o:o + cfg.out_size]
        else:
            x = F.interpolate(x, size=(cfg.out_size, cfg.out_size), mode="bilinear", align_corners=False,
                              antialias=cfg.out_size < cfg.size)
    return torch.round(x.clamp(0, 1) * 255).to(torch.uint8)


@torch.no_grad()
def measure(net, plan: BatchPlan, images01: torch.Tensor, cfg: RenderConfig, device: torch.device,
            chunk: int = 64, grams: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Untransformed activation of each image (float32, no autocast) and per-unit Gram similarities."""
    acts_all, sims = [], []
    upc = max(1, chunk // plan.n_vis)  # whole units per chunk
    for u0 in range(0, plan.n_units, upc):
        sub = BatchPlan(plan.layers[u0:u0 + upc], plan.channels[u0:u0 + upc], plan.n_vis, device)
        x = images01[u0 * plan.n_vis:(u0 + sub.n_units) * plan.n_vis].to(device, torch.float32)
        layers = tuple(sorted(set(sub.layers), key=net.layer_names.index))
        acts = net.forward_layers(x, layers, relu=cfg.relu)
        acts_all.append(unit_activations(acts, sub, cfg.statistic).cpu())
        if grams:
            sims.append(unit_gram_similarity(acts, sub).cpu())
    return torch.cat(acts_all), torch.cat(sims) if grams else None


def pixel_std(images_u8: torch.Tensor) -> torch.Tensor:
    """Per-image standard deviation of pixel values in [0, 1]: near 0 for a flat grey image."""
    return (images_u8.float() / 255).flatten(1).std(dim=1)


# ---- batching, checkpoints, I/O -------------------------------------------------------------------

def schedule(units: pd.DataFrame, layer_order: Sequence[str], units_per_batch: int) -> list[pd.DataFrame]:
    """Batches of whole units, sorted by depth so each batch runs the network no further than needed."""
    depth = units["layer"].map({name: i for i, name in enumerate(layer_order)})
    ordered = units.assign(_depth=depth.values).sort_values("_depth", kind="stable").drop(columns="_depth")
    return [ordered.iloc[i:i + units_per_batch] for i in range(0, len(ordered), units_per_batch)]


def auto_batch_size(net, cfg: RenderConfig, rt: Runtime, deepest: str, channel: int = 0) -> int:
    """Images per batch: from free GPU memory (one probe step measures the memory per image).

    On CPU batching buys nothing, while small batches sorted by depth truncate the network earlier: 16.
    """
    if rt.device.type != "cuda":
        return min(cfg.max_batch_size, 16)
    probe_units = max(1, 16 // cfg.n_vis)
    plan = BatchPlan([deepest] * probe_units, [channel] * probe_units, cfg.n_vis, rt.device)
    torch.cuda.synchronize(rt.device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(rt.device)
    torch.cuda.reset_peak_memory_stats(rt.device)
    probe = dataclasses.replace(cfg, steps=1, redirect_relu_steps=0, compile=False)
    optimize_batch(net, plan, list(range(plan.batch_size)), probe, dataclasses.replace(rt, compile=False))
    per_image = (torch.cuda.max_memory_allocated(rt.device) - base) / plan.batch_size
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(rt.device)
    return int(max(cfg.n_vis, min(cfg.max_batch_size, 0.7 * free / max(per_image, 1.0))))


def _model_identity(model) -> tuple[Any, Any]:
    """``(FeatureNet, identity)`` from a LoadedModel or a bare FeatureNet (hash of its weights)."""
    net = getattr(model, "net", model)
    weights = getattr(model, "weights", None) or {}
    if weights.get("sha256"):
        ident = {"weights_sha256": weights["sha256"]}  # the file's hash, wherever it lives
    else:
        h = hashlib.sha256()
        for k, v in net.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
        ident = {"params_sha256": h.hexdigest()}
    return net, {"name": getattr(model, "name", type(net).__name__), **ident}


def _write_png_atomic(path: Path, img_u8: torch.Tensor) -> str:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(img_u8.permute(1, 2, 0).contiguous().numpy()).save(tmp, format="PNG")
    os.replace(tmp, path)
    return sha256_file(path)


def _batch_file(ckpt: Path, unit_ids: Sequence[str]) -> Path:
    return ckpt / f"batch-{hashlib.sha256(chr(0).join(unit_ids).encode()).hexdigest()[:16]}.json"


def _open_checkpoint(ckpt: Path, fingerprint: str, resume: bool | None) -> None:
    state = ckpt / CHECKPOINT_STATE
    batches = sorted(ckpt.glob("batch-*.json")) if ckpt.is_dir() else []
    if resume is False:
        for p in batches:
            p.unlink()
        state.unlink(missing_ok=True)
    elif state.exists():
        try:
            obj = json.loads(state.read_text())
            ok = obj.get("version") == CHECKPOINT_VERSION and isinstance(obj.get("fingerprint"), str)
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            raise CheckpointError(f"{state}: corrupt render checkpoint ({e}); delete the folder {ckpt} to start over") from e
        if not ok:
            raise CheckpointError(f"{state}: not a render checkpoint of version {CHECKPOINT_VERSION}; delete {ckpt} to start over")
        if obj["fingerprint"] != fingerprint:
            raise CheckpointError(f"{state}: checkpoint was made with other feature-visualization settings or weights; "
                                  f"use another checkpoint folder or delete {ckpt} to start over")
    elif batches:
        raise CheckpointError(f"{state}: missing, but {ckpt} holds {len(batches)} batch file(s); delete {ckpt} to start over")
    elif resume is True:
        raise CheckpointError(f"{state}: no render checkpoint to resume from in {ckpt}")
    ckpt.mkdir(parents=True, exist_ok=True)
    if not state.exists():
        write_json_atomic(state, {"version": CHECKPOINT_VERSION, "fingerprint": fingerprint})


def _load_finished(ckpt: Path, fingerprint: str, set_root: Path) -> dict[str, list[dict]]:
    """Rows of every unit finished in an earlier run, after checking each batch file and its PNGs."""
    done: dict[str, list[dict]] = {}
    for p in sorted(ckpt.glob("batch-*.json")):
        try:
            obj = json.loads(p.read_text())
            rows, pngs = obj["rows"], obj["png_sha256"]
            fp = obj["fingerprint"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{p}: corrupt checkpoint batch file ({type(e).__name__}: {e}); "
                                  f"delete it to redo that batch") from e
        if fp != fingerprint:
            raise CheckpointError(f"{p}: batch made with other settings than {ckpt / CHECKPOINT_STATE}; delete it")
        for rel, digest in pngs.items():
            f = set_root / rel
            if not f.is_file() or sha256_file(f) != digest:
                raise CheckpointError(f"{p}: its image {f} is missing or changed since the batch finished; "
                                      f"delete {p} to redo that batch")
        for r in rows:
            done.setdefault(r["unit_id"], []).append(r)
    return done


# ---- the public entry points ------------------------------------------------------------------------

def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _check_units(units_df: pd.DataFrame, net) -> pd.DataFrame:
    missing = {"unit_id", "layer", "channel"} - set(units_df.columns)
    if missing:
        raise ValueError(f"units table lacks column(s) {sorted(missing)}")
    dup = units_df.unit_id[units_df.unit_id.duplicated()]
    if len(dup):
        raise ValueError(f"units table: duplicate unit_id {dup.iloc[0]!r}")
    for uid, layer, ch in units_df[["unit_id", "layer", "channel"]].itertuples(index=False):
        if layer not in net.channels:
            raise ValueError(f"unit {uid}: unknown layer {layer!r}; layers: {list(net.layer_names)}")
        if not 0 <= int(ch) < net.channels[layer]:
            raise ValueError(f"unit {uid}: channel {ch} out of range for {layer} (0..{net.channels[layer] - 1})")
    return units_df.reset_index(drop=True)


def render_feature_visualizations(model, units_df: pd.DataFrame, cfg: RenderConfig, set_root: os.PathLike | str,
                                  device: str | torch.device = "cpu", checkpoint_dir: os.PathLike | str | None = None,
                                  progress: bool = True, resume: bool | None = None,
                                  targets: dict[str, float] | None = None) -> pd.DataFrame:
    """Render ``cfg.n_vis`` visualizations of every unit, write the PNGs under ``set_root``, return their rows.

    ``targets``: each unit's best natural activation (same statistic and ReLU side as ``cfg``); needed
    by ``cfg.diversity == "search"``, recorded (``natural_target``, ``margin``) whenever given.

    ``model``: a ``LoadedModel`` (or a bare ``FeatureNet``). With ``checkpoint_dir``, each finished batch
    is recorded there and kept on a rerun (``resume``: None = if present, True = required, False =
    start over); an interrupted batch is redone. Under torch.distributed each rank renders its share
    of the units and every rank returns the whole table.
    """
    from tqdm.auto import tqdm

    net, identity = _model_identity(model)
    units = _check_units(units_df, net)
    set_root = Path(set_root)
    rank, world = _dist()
    rt = Runtime.resolve(cfg, _resolve_device(device))
    targets = {str(k): float(v) for k, v in (targets or {}).items()}
    if cfg.diversity == "search":
        missing = [u for u in units.unit_id if not math.isfinite(targets.get(u, float("nan")))]
        if missing:
            raise ValueError(f"diversity search needs each unit's best natural activation; missing or not finite "
                             f"for {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        fingerprint = sha256_json({"images": cfg.image_fingerprint(identity, rt.amp),
                                   "targets": {u: targets[u] for u in units.unit_id}})
    else:
        fingerprint = cfg.image_fingerprint(identity, rt.amp)

    done: dict[str, list[dict]] = {}
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None:
        if rank == 0:
            _open_checkpoint(ckpt, fingerprint, resume)
        if world > 1:
            torch.distributed.barrier()
        done = _load_finished(ckpt, fingerprint, set_root)

    order = schedule(units, net.layer_names, len(units))[0] if len(units) else units
    mine = order.iloc[rank::world]
    todo = mine[~mine.unit_id.isin(list(done))]
    rows: list[dict] = [r for uid in mine.unit_id if uid in done for r in done[uid]]

    if len(todo):
        net.to(rt.device)
        opt_net = fold_batchnorm(net) if cfg.fold_batchnorm else net
        if rt.channels_last:
            opt_net.to(memory_format=torch.channels_last)
        try:
            rows += _render_units(net, opt_net, todo, cfg, rt, set_root, ckpt, fingerprint,
                                  progress=progress and rank == 0, tqdm=tqdm, targets=targets)
        finally:
            if rt.channels_last:
                opt_net.to(memory_format=torch.contiguous_format)

    if world > 1:
        gathered: list[list[dict]] = [[] for _ in range(world)]
        torch.distributed.all_gather_object(gathered, rows)
        rows = [r for part in gathered for r in part]
    table = pd.DataFrame(rows, columns=ROW_COLUMNS)
    pos = {uid: i for i, uid in enumerate(units.unit_id)}
    table = table.assign(_o=table.unit_id.map(pos)).sort_values(["_o", "rank"]).drop(columns="_o")
    return table.reset_index(drop=True)


ROW_COLUMNS = ["unit_id", "kind", "rank", "activation", "file", "seed", "activation_render", "gram_similarity",
               "pixel_std", "render_size", "activation_curve", "steps_run", "diversity_weight", "natural_target",
               "margin", "search_status", "search_tries"]


def _render_units(net, opt_net, todo: pd.DataFrame, cfg: RenderConfig, rt: Runtime, set_root: Path,
                  ckpt: Path | None, fingerprint: str, progress: bool, tqdm,
                  targets: dict[str, float] | None = None) -> list[dict]:
    """Optimize through ``opt_net`` (BatchNorm folded, channels_last); measure the saved PNGs with ``net``."""
    deepest = deepest_layer(net, todo.layer)
    per_batch = cfg.batch_size or auto_batch_size(opt_net, cfg, rt, deepest)
    units_per_batch = max(1, per_batch // cfg.n_vis)
    batches = schedule(todo, net.layer_names, units_per_batch)
    # Steps run by the batches stopping at each layer (for "compile where it pays").
    work: dict[str, int] = {}
    for b in batches:
        key = deepest_layer(net, b.layer)
        work[key] = work.get(key, 0) + cfg.steps

    rows: list[dict] = []
    total = len(todo) * cfg.n_vis
    bar = tqdm(total=total, unit="vis", disable=not progress, desc="feature vis", dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.1f}/{total} vis [{elapsed}<{remaining}, {rate_fmt}{postfix}]")
    t0 = time.perf_counter()
    n_steps_done = 0
    queue = collections.deque(batches)
    try:
        while queue:
            b = queue.popleft()
            uids = list(b.unit_id)
            plan = BatchPlan(list(b.layer), [int(c) for c in b.channel], cfg.n_vis, rt.device)
            seeds = [image_seed(cfg.seed, u, r) for u in uids for r in range(cfg.n_vis)]
            key = deepest_layer(net, plan.layers)
            shown = 0.0

            def on_step(step: int, n_img=plan.batch_size) -> None:
                nonlocal n_steps_done, shown
                n_steps_done += 1
                shown += n_img / cfg.steps
                bar.update(n_img / cfg.steps)
                if step % 16 == 0 or step == cfg.steps - 1:
                    bar.set_postfix_str(f"{n_steps_done / (time.perf_counter() - t0):.2f} steps/s, batch {n_img}")

            try:
                if cfg.diversity == "search":
                    res, outcomes = search_batch(opt_net, net, plan, seeds, cfg, rt, [targets[u] for u in uids],
                                                 on_step=on_step, work_steps=work.get(key, 0))
                else:
                    res = optimize_batch(opt_net, plan, seeds, cfg, rt, on_step=on_step, work_steps=work.get(key, 0))
                    outcomes = [UnitOutcome(cfg.diversity_weight, (targets or {}).get(u, float("nan")), "fixed")
                                for u in uids]
            except torch.OutOfMemoryError:
                # The memory estimate was too optimistic: split the batch (images do not depend on
                # their batch) and go on with smaller ones.
                if len(b) < 2:
                    raise
                bar.update(-shown)
                torch.cuda.empty_cache()
                half = len(b) // 2
                queue.extendleft([b.iloc[half:], b.iloc[:half]])
                continue
            rows_b, pngs = _finish_batch(net, plan, uids, seeds, res, cfg, rt, set_root, outcomes)
            if ckpt is not None:
                write_json_atomic(_batch_file(ckpt, uids), {"fingerprint": fingerprint, "unit_ids": uids,
                                                           "rows": rows_b, "png_sha256": pngs})
            rows += rows_b
    finally:
        bar.close()
    return rows


def _finish_batch(net, plan: BatchPlan, uids: list[str], seeds: list[int], res: BatchResult, cfg: RenderConfig,
                  rt: Runtime, set_root: Path, outcomes: list[UnitOutcome] | None = None) -> tuple[list[dict], dict[str, str]]:
    """Save the PNGs and measure what was saved (8-bit, out_size, untransformed); ``margin`` is the
    saved FV's activation minus the unit's best natural activation (> 0: the FV drives it harder)."""
    if outcomes is None:
        outcomes = [UnitOutcome(cfg.diversity_weight, float("nan"), "fixed") for _ in uids]
    out_u8 = to_output(res.images, cfg)
    act_saved, sims = measure(net, plan, out_u8.float() / 255, cfg, rt.device)
    act_render, _ = measure(net, plan, res.images, cfg, rt.device, grams=False)
    n = cfg.n_vis
    # Mean similarity of each image to its unit's other images (NaN for a single image).
    off = (sims.sum(-1) - torch.diagonal(sims, dim1=1, dim2=2)) / max(n - 1, 1)
    stds = pixel_std(out_u8)
    rows, pngs = [], {}
    for i, (uid, seed) in enumerate(zip([u for u in uids for _ in range(n)], seeds)):
        r = i % n
        rel = image_relpath(uid, KIND, r)
        pngs[rel] = _write_png_atomic(set_root / rel, out_u8[i])
        curve = res.curve(i)
        oc = outcomes[i // n]
        rows.append({"unit_id": uid, "kind": KIND, "rank": r, "activation": float(act_saved[i]), "file": rel,
                     "seed": int(seed), "activation_render": float(act_render[i]),
                     "gram_similarity": float(off[i // n, r]) if n > 1 else float("nan"),
                     "pixel_std": float(stds[i]), "render_size": cfg.size, "activation_curve": json.dumps(curve),
                     "steps_run": int(res.steps_run[i]) if res.steps_run is not None else cfg.steps,
                     "diversity_weight": float(oc.weight), "natural_target": float(oc.target),
                     "margin": float(act_saved[i]) - float(oc.target), "search_status": oc.status,
                     "search_tries": json.dumps([[float(f"{w:.6g}"), float(f"{a:.6g}"), bool(p)] for w, a, p in oc.tries])})
    return rows, pngs


# ---- validation ----------------------------------------------------------------------------------

def validate_feature_vis(fv_rows: pd.DataFrame, natural_rows: pd.DataFrame | None, flat_std: float = 0.02,
                         dead_rel: float = 1e-6) -> pd.DataFrame:
    """One row per unit: FV activations against the most activating natural image, diversity, flatness.

    ``flat``: every visualization of the unit is nearly uniform (pixel std < ``flat_std``, about
    5/255) or every activation curve stayed constant (range <= ``dead_rel`` x its magnitude: no
    gradient reached the image, a dead unit).
    """
    fv = fv_rows[fv_rows.kind == KIND] if "kind" in fv_rows else fv_rows
    nat = natural_rows[natural_rows.kind == "natural_max"] if natural_rows is not None and len(natural_rows) else None
    out = []
    for uid, g in fv.groupby("unit_id", sort=False):
        nat_max = float(nat[nat.unit_id == uid].activation.max()) if nat is not None and (nat.unit_id == uid).any() else float("nan")
        fmax = float(g.activation.max())
        curves = [_curve(c) for c in g["activation_curve"]] if "activation_curve" in g else []
        gains = [c[-1] - c[0] for c in curves if len(c)]
        stds = g["pixel_std"] if "pixel_std" in g else pd.Series(dtype=float)
        flat_images = bool(len(stds)) and bool((stds < flat_std).all())
        dead = bool(curves) and all(np.ptp(c) <= dead_rel * np.abs(c).max() for c in curves if len(c))
        sim = g["gram_similarity"] if "gram_similarity" in g else pd.Series(dtype=float)
        out.append({
            "unit_id": uid, "n_vis": len(g),
            "fv_activation_max": fmax, "fv_activation_mean": float(g.activation.mean()),
            "fv_activation_min": float(g.activation.min()),
            "natural_max_activation": nat_max,
            "ratio": fmax / nat_max if nat_max > 0 else float("nan"),
            "fv_exceeds_natural": bool(fmax > nat_max) if not math.isnan(nat_max) else False,
            "all_fv_exceed_natural": bool(g.activation.min() > nat_max) if not math.isnan(nat_max) else False,
            "margin_min": float(g.activation.min()) - nat_max,
            "diversity_weight": float(g["diversity_weight"].iloc[0]) if "diversity_weight" in g else float("nan"),
            "search_status": str(g["search_status"].iloc[0]) if "search_status" in g else "",
            "steps_run_mean": float(g["steps_run"].mean()) if "steps_run" in g else float("nan"),
            "diversity": float(sim.mean()) if sim.notna().any() else float("nan"),
            "pixel_std_min": float(stds.min()) if len(stds) else float("nan"),
            "activation_gain_min": float(min(gains)) if gains else float("nan"),
            "n_rose": int(sum(x > 0 for x in gains)),
            "flat": flat_images or dead,
        })
    return pd.DataFrame(out)


def _curve(curve: str | list) -> np.ndarray:
    """Activation values of a curve ``[[step, value], ...]`` (JSON string or list)."""
    c = json.loads(curve) if isinstance(curve, str) else curve
    return np.array([v for _, v in c], dtype=float)


def summarize_validation(val: pd.DataFrame) -> str:
    """A few lines for the console."""
    if not len(val):
        return "feature-visualization validation: no units"
    n = len(val)
    has_nat = val.natural_max_activation.notna()
    lines = [f"feature-visualization validation: {n} units, {int(val.n_vis.sum())} visualizations"]
    if has_nat.any():
        k = int(val.fv_exceeds_natural[has_nat].sum())
        lines.append(f"  best visualization drives the unit harder than its most activating natural image: "
                     f"{k}/{int(has_nat.sum())} units; median ratio {val.ratio[has_nat].median():.2f}")
        if "all_fv_exceed_natural" in val:
            k_all = int(val.all_fv_exceed_natural[has_nat].sum())
            lines.append(f"  every visualization of the unit does: {k_all}/{int(has_nat.sum())} units")
    else:
        lines.append("  no natural exemplars given: activation ratio not computed")
    lines.append(f"  objective rose during optimization: {int(val.n_rose.sum())}/{int(val.n_vis.sum())} visualizations")
    if val.diversity.notna().any():
        lines.append(f"  diversity (mean pairwise Gram similarity, lower = more diverse): "
                     f"median {val.diversity.median():.3f}, range {val.diversity.min():.3f}..{val.diversity.max():.3f}")
    if "search_status" in val and (val.search_status == "failed").any():
        failed = val.unit_id[val.search_status == "failed"].tolist()
        lines.append(f"  diversity search FAILED (FVs below the best natural image even without diversity): "
                     f"{len(failed)}: {', '.join(failed[:10])}" + (" ..." if len(failed) > 10 else ""))
    if "diversity_weight" in val and (val.get("search_status", pd.Series(dtype=str)) != "fixed").any():
        w = val.diversity_weight[val.search_status != "fixed"]
        lines.append(f"  searched diversity weights: median {w.median():.3g}, range {w.min():.3g}..{w.max():.3g}")
    flat = val.unit_id[val.flat].tolist()
    lines.append(f"  flat (grey or dead) units: {len(flat)}" + (f": {', '.join(flat[:10])}" + (" ..." if len(flat) > 10 else "") if flat else ""))
    return "\n".join(lines)
