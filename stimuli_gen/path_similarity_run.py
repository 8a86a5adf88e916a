"""The path-similarity check on a stimulus set: the model pass over the set's images, the tables and
the figure. The science (similarities, references, normalisation, flags) is in
``stimuli_gen.path_similarity``; writing the results into a set is in ``path_similarity_set``.

The pass records every stage of the network from the input side to the output, in order: the stem
outputs, every inception block output (after its ReLU: what the next stage receives) and the logits.
The max-pooling stages between blocks are left out (they only subsample the block before them).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from stimuli_gen import path_similarity as PS
from stimuli_gen.models import FeatureNet, LucidInceptionV1, TorchvisionGoogLeNet

# unnamed stages of FeatureNet._stages() recorded, by position among the unnamed stages, with their names
STEM_STAGES = {"torchvision_googlenet": {0: "conv1_pool1", 1: "conv3_pool2"},
               "lucid_inceptionv1": {0: "conv2d2_pool"}}
LOGITS = "logits"


def path_layers(model_name: str, net: FeatureNet) -> list[str]:
    """Names of the recorded stages, input side first."""
    return list(STEM_STAGES[model_name].values()) + list(net.layer_names) + [LOGITS]


def _logits(net: FeatureNet, h: torch.Tensor) -> torch.Tensor:
    if isinstance(net, TorchvisionGoogLeNet):
        return net.net.fc(torch.flatten(net.net.avgpool(h), 1))
    if isinstance(net, LucidInceptionV1):
        return net.softmax2_pre_activation_matmul(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))
    raise TypeError(f"no logits for {type(net).__name__}")


@torch.no_grad()
def stage_vectors(net: FeatureNet, model_name: str, x01: torch.Tensor, pooling: str = "mean") -> dict[str, torch.Tensor]:
    """One forward pass of a batch (``B x 3 x H x W`` in [0, 1]) recording every stage as ``B x D`` vectors."""
    stem = STEM_STAGES[model_name]
    out: dict[str, torch.Tensor] = {}

    def keep(name: str, t: torch.Tensor) -> None:
        out[name] = (t.mean(dim=(2, 3)) if pooling == "mean" else t.flatten(1)).float()

    h, j = net.to_input(x01), 0
    for name, fn in net._stages():
        if name is None:
            h = fn(h)
            if j in stem:
                keep(stem[j], h)
            j += 1
        else:
            _, h = fn(h)
            keep(name, h)
    out[LOGITS] = _logits(net, h).float()
    return out


def load_image(path: Path, size: int) -> torch.Tensor:
    """``3 x size x size`` float in [0, 1]; bilinear antialiased resize when the image has another size."""
    with Image.open(path) as im:
        x = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
    if x.shape[1:] != (size, size):
        x = F.interpolate(x[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        x = x.round().clamp(0, 255)
    return x.float() / 255.0


def activation_vectors(net: FeatureNet, model_name: str, images: list, size: int, pooling: str = "mean",
                       batch_size: int = 32, device: torch.device | str = "cpu",
                       progress: bool = False) -> dict[str, np.ndarray]:
    """Vectors ``N x D`` per stage for ``images`` (paths of PNGs/JPEGs, or ``3 x H x W`` uint8 tensors)."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    net = net.to(device)
    chunks: dict[str, list[np.ndarray]] = {}
    bar = tqdm(total=len(images), unit="img", desc="path similarity", disable=not progress, dynamic_ncols=True)
    for s in range(0, len(images), batch_size):
        batch = torch.stack([_as_input(im, size) for im in images[s: s + batch_size]]).to(device)
        for name, v in stage_vectors(net, model_name, batch, pooling).items():
            chunks.setdefault(name, []).append(v.cpu().numpy())
        bar.update(len(batch))
    bar.close()
    return {name: np.concatenate(c) for name, c in chunks.items()}


def _as_input(im, size: int) -> torch.Tensor:
    if isinstance(im, torch.Tensor):
        x = im.float()
        if x.shape[1:] != (size, size):
            x = F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
            x = x.round().clamp(0, 255)
        return x / 255.0
    return load_image(Path(im), size)


