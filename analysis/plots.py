"""Figures (seaborn on matplotlib's Agg backend): accuracy by condition, model-based means, RT distributions."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless and deterministic; must precede pyplot
import matplotlib.lines  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from contracts.results import CHANCE  # noqa: E402

LAYERS = ("early", "middle", "late")
TYPE_LABEL = {"exemplar": "Natural exemplars", "feature_vis": "Feature visualizations"}
LEVEL_LABEL = {"row": "Accuracy per matched row", "trial": "Whole-trial accuracy"}
CHANCE_LABEL = {"row": "chance 1/3", "trial": "chance 1/6"}
MODEL_TITLE = {"glmm_trial": "Whole trial (glmm_trial, primary)", "glmm_row": "Per row (glmm_row)"}


def _theme():
    sns.set_theme(context="paper", style="ticks", font_scale=1.15,
                  rc={"axes.spines.right": False, "axes.spines.top": False, "svg.fonttype": "none",
                      "figure.dpi": 100, "savefig.dpi": 200})


def save(fig, folder: Path, stem: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.png", folder / f"{stem}.svg"]
    for p in paths:
        # Fixed metadata so that the same data give the same files.
        meta = {"Date": None} if p.suffix == ".svg" else {"Software": "fvmatch"}
        fig.savefig(p, bbox_inches="tight", metadata=meta)
    plt.close(fig)
    return paths


def accuracy_figure(part: pd.DataFrame, cond: pd.DataFrame, title: str = "") -> plt.Figure:
    """Rows: level (per row, whole trial); columns: trial type. x: layer group; colour: n images.
    Large markers: mean over participants with 95% bootstrap CI; small dots: participants; dashed: chance."""
    _theme()
    types = [t for t in ("exemplar", "feature_vis") if t in set(cond.trial_type)] or ["exemplar"]
    levels = [lv for lv in ("row", "trial") if lv in set(cond.level)] or ["row", "trial"]
    n_vals = sorted(cond.n_images.unique()) if len(cond) else [1]
    palette = dict(zip(n_vals, sns.color_palette("viridis", len(n_vals) + 1)[: len(n_vals)]))
    layers = [g for g in LAYERS if g in set(cond.layer_group)] or list(LAYERS)
    fig, axes = plt.subplots(len(levels), len(types), figsize=(3.6 * len(types) + 0.8, 3.1 * len(levels)),
                             sharey="row", squeeze=False)
    width = 0.72
    rng = np.random.default_rng(0)  # jitter only; fixed so figures are reproducible
    for r, level in enumerate(levels):
        for c, ttype in enumerate(types):
            ax = axes[r, c]
            for j, n in enumerate(n_vals):
                off = (j - (len(n_vals) - 1) / 2) * width / len(n_vals)
                p = part[(part.level == level) & (part.trial_type == ttype) & (part.n_images == n)]
                x = p.layer_group.map({g: i for i, g in enumerate(layers)}).to_numpy(dtype=float) + off
                ax.scatter(x + rng.uniform(-0.035, 0.035, len(x)), p.accuracy, s=9, color=palette[n], alpha=0.35,
                           linewidths=0, zorder=2)
                m = cond[(cond.level == level) & (cond.trial_type == ttype) & (cond.n_images == n)]
                m = m.set_index("layer_group").reindex(layers)
                xm = np.arange(len(layers)) + off
                yerr = np.vstack([m.accuracy - m.ci_low, m.ci_high - m.accuracy]).astype(float)
                ax.errorbar(xm, m.accuracy, yerr=np.where(np.isfinite(yerr), yerr, 0), fmt="o-", color=palette[n],
                            ms=6, lw=1.3, capsize=2.5, mec="white", mew=0.6, zorder=3,
                            label=f"n = {n}" if (r == 0 and c == 0) else None)
            ax.axhline(CHANCE[level], ls="--", color="0.35", lw=1, zorder=1)
            ax.text(-0.47, CHANCE[level] - 0.015, CHANCE_LABEL[level], ha="left", va="top", fontsize=8.5, color="0.3")
            ax.set_xticks(range(len(layers)), [g.capitalize() for g in layers])
            ax.set_xlim(-0.5, len(layers) - 0.5)
            ax.set_ylim(0, 1.04)
            ax.set_xlabel("Layer group" if r == len(levels) - 1 else "")
            ax.set_ylabel(LEVEL_LABEL[level] if c == 0 else "")
            if r == 0:
                ax.set_title(TYPE_LABEL.get(ttype, ttype), fontweight="bold")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, [lab.removeprefix("n = ") for lab in labels], loc="center left", bbox_to_anchor=(1.0, 0.5),
                   frameon=False, title="Images per\nunit (n)")
    fig.text(1.0, 0.12, "points: participants\nbars: 95% bootstrap CI\nover participants", fontsize=8, color="0.3",
             ha="left", va="bottom", transform=fig.transFigure)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def accuracy_summary_figure(part: pd.DataFrame, cond: pd.DataFrame, title: str = "") -> plt.Figure:
    """Accuracy per trial type x layer group, averaged over n: one panel per level (row, trial).
    Readable also when each participant has few trials per condition."""
    _theme()
    colors = {"exemplar": sns.color_palette("deep")[0], "feature_vis": sns.color_palette("deep")[3]}
    levels = [lv for lv in ("row", "trial") if lv in set(cond.level)] or ["row", "trial"]
    layers = [g for g in LAYERS if g in set(cond.layer_group)] or list(LAYERS)
    types = [t for t in ("exemplar", "feature_vis") if t in set(cond.trial_type)]
    fig, axes = plt.subplots(1, len(levels), figsize=(3.7 * len(levels) + 1.6, 3.3), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, level in zip(axes[0], levels):
        for k, t in enumerate(types):
            off = (k - (len(types) - 1) / 2) * 0.22
            p = part[(part.level == level) & (part.trial_type == t)]
            x = p.layer_group.map({g: i for i, g in enumerate(layers)}).to_numpy(dtype=float) + off
            ax.scatter(x + rng.uniform(-0.04, 0.04, len(x)), p.accuracy, s=10, color=colors[t], alpha=0.35,
                       linewidths=0, zorder=2)
            m = cond[(cond.level == level) & (cond.trial_type == t)].set_index("layer_group").reindex(layers)
            yerr = np.vstack([m.accuracy - m.ci_low, m.ci_high - m.accuracy]).astype(float)
            ax.errorbar(np.arange(len(layers)) + off, m.accuracy, yerr=np.where(np.isfinite(yerr), yerr, 0),
                        fmt="o-", color=colors[t], ms=7, lw=1.6, capsize=3, mec="white", mew=0.7, zorder=3,
                        label=TYPE_LABEL.get(t, t))
        ax.axhline(CHANCE[level], ls="--", color="0.35", lw=1, zorder=1)
        ax.text(-0.47, CHANCE[level] - 0.015, CHANCE_LABEL[level], ha="left", va="top", fontsize=8.5, color="0.3")
        ax.set_xticks(range(len(layers)), [g.capitalize() for g in layers])
        ax.set_xlim(-0.5, len(layers) - 0.5)
        ax.set_ylim(0, 1.04)
        ax.set_xlabel("Layer group")
        ax.set_ylabel(LEVEL_LABEL[level])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.55), frameon=False, title="Trial type")
    fig.text(1.0, 0.1, "points: participants\nbars: 95% bootstrap CI\nover participants\n(averaged over n)",
             fontsize=8, color="0.3", ha="left", va="bottom", transform=fig.transFigure)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def model_means_figure(contrasts: dict[str, pd.DataFrame], title: str = "") -> plt.Figure | None:
    """Model-based P(correct) per trial type x layer group (random effects at zero), one panel per GLMM."""
    panels = [(name, c) for name, c in contrasts.items() if len(c) and "prob" in c]
    if not panels:
        return None
    _theme()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels) + 0.6, 3.2), squeeze=False)
    colors = {"exemplar": sns.color_palette("deep")[0], "feature_vis": sns.color_palette("deep")[3]}
    for ax, (name, c) in zip(axes[0], panels):
        m = c[c.contrast.str.startswith("mean | ")].copy()
        m[["trial_type", "layer_group"]] = m.contrast.str.removeprefix("mean | ").str.split(", ", expand=True)
        layers = [g for g in LAYERS if g in set(m.layer_group)]
        for k, (t, d) in enumerate(m.groupby("trial_type", sort=False)):
            d = d.set_index("layer_group").reindex(layers)
            x = np.arange(len(layers)) + (k - 0.5) * 0.16
            ax.errorbar(x, d.prob, yerr=[d.prob - d.prob_ci_low, d.prob_ci_high - d.prob], fmt="o-", capsize=3,
                        color=colors.get(t), label=TYPE_LABEL.get(t, t), ms=6, lw=1.4, mec="white", mew=0.6)
        level = "trial" if "trial" in name else "row"
        ax.axhline(CHANCE[level], ls="--", color="0.35", lw=1)
        ax.text(-0.47, CHANCE[level] - 0.015, CHANCE_LABEL[level], ha="left", va="top", fontsize=8.5, color="0.3")
        ax.set_xticks(range(len(layers)), [g.capitalize() for g in layers])
        ax.set_xlim(-0.5, len(layers) - 0.5)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("Layer group")
        ax.set_ylabel(f"Model P(correct), {'whole trial' if level == 'trial' else 'per row'}")
        ax.set_title(MODEL_TITLE.get(name, name), fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()  # outside the panels: inside it covered points
    fig.suptitle(title or "GLMM estimates (typical participant and unit, averaged over n), 95% Wald CI", fontsize=10)
    fig.tight_layout()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title="Trial type",
               fontsize=8.5)
    return fig


def rt_figure(trials: pd.DataFrame) -> plt.Figure | None:
    """Distributions of the time to confirm: rows trial type, columns layer group, colour n (log axis)."""
    d = trials[np.isfinite(trials.rt_confirm) & (trials.rt_confirm > 0)]
    if d.empty:
        return None
    _theme()
    types = [t for t in ("exemplar", "feature_vis") if t in set(d.trial_type)]
    layers = [g for g in LAYERS if g in set(d.layer_group)]
    n_vals = sorted(d.n_images.unique())
    palette = dict(zip(n_vals, sns.color_palette("viridis", len(n_vals) + 1)[: len(n_vals)]))
    fig, axes = plt.subplots(len(types), len(layers), figsize=(2.9 * len(layers) + 1.2, 2.3 * len(types)),
                             sharey=True, sharex=True, squeeze=False)
    lo, hi = np.log10(d.rt_confirm.quantile(0.002)), np.log10(d.rt_confirm.quantile(0.998))
    binrange = (lo - 0.05, hi + 0.05)  # in log10 units, as histplot expects with log_scale
    for r, t in enumerate(types):
        for c, g in enumerate(layers):
            ax = axes[r, c]
            sub = d[(d.trial_type == t) & (d.layer_group == g)]
            if len(sub):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # an n absent from a panel: empty histogram
                    sns.histplot(sub, x="rt_confirm", hue="n_images", hue_order=n_vals, palette=palette,
                                 element="step", stat="density", common_norm=False, fill=False, bins=20,
                                 binrange=binrange, log_scale=True, ax=ax, legend=False, lw=1.3)
                for n in n_vals:
                    med = sub.rt_confirm[sub.n_images == n].median()
                    if np.isfinite(med):
                        ax.axvline(med, color=palette[n], lw=1, ls=":")
            ticks = [v for v in (0.5, 1, 2, 5, 10, 20, 50, 100) if 10 ** binrange[0] <= v <= 10 ** binrange[1]]
            ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
            ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel("Time to confirm (s)" if r == len(types) - 1 else "")
            ax.set_ylabel(f"{TYPE_LABEL.get(t, t)}\ndensity" if c == 0 else "")
            if r == 0:
                ax.set_title(f"{g.capitalize()} layers", fontweight="bold")
    handles = [matplotlib.lines.Line2D([], [], color=palette[n], lw=1.5) for n in n_vals]
    fig.legend(handles, [str(n) for n in n_vals], title="Images per\nunit (n)", frameon=False, loc="center left",
               bbox_to_anchor=(1.0, 0.5))
    fig.text(1.0, 0.1, "dotted: medians", fontsize=8, color="0.3", transform=fig.transFigure)
    fig.tight_layout()
    return fig
