"""The exemplar pass: one streaming pass over a collection (or one shard of it) that keeps, on the
device, the top and bottom candidates of every unit; then an exact fp32 re-scoring of the candidates
that picks the exemplars, optional near-duplicate skipping, and the exemplar crops as PNG files.

Precision. On CUDA the pass runs under bf16 autocast with channels_last (about 2x faster). bf16
perturbs activations by ~0.5 %, which can swap images whose activations are that close. So the
pass keeps ``k + spares + margin`` candidates per side, and the candidates are re-scored in fp32
(TF32 off) before ranking: the final ranking and the recorded activations are fp32 and agree with
an all-fp32 pass unless an image outside the bf16 candidates would have entered the fp32 top
``k + spares`` (needs a bf16 error larger than the gap across ``margin`` ranks). On the CPU the
pass is fp32 throughout.

Checkpoints (``checkpoint_path``) are written every ``checkpoint_every_s`` and at the end: the
running lists, the position in the shard and the skipped/converted files, keyed by a fingerprint
of everything that determines the result, so ``resume`` refuses a checkpoint of another job.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from contracts.common import sha256_json
from stimuli_gen.collection import ImageDataset, Preprocess, SkipImage, load_crop, make_loader, prefetch_to_device
from stimuli_gen.models import FeatureNet, channel_statistic
from stimuli_gen.topk import EMPTY_INDEX, ExtremeLists

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class PassOptions:
    statistic: str = "mean"
    relu: str = "pre"
    precision: str = "auto"  # auto: bf16 on CUDA, fp32 elsewhere
    channels_last: bool = True
    batch_size: int = 64
    workers: int = 0
    decoder: str = "pil"
    keep: int = 22  # candidates per side and unit (k + spares + margin)
    checkpoint_every_s: float = 60.0

    def resolved_precision(self, device: torch.device) -> str:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.precision == "auto":
            return "bf16" if device.type == "cuda" else "fp32"
        return self.precision


@dataclass
class PassResult:
    lists: ExtremeLists
    n_seen: int  # files handled (read or skipped)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    converted: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    zero_counts: torch.Tensor | None = None  # U: images whose post-ReLU activation is exactly 0 (relu "post")


class UnitReader:
    """Maps the layer activations of a batch to the ``B x U`` unit activations, in unit order."""

    def __init__(self, units: pd.DataFrame, device: torch.device):
        self.layers = list(dict.fromkeys(units.layer))
        self.parts = []  # (layer, positions in unit order, channels)
        for layer in self.layers:
            pos = np.flatnonzero(units.layer.to_numpy() == layer)
            self.parts.append((layer, torch.as_tensor(pos, device=device),
                               torch.as_tensor(units.channel.to_numpy()[pos].astype(np.int64), device=device)))
        self.n = len(units)

    def __call__(self, acts: dict[str, torch.Tensor], statistic: str, post_from_pre: bool = False) -> torch.Tensor:
        """``B x U`` unit activations. ``post_from_pre``: ``acts`` are pre-ReLU maps and the result is the
        post-ReLU ranking key ``post_key`` (the post-ReLU statistic, ties at 0 broken by the pre-ReLU one)."""
        b = next(iter(acts.values())).shape[0]
        out = torch.empty(b, self.n, device=next(iter(acts.values())).device)
        for layer, pos, ch in self.parts:
            a = acts[layer]
            if post_from_pre:
                maps = a.index_select(1, ch)
                out[:, pos] = post_key(fp32_statistic(torch.relu(maps), statistic), fp32_statistic(maps, statistic))
            elif 4 * len(ch) < a.shape[1]:  # few channels: select the maps first
                out[:, pos] = fp32_statistic(a.index_select(1, ch), statistic)
            else:  # many: one read of the layer, then pick the channels
                out[:, pos] = fp32_statistic(a, statistic).index_select(1, ch)
        return out


POST_TIE_RULE = ("relu 'post': images are ranked by the post-ReLU statistic; images where it is exactly 0 (every "
                 "pre-ReLU value <= 0) tie there and are ranked among themselves by the pre-ReLU statistic (<= 0), "
                 "then by lower image index; the recorded activation is the post-ReLU value (0)")


def post_key(post: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """One number that ranks images by the post-ReLU statistic and breaks its ties at 0 by the pre-ReLU
    statistic: ``post`` where it is > 0, else ``pre`` (<= 0 there, for the mean and the max alike:
    the post-ReLU value is 0 only when every pre-ReLU value is <= 0). ``clamp(key, min=0)`` gives the
    post-ReLU value back."""
    return torch.where(post > 0, post, torch.minimum(pre, torch.zeros_like(pre)))


def fp32_statistic(acts: torch.Tensor, statistic: str) -> torch.Tensor:
    """``channel_statistic`` accumulated and returned in fp32 whatever the maps' dtype (bf16 under
    autocast): a bf16 mean would round the unit activations to 8 bits and create false ties."""
    if statistic == "mean":
        return acts.mean(dim=(2, 3), dtype=torch.float32)
    return channel_statistic(acts, statistic).float()


def autocast_for(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def strict_fp32():
    """True fp32 on CUDA: TF32 (10-bit mantissa) off for convolutions and matmuls."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@contextlib.contextmanager
