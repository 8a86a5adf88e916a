"""The verification report written with every manipulated model.

Natural images (held out from the ones that set the biases / trained the classifier): the largest
absolute difference of every manipulated unit's activation map and of the logits, top-1 agreement
with the original network, and how many images trip the manipulation (silent filter non-zero, or
the classifier saying "visualization"). Feature visualizations: the same seeds rendered through the
original and the manipulated network with fvmatch's batched renderer; the correlation of their
grey-level images, how many trip the manipulation, and (fooling circuit) the correlation with the
target picture. Pure measurements here; ``write_report`` does the files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from stimuli_gen.objectives import BatchPlan
from stimuli_gen.render import RenderConfig, Runtime, fold_batchnorm, image_seed, optimize_batch


def grey_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the grey-level images ``a[i]`` and ``b[i]`` (``B x 3 x H x W``); ``b``
    is resized to ``a``'s size when they differ."""
    if b.shape[-2:] != a.shape[-2:]:
        b = torch.nn.functional.interpolate(b, size=a.shape[-2:], mode="bilinear", antialias=True, align_corners=False)
    ga, gb = a.float().mean(1).flatten(1), b.float().mean(1).flatten(1)
    ga, gb = ga - ga.mean(1, keepdim=True), gb - gb.mean(1, keepdim=True)
    return (ga * gb).sum(1) / (ga.norm(dim=1) * gb.norm(dim=1)).clamp_min(1e-12)


@torch.inference_mode()
def natural_check(orig, manip, units: list[tuple[str, int]], batches: Iterable[torch.Tensor],
                  trips: Callable[[torch.Tensor], torch.Tensor], labels: Iterable | None = None) -> dict:
    """Compare the two networks on natural images (``batches`` of ``B x 3 x H x W`` in [0, 1], or of
    ``(images, class logit per image)`` when the collection has labels: then also top-1 accuracy)."""
    layers = sorted({u[0] for u in units}, key=orig.layer_names.index)
    unit_diff = {f"{l}:{c}": 0.0 for l, c in units}
    n = agree = n_trip = n_lab = right_orig = right_manip = 0
    logit_diff = 0.0
    equal_all = True
    for x in batches:
        x, y = x if isinstance(x, (tuple, list)) else (x, None)
        a = orig.forward_layers(x, layers)
        b = manip.forward_layers(x, layers)
        for l, c in units:
            d = float((a[l][:, c] - b[l][:, c]).abs().max())
            unit_diff[f"{l}:{c}"] = max(unit_diff[f"{l}:{c}"], d)
        la, lb = orig(x), manip(x)
        equal_all &= bool(torch.equal(la, lb)) and all(torch.equal(a[l], b[l]) for l in layers)
        logit_diff = max(logit_diff, float((la - lb).abs().max()))
        agree += int((la.argmax(1) == lb.argmax(1)).sum())
        if y is not None:
            n_lab += len(y)
            right_orig += int((la.argmax(1) == y).sum())
            right_manip += int((lb.argmax(1) == y).sum())
        n_trip += int(trips(x).sum())
        n += len(x)
    out = {"n_images": n, "max_abs_diff_unit_activation": unit_diff, "max_abs_diff_logits": logit_diff,
           "top1_agreement": agree / max(n, 1), "n_tripped": n_trip, "bitwise_equal": equal_all}
    if n_lab:
        out |= {"n_labelled": n_lab, "top1_accuracy_original": right_orig / n_lab,
                "top1_accuracy_manipulated": right_manip / n_lab}
    return out


