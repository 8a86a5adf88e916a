"""Which units a stimulus set is about: seeded sampling per layer group, or an explicit list.

Pure functions; the result is a DataFrame with the contract columns ``unit_id, group, layer, channel``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from contracts.stimulus_set import make_unit_id


SAMPLING_METHODS = ("stratified", "uniform")
SAMPLING_RULES = {
    "stratified": "per group, per_group // n_layers units from each layer of the group, uniformly without "
                  "replacement over its channels; the per_group % n_layers remaining units go to as many distinct "
                  "layers drawn uniformly by the group's generator (seed, group position)",
    "uniform": "uniform without replacement over the (layer, channel) pairs of each group (fvmatch <= 0.x sets: "
               "layers with more channels get more units)",
}


def sample_units(layer_groups: dict[str, list[str]], channels: dict[str, int], per_group: int, seed: int,
                 method: str = "stratified") -> pd.DataFrame:
    """``per_group`` distinct units from each group.

    ``stratified`` (default): equal units per layer of the group, the remainder to layers drawn by
    the seed (``SAMPLING_RULES``), so a layer-group contrast does not depend on which layers a seed
    happened to pick. ``uniform``: uniformly over all (layer, channel) pairs of the group (wide layers
    get more units). Groups are processed in the order given, each from its own generator seeded by
    ``(seed, group position)``, so adding a group does not change the units drawn for the others.
    """
    if method not in SAMPLING_METHODS:
        raise ValueError(f"unit sampling method must be one of {SAMPLING_METHODS}, got {method!r}")
    rows = []
    seen: set[tuple[str, int]] = set()
    for g, (group, layers) in enumerate(layer_groups.items()):
        for layer in layers:
            if layer not in channels:
                raise ValueError(f"layer group {group!r}: unknown layer {layer!r}; layers: {list(channels)}")
        layers = list(dict.fromkeys(layers))
        pool = [(layer, c) for layer in layers for c in range(channels[layer]) if (layer, c) not in seen]
        if per_group > len(pool):
            raise ValueError(f"layer group {group!r} has {len(pool)} units, cannot sample {per_group}")
        rng = np.random.default_rng([seed, g])
        if method == "uniform":
            picked = [pool[i] for i in sorted(rng.choice(len(pool), size=per_group, replace=False))]
        else:
            quota = {layer: per_group // len(layers) for layer in layers}
            for i in sorted(rng.choice(len(layers), size=per_group % len(layers), replace=False)):
                quota[layers[i]] += 1
            picked = []
            for layer in layers:
                free = [c for c in range(channels[layer]) if (layer, c) not in seen]
                if quota[layer] > len(free):
                    raise ValueError(f"layer group {group!r}: layer {layer} has {len(free)} unsampled channels, "
                                     f"cannot take its {quota[layer]} of {per_group} units (stratified sampling)")
                picked += [(layer, free[i]) for i in sorted(rng.choice(len(free), size=quota[layer], replace=False))]
        for layer, c in picked:
            seen.add((layer, c))
            rows.append({"unit_id": make_unit_id(layer, c), "group": group, "layer": layer, "channel": int(c)})
    return pd.DataFrame(rows, columns=["unit_id", "group", "layer", "channel"])


def parse_unit_list(specs: list[str], layer_groups: dict[str, list[str]]) -> pd.DataFrame:
    """Explicit units, each ``layer:channel`` or ``layer:channel:group``. Without a group, the group
    whose layers contain the layer is used. Duplicates are an error (a unit is never shown twice)."""
    rows = []
    for spec in specs:
        parts = [p.strip() for p in str(spec).split(":")]
        if len(parts) not in (2, 3) or not parts[1].lstrip("-").isdigit():
            raise ValueError(f"unit {spec!r}: expected 'layer:channel' or 'layer:channel:group'")
        layer, channel = parts[0], int(parts[1])
        if len(parts) == 3:
            group = parts[2]
        else:
            owners = [g for g, layers in layer_groups.items() if layer in layers]
            if not owners:
                raise ValueError(f"unit {spec!r}: layer {layer!r} is in no layer group {dict(layer_groups)}; "
                                 f"write it as 'layer:channel:group'")
            group = owners[0]
        rows.append({"unit_id": make_unit_id(layer, channel), "group": group, "layer": layer, "channel": channel})
    df = pd.DataFrame(rows, columns=["unit_id", "group", "layer", "channel"])
    dup = df.unit_id[df.unit_id.duplicated()]
    if len(dup):
        raise ValueError(f"unit {dup.iloc[0]} listed twice")
    if df.empty:
        raise ValueError("the explicit unit list is empty")
    return df


def read_unit_file(path: str | Path, layer_groups: dict[str, list[str]]) -> pd.DataFrame:
    """A CSV with columns ``layer, channel`` (and optionally ``group``), or a text file of ``layer:channel[:group]``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"unit list not found: {path}")
    if path.suffix.lower() == ".csv":
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        if not {"layer", "channel"} <= set(df.columns):
            raise ValueError(f"{path}: a unit CSV needs columns 'layer' and 'channel'")
        specs = [f"{r.layer}:{r.channel}" + (f":{r.group}" if "group" in df.columns and r.group else "")
                 for r in df.itertuples()]
    else:
        specs = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return parse_unit_list(specs, layer_groups)


RESERVE_RULE = ("per layer, reserve units drawn uniformly without replacement from the layer's channels not "
                "already sampled, by a generator seeded with (seed, 'reserve', layer position in the model); a "
                "unit whose feature visualizations fail is replaced by the next reserve unit of its layer")


def reserve_units(units: pd.DataFrame, channels: dict[str, int], per_unit: int, seed: int) -> pd.DataFrame:
    """Stand-ins for units whose feature visualizations cannot beat their natural exemplars
    (``RESERVE_RULE``): ``per_unit`` reserve units for each sampled unit, from the same layer and
    group, so a replacement keeps the set's stratification by layer. Rows are in the order they are
    to be used within each layer. Pure and seeded: the same units, channels and seed give the same
    reserves, whatever else the set contains."""
    if per_unit < 0:
        raise ValueError(f"reserve units per unit must be >= 0 (got {per_unit})")
    rows = []
    taken = set(zip(units.layer, units.channel.astype(int)))
    layer_pos = {layer: i for i, layer in enumerate(channels)}
    for (group, layer), n in units.groupby(["group", "layer"], sort=False).size().items():
        free = [c for c in range(channels[layer]) if (layer, c) not in taken]
        rng = np.random.default_rng([seed, 0x7E5E, layer_pos[layer]])
        picked = rng.permutation(len(free))[:n * per_unit]
        for i in picked:
            c = free[int(i)]
            taken.add((layer, c))
            rows.append({"unit_id": make_unit_id(layer, c), "group": group, "layer": layer, "channel": int(c)})
    return pd.DataFrame(rows, columns=["unit_id", "group", "layer", "channel"])


def next_reserves(failed: pd.DataFrame, reserves: pd.DataFrame, used: set[str]) -> list[tuple[str, dict]]:
    """For each failed unit (rows with ``unit_id, group, layer``), the first reserve of its layer and
    group not in ``used``: ``[(failed unit_id, reserve row), ...]``; a unit without one is left out.
    ``used`` is updated."""
    picks = []
    for f in failed.itertuples():
        same = reserves[(reserves.layer == f.layer) & (reserves.group == f.group) & ~reserves.unit_id.isin(list(used))]
        if len(same):
            r = same.iloc[0].to_dict()
            used.add(r["unit_id"])
            picks.append((f.unit_id, r))
    return picks