@dataclass
class CheckOptions:
    metric: str = "spearman"  # spearman | pearson | cosine
    pooling: str = "mean"  # mean (spatially averaged channel vectors) | flat (the flattened map)
    n_unrelated: int = 20  # unrelated natural images per unit
    size: int | None = None  # input size of every image; None: the set's exemplar crop size
    seed: int = 0  # choice of the unrelated images
    batch_size: int = 32
    threshold: float = PS.THRESHOLD

    def check(self) -> None:
        if self.metric not in PS.METRICS:
            raise ValueError(f"path similarity: metric must be one of {PS.METRICS}, got {self.metric!r}")
        if self.pooling not in PS.POOLINGS:
            raise ValueError(f"path similarity: pooling must be one of {PS.POOLINGS}, got {self.pooling!r}")
        if self.n_unrelated < 1 or self.batch_size < 1:
            raise ValueError(f"path similarity: n_unrelated and batch_size must be >= 1 "
                             f"(got {self.n_unrelated}, {self.batch_size})")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    """Which images the pass reads, and for each unit which rows are its visualizations, top exemplars
    and unrelated images."""

    images: list  # paths or uint8 tensors, in pass order
    rows: dict[str, dict[str, np.ndarray]]  # unit_id -> {"fv", "top", "unrelated"} row indices
    unrelated_source: str  # "collection" | "other units' exemplars"


def unit_seed(seed: int, unit_id: str) -> list[int]:
    """A seed per unit that does not depend on the order or number of units."""
    return [int(seed), zlib.crc32(unit_id.encode())]


def make_plan(units: pd.DataFrame, images: pd.DataFrame, root: Path, opts: CheckOptions,
              pool: list | None = None, pool_ids: list[str] | None = None, kind_fv: str = "feature_vis",
              kind_top: str = "natural_max") -> Plan:
    """Check that every unit has what the references need, and list the images of the pass.

    ``images`` is the set's images table (``unit_id, kind, rank, file[, spare, source]``). ``pool``
    are natural images for the unrelated reference (with ids ``pool_ids``, the collection sources);
    without it the unrelated images are other units' exemplars of the set.
    """
    problems = []
    fv_all = images[images.kind == kind_fv]
    if fv_all.empty:
        raise ValueError(f"{root}: the stimulus set has no feature visualizations (kind {kind_fv!r}); "
                         f"the path-similarity check compares them with natural exemplars")
    top_all = images[images.kind == kind_top]
    if "spare" in top_all:  # 0/1, "0"/"1", 0.0/1.0 or booleans depending on who read the table
        spare = top_all.spare.astype(str).str.strip().str.lower().isin(["1", "1.0", "true"])
        top_all = top_all[~spare.to_numpy()]
    src_col = "source" if "source" in images else "file"
    files: list = []
    index: dict[str, int] = {}

    def row_of(key: str, item) -> int:
        if key not in index:
            index[key] = len(files)
            files.append(item)
        return index[key]

    per_unit = {}
    for u in units.unit_id:
        fv = fv_all[fv_all.unit_id == u].sort_values("rank")
        top = top_all[top_all.unit_id == u].sort_values("rank")
        if len(fv) < 1 or len(top) < 2:
            problems.append(f"{u}: {len(fv)} feature visualization(s) and {len(top)} top exemplar(s) "
                            f"(needs at least 1 and 2)")
            continue
        per_unit[u] = (fv, top)
    if problems:
        raise ValueError(f"{root}: too few images for the path-similarity references: " + "; ".join(problems))

    rows = {}
    for u, (fv, top) in per_unit.items():
        own = set(images[(images.unit_id == u) & images.kind.str.startswith("natural")][src_col])
        if pool is not None:
            ids = np.arange(len(pool))
            excluded = {i for i, pid in enumerate(pool_ids) if pid in own}
            pick = PS.choose_unrelated(ids, excluded, opts.n_unrelated, unit_seed(opts.seed, u))
            unrel = [row_of(f"pool:{pool_ids[i]}", pool[i]) for i in pick]
        else:
            others = images[images.kind.str.startswith("natural") & (images.unit_id != u) & ~images[src_col].isin(own)]
            others = others.drop_duplicates(src_col).sort_values(src_col)
            cand = np.arange(len(others))
            try:
                pick = PS.choose_unrelated(cand, set(), opts.n_unrelated, unit_seed(opts.seed, u))
            except ValueError as e:
                raise ValueError(f"{root}: unit {u}: {e} (other units' exemplars of the set)") from None
            sel = others.iloc[pick]
            unrel = [row_of(f"src:{s}", root / f) for s, f in zip(sel[src_col], sel.file)]
        rows[u] = {"fv": np.array([row_of(f"file:{f}", root / f) for f in fv.file]),
                   "top": np.array([row_of(f"file:{f}", root / f) for f in top.file]),
                   "unrelated": np.array(unrel)}
    return Plan(files, rows, "collection" if pool is not None else "other units' exemplars")


