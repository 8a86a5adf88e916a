"""Benchmark of feature-visualization rendering: the Lucid/Lucent way against the batched generator.

Measures in one run, same device and model:

(a) the Lucid/Lucent way: one unit at a time, batch 1, float32, eager, contiguous memory, the
    transforms applied as separate ops (pad, crop, resize, rotate, crop) with one draw per step,
    and the whole network run every step (Lucent's ``render_vis`` calls the full model);
(b) this generator's batched path (``stimuli_gen.render``): a stimulus set's mix of units (equal
    numbers from the early, middle and late layer groups), whole units per batch sorted by depth,
    per-image transforms in one affine grid, truncated network, bf16 + channels_last + torch.compile
    on CUDA, batch size from free memory, including saving and measuring the PNGs.

Both are timed over a few steps after warm-up and extrapolated to 512 steps (stated in the output):
(b) counts the 17 redirected-ReLU steps at the eager speed and the rest at the (compiled) speed;
compilation time is printed separately, not included. On CPU the median step time is used, since
the cores are often shared and single steps stall.
Prints visualizations/s at 512 steps for both, their ratio, the batch size and the device.

(c) the cost of the diversity search (preset ``fvmatch``) next to a fixed weight (``lucid``), same
    units, steps and batch, both rendered in full through ``render_feature_visualizations`` (not
    extrapolated): seconds, optimizations per unit, mean steps run (early stopping), and how many
    units' FVs all beat their best natural image. Targets are the best of ``--natural`` built-in
    images; random weights are recalibrated on them first (``stimuli_gen.random_net``).
Goal on one H100 at 224 px: >= 20 visualizations/s and >= 50x the one-at-a-time baseline.

    .venv/bin/python bench/render.py --quick                  # CPU, small images, < 1 minute
    .venv/bin/python bench/render.py --device cuda            # 224 px, 16 units per group x 10 FVs, as "auto"
    .venv/bin/python bench/render.py --device cuda --compile true   # steady state with torch.compile

With ``--compile auto`` (what the generator does) a job this small stays eager: compiling pays from
about six 512-step batches stopping at the same layer (see ``stimuli_gen.render``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from stimuli_gen import render as R  # noqa: E402
from stimuli_gen.models import DEFAULT_LAYER_GROUPS, load_model  # noqa: E402
from stimuli_gen.objectives import BatchPlan  # noqa: E402
from stimuli_gen.param import FourierImage  # noqa: E402

LUCID_STEPS = 512


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- (a) one visualization at a time, as Lucid/Lucent do it ----------------------------------------

def lucent_transform(x: torch.Tensor, cfg: R.RenderConfig, rng: random.Random) -> torch.Tensor:
    """Lucent's standard_transforms as separate ops, one draw for the (size-1) batch."""
    x = F.pad(x, [cfg.pad] * 4, mode="constant", value=cfg.pad_value)
    for j in (cfg.jitter1,):
        dx, dy = rng.randrange(j + 1), rng.randrange(j + 1)
        x = x[..., dy:dy + x.shape[-2] - j, dx:dx + x.shape[-1] - j]
    s = rng.choice(cfg.scales)
    x = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
    a = math.radians(rng.choice(cfg.angles))
    theta = torch.tensor([[[math.cos(a), math.sin(a), 0.0], [-math.sin(a), math.cos(a), 0.0]]], device=x.device)
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    j = cfg.jitter2
    dx, dy = rng.randrange(j + 1), rng.randrange(j + 1)
    return x[..., dy:dy + x.shape[-2] - j, dx:dx + x.shape[-1] - j]


def time_one_at_a_time(net, layer: str, channel: int, cfg: R.RenderConfig, device: torch.device,
                       warmup: int, timed: int) -> float:
    """Seconds per step of one visualization, batch 1, fp32, eager, full network."""
    image = FourierImage([torch.Generator().manual_seed(0)], cfg.size, device=device)
    opt = torch.optim.Adam([image.spectrum], lr=cfg.lr)
    rng = random.Random(0)
    last = net.layer_names[-1]
    stamps = []
    for step in range(warmup + timed):
        acts = net.forward_layers(lucent_transform(image(), cfg, rng), [layer, last])
        loss = -acts[layer][:, channel].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= warmup - 1:
            sync(device)
            stamps.append(time.perf_counter())
    return robust_step_time(stamps, device)


def robust_step_time(stamps: list[float], device: torch.device) -> float:
    """Seconds per step from consecutive step stamps: the median on a (shared, noisy) CPU, the mean
    over the window on CUDA (stamps only at the window's ends there, so the GPU queue never drains)."""
    d = [b - a for a, b in zip(stamps, stamps[1:])]
    if device.type == "cuda":
        return (stamps[-1] - stamps[0]) / max(len(d), 1)
    return statistics.median(d)


# ---- (b) the batched generator ---------------------------------------------------------------------