def render_pair(orig, manip, units: list[tuple[str, int]], cfg: RenderConfig,
                device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The same visualizations (same seeds, fvmatch's batched renderer) through both networks:
    ``(original, manipulated)`` images, ``len(units) * n_vis x 3 x size x size`` in [0, 1]."""
    dev = torch.device(device)
    rt = Runtime.resolve(cfg, dev)
    plan = BatchPlan([u[0] for u in units], [int(u[1]) for u in units], cfg.n_vis, dev)
    seeds = [image_seed(cfg.seed, f"{l}__{c}", r) for l, c in units for r in range(cfg.n_vis)]
    out = []
    for net in (orig, manip):
        opt = fold_batchnorm(net.to(dev)) if cfg.fold_batchnorm else net.to(dev)
        out.append(optimize_batch(opt, plan, seeds, cfg, rt).images)
    return out[0], out[1]


@torch.inference_mode()
def fv_check(orig, manip, units: list[tuple[str, int]], fv_orig: torch.Tensor, fv_manip: torch.Tensor, n_vis: int,
             trips: Callable[[torch.Tensor], torch.Tensor], target: torch.Tensor | None = None) -> list[dict]:
    """Per manipulated unit: similarity of its new visualizations to the original's (and to the target)."""
    corr = grey_correlation(fv_orig, fv_manip)
    t_orig = trips(fv_orig)
    t_manip = trips(fv_manip)
    rows = []
    for i, (l, c) in enumerate(units):
        s = slice(i * n_vis, (i + 1) * n_vis)
        a_m = manip.forward_layers(fv_manip[s], [l])[l][:, c].mean((1, 2))
        a_o = orig.forward_layers(fv_manip[s], [l])[l][:, c].mean((1, 2))
        row = {"unit": f"{l}:{c}", "n_vis": n_vis,
               "corr_new_vs_original_fv": [round(float(v), 4) for v in corr[s]],
               "mean_corr_new_vs_original_fv": float(corr[s].mean()),
               "new_fv_tripping": int(t_manip[s].sum()), "original_fv_tripping": int(t_orig[s].sum()),
               "activation_on_new_fv_manipulated": float(a_m.mean()),
               "activation_on_new_fv_original": float(a_o.mean())}
        if target is not None:
            ct = grey_correlation(fv_manip[s], target.expand(n_vis, -1, -1, -1))
            co = grey_correlation(fv_orig[s], target.expand(n_vis, -1, -1, -1))
            row |= {"corr_new_fv_vs_target": [round(float(v), 4) for v in ct],
                    "mean_corr_new_fv_vs_target": float(ct.mean()), "mean_corr_original_fv_vs_target": float(co.mean())}
        rows.append(row)
    return rows


def fv_grid(fv_orig: torch.Tensor, fv_manip: torch.Tensor, n_units: int, n_vis: int, path: Path,
            target: torch.Tensor | None = None) -> None:
    """One row per unit: its original visualizations, a gap, the manipulated network's (then the target)."""
    from PIL import Image

    s = fv_orig.shape[-1]
    cols = 2 * n_vis + 1 + (2 if target is not None else 0)
    grid = np.full((n_units * (s + 4), cols * (s + 4), 3), 255, np.uint8)
    u8 = lambda t: (t.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()  # noqa: E731
    for i in range(n_units):
        tiles = [fv_orig[i * n_vis + r] for r in range(n_vis)] + [None] + [fv_manip[i * n_vis + r] for r in range(n_vis)]
        if target is not None:
            tiles += [None, torch.nn.functional.interpolate(target[None], size=(s, s), mode="bilinear", antialias=True)[0]]
        for j, t in enumerate(tiles):
            if t is not None:
                grid[i * (s + 4):i * (s + 4) + s, j * (s + 4):j * (s + 4) + s] = u8(t)
    Image.fromarray(grid).save(path)


def to_markdown(report: dict) -> str:
    """A reader's version of ``verification.json``."""
    nat, held = report.get("bias_images"), report["held_out"]
    lines = [f"# Verification of a manipulated network: {report['kind']}", ""]
    if report.get("random_weights"):
        lines += ["**RANDOM WEIGHTS**: the base network is untrained; this model is for tests and dry runs only.", ""]
    lines += [f"Base: {report['base_model']} ({report['base_identity']}). Units: {', '.join(report['units'])}.", "",
              "## Natural images", "",
              "| images | n | max abs diff, unit activations | max abs diff, logits | top-1 agreement | tripped | bit-for-bit equal |",
              "|---|---|---|---|---|---|---|"]
    for name, r in (("used for the manipulation", nat), ("held out", held)):
        if r is None or not r["n_images"]:  # --holdout-fraction 0: no row of zeros that reads like a failure
            continue
        lines.append(f"| {name} | {r['n_images']} | {max(r['max_abs_diff_unit_activation'].values()):.3g} | "
                     f"{r['max_abs_diff_logits']:.3g} | {r['top1_agreement']:.4f} | {r['n_tripped']} | {r['bitwise_equal']} |")
    clf = report.get("classifier")
    if clf and "held_out_accuracy" in clf:
        lines += ["", f"Natural-vs-visualization classifier ({clf['file']}): held-out accuracy at training "
                  f"{clf['held_out_accuracy']:.3f} (natural {clf['held_out_accuracy_natural']:.3f}, visualizations "
                  f"{clf['held_out_accuracy_visualization']:.3f}); 'tripped' above = natural images it calls visualizations."]
    lab = report.get("labels")
    lines += ["", "Top-1 agreement: the fraction of images on which both networks predict the same class."]
    if lab:
        lines += ["", f"Top-1 accuracy against the collection's labels ({lab['labels']}; logits: {lab['class_index']}; "
                  f"{lab['n_labelled']} labelled images of {lab['n_classes']} classes):", "",
                  "| images | labelled | original network | manipulated network |", "|---|---|---|---|"]
        for name, r in (("used for the manipulation", nat), ("held out", held)):
            if r is not None and "n_labelled" in r:
                lines.append(f"| {name} | {r['n_labelled']} | {r['top1_accuracy_original']:.4f} | "
                             f"{r['top1_accuracy_manipulated']:.4f} |")
    else:
        lines += ["No accuracy: the collection has no labels (`--labels folders` or `--labels FILE.csv`)."]
    if held["n_images"]:
        lines += ["", "Per unit, largest absolute difference of the activation map on held-out images:", ""]
        lines += [f"- {u}: {d:.3g}" for u, d in held["max_abs_diff_unit_activation"].items()]
    else:
        lines += ["", "No held-out images (--holdout-fraction 0): every image of the collection set the manipulation, "
                  "so a stimulus set made from this collection has the original network's exemplars; the held-out "
                  "behaviour of the manipulation is not measured here."]
    fv = report.get("feature_vis")
    if fv:
        p = fv["parameters"]
        lines += ["", "## Feature visualizations", "",
                  f"{p['n_vis']} per unit, {p['steps']} steps at {p['size']} px"
                  + (f", lr {p['lr']}" if "lr" in p else "") + ", same seeds through both networks "
                  f"(`verification_fv.png`: left the original network's, right the manipulated one's"
                  + (", then the target" if report["kind"] == "fooling_circuit" else "") + ").", "",
                  "| unit | corr. new vs original FV | new FVs tripping | original FVs tripping | unit act. on new FVs (manip. / orig. net) |"
                  + (" corr. new FV vs target | corr. original FV vs target |" if report["kind"] == "fooling_circuit" else ""),
                  "|---|---|---|---|---|" + ("---|---|" if report["kind"] == "fooling_circuit" else "")]
        for r in fv["units"]:
            line = (f"| {r['unit']} | {r['mean_corr_new_vs_original_fv']:.3f} | {r['new_fv_tripping']}/{r['n_vis']} | "
                    f"{r['original_fv_tripping']}/{r['n_vis']} | {r['activation_on_new_fv_manipulated']:.3g} / "
                    f"{r['activation_on_new_fv_original']:.3g} |")
            if "mean_corr_new_fv_vs_target" in r:
                line += f" {r['mean_corr_new_fv_vs_target']:.3f} | {r['mean_corr_original_fv_vs_target']:.3f} |"
            lines.append(line)
    for note in report.get("notes", []):
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def write_report(folder: Path, report: dict, fv_orig: torch.Tensor | None = None, fv_manip: torch.Tensor | None = None,
                 target: torch.Tensor | None = None) -> None:
    from contracts.common import write_json_atomic

    write_json_atomic(folder / "verification.json", report)
    (folder / "verification.md").write_text(to_markdown(report))
    if fv_orig is not None and report.get("feature_vis"):
        fv_grid(fv_orig, fv_manip, len(report["units"]), report["feature_vis"]["parameters"]["n_vis"],
                folder / "verification_fv.png", target)
