"""Benchmark of the exemplar pass: decoding alone (each decoder), the network alone, the full pass.

Builds a synthetic JPEG collection with ImageNet-like sizes (500x375 and 375x500, quality 90) from
the built-in photographs, then measures in one run:

1. decode + resize 256 + center crop 224, for each decoder the generator offers (``pil`` in
   DataLoader workers; ``torchvision`` = torchvision.io.decode_jpeg on the pass device, nvjpeg on CUDA);
2. the network alone on ready tensors (GoogLeNet up to inception5b, the pass precision);
3. the full pass: every channel of all 9 inception layers as units, top/bottom lists kept on the device.

Prints the device, images/s of each stage and the ratios. Goal on one H100 with 16 cores: full pass
>= 5,000 images/s and >= half the slower of (fastest decoder, network).

    .venv/bin/python bench/exemplars.py --quick          # CPU-friendly, 64 images
    .venv/bin/python bench/exemplars.py --n 16384 --batch-size 256 --workers 15 --check-precision 200  # GPU node

Timings include DataLoader start-up (as a real run does): use enough images that it does not dominate.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from stimuli_gen.builtin_collection import PHOTOS, load_photo  # noqa: E402
from stimuli_gen.collection import DECODERS, ImageDataset, Preprocess, batch_to_device, list_collection, make_loader  # noqa: E402
from stimuli_gen.exemplars import PassOptions, autocast_for, choose_exemplars, rescore, run_pass  # noqa: E402
from stimuli_gen.models import load_model  # noqa: E402


def make_collection(folder: Path, n: int, seed: int = 0) -> list[str]:
    from concurrent.futures import ThreadPoolExecutor

    photos = [Image.fromarray(load_photo(p)) for p in PHOTOS]
    folder.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> None:  # Pillow releases the GIL while resizing and encoding
        rng = np.random.default_rng([seed, i])
        ph = photos[i % len(photos)]
        w, h = (500, 375) if rng.random() < 0.75 else (375, 500)
        scale = max(w / ph.width, h / ph.height) * rng.uniform(1.0, 1.6)
        img = ph.resize((max(w, round(ph.width * scale)), max(h, round(ph.height * scale))))
        left = int(rng.integers(0, img.width - w + 1))
        top = int(rng.integers(0, img.height - h + 1))
        img.crop((left, top, left + w, top + h)).save(folder / f"img_{i:06d}.jpg", quality=90)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(one, range(n)))
    return list_collection(folder)[0]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_decoder(paths, decoder, pp, batch_size, workers, device) -> float:
    ds = ImageDataset(paths, list(range(len(paths))), pp, decoder)
    loader = make_loader(ds, batch_size, workers, device)
    n = 0
    sync(device)
    t = time.perf_counter()
    for batch in loader:
        x, idx = batch_to_device(batch, paths, pp, device)
        n += len(idx)
    sync(device)
    return n / (time.perf_counter() - t)


def bench_network(net, n, batch_size, pp, device, precision, channels_last) -> float:
    x = torch.rand(batch_size, 3, pp.crop, pp.crop, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        net = net.to(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast_for(device, precision):
        net.forward_layers(x, ["inception5b"])  # warm-up (cuDNN autotune, allocator)
        sync(device)
        t = time.perf_counter()
        done = 0
        while done < n:
            net.forward_layers(x, ["inception5b"])
            done += batch_size
        sync(device)
    return done / (time.perf_counter() - t)


def check_precision(net, paths, all_units, pp, opts, device, n_units: int, k: int = 10) -> None:
    """How often bf16 changes the top-k, and whether fp32 re-scoring of k + margin candidates recovers it."""
    units = all_units.sample(n=min(n_units, len(all_units)), random_state=0).reset_index(drop=True)
    units["unit_id"] = [f"{l}_{c}" for l, c in zip(units.layer, units.channel)]
    idx = list(range(len(paths)))
    keep = min(2 * k, len(paths))
    o32 = PassOptions(**{**vars(opts), "precision": "fp32", "keep": keep, "decoder": "pil"})
    o16 = PassOptions(**{**vars(opts), "precision": "bf16", "keep": keep})
    ref = run_pass(net, paths, idx, units, pp, o32, device, progress=False)
    bf = run_pass(net, paths, idx, units, pp, o16, device, progress=False)
    r32, r16 = ref.lists.result(), bf.lists.result()
    same_order = same_set = 0
    for side in ("max", "min"):
        a, b = r32[side][1][:, :k], r16[side][1][:, :k]
        same_order += int((a == b).all(1).sum())
        same_set += sum(set(x.tolist()) == set(y.tolist()) for x, y in zip(a, b))
    cand = sorted({int(i) for side in r16.values() for i in side[1].flatten()})
    values, _ = rescore(net.to(memory_format=torch.contiguous_format), paths, cand, units, pp, opts.statistic, opts.relu, device)
    got = choose_exemplars(bf.lists, values, {}, units, k)
    want = choose_exemplars(ref.lists, None, {}, units, k)
    n = 2 * len(units)
    print(f"precision check ({len(units)} units x max/min, k={k}, {len(paths)} images): bf16 pass alone: "
          f"same top-k order {same_order}/{n}, same top-k set {same_set}/{n}; bf16 + fp32 re-scoring of {keep} "
          f"candidates: exemplars identical to the fp32 pass: {got.image_index.tolist() == want.image_index.tolist()}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64 images, small batches (CPU-friendly)")
    ap.add_argument("--n", type=int, default=8192, help="images in the synthetic collection")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=-1, help="DataLoader workers (-1: CPU cores - 1, at most 16)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), fp32, bf16")
    ap.add_argument("--dir", help="where to build the collection (default: a temporary folder)")
    ap.add_argument("--check-precision", type=int, default=0, metavar="U",
                    help="also compare, for U units, bf16 pass + fp32 re-scoring against a pure fp32 pass")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.batch_size = 64, 16
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    workers = max(0, min((os.cpu_count() or 1) - 1, 16)) if args.workers < 0 else args.workers
    pp = Preprocess()
    opts = PassOptions(precision=args.precision, batch_size=args.batch_size, workers=workers, keep=22,
                       checkpoint_every_s=1e9, decoder="pil")
    precision = opts.resolved_precision(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    print(f"device: {device} = {name}; torch {torch.__version__}; {args.n} images 500x375/375x500 JPEG; "
          f"batch {args.batch_size}; {workers} loader workers; precision {precision}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.dir or tmp) / "bench_collection"
        t = time.perf_counter()
        paths = make_collection(folder, args.n)
        print(f"built the collection in {time.perf_counter() - t:.1f} s")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_model("torchvision_googlenet", "random", seed=0, device=device)
        rows = []
        for dec in DECODERS:
            rows.append((f"decode+preprocess [{dec}]", bench_decoder(paths, dec, pp, args.batch_size, workers, device)))
        rows.append((f"network alone to inception5b [{precision}]",
                     bench_network(model.net, max(args.n, 4 * args.batch_size), args.batch_size, pp, device, precision,
                                   device.type == "cuda")))
        layers = model.net.layer_names
        units = pd.DataFrame([(l, c) for l in layers for c in range(model.net.channels[l])], columns=["layer", "channel"])
        fastest = max(rows[: len(DECODERS)], key=lambda r: r[1])[0].split("[")[1].rstrip("]")
        opts.decoder = fastest
        res = run_pass(model.net, paths, list(range(len(paths))), units, pp, opts, device, progress=False)
        rows.append((f"full pass, {len(units)} units in 9 layers [{fastest}, {precision}]", res.n_seen / res.seconds))
        if args.check_precision:
            check_precision(model.net, paths, units, pp, opts, device, args.check_precision)
    width = max(len(r[0]) for r in rows)
    print()
    for label, ips in rows:
        print(f"  {label:<{width}}  {ips:10.1f} images/s")
    dec_best = max(r[1] for r in rows[: len(DECODERS)])
    net = rows[len(DECODERS)][1]
    full = rows[-1][1]
    bound = min(dec_best, net)
    print(f"\n  ratio full / fastest decoder      {full / dec_best:6.2f}")
    print(f"  ratio full / network alone        {full / net:6.2f}")
    print(f"  ratio full / min(decoder, network) {full / bound:5.2f}   (goal >= 0.5)")
    print(f"  full pass >= 5,000 images/s: {'yes' if full >= 5000 else 'no'} ({full:.0f}; goal set for one H100 + 16 cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
