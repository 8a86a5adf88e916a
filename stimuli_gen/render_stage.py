"""The feature-visualization stage of the generator: render every unit, and replace units whose
visualizations cannot beat their best natural exemplar by reserve units of the same layer
(``--reserve-units``, ``stimuli_gen.units.reserve_units``). Called by ``stimuli_gen.pipeline``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pandas as pd
import torch

from stimuli_gen import distributed as D
from stimuli_gen.config import GeneratorConfig
from stimuli_gen.models import LoadedModel
from stimuli_gen.units import next_reserves


def natural_targets(natural: pd.DataFrame | None) -> dict[str, float]:
    """Each unit's best natural activation (the diversity search's target)."""
    if natural is None or not len(natural):
        return {}
    best = natural[natural.kind == "natural_max"].groupby("unit_id", sort=False).activation.max()
    return {str(u): float(v) for u, v in best.items()}


def render_stage(cfg: GeneratorConfig, model: LoadedModel, units: pd.DataFrame, reserves: pd.DataFrame,
                  natural: pd.DataFrame | None, out: Path, work: Path, device: torch.device, info: D.DistInfo, say):
    """Feature visualizations of every unit (all ranks render; rank 0 validates). A unit whose FVs do
    not all beat its best natural exemplar is replaced by the next reserve of its layer while reserves
    last (``--reserve-units``); its images are removed. Returns ``(units, rows, parameters,
    validation, replaced)``; rows, parameters and validation are None when ``per_unit`` is 0."""
    if cfg.feature_vis.per_unit <= 0:
        return units, None, None, None, []
    from stimuli_gen.render import RenderConfig, render_feature_visualizations, validate_feature_vis

    ex = cfg.exemplars
    # the visualizations maximise and report the same unit activation (statistic, ReLU side) as the exemplars
    overrides = {"n_vis": cfg.feature_vis.per_unit, "seed": cfg.run.seed, "relu": ex.relu,
                 "statistic": ex.statistic, **cfg.feature_vis.overrides}
    rcfg = RenderConfig.from_preset(cfg.feature_vis.preset, **overrides)
    targets = D.gather_objects(natural_targets(natural) if info.is_main else None, info)[0]

    def render(todo: pd.DataFrame, round_: int) -> pd.DataFrame:
        return render_feature_visualizations(model, todo, rcfg, out, device=device,
                                             checkpoint_dir=work / ("fv" if round_ == 0 else f"fv_reserve{round_}"),
                                             progress=cfg.run.progress and info.is_main,
                                             resume=None if cfg.run.resume else False, targets=targets)

    rows = render(units, 0)
    replaced: list[dict] = []
    used: set[str] = set()
    for round_ in range(1, len(reserves) + 1):
        failed = _failed_units(rows, units)
        picks = next_reserves(failed, reserves, used)
        if not picks:
            break
        say(f"replacing {len(picks)} unit(s) whose feature visualizations lost to a natural exemplar "
            f"(reserve round {round_})")
        new_rows = render(pd.DataFrame([r for _, r in picks], columns=units.columns), round_)
        by = dict(picks)
        for f, r in picks:
            lost = rows[rows.unit_id == f]
            replaced.append({"unit_id": f, "replaced_by": r["unit_id"], "round": round_,
                             "margin_min": float(lost.margin.min()),
                             "search_status": str(lost.search_status.iloc[0])})
            if info.is_main:
                for rel in lost.file:
                    (out / rel).unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # the folder of its images, when nothing else is in it
                    (out / Path(lost.file.iloc[0]).parent).rmdir()
        rows = pd.concat([rows[~rows.unit_id.isin(list(by))], new_rows], ignore_index=True)
        units = pd.DataFrame([by.get(u.unit_id, u._asdict()) for u in units.itertuples(index=False)],
                             columns=units.columns)
    pos = {u: i for i, u in enumerate(units.unit_id)}
    rows = rows.assign(_o=rows.unit_id.map(pos)).sort_values(["_o", "rank"]).drop(columns="_o").reset_index(drop=True)
    val = validate_feature_vis(rows, natural) if info.is_main else None
    return units, rows, rcfg.to_dict(), val, replaced


def _failed_units(rows: pd.DataFrame, units: pd.DataFrame) -> pd.DataFrame:
    """Units with a feature visualization that does not beat the unit's best natural exemplar."""
    bad = set(rows.loc[~(rows.margin > 0), "unit_id"])
    return units[units.unit_id.isin(bad)]
