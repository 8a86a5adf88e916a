"""Do a silent-units network's feature visualizations leave the natural range? Trip fraction vs lambda, gain, steps, size.

For the control demo's units (random weights recalibrated as generation does, built-in collection, every image
setting the biases as ``--holdout-fraction 0`` does) it renders each unit's visualizations with the stimulus
set's own recipe (``fvmatch-stimuli --fv-preset lucid``: Lucid's transforms, fixed diversity weight, pre-ReLU
channel mean) through the manipulated network and measures on the saved 8-bit images, per unit
(``stimuli_gen.manipulate.effect``): does its own silent filter switch on (``tripped``), and does it drive the unit
more than the unit's own filter (``dominated``, silent share > 0.5). Natural maxima are measured once per lambda
(the on/off pattern does not depend on the gain: ``w_f`` and its bias scale together), then the filters are
scaled by each gain. The baseline is the first configuration: the control demo before issue 15's change (lambda 3, gain 100, 32 steps
at 64 px, diversity 100, Lucid's lr 0.05); the second is the demo now (lr 0.5, saved at the render size as here);
the others vary one thing against it. A unit's images are saved at the size they were rendered at.

    PYTHONPATH=. .venv/bin/python bench/silent_trips.py [--per-unit] [--configs "3:100:32:64:100:0.2 ..."]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine_info import cpu_name, load_average  # noqa: E402  (bench/ is on sys.path: scripts run from it)
from stimuli_gen.collection import Preprocess
from stimuli_gen.manipulate import effect as E
from stimuli_gen.manipulate import make as M
from stimuli_gen.manipulate import silent as S
from stimuli_gen.models import load_model
from stimuli_gen.objectives import BatchPlan
from stimuli_gen.render import RenderConfig, Runtime, fold_batchnorm, image_seed, optimize_batch, to_output

# the demo's units (`tools/demo_control.sh` stage 1, seed 0, random weights): its units.csv
DEMO_UNITS = ("inception3a:163,inception3b:129,inception3b:244,inception4a:267,inception4b:455,inception4c:508,"
              "inception4d:317,inception4e:742,inception5b:148")


def silent_net(base, units, lam: float, paths, pp) -> tuple[S.SilentUnitsGoogLeNet, list[S.SilentUnit]]:
    """Silent filters at gain 1 with biases from every image of the collection."""
    net, specs = S.add_silent_filters(base.net, units, seed=0, lam=lam, gain=1.0)
    S.measure_maxima(net, specs, M.stream(paths, list(range(len(paths))), pp, 32, 0, torch.device("cpu"), []))
    S.set_biases(net, specs)
    return net, specs


def with_gain(net: S.SilentUnitsGoogLeNet, gain: float) -> S.SilentUnitsGoogLeNet:
    out = copy.deepcopy(net)
    with torch.no_grad():
        for m in out.silent_modules().values():
            m.silent.weight.mul_(gain)
            m.silent.bias.mul_(gain)
    return out


def render(net, units, cfg: RenderConfig) -> torch.Tensor:
    """The set's images of every unit (saved 8-bit, out size) through ``net``, in [0, 1]."""
    plan = BatchPlan([u[0] for u in units], [u[1] for u in units], cfg.n_vis)
    seeds = [image_seed(cfg.seed, f"{l}_c{c:04d}", r) for l, c in units for r in range(cfg.n_vis)]
    res = optimize_batch(fold_batchnorm(net), plan, seeds, cfg, Runtime.resolve(cfg, torch.device("cpu")))
    return to_output(res.images, cfg).float() / 255


def measure(net, units, images: torch.Tensor, n_vis: int) -> pd.DataFrame:
    parts = []
    for i, (l, c) in enumerate(units):
        d = E.silent_parts(net, l, c, images[i * n_vis:(i + 1) * n_vis])
        parts.append(d.assign(unit_id=f"{l}:{c}"))
    return pd.concat(parts, ignore_index=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--units", default=DEMO_UNITS)
    p.add_argument("--configs", default="3:100:32:64:100:0.05 3:100:32:64:100:0.5 3:100:32:64:100:0.2 3:1:32:64:100:0.5 "
                                        "3:1e4:32:64:100:0.5 1:100:32:64:100:0.5 10:100:32:64:100:0.5",
                   help="space-separated lambda:gain:steps:size:diversity_weight:lr (the first is the baseline)")
    p.add_argument("--n-vis", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resize", type=int, default=256, help="natural images: resize short side (the sets' preprocessing)")
    p.add_argument("--crop", type=int, default=224, help="natural images: centre crop")
    p.add_argument("--per-unit", action="store_true", help="also print each unit's figures")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    units = M.parse_units(args.units.split(","))
    configs = [tuple(float(v) for v in c.split(":")) for c in args.configs.split()]
    print(f"machine: CPU {cpu_name()}, {os.cpu_count()} logical cores, load average {load_average():.1f}; "
          f"torch {torch.__version__}, {args.threads} thread(s)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = load_model("torchvision_googlenet", "random", seed=0)
    paths, _ = M._collection(M.CommonOptions(out="-", units=[]))
    pp = Preprocess(resize=args.resize, crop=args.crop)
    M._calibrate_random_base(base, paths, pp)
    print(f"{len(units)} units, {len(paths)} bias images at {args.crop} px (RANDOM weights, recalibrated)")
    nets: dict[float, S.SilentUnitsGoogLeNet] = {}
    rows = []
    for lam, gain, steps, size, div, lr in configs:
        if lam not in nets:
            nets[lam] = silent_net(base, units, lam, paths, pp)[0]
        net = with_gain(nets[lam], gain)
        cfg = RenderConfig.from_preset("lucid", n_vis=args.n_vis, steps=int(steps), size=int(size), out_size=int(size),
                                       diversity_weight=div, lr=lr, seed=0)
        t0 = time.perf_counter()
        d = measure(net, units, render(net, units, cfg), args.n_vis)
        per_unit = E.summarize_units(d)
        rows.append({"lambda": lam, "gain": gain, "steps": int(steps), "size": int(size), "diversity": div, "lr": lr,
                     "tripped": f"{int(d.tripped.sum())}/{len(d)}", "dominated": f"{int(d.dominated.sum())}/{len(d)}",
                     "units_all_dominated": f"{int((per_unit.dominated == per_unit.n_images).sum())}/{len(per_unit)}",
                     "median_share": round(float(d.silent_share.median()), 3),
                     "reach_min_median": f"{d.reach.min():.2f} {d.reach.median():.2f}", "s": round(time.perf_counter() - t0, 1)})
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
        if args.per_unit:
            print(per_unit.to_string(index=False, float_format="%.3g"), flush=True)
    print("\nall configurations (first = baseline):")
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
