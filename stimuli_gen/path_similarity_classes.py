"""Path similarity for class units, as in Geirhos et al. (2023): visualizations of chosen class logits
against natural images of that class (upper reference: same-class pairs) and of other classes (lower
reference: same-class x other-class pairs), over every stage of the network.

    .venv/bin/python -m stimuli_gen.path_similarity_classes --collection /data/imagenet/val-by-synset \\
        --classes n01440764,n02102040 --out data/path_similarity/imagenet --weights pretrained

Labels come from the collection's layout (one folder per class, as ImageNet's synset folders) or
from a labels file (CSV with columns ``path,label``; paths relative to the file). The logit of a
class: a ``--class-index`` CSV (``label,index``), else the position of the label in the sorted labels
(ImageNet's synset order = torchvision's class index; Lucid's InceptionV1 needs ``--class-index``).
Visualizations are rendered with the generator's renderer (``stimuli_gen.render``) through a view of
the network whose last layer is ``logits``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stimuli_gen import path_similarity as PS
from stimuli_gen.models import FeatureNet
from stimuli_gen.path_similarity_run import LOGITS, Plan, _logits, activation_vectors, compute_table, unit_seed

CLASS_GROUP = "class"


class WithLogits(FeatureNet):
    """The same network with the class logits as one more layer (``B x classes x 1 x 1``), so that the
    renderer's channel objective on layer ``logits`` is the logit of a class."""

    def __init__(self, inner: FeatureNet, n_classes: int) -> None:
        super().__init__()
        self.inner = inner
        self.layer_names = tuple(inner.layer_names) + (LOGITS,)
        self.channels = {**inner.channels, LOGITS: n_classes}

    def to_input(self, x01: torch.Tensor) -> torch.Tensor:
        return self.inner.to_input(x01)

    def _stages(self):
        yield from self.inner._stages()

        def logits(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = _logits(self.inner, h)[:, :, None, None]
            return z, z

        yield LOGITS, logits

    def relu_replaced(self, relu):
        return self.inner.relu_replaced(relu)  # the ReLUs live in the wrapped network


def n_classes(net: FeatureNet) -> int:
    fc = getattr(getattr(net, "net", None), "fc", None) or getattr(net, "softmax2_pre_activation_matmul", None)
    return int(fc.out_features)


# ---- labels ----------------------------------------------------------------------------------------

def labelled_collection(collection: str | None, labels_file: str | None) -> pd.DataFrame:
    """``path, label`` for every image: from a labels CSV, or from one folder per class under ``collection``."""
    from stimuli_gen.collection import list_collection

    if labels_file:
        f = Path(labels_file)
        if not f.is_file():
            raise ValueError(f"labels file not found: {f}")
        df = pd.read_csv(f, dtype=str)
        pcol = "path" if "path" in df else ("file" if "file" in df else None)
        if pcol is None or "label" not in df:
            raise ValueError(f"{f}: needs columns path (or file) and label, has {list(df.columns)}")
        base = Path(collection) if collection else f.parent
        df = pd.DataFrame({"path": [str(p if Path(p).is_absolute() else base / p) for p in df[pcol]],
                           "label": df.label.str.strip()})
    else:
        if not collection:
            raise ValueError("give --collection (one folder per class) or --labels FILE")
        paths, root = list_collection(collection)
        parts = [Path(p).relative_to(root).parts for p in paths]
        flat = [p for p, q in zip(paths, parts) if len(q) < 2]
        if flat:
            raise ValueError(f"{collection}: {len(flat)} image(s) not in a class folder (e.g. {flat[0]}); "
                             f"use one folder per class or --labels FILE")
        df = pd.DataFrame({"path": paths, "label": [q[0] for q in parts]})
    if df.label.isna().any() or (df.label == "").any():
        raise ValueError("labels: some images have no label")
    return df.sort_values(["label", "path"]).reset_index(drop=True)


def class_indices(labels: list[str], class_index: str | None, model_name: str, n_logits: int) -> dict[str, int]:
    """Logit of each label: from a ``label,index`` CSV, else the label's position in sorted order."""
    if class_index:
        m = pd.read_csv(class_index, dtype={"label": str})
        mapping = dict(zip(m.label.str.strip(), m["index"].astype(int)))
    elif model_name == "lucid_inceptionv1":
        raise ValueError("lucid_inceptionv1 orders its 1008 classes its own way: pass --class-index label,index CSV")
    else:
        mapping = {lab: i for i, lab in enumerate(sorted(labels))}
    bad = {lab: mapping.get(lab) for lab in labels if not (mapping.get(lab) is not None and 0 <= mapping[lab] < n_logits)}
    if bad:
        raise ValueError(f"class logit out of range or missing for {dict(list(bad.items())[:5])} "
                         f"(the network has {n_logits} logits)")
    return mapping


def choose_classes(labels: list[str], classes: list[str] | None, n: int, seed: int) -> list[str]:
    all_labels = sorted(set(labels))
    if classes:
        missing = [c for c in classes if c not in all_labels]
        if missing:
            raise ValueError(f"class(es) {missing} not in the collection's labels (e.g. {all_labels[:5]})")
        return list(classes)
    if n > len(all_labels):
        raise ValueError(f"{n} classes requested, the collection has {len(all_labels)}")
    return sorted(np.random.default_rng(seed).choice(all_labels, size=n, replace=False).tolist())


def class_plan(fv: pd.DataFrame, labelled: pd.DataFrame, units: pd.DataFrame, n_related: int, n_unrelated: int,
               seed: int, root: Path) -> Plan:
    """Per class unit: its visualizations, ``n_related`` images of its class and ``n_unrelated`` of other
    classes (seeded per class; the same images whatever other classes are chosen)."""
    files: list = []
    index: dict[str, int] = {}

    def row(path: str) -> int:
        if path not in index:
            index[path] = len(files)
            files.append(path)
        return index[path]

    rows, problems = {}, []
    for u in units.itertuples(index=False):
        same = labelled[labelled.label == u.label].path.to_numpy()
        other = labelled[labelled.label != u.label].path.to_numpy()
        if len(same) < max(n_related, 2) or len(other) < n_unrelated:
            problems.append(f"class {u.label}: {len(same)} image(s) of the class and {len(other)} of other classes "
                            f"(needs {max(n_related, 2)} and {n_unrelated})")
            continue
        rng = np.random.default_rng(unit_seed(seed, u.unit_id))
        top = np.sort(rng.choice(len(same), size=n_related, replace=False))
        unrel = np.sort(rng.choice(len(other), size=n_unrelated, replace=False))
        rows[u.unit_id] = {"fv": np.array([row(str(root / f)) for f in fv[fv.unit_id == u.unit_id].file]),
                           "top": np.array([row(same[i]) for i in top]),
                           "unrelated": np.array([row(other[i]) for i in unrel])}
    if problems:
        raise ValueError("too few images for the references: " + "; ".join(problems))
    return Plan(files, rows, "other classes")


# ---- the run ---------------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> pd.DataFrame:
    from stimuli_gen.collection import Preprocess, load_crop
    from stimuli_gen.models import load_model
    from stimuli_gen.path_similarity_set import FIGURE, TABLE
    from stimuli_gen.render import RenderConfig, render_feature_visualizations

    t0 = time.perf_counter()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"{out} exists and is not empty; pass --overwrite to replace its files")
    labelled = labelled_collection(args.collection, args.labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(args.model, args.weights, seed=args.seed)
    n_logits = n_classes(model.net)
    classes = choose_classes(labelled.label.tolist(), args.classes.split(",") if args.classes else None,
                             args.n_classes, args.seed)
    mapping = class_indices(sorted(set(labelled.label)), args.class_index, model.name, n_logits)
    units = pd.DataFrame({"unit_id": [f"logit_{mapping[c]:04d}" for c in classes], "group": CLASS_GROUP,
                          "layer": LOGITS, "channel": [mapping[c] for c in classes], "label": classes})
    # every check before rendering: enough images of each class and of the others
    class_plan(pd.DataFrame({"unit_id": [], "file": []}), labelled, units, args.n_related, args.n_unrelated,
               args.seed, out)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if model.random_weights:
        print("RANDOM WEIGHTS: the network is untrained; these results say nothing about a real network.",
              file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    net = WithLogits(model.net, n_logits)
    rcfg = RenderConfig.from_preset(args.fv_preset, n_vis=args.fv_per_unit, seed=args.seed, steps=args.fv_steps,
                                    size=args.fv_size, out_size=args.fv_size, diversity_weight=args.diversity,
                                    relu="post")
    fv = render_feature_visualizations(net, units, rcfg, out, device=device, progress=not args.no_progress)
    plan = class_plan(fv, labelled, units, args.n_related, args.n_unrelated, args.seed, out)
    pp = Preprocess(resize=args.resize, crop=args.crop)
    images = [p if str(p).startswith(str(out)) else load_crop(p, pp)[0] for p in plan.images]
    vectors = activation_vectors(model.net, model.name, images, args.crop, args.pooling, args.batch_size, device,
                                 not args.no_progress)
    table = compute_table(vectors, plan, units, args.metric)
    table.insert(1, "label", table.unit_id.map(dict(zip(units.unit_id, units.label))))
    table["pooling"] = args.pooling
    table.to_csv(out / TABLE, index=False, float_format="%.6g")
    fv.to_csv(out / "feature_vis.csv", index=False)
    summary = PS.unit_summary(table, units)
    units.merge(summary, on="unit_id").to_csv(out / "classes.csv", index=False)
    import matplotlib.pyplot as plt

    from stimuli_gen.path_similarity_run import figure

    title = f"class logits of {model.name} ({model.weights['identity']}): path similarity, {args.metric}"
    if model.random_weights:
        title += "\nRANDOM WEIGHTS: untrained network"
    fig = figure(table, title, references=("images of the class", "images of other classes"))
    fig.savefig(out / FIGURE, dpi=120)
    plt.close(fig)
    print(f"path similarity of {len(units)} class logit(s): {time.perf_counter() - t0:.1f} s; written to {out}")
    own = table[table.layer == table.unit_layer]
    for r in own.itertuples(index=False):
        first = summary.set_index("unit_id").path_similarity_first_depth[r.unit_id]
        print(f"  {r.label} (logit {r.unit_id[6:]}): first depth with normalised > {PS.THRESHOLD}: {first:.2f}")
    return table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stimuli_gen.path_similarity_classes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collection", help="folder with one subfolder of images per class (ImageNet's synset layout)")
    p.add_argument("--labels", help="CSV path,label (paths relative to the file, or to --collection)")
    p.add_argument("--class-index", help="CSV label,index: the logit of each label (default: sorted label order)")
    p.add_argument("--classes", help="comma-separated labels (default: --n-classes chosen with --seed)")
    p.add_argument("--n-classes", type=int, default=10)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--model", default="torchvision_googlenet", choices=["torchvision_googlenet", "lucid_inceptionv1"])
    p.add_argument("--weights", default="pretrained", help="pretrained, random, or PATH")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-related", type=int, default=10, help="images of the class per logit (upper reference)")
    p.add_argument("--n-unrelated", type=int, default=20, help="images of other classes per logit (lower reference)")
    p.add_argument("--metric", default="spearman", choices=list(PS.METRICS))
    p.add_argument("--pooling", default="mean", choices=list(PS.POOLINGS))
    p.add_argument("--fv-per-unit", type=int, default=5)
    p.add_argument("--fv-steps", type=int, default=512)
    p.add_argument("--fv-size", type=int, default=224)
    p.add_argument("--fv-preset", default="lucid")
    p.add_argument("--diversity", type=float, default=0.0, help="diversity weight (default 0: plain logit visualizations)")
    p.add_argument("--resize", type=int, default=256)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from stimuli_gen.collection import CollectionError
    from stimuli_gen.models import WeightsUnavailable

    try:
        run(args)
    except (ValueError, CollectionError, WeightsUnavailable, FileNotFoundError) as e:
        print(f"path_similarity_classes: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