def time_batched(net, units, cfg: R.RenderConfig, device: torch.device, warm: int, timed: int,
                 out_dir: Path) -> tuple[float, int, dict]:
    """Extrapolated seconds for all units at 512 steps, the batch size, and the runtime settings."""
    rt = R.Runtime.resolve(cfg, device)
    net.to(device)
    measure_net = net
    net = R.fold_batchnorm(net) if cfg.fold_batchnorm else net
    if rt.channels_last:
        net.to(memory_format=torch.channels_last)
    deepest = max(units.layer, key=net.layer_names.index)
    per_batch = cfg.batch_size or R.auto_batch_size(net, cfg, rt, deepest)
    per_batch = max(1, per_batch // cfg.n_vis) * cfg.n_vis
    batches = R.schedule(units, net.layer_names, per_batch // cfg.n_vis)
    redirect = min(cfg.redirect_relu_steps, 3)
    total = 0.0
    for b in batches:
        plan = BatchPlan(list(b.layer), [int(c) for c in b.channel], cfg.n_vis, device)
        seeds = [R.image_seed(cfg.seed, u, r) for u in b.unit_id for r in range(cfg.n_vis)]
        stamps: dict[int, float] = {}
        # Step 0 (first call) and step ``redirect`` (compilation) are warm-up; eager speed is timed over
        # steps 1..redirect-1, the compiled speed over the last ``timed`` steps.
        marks = {0, redirect - 1, redirect, redirect + warm - 1, redirect + warm + timed - 1}

        def on_step(step: int) -> None:
            if step in marks or device.type != "cuda":
                sync(device)
                stamps[step] = time.perf_counter()

        run_cfg = R.RenderConfig(**{**cfg.__dict__, "steps": redirect + warm + timed, "redirect_relu_steps": redirect})
        res = R.optimize_batch(net, plan, seeds, run_cfg, rt, on_step=on_step, work_steps=len(batches) * LUCID_STEPS)
        window = lambda a, b: [stamps[i] for i in range(a, b + 1) if i in stamps]  # noqa: E731
        t_eager = robust_step_time(window(0, redirect - 1), device)
        t_fast = robust_step_time(window(redirect + warm - 1, redirect + warm + timed - 1), device)
        t0 = time.perf_counter()
        R._finish_batch(measure_net, plan, list(b.unit_id), seeds, res, cfg, rt, out_dir)  # save + measure PNGs
        t_finish = time.perf_counter() - t0
        first_fast = stamps[redirect] - stamps[redirect - 1]  # includes compiling, if any
        n_red = min(cfg.redirect_relu_steps, LUCID_STEPS)
        total += n_red * t_eager + (LUCID_STEPS - n_red) * t_fast + t_finish
        print(f"    batch of {plan.batch_size} (layers {','.join(dict.fromkeys(plan.layers))}): "
              f"{t_eager * 1000:.0f} ms/step eager (redirected ReLU), {t_fast * 1000:.0f} ms/step after, "
              f"{t_finish:.2f} s to save and measure; first step after the redirected ones {first_fast:.1f} s "
              f"(compilation, not counted)")
    if rt.channels_last:
        net.to(memory_format=torch.contiguous_format)
    return total, per_batch, rt.describe()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU-sized run: 64 px, 2 units per group x 2 FVs, few steps")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available, cpu with --quick)")
    p.add_argument("--model", default="torchvision_googlenet", choices=sorted(DEFAULT_LAYER_GROUPS))
    p.add_argument("--weights", default="random", help="random (default), pretrained or a path")
    p.add_argument("--size", type=int, default=None, help="render size (default 224; 64 with --quick)")
    p.add_argument("--units-per-group", type=int, default=None, help="units from each of early/middle/late (16; 2 quick)")
    p.add_argument("--n-vis", type=int, default=None, help="visualizations per unit (10; 2 quick)")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default: from free memory)")
    p.add_argument("--compile", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--timed-steps", type=int, default=None, help="timed steps per batch (20; 3 quick)")
    p.add_argument("--baseline-steps", type=int, default=None, help="timed steps of the baseline (10; 2 quick)")
    p.add_argument("--search-steps", type=int, default=None, help="(c) steps per optimization (512; 32 quick)")
    p.add_argument("--natural", type=int, default=None, help="(c) built-in natural images for the targets (108; 24 quick)")
    p.add_argument("--skip-search", action="store_true", help="skip (c)")
    a = p.parse_args(argv)

    quick = a.quick
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() and not quick else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    size = a.size or (64 if quick else 224)
    upg = a.units_per_group or (2 if quick else 16)
    n_vis = a.n_vis or (2 if quick else 10)
    timed = a.timed_steps or (3 if quick else 20)
    base_steps = a.baseline_steps or (2 if quick else 10)
    if device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(a.model, a.weights, seed=0, device=device)
    net = model.net
    groups = model.layer_groups
    compile_opt = {"auto": "auto", "true": True, "false": False}[a.compile]
    cfg = R.RenderConfig.from_preset("lucid", size=size, out_size=size, n_vis=n_vis, batch_size=a.batch_size,
                                     compile=compile_opt)

    # A stimulus set's mix: equal numbers from each group, spread over the group's layers.
    import pandas as pd

    rows = []
    for g in ("early", "middle", "late"):
        for i in range(upg):
            layer = groups[g][i % len(groups[g])]
            rows.append({"unit_id": f"{layer}_c{i:04d}", "layer": layer, "channel": i % net.channels[layer], "group": g})
    units = pd.DataFrame(rows)

    print(f"device: {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                 f" ({torch.get_num_threads()} threads)"))
    print(f"model: {a.model} ({model.weights['identity']}), render size {size} px, network input "
          f"{cfg.net_size or cfg.field_of_view} px, {len(units)} units ({upg} per group) x {n_vis} visualizations")

    # (a) baseline: one unit of each group, one visualization each.
    base_cfg = R.RenderConfig(**{**cfg.__dict__})
    per_step = []
    for g in ("early", "middle", "late"):
        layer = groups[g][0]
        per_step.append(time_one_at_a_time(net, layer, 0, base_cfg, device, warmup=2, timed=base_steps))
    base_s = sum(per_step) / len(per_step) * LUCID_STEPS
    base_rate = 1 / base_s
    print(f"(a) one at a time (batch 1, fp32, eager, full network, one transform per step): "
          f"{sum(per_step) / len(per_step) * 1000:.1f} ms/step -> {base_s:.1f} s per visualization, "
          f"{base_rate:.3f} visualizations/s at {LUCID_STEPS} steps (extrapolated from {base_steps} timed steps)")

    # (b) batched generator.
    with tempfile.TemporaryDirectory() as tmp:
        total_s, batch, rt = time_batched(net, units, cfg, device, warm=1 if quick else 3, timed=timed, out_dir=Path(tmp))
    n_img = len(units) * n_vis
    rate = n_img / total_s
    print(f"(b) batched: {n_img} visualizations in {total_s:.1f} s -> {rate:.3f} visualizations/s at {LUCID_STEPS} steps "
          f"(extrapolated from {timed} timed steps per batch, incl. saving and measuring the PNGs); batch size {batch}; "
          f"bf16 {rt['amp_bf16']}, channels_last {rt['channels_last']}, compiled graphs (up to): "
          f"{rt['compiled_up_to'] or 'none'}")
    print(f"ratio (b)/(a): {rate / base_rate:.1f}x")
    if not a.skip_search:
        steps = a.search_steps or (32 if quick else LUCID_STEPS)
        compare_search(model, units, cfg, device, steps, a.natural or (24 if quick else 108))
    return 0


def compare_search(model, units, cfg: R.RenderConfig, device: torch.device, steps: int, n_natural: int) -> None:
    """(c) the diversity search against a fixed weight, same units, steps and batch, rendered in full."""
    from stimuli_gen.builtin_collection import write_builtin_collection
    from stimuli_gen.collection import Preprocess, list_collection, load_crop
    from stimuli_gen.models import channel_statistic
    from stimuli_gen.random_net import calibrate_on_collection

    with tempfile.TemporaryDirectory() as tmp:
        write_builtin_collection(Path(tmp) / "builtin")
        paths, _ = list_collection(Path(tmp) / "builtin")
        paths = paths[:: max(1, len(paths) // n_natural)][:n_natural]
        model.net.to("cpu")
        if calibrate_on_collection(model, paths, Preprocess()):
            print(f"(c) random network: {model.weights['calibration']['method']}")
        model.net.to(device)
        x = torch.stack([load_crop(p, Preprocess())[0] for p in paths]).float().div(255).to(device)
        layers = list(dict.fromkeys(units.layer))
        with torch.no_grad():
            acts = model.net.forward_layers(x, layers, relu=cfg.relu)
        targets = {u: float(channel_statistic(acts[l][:, [c]], cfg.statistic).max())
                   for u, l, c in zip(units.unit_id, units.layer, units.channel)}
        out = {}
        for name, preset in (("fixed weight 100 (lucid)", "lucid"), ("diversity search (fvmatch)", "fvmatch")):
            c = R.RenderConfig.from_preset(preset, **{k: getattr(cfg, k) for k in ("size", "out_size", "n_vis",
                                                                                    "batch_size", "compile")},
                                           steps=steps)
            sync(device)
            t0 = time.perf_counter()
            rows = R.render_feature_visualizations(model, units, c, Path(tmp) / preset, device=device, progress=False,
                                                   targets=targets)
            sync(device)
            out[name] = (time.perf_counter() - t0, rows)
        (t_fixed, fixed), (t_search, searched) = out.values()
        for name, (t, rows) in out.items():
            per_unit = rows.groupby("unit_id", sort=False)
            tries = per_unit.search_tries.first().map(lambda s: max(1, len(json.loads(s))))
            beat = int((per_unit.margin.min() > 0).sum())
            print(f"(c) {name}: {t:.1f} s for {len(rows)} visualizations at {steps} steps; "
                  f"{tries.mean():.2f} optimizations per unit, {rows.steps_run.mean():.0f} steps run on average; "
                  f"every FV beats the best of {len(paths)} natural images for {beat}/{len(per_unit)} units")
        print(f"(c) cost of the search: {t_search / t_fixed:.2f}x the fixed weight's time "
              f"(same run, device {device}, {steps} steps, {len(units)} units x {cfg.n_vis} FVs)")



if __name__ == "__main__":
    raise SystemExit(main())