def compute_table(vectors: dict[str, np.ndarray], plan: Plan, units: pd.DataFrame, metric: str) -> pd.DataFrame:
    """``path_similarity.csv``: one row per unit and stage."""
    depths = PS.layer_depths(list(vectors))
    parts = []
    for u in units.itertuples(index=False):
        if u.unit_id not in plan.rows:
            continue
        r = plan.rows[u.unit_id]
        t = PS.unit_table(u.unit_id, vectors, r["fv"], r["top"], r["unrelated"], depths, metric)
        t.insert(1, "group", u.group)
        t.insert(2, "unit_layer", u.layer)
        t.insert(3, "unit_depth", depths.get(u.layer, math.nan))
        parts.append(t)
    table = pd.concat(parts, ignore_index=True)
    table["metric"] = metric
    table["unrelated_source"] = plan.unrelated_source
    return table


def figure(table: pd.DataFrame, title: str, threshold: float = PS.THRESHOLD,
           references: tuple[str, str] = ("own top exemplars", "unrelated natural images")):
    """Normalised similarity against relative depth, one line per layer group, 95% interval over units."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = PS.interval_over_units(table, ["group", "depth"])
    fig, ax = plt.subplots(figsize=(8, 4.2), constrained_layout=True)
    colors = dict(zip(["early", "middle", "late", "class"], ["#1b9e77", "#d95f02", "#7570b3", "#e7298a"]))
    for group in [g for g in ("early", "middle", "late", "class") if g in set(stats.group)] + sorted(
            set(stats.group) - {"early", "middle", "late", "class"}):
        s = stats[stats.group == group].sort_values("depth")
        c = colors.get(group)
        n = int(table[table.group == group].unit_id.nunique())
        ax.plot(s.depth, s["mean"], marker="o", ms=3, color=c, label=f"{group} units (n = {n})")
        ax.fill_between(s.depth, s.low, s.high, color=ax.lines[-1].get_color(), alpha=0.12, lw=0)
        own = table[table.group == group].unit_depth.dropna().unique()
        for d in own:
            ax.axvline(d, color=ax.lines[-1].get_color(), lw=0.6, ls=":")
    trans = matplotlib.transforms.blended_transform_factory(ax.transAxes, ax.transData)
    for y, label in ((1, references[0]), (0, references[1])):
        ax.axhline(y, color="0.3", lw=0.8, ls="--")
        ax.text(0.01, y, label, transform=trans, va="bottom", ha="left", fontsize=8, color="0.3")
    ax.axhline(threshold, color="0.6", lw=0.6)
    # few units give wide intervals: keep the scale of the references readable (the table has every value)
    means = stats["mean"].dropna()
    lo = max(min(-0.25, means.min() - 0.15) if len(means) else -0.25, -5.0)
    hi = min(max(1.25, means.max() + 0.15) if len(means) else 1.25, 3.0)
    ax.set_ylim(lo, hi)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("relative depth in the network (input side → logits); dotted: the units' own layers")
    ax.set_ylabel(f"normalised path similarity\n(feature visualizations vs {references[0]})")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig
