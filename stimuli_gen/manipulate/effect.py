"""Did a silent-units manipulation act on the visualizations? Per image and per unit, from the network itself.

A silent filter only misleads where a visualization leaves the natural range and switches it on. For each
image of a manipulated unit this measures, in the manipulated network, the unit's activation (the channel's
spatial mean, before or after the block's ReLU as the set reports it) and the silent part of it: the spatial mean
of ``relu(w_f * x + b_f)``, the term the filter adds to the unit's pre-ReLU map. ``tripped``: the unit's own
silent filter is non-zero somewhere on the image; ``silent_share`` = silent part / (silent part + |rest|), the rest
being the unit's own filter on its input (which the silent filters of earlier manipulated units may have changed),
so > 0.5 means the silent filter drives the unit more than everything else does (``dominated``); ``reach``:
the largest bias-free response of the silent filter on the image over its natural maximum (>= 1 where it trips;
below 1 it says how far the image stayed inside the natural range).

``set_effect`` applies it to a stimulus set made from a manipulated-model folder (the manifest's
``manipulation.folder``): the saved 8-bit visualizations, at the size they were saved, as an observer sees them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stimuli_gen.manipulate import silent as S

DOMINATED = 0.5  # silent share above which the silent filter, not the unit's own filter, drives the unit


@torch.inference_mode()
def silent_parts(net: S.SilentUnitsGoogLeNet | S.SilentUnitsInceptionV1, layer: str, channel: int, x01: torch.Tensor,
                 relu: str = "pre") -> pd.DataFrame:
    """Per image of ``x01`` (``B x 3 x H x W`` in [0, 1]): ``activation``, ``silent_part``, ``silent_share``,
    ``tripped`` and ``dominated`` of unit ``layer:channel`` in the manipulated network ``net``."""
    m, k = S.silent_slot(net, layer, channel)
    pre: list[torch.Tensor] = []  # the silent filter's response w_f * x + b_f (before its ReLU)
    hook = m.silent.register_forward_hook(lambda mod, inp, out: pre.append(out[:, k].float()))
    try:
        act = net.forward_layers(x01.float(), [layer], relu=relu)[layer][:, channel].float()
    finally:
        hook.remove()
    s = torch.relu(pre[-1])
    bias = float(m.silent.bias[k])  # minus the natural maximum (and margin): < 0
    # how far the image goes towards the natural range's edge: largest bias-free response / natural maximum
    # (>= 1: the filter is on somewhere); from the pre-ReLU response, so also below the edge
    reach = (pre[-1].flatten(1).amax(1).float() - bias) / max(-bias, 1e-30)
    part = s.mean((1, 2))
    a = act.mean((1, 2))
    rest = (a - part).abs() if relu == "pre" else (a - part).clamp_min(0)
    share = torch.where(part > 0, part / (part + rest).clamp_min(1e-30), torch.zeros_like(part))
    return pd.DataFrame({"activation": a.double().numpy(), "silent_part": part.double().numpy(),
                         "silent_share": share.double().numpy(), "tripped": (s.flatten(1) > 0).any(1).numpy(),
                         "dominated": (share > DOMINATED).numpy(), "reach": reach.double().numpy()})


def summarize_units(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per unit (``unit_id``): how many of its images trip / are dominated by its silent filter, mean share."""
    g = per_image.groupby("unit_id", sort=False)
    return pd.DataFrame({"n_images": g.size(), "tripped": g.tripped.sum().astype(int),
                         "dominated": g.dominated.sum().astype(int), "mean_silent_share": g.silent_share.mean(),
                         "mean_activation": g.activation.mean(), "mean_silent_part": g.silent_part.mean(),
                         "min_reach": g.reach.min()}).reset_index()


def set_effect(root: str | Path, model_folder: str | Path | None = None, kind: str = "feature_vis") -> pd.DataFrame:
    """Every ``kind`` image of every manipulated unit of the stimulus set at ``root``, measured with
    :func:`silent_parts` in the manipulated network it was made from (``model_folder``, default: the folder
    its manifest records). One row per image: ``unit_id, rank`` and the measures."""
    from PIL import Image

    from contracts.stimulus_set import load_stimulus_set
    from stimuli_gen.manipulate.store import load_manipulated

    s = load_stimulus_set(root)
    man = s.manipulation
    if not man:
        raise ValueError(f"{root}: the set was not made from a manipulated network (its manifest has no manipulation)")
    if man.get("kind") != "silent_units":
        raise ValueError(f"{root}: the effect of a {man.get('kind')} manipulation is not measured here (silent_units only)")
    folder = Path(model_folder or man["folder"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-weights warning: the set's manifest says it already
        model = load_manipulated(folder)
    relu = (s.manifest.get("feature_vis") or {}).get("relu", "pre")
    manipulated = set(man["units"])
    rows = []
    for u in s.units.itertuples(index=False):
        if f"{u.layer}:{int(u.channel)}" not in manipulated:
            continue
        imgs = s.unit_images(u.unit_id, kind).sort_values("rank")
        if not len(imgs):
            continue
        x = torch.stack([torch.from_numpy(np.array(Image.open(s.root / f).convert("RGB"))).permute(2, 0, 1)
                         for f in imgs.file]).float() / 255
        d = silent_parts(model.net, u.layer, int(u.channel), x, relu)
        rows.append(d.assign(unit_id=u.unit_id, rank=imgs["rank"].astype(int).to_numpy()))
    if not rows:
        raise ValueError(f"{root}: no {kind} images of a manipulated unit")
    out = pd.concat(rows, ignore_index=True)
    return out[["unit_id", "rank", "activation", "silent_part", "silent_share", "tripped", "dominated", "reach"]]