def cudnn_benchmark(on: bool):
    """Let cuDNN time its convolution algorithms once per input shape (the pass has one or two)."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on or old
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def pass_fingerprint(**parts) -> str:
    return sha256_json(parts)


def run_pass(net: FeatureNet, paths: list[str], indices: list[int], units: pd.DataFrame, pp: Preprocess,
             opts: PassOptions, device: torch.device, checkpoint_path: os.PathLike | None = None,
             resume: bool = False, fingerprint: str = "", progress: bool = True,
             on_batch: Callable[[int], None] | None = None,
             activations_path: os.PathLike | None = None, all_channels: dict[str, int] | None = None,
             activations_dtype: str = "float16") -> PassResult:
    """Stream the images ``indices`` (global indices into ``paths``) through ``net`` and keep the
    top/bottom ``opts.keep`` per unit. ``on_batch(n_seen)`` is called after each batch (tests use it
    to interrupt). With ``activations_path`` and ``all_channels`` ({layer: n_channels}), the
    statistic of every channel of those layers is also saved (``activations_dtype``), one row per
    image of this shard in shard order (NaN rows for skipped files)."""
    precision = opts.resolved_precision(device)
    reader = UnitReader(units, device)
    layers = list(dict.fromkeys([*reader.layers, *(all_channels or {})]))
    lists = ExtremeLists.empty(len(units), opts.keep, device)
    post = opts.relu == "post"  # rank by post_key: ties at 0 broken by the pre-ReLU statistic
    zeros = torch.zeros(len(units), dtype=torch.long, device=device)
    position, skipped, converted = 0, [], []
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    if resume and ckpt and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state["fingerprint"] != fingerprint:
            raise RuntimeError(f"checkpoint {ckpt} belongs to a different job (other collection, units or "
                               f"parameters); delete it or run without --resume")
        lists = ExtremeLists.from_state_dict(state["lists"], device)
        position, skipped, converted = state["position"], list(map(tuple, state["skipped"])), list(map(tuple, state["converted"]))
        zeros = state.get("zeros", zeros.cpu()).to(device)
    memmap = None
    if activations_path is not None and all_channels:
        n_cols = sum(all_channels.values())
        if resume and position and Path(activations_path).is_file():
            memmap = np.lib.format.open_memmap(activations_path, mode="r+")
        else:
            memmap = np.lib.format.open_memmap(activations_path, mode="w+", dtype=np.dtype(activations_dtype),
                                               shape=(len(indices), n_cols))
            memmap[:] = np.nan
        row_of = {g: r for r, g in enumerate(indices)}

    def save(pos: int) -> None:
        if ckpt is None:
            return
        if memmap is not None:
            memmap.flush()
        tmp = ckpt.with_name(ckpt.name + ".tmp")
        torch.save({"fingerprint": fingerprint, "position": pos, "lists": lists.state_dict(),
                    "skipped": skipped, "converted": converted, "zeros": zeros.cpu()}, tmp)
        os.replace(tmp, ckpt)

    t0 = time.perf_counter()
    if position < len(indices):
        net_dev = net.to(device)
        if opts.channels_last:
            net_dev = net_dev.to(memory_format=torch.channels_last)
        loader = make_loader(ImageDataset(paths, indices[position:], pp, opts.decoder), opts.batch_size, opts.workers, device)
        bar = _progress(len(indices), position, progress)
        last_save = time.monotonic()
        with torch.inference_mode(), (strict_fp32() if precision == "fp32" else contextlib.nullcontext()), \
                cudnn_benchmark(device.type == "cuda"):
            for batch, crops, index in prefetch_to_device(loader, paths, pp, device):
                if len(index):
                    x = crops.float().div_(255.0)
                    if opts.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with autocast_for(device, precision):
                        acts = net_dev.forward_layers(x, layers, relu="pre" if post else opts.relu)
                    v = reader(acts, opts.statistic, post_from_pre=post)
                    lists = lists.update(v, index.to(device))
                    if post:
                        zeros = zeros + (v <= 0).sum(0)
                    if memmap is not None:
                        full = torch.cat([fp32_statistic(torch.relu(acts[l]) if post else acts[l], opts.statistic)
                                          for l in all_channels], 1)
                        rows = [row_of[int(i)] for i in index]
                        memmap[rows] = full.cpu().numpy().astype(memmap.dtype)
                skipped += batch.skipped
                converted += batch.converted
                position += batch.size
                bar.update(batch.size)
                if time.monotonic() - last_save > opts.checkpoint_every_s:
                    save(position)
                    last_save = time.monotonic()
                if on_batch is not None:
                    on_batch(position)
        bar.close()
        save(position)
    if memmap is not None:
        memmap.flush()
    return PassResult(lists=lists, n_seen=position, skipped=sorted(skipped), converted=sorted(converted),
                      seconds=time.perf_counter() - t0, zero_counts=zeros.cpu() if post else None)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", disable=not enabled, dynamic_ncols=True,
                desc="exemplar pass", smoothing=0.1)


def lists_from_activations(arr: np.ndarray, columns: pd.DataFrame, units: pd.DataFrame, keep: int,
                           chunk: int = 4096) -> ExtremeLists:
    """Candidate lists from a saved activation array (images x channels, float16; NaN rows = skipped
    files) instead of a pass over the images. ``columns`` has ``layer, channel`` per column."""
    col_of = {(l, int(c)): i for i, (l, c) in enumerate(zip(columns.layer, columns.channel))}
    missing = [u for u, l, c in zip(units.unit_id, units.layer, units.channel) if (l, int(c)) not in col_of]
    if missing:
        raise ValueError(f"unit(s) {missing[:5]} not in the saved activations (layers there: "
                         f"{sorted(set(columns.layer))})")
    cols = np.array([col_of[(l, int(c))] for l, c in zip(units.layer, units.channel)])
    lists = ExtremeLists.empty(len(units), keep)
    lo = torch.full((len(units),), float("inf"))
    hi = torch.full((len(units),), float("-inf"))
    for s in range(0, arr.shape[0], chunk):
        v = torch.from_numpy(np.asarray(arr[s : s + chunk][:, cols], dtype=np.float32))
        lists = lists.update(v, torch.arange(s, s + len(v)))
        finite = torch.nan_to_num(v, nan=0.0)
        lo, hi = torch.minimum(lo, finite.amin(0)), torch.maximum(hi, finite.amax(0))
    bad = [u for u, a, b in zip(units.unit_id, lo.tolist(), hi.tolist()) if a == b or not np.isfinite([a, b]).all()]
    if bad:  # float16 under- or overflow: the saved values cannot rank the images
        raise ValueError(f"saved activations of {bad[:5]} are constant or infinite (float16 range exceeded?); "
                         f"save them with activations_dtype = 'float32'")
    return lists


# ---- choosing the exemplars -------------------------------------------------------------------

def dhash(crops: torch.Tensor) -> torch.Tensor:
    """64-bit difference hash per image (``B x 64`` bool) from a 9x8 grayscale thumbnail."""
    g = crops.float().mean(1, keepdim=True)
    t = torch.nn.functional.interpolate(g, size=(8, 9), mode="area")[:, 0]
    return (t[:, :, 1:] > t[:, :, :-1]).reshape(len(crops), 64)


def pick_distinct(order: list[int], hashes: dict[int, torch.Tensor], n: int, max_hamming: int) -> list[int]:
    """First ``n`` of ``order`` (image indices, best first) skipping any image whose hash is within
    ``max_hamming`` bits of an image already picked. ``max_hamming < 0`` disables the check."""
    picked: list[int] = []
    for i in order:
        if len(picked) == n:
            break
        if max_hamming >= 0 and any(int((hashes[i] ^ hashes[j]).sum()) <= max_hamming for j in picked):
            continue
        picked.append(i)
    return picked


def rescore(net: FeatureNet, paths: list[str], candidate_index: list[int], units: pd.DataFrame, pp: Preprocess,
            statistic: str, relu: str, device: torch.device, batch_size: int = 64, with_values: bool = True,
            with_hashes: bool = True, workers: int = 0) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """fp32 activations ``{image index: U values}`` and/or dhashes of the candidate images, from the
    PIL path (the crops that are written as exemplar PNGs), decoded in ``workers`` processes."""
    reader = UnitReader(units, device)
    values: dict[int, torch.Tensor] = {}
    hashes: dict[int, torch.Tensor] = {}
    if not (with_values or with_hashes) or not candidate_index:
        return values, hashes
    net = net.to(device)
    loader = make_loader(ImageDataset(paths, candidate_index, pp, "pil"), batch_size, workers, device)
    with torch.inference_mode(), strict_fp32():
        for batch in loader:
            if batch.skipped:  # readable during the pass, not now
                i, reason = batch.skipped[0]
                raise RuntimeError(f"{paths[i]} can no longer be read ({reason}); was the collection changed?")
            chunk = batch.pixel_index.tolist()
            crops = batch.pixels.to(device, non_blocking=True)
            if with_values:
                acts = net.forward_layers(crops.float() / 255.0, reader.layers, relu="pre" if relu == "post" else relu)
                v = reader(acts, statistic, post_from_pre=relu == "post").cpu()
            h = dhash(crops).cpu()
            for j, i in enumerate(chunk):
                hashes[i] = h[j]
                if with_values:
                    values[i] = v[j]
    return values, hashes


def choose_exemplars(lists: ExtremeLists, values: dict[int, torch.Tensor] | None, hashes: dict[int, torch.Tensor],
                     units: pd.DataFrame, n: int, max_hamming: int = -1) -> pd.DataFrame:
    """Final exemplars per unit and side from the candidates, ranked by their fp32 values (ties by
    image index; ``values=None``: the pass values). Rows: unit_id, kind, rank, activation, image_index, pass_activation."""
    res = lists.result()
    if values is None:  # the pass was already fp32 on the PIL crops: use its values
        values = {}
        for side in ("max", "min"):
            v, idx = res[side]
            for u in range(len(units)):
                for val, i in zip(v[u].tolist(), idx[u].tolist()):
                    if i != EMPTY_INDEX:
                        values.setdefault(i, torch.full((len(units),), float("nan")))[u] = val
    rows, boundary = [], []
    for kind, side in (("natural_max", "max"), ("natural_min", "min")):
        pass_vals, idx = res[side]
        for u, unit_id in enumerate(units.unit_id):
            cand = [int(i) for i in idx[u] if int(i) != EMPTY_INDEX]
            pass_of = {int(i): float(v) for i, v in zip(idx[u], pass_vals[u])}
            sign = -1.0 if side == "max" else 1.0
            order = sorted(cand, key=lambda i: (sign * float(values[i][u]), i))
            picked = pick_distinct(order, hashes, n, max_hamming)
            if len(picked) < n:
                raise ValueError(f"unit {unit_id}: only {len(picked)} usable {kind} exemplars among "
                                   f"{len(cand)} candidates, need {n} (collection too small after skipped files, "
                                   f"or too many near-duplicates: raise --margin or lower --dedupe-hamming)")
            if len(cand) == lists.top.k and cand[-1] in picked:
                # the last candidate of the pass made it into the final set: an image just outside the
                # candidates might have too, so the candidate margin is too small for this unit
                boundary.append(f"{unit_id} {kind}")
            for rank, i in enumerate(picked):
                rows.append({"unit_id": unit_id, "kind": kind, "rank": rank, "activation": float(values[i][u]),
                             "image_index": i, "pass_activation": pass_of[i]})
    out = pd.DataFrame(rows)
    out.attrs["boundary"] = boundary
    return out


def write_crops(rows: pd.DataFrame, paths: list[str], pp: Preprocess, root: os.PathLike, threads: int = 8) -> None:
    """Write each exemplar's crop (exactly the uint8 pixels the network saw) to ``root / rows.file``.

    An image that is an exemplar of several units is decoded and encoded once, then copied. PNG
    encoding runs in threads (Pillow releases the GIL) at zlib level 1: lossless, ~5x faster than
    the default, files ~20 % larger."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    root = Path(root)
    by_image: dict[int, list[Path]] = {}
    for r in rows.itertuples():
        by_image.setdefault(int(r.image_index), []).append(root / r.file)

    def one(item: tuple[int, list[Path]]) -> None:
        i, outs = item
        try:
            crop = load_crop(paths[i], pp)[0].permute(1, 2, 0).numpy()
        except SkipImage as e:  # changed on disk since the pass
            raise RuntimeError(f"{paths[i]} can no longer be read ({e})") from None
        for out in outs:
            out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(outs[0], format="PNG", compress_level=1)
        for out in outs[1:]:
            shutil.copyfile(outs[0], out)

    with ThreadPoolExecutor(max(1, min(threads, os.cpu_count() or 1))) as pool:
        list(pool.map(one, by_image.items()))
