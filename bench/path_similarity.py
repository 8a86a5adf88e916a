"""Benchmark of the path-similarity check against rendering the same set's feature visualizations.

In one run, same device and network: (baseline) rendering every visualization of the set with the
set's own recipe (``stimuli_gen.render``, timed once), and (check) the path-similarity check on the
set (plan, one batched pass over every stage, tables; timed ``--repeat`` times, median; nothing
written). Prints both, their ratio, images/s of the check and the machine.

    .venv/bin/python bench/path_similarity.py --quick              # CPU: a small set built here, about a minute
    .venv/bin/python bench/path_similarity.py --set data/stimuli/demo
    .venv/bin/python bench/path_similarity.py --device cuda         # 10 units per group, 10 FVs at 224 px, 512 steps
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine_info import cpu_name, load_average  # noqa: E402  (bench/ is on sys.path: scripts run from it)

import torch  # noqa: E402

from contracts.stimulus_set import load_stimulus_set  # noqa: E402
from stimuli_gen.path_similarity_run import CheckOptions  # noqa: E402
from stimuli_gen.path_similarity_set import _load_set_model, collection_pool, run_check  # noqa: E402


def machine(device: torch.device) -> str:
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"device: {device} (CPU {cpu_name()}; {os.cpu_count()} logical cores, load average {load_average():.1f}{gpu}); "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def build_set(out: Path, quick: bool, device: str) -> Path:
    """A random-weight set on the built-in collection, without the check (it is what we time)."""
    from stimuli_gen.cli import config_from_args, build_parser
    from stimuli_gen.pipeline import generate

    small = ["--units-per-group", "2", "--k", "5", "--fv-per-unit", "3", "--fv-steps", "32", "--fv-size", "64",
             "--resize", "72", "--crop", "64"] if quick else [
        "--units-per-group", "10", "--k", "10", "--fv-per-unit", "10", "--fv-steps", "512", "--fv-size", "224"]
    args = build_parser().parse_args(["--out", str(out), "--collection", "builtin", "--builtin-dir",
                                      str(out.parent / "collection"), "--weights", "random", "--no-progress",
                                      "--no-path-similarity", "--device", device, *small])
    generate(config_from_args(args))
    return out


def time_rendering(s, model, device: torch.device) -> tuple[float, int]:
    from stimuli_gen.pipeline import natural_targets
    from stimuli_gen.render import RenderConfig, render_feature_visualizations

    stored = s.manifest["parameters"]["feature_vis"]
    fields = {f.name for f in dataclasses.fields(RenderConfig)}
    cfg = RenderConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in stored.items() if k in fields})
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        rows = render_feature_visualizations(model, s.units, cfg, d, device=device, progress=False, resume=False,
                                             targets=natural_targets(s.images))  # the diversity search's targets
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0, len(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", help="an existing stimulus set with feature visualizations (default: build one here)")
    p.add_argument("--quick", action="store_true", help="CPU-sized set: 2 units per group, 3 FVs at 64 px, 32 steps")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of the check (median)")
    p.add_argument("--n-unrelated", type=int, default=20)
    p.add_argument("--no-render", action="store_true", help="skip the rendering baseline")
    a = p.parse_args(argv)
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    print(machine(device))
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(a.set) if a.set else build_set(Path(tmp) / "bench-set", a.quick, str(device))
        s = load_stimulus_set(root)
        model = _load_set_model(s.manifest, None)
        model.net.to(device)
        pp_d = s.manifest["parameters"]["collection"]["preprocess"]
        size = int(pp_d["crop"])
        opts = CheckOptions(n_unrelated=a.n_unrelated, size=size)
        images = s.images.copy()
        times, n_img = [], 0
        for _ in range(max(a.repeat, 1)):
            res = run_check(model, s.units, images, root, opts, device, None, False, s.random_weights)
            times.append(res.seconds)
            n_img = res.parameters["n_images_in_pass"]
        check = statistics.median(times)
        n_fv = int((s.images.kind == "feature_vis").sum())
        print(f"set {s.set_id}: {len(s.units)} units, {n_fv} feature visualizations, {size} px; "
              f"{len(res.parameters['layers'])} stages recorded")
        print(f"path-similarity check: {check:.2f} s median of {len(times)} ({', '.join(f'{t:.2f}' for t in times)}); "
              f"{n_img} images in the pass = {n_img / check:.1f} images/s (unrelated images: other units' exemplars)")
        if not a.no_render:
            render_s, n = time_rendering(s, model, device)
            steps = s.manifest["parameters"]["feature_vis"].get("steps")
            print(f"baseline, rendering the same {n} visualizations ({steps} steps): {render_s:.1f} s")
            print(f"check / rendering = {check / render_s:.3f} (the check adds {100 * check / render_s:.1f}% to rendering)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
