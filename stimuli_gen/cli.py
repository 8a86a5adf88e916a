"""``fvmatch-stimuli``: generate a stimulus set (units, natural exemplars, feature visualizations)."""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  # demo set on the built-in photographs (random weights unless torchvision's cache has GoogLeNet)
  fvmatch-stimuli --config stimuli_gen/configs/demo.toml --out data/stimuli/demo

  # a real set from ImageNet val on a GPU, everything else from a config file
  fvmatch-stimuli --config my-set.toml --collection /data/imagenet/val --out data/stimuli/my-set

  # explicit units, exemplars only, continue an interrupted run
  fvmatch-stimuli --out data/stimuli/s1 --collection paths.txt --units inception4a:17,inception5b:3 \\
      --fv-per-unit 0 --resume

  # 8 GPUs on one node (the collection is sharded by rank; lists are merged exactly)
  torchrun --nproc_per_node=8 -m stimuli_gen.cli --config my-set.toml

  # the path-similarity check alone, on a set made earlier (no re-rendering)
  fvmatch-stimuli --path-similarity data/stimuli/demo

  # only write the built-in collection
  fvmatch-stimuli --builtin-collection data/collections/builtin

Settings not on the command line go in the TOML config (see stimuli_gen/config.py for every field);
command-line values override the config. Every value used is recorded in the set's manifest.json.
"""

# flag -> (config key, type, help)
OVERRIDES = {
    "--out": ("run.out", str, "output folder of the stimulus set (its name is the set id); with --path-similarity: folder for the check's outputs, leaving the set untouched"),
    "--collection": ("collection.source", str, "'builtin', a folder of images (tree or flat), or a text file of paths"),
    "--model": ("model.name", str, "torchvision_googlenet (default) or lucid_inceptionv1"),
    "--weights": ("model.weights", str, "pretrained (default), random, auto (pretrained if cached, else random; demo only), or PATH to a state dict or to a manipulated-model folder (python -m stimuli_gen.manipulate.cli)"),
    "--device": ("run.device", str, "auto (default), cpu, cuda, cuda:N"),
    "--seed": ("run.seed", int, "seed for unit sampling, random weights and rendering (default 0)"),
    "--units-per-group": ("units.per_group", int, "units sampled per layer group (default 10)"),
    "--reserve-units": ("units.reserve", int, "reserve units per unit (same layer) that replace units whose feature visualizations cannot beat their best natural exemplar (default 0: keep and report them)"),
    "--units-file": ("units.file", str, "CSV (layer,channel[,group]) or text file of layer:channel[:group]"),
    "--k": ("exemplars.k", int, "exemplars per side (max and min) and unit (default 10)"),
    "--spares": ("exemplars.spares", int, "extra exemplars per side written as ranks k.. with spare=1 (default 2)"),
    "--margin": ("exemplars.margin", int, "extra candidates per side re-scored in fp32 (default k)"),
    "--statistic": ("exemplars.statistic", str, "unit activation: mean (default) or max over space"),
    "--relu": ("exemplars.relu", str, "pre (default) or post"),
    "--precision": ("exemplars.precision", str, "pass precision: auto (bf16 on CUDA), fp32, bf16"),
    "--dedupe-hamming": ("exemplars.dedupe_hamming", int, "skip near-duplicate exemplars within N dhash bits (-1: off)"),
    "--resize": ("collection.resize", int, "resize short side to N (default 256)"),
    "--crop": ("collection.crop", int, "center crop N x N (default 224)"),
    "--min-side": ("collection.min_side", int, "skip images whose short side is below N px (default 32)"),
    "--decoder": ("collection.decoder", str, "auto, pil (CPU workers) or torchvision (torchvision.io, nvjpeg on CUDA)"),
    "--workers": ("collection.workers", int, "DataLoader workers (-1: CPU cores - 1, at most 16)"),
    "--batch-size": ("collection.batch_size", int, "images per batch (default 128)"),
    "--builtin-dir": ("collection.builtin_dir", str, "where --collection builtin writes its images"),
    "--activations-dtype": ("exemplars.activations_dtype", str, "dtype of --save-activations: float16 (default) or float32"),
    "--activations-from": ("exemplars.activations_from", str, "earlier stimulus set saved with --save-activations: pick this run's exemplars from its activations (no pass over the images)"),
    "--fv-per-unit": ("feature_vis.per_unit", int, "feature visualizations per unit (0: skip rendering)"),
    "--fv-preset": ("feature_vis.preset", str, "rendering preset name (stimuli_gen.render)"),
    "--similarity-metric": ("path_similarity.metric", str, "path-similarity check: spearman (default), pearson or cosine"),
    "--similarity-pooling": ("path_similarity.pooling", str, "path-similarity check: mean (spatially averaged channels, default) or flat (flattened maps)"),
    "--similarity-unrelated": ("path_similarity.n_unrelated", int, "path-similarity check: unrelated natural images per unit (default 20)"),
}
FV_OVERRIDES = {"--fv-steps": ("steps", int, "optimization steps per visualization"),
                "--fv-size": ("size", int, "visualization size in px")}


CHOICES = {"--model": ["torchvision_googlenet", "lucid_inceptionv1"], "--statistic": ["mean", "max"],
           "--relu": ["pre", "post"], "--precision": ["auto", "fp32", "bf16"],
           "--decoder": ["auto", "pil", "torchvision"], "--activations-dtype": ["float16", "float32"],
           "--similarity-metric": ["spearman", "pearson", "cosine"], "--similarity-pooling": ["mean", "flat"]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fvmatch-stimuli",
        description="Generate a stimulus set: sample units of GoogLeNet, find natural exemplars, render feature visualizations.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE.toml", help="configuration file (command-line values override it)")
    for flag, (_, typ, help_) in {**OVERRIDES, **FV_OVERRIDES}.items():
        p.add_argument(flag, type=typ, default=None, help=help_, choices=CHOICES.get(flag),
                       metavar=None if flag in CHOICES else ("N" if typ is int else flag.lstrip("-").split("-")[-1].upper()))
    p.add_argument("--units", help="explicit units, comma-separated layer:channel[:group] (instead of sampling)")
    p.add_argument("--save-activations", action="store_true", default=None,
                   help="also save every channel's activation on every image (float16 activations.npy)")
    p.add_argument("--resume", action="store_true", default=None, help="continue an interrupted run from its checkpoint")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an existing stimulus set (only a folder that is one; never the collection)")
    p.add_argument("--no-path-similarity", action="store_true",
                   help="skip the path-similarity check after rendering (Geirhos et al. 2023; stimuli_gen/README.md)")
    p.add_argument("--path-similarity", metavar="SET",
                   help="run only the path-similarity check on an existing stimulus set (no re-rendering) and exit; "
                        "--seed, --device and --similarity-* apply; --out DIR writes the outputs there instead of "
                        "into the set (which stays byte-identical)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--builtin-collection", metavar="DIR", help="write the built-in natural-image collection to DIR and exit")
    return p


def config_from_args(args: argparse.Namespace):
    from stimuli_gen.config import GeneratorConfig

    cfg = GeneratorConfig.from_toml(args.config) if args.config else GeneratorConfig()
    for flag, (key, _, _) in OVERRIDES.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            cfg.set(key, value, flag)
    for flag, (key, _, _) in FV_OVERRIDES.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            cfg.feature_vis.overrides[key] = value
    if args.units:
        cfg.units.explicit = [u for u in args.units.split(",") if u.strip()]
    for name, key in (("save_activations", "exemplars.save_activations"), ("resume", "run.resume"), ("overwrite", "run.overwrite")):
        if getattr(args, name):
            cfg.set(key, True)
    if args.no_progress:
        cfg.run.progress = False
    if args.no_path_similarity:
        cfg.path_similarity.enabled = False
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.builtin_collection:
        from stimuli_gen.builtin_collection import write_builtin_collection

        paths = write_builtin_collection(args.builtin_collection)
        print(f"wrote {len(paths)} images to {args.builtin_collection}")
        return 0
    if args.path_similarity:
        return _path_similarity(args)
    if not args.out and not args.config:
        parser.print_help()
        return 2
    from stimuli_gen.collection import CollectionError
    from stimuli_gen.models import WeightsUnavailable
    from stimuli_gen.pipeline import generate

    try:
        cfg = config_from_args(args)
        cfg.check()  # every value usable, before any folder is made
        generate(cfg)
    except (WeightsUnavailable, CollectionError, ValueError, FileExistsError, FileNotFoundError, KeyError) as e:
        print(f"fvmatch-stimuli: error: {e}", file=sys.stderr)
        return 1
    return 0


def _path_similarity(args: argparse.Namespace) -> int:
    """The check alone on an existing set: its own network and weights, the set's images."""
    from contracts.common import ContractError
    from stimuli_gen.models import WeightsUnavailable
    from stimuli_gen.path_similarity_set import check_existing_set, options_from_config, print_summary

    try:
        cfg = config_from_args(args)
        opts = options_from_config(cfg)
        result = check_existing_set(args.path_similarity, opts, device=cfg.run.device, progress=cfg.run.progress,
                                    weights=args.weights if args.weights not in (None, "auto") else None,
                                    out=args.out, overwrite=bool(args.overwrite))
    except (WeightsUnavailable, ContractError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"fvmatch-stimuli: error: {e}", file=sys.stderr)
        return 1
    print_summary(result, args.out or args.path_similarity, in_set=args.out is None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
