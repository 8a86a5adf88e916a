"""``python -m stimuli_gen.manipulate.cli``: make manipulated networks (controls) for fvmatch-stimuli."""

from __future__ import annotations

import argparse
import sys

from stimuli_gen.models import MODEL_NAMES

EPILOG = """examples:
  # silent units next to two units, biases from ImageNet val (20% held out for the verification report)
  python -m stimuli_gen.manipulate.cli silent --out models/silent-4a --units inception4a:17,inception4a:200 \\
      --collection /data/imagenet/val --weights pretrained --device cuda --fv-steps 512 --fv-size 224

  # then a stimulus set from it, like from any other model
  fvmatch-stimuli --out data/stimuli/silent-4a --weights models/silent-4a --units inception4a:17,inception4a:200

  # Lucid's InceptionV1 (the authors' network; no download here: Lucent's inception5h.pth)
  python -m stimuli_gen.manipulate.cli silent --model lucid_inceptionv1 --weights models/inception5h.pth \
      --out models/silent-lucid-4a --units mixed4a:17 --collection /data/imagenet/val --device cuda
  fvmatch-stimuli --model lucid_inceptionv1 --weights models/silent-lucid-4a --units mixed4a:17:middle --out ...

The model folder holds weights.pt, manipulation.json and the verification report
(verification.md / .json / _fv.png). See stimuli_gen/README.md, "Manipulated networks".
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="model folder to write (written whole, or not at all)")
    p.add_argument("--units", required=True, help="units to manipulate, comma-separated layer:channel")
    p.add_argument("--collection", default="builtin", help="natural images: 'builtin', a folder, or a text file of paths")
    p.add_argument("--builtin-dir", default="data/collections/builtin", help="where 'builtin' writes its images")
    p.add_argument("--model", default="torchvision_googlenet", choices=list(MODEL_NAMES),
                   help="base network (lucid_inceptionv1: Lucid's InceptionV1, units mixed3a:N ...; it has no download: "
                   "--weights PATH to Lucent's inception5h.pth, or random)")
    p.add_argument("--weights", default="pretrained", help="base weights: pretrained, random, auto (pretrained if cached, else random; demos), or PATH to a state dict")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split, directions and renders (default 0)")
    p.add_argument("--holdout-fraction", type=float, default=0.2, help="natural images held out for verification (default 0.2; 0: all set the biases, as a control whose "
                   "stimulus set uses this same collection needs)")
    p.add_argument("--min-images", type=int, default=50, help="fewest natural images that may set the manipulation (default 50)")
    p.add_argument("--resize", type=int, default=256, help="resize short side to N (default 256)")
    p.add_argument("--crop", type=int, default=224, help="center crop N x N (default 224)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (default 0)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--fv-per-unit", type=int, default=2, help="visualizations per unit in the verification (0: none)")
    p.add_argument("--fv-steps", type=int, default=128, help="optimization steps of those visualizations (default 128)")
    p.add_argument("--fv-size", type=int, default=128, help="their size in px (default 128)")
    p.add_argument("--fv-lr", type=float, default=None, help="their Adam learning rate (default: Lucid's 0.05). Use "
                   "the stimulus set's own: few steps at 0.05 stay inside the natural range, so no silent filter "
                   "switches on and the report shows 0 tripping")
    p.add_argument("--labels", default=None, help="class labels for top-1 accuracy in the verification report: "
                   "'folders' (one folder per class, ImageNet val's synset layout) or a CSV path,label (default: none)")
    p.add_argument("--class-index", default=None, help="CSV label,index: the logit of each label (default: the "
                   "position of the label in sorted order, ImageNet's synset order)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    p.add_argument("--no-progress", action="store_true", help="quiet")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stimuli_gen.manipulate.cli", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("silent", help="silent units: a parallel filter that is zero on every natural image",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(s)
    s.add_argument("--lambda", dest="lam", type=float, default=3.0, help="w_f = gain * (w + lambda * dw)")
    s.add_argument("--gain", type=float, default=100.0, help="scale of the silent filter and its bias")
    s.add_argument("--margin", type=float, default=1e-3, help="bias = -(natural max) * (1 + margin)")
    f = sub.add_parser("fooling", help="fooling circuit: a classifier switches units to a template of a target picture",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _common(f)
    f.add_argument("--classifier", required=True, help="classifier file written by train-classifier")
    f.add_argument("--target", default=None, help="target picture (default: scikit-image's astronaut)")
    f.add_argument("--target-size", type=int, default=224, help="template size in px")
    f.add_argument("--template-gain", type=float, default=1.0, help="scale of the template unit")
    t = sub.add_parser("train-classifier", help="train the natural-vs-visualization classifier of the fooling circuit",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--out", required=True, help="classifier file (.pt); its description goes next to it (.json)")
    t.add_argument("--collection", default="builtin", help="natural images")
    t.add_argument("--builtin-dir", default="data/collections/builtin", help="where 'builtin' writes its images")
    t.add_argument("--model", default="torchvision_googlenet", choices=list(MODEL_NAMES),
                   help="network whose visualizations are rendered (the base network of the fooling model)")
    t.add_argument("--weights", default="pretrained", help="its weights (pretrained, random, auto, PATH)")
    t.add_argument("--seed", type=int, default=0, help="seed of splits, units, renders and training")
    t.add_argument("--holdout-fraction", type=float, default=0.2, help="natural images held out")
    t.add_argument("--min-images", type=int, default=50, help="fewest natural training images")
    t.add_argument("--size", type=int, default=128, help="image size for the classifier and the renders")
    t.add_argument("--min-steps", type=int, default=4, help="fewest optimization steps of a training visualization")
    t.add_argument("--max-steps", type=int, default=512, help="most steps (the full recipe)")
    t.add_argument("--step-counts", type=int, default=8, help="log-spaced step counts between them")
    t.add_argument("--vis-per-count", type=int, default=16, help="training visualizations per step count (half as many held out)")
    t.add_argument("--layers", default=None, help="layers whose units are visualized, comma-separated "
                   "(default: the network's first three, inception3a,inception3b,inception4a or mixed3a,mixed3b,mixed4a)")
    t.add_argument("--epochs", type=int, default=30, help="training epochs")
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    t.add_argument("--overwrite", action="store_true", help="replace an existing classifier file")
    t.add_argument("--no-progress", action="store_true", help="quiet")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from stimuli_gen.collection import CollectionError
    from stimuli_gen.models import WeightsUnavailable

    if args.command == "train-classifier":
        from stimuli_gen.manipulate.make import TrainOptions, train_classifier

        try:
            train_classifier(TrainOptions(out=args.out, collection=args.collection, builtin_dir=args.builtin_dir,
                                          model=args.model, weights=args.weights, seed=args.seed, holdout_fraction=args.holdout_fraction,
                                          min_images=args.min_images, size=args.size, min_steps=args.min_steps,
                                          max_steps=args.max_steps, step_counts=args.step_counts,
                                          vis_per_count=args.vis_per_count, layers=args.layers.split(",") if args.layers else None,
                                          epochs=args.epochs, device=args.device, overwrite=args.overwrite,
                                          progress=not args.no_progress))
        except (WeightsUnavailable, CollectionError, ValueError, FileExistsError, FileNotFoundError) as e:
            print(f"{build_parser().prog} {args.command}: error: {e}", file=sys.stderr)
            return 1
        return 0
    common = dict(out=args.out, units=[u for u in args.units.split(",") if u.strip()], collection=args.collection,
                  builtin_dir=args.builtin_dir, model=args.model, weights=args.weights, seed=args.seed,
                  holdout_fraction=args.holdout_fraction, min_images=args.min_images, resize=args.resize,
                  crop=args.crop, batch_size=args.batch_size, workers=args.workers, device=args.device,
                  fv_per_unit=args.fv_per_unit, fv_steps=args.fv_steps, fv_size=args.fv_size, fv_lr=args.fv_lr, labels=args.labels,
                  class_index=args.class_index, overwrite=args.overwrite, progress=not args.no_progress)
    try:
        if args.command == "silent":
            from stimuli_gen.manipulate.make import SilentOptions, make_silent

            make_silent(SilentOptions(**common, lam=args.lam, gain=args.gain, margin=args.margin))
        else:
            from stimuli_gen.manipulate.make import FoolingOptions, make_fooling

            make_fooling(FoolingOptions(**common, classifier=args.classifier, target=args.target,
                                        target_size=args.target_size, template_gain=args.template_gain))
    except (WeightsUnavailable, CollectionError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"{build_parser().prog} {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
