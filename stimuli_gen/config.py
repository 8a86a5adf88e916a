"""The generator's configuration: one TOML file (sections below) plus command-line overrides.

Every field ends up in the manifest (``GeneratorConfig.to_dict()``). Example::

    [model]
    name = "torchvision_googlenet"
    weights = "pretrained"          # pretrained | random | auto | PATH
    [model.layer_groups]            # optional; default per model in stimuli_gen.models
    early = ["inception3a", "inception3b"]
    [collection]
    source = "/data/imagenet/val"   # folder tree, flat folder, text file of paths, or "builtin"
    resize = 256
    crop = 224
    [units]
    per_group = 10
    # explicit = ["inception4a:17", "inception4b:3:middle"]
    [exemplars]
    k = 10
    spares = 2
    statistic = "mean"              # mean | max
    relu = "pre"                    # pre | post
    [feature_vis]
    per_unit = 5
    preset = "fvmatch"              # fvmatch (diversity weight searched per unit) | lucid | borowski2021
    [feature_vis.overrides]         # passed to RenderConfig.from_preset
    steps = 512
    [path_similarity]               # the check after rendering; enabled = false skips it
    metric = "spearman"             # spearman | pearson | cosine
    [run]
    out = "data/stimuli/my-set"
    seed = 0
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelConfig:
    name: str = "torchvision_googlenet"
    weights: str = "pretrained"  # pretrained | random | auto | PATH
    layer_groups: dict[str, list[str]] | None = None  # None: the model's documented default


@dataclass
class CollectionConfig:
    source: str = "builtin"
    builtin_dir: str = "data/collections/builtin"
    resize: int = 256
    crop: int = 224
    min_side: int = 32
    background: list[int] = field(default_factory=lambda: [255, 255, 255])
    decoder: str = "auto"  # auto (torchvision/nvjpeg on CUDA, pil on CPU) | pil | torchvision
    workers: int = -1  # -1: min(CPU cores - 1, 16)
    batch_size: int = 128


@dataclass
class UnitsConfig:
    per_group: int = 10
    explicit: list[str] | None = None  # ["layer:channel[:group]", ...]
    file: str | None = None  # CSV (layer, channel[, group]) or text of layer:channel[:group]
    seed: int | None = None  # None: run.seed
    method: str = "stratified"  # stratified (equal per layer of a group) | uniform (over (layer, channel) pairs)
    # reserve units per unit, from its layer: a unit whose FVs cannot beat its best natural exemplar is
    # replaced by the next reserve of its layer (0: failing units are kept and reported)
    reserve: int = 0


@dataclass
class ExemplarConfig:
    k: int = 10
    spares: int = 2
    margin: int | None = None  # extra candidates re-scored in fp32; None: k
    statistic: str = "mean"
    relu: str = "pre"
    precision: str = "auto"  # auto (bf16 on CUDA) | fp32 | bf16
    channels_last: bool = True
    dedupe_hamming: int = -1  # skip exemplars within this many dhash bits of a better one; -1: off
    save_activations: bool = False  # all channels of the group layers, float16, into the set
    activations_dtype: str = "float16"  # float16 (compact; range 6e-8..65504) | float32
    activations_from: str | None = None  # an earlier set saved with save_activations: no pass, re-use them
    checkpoint_every_s: float = 60.0

    @property
    def resolved_margin(self) -> int:
        """The extra candidates re-scored in fp32 (``margin``, or k when it is not given)."""
        return self.k if self.margin is None else self.margin


@dataclass
class FeatureVisConfig:
    per_unit: int = 5
    preset: str = "fvmatch"  # fvmatch (searched diversity weight) | lucid | borowski2021 (fixed weight 100, as published); stimuli_gen.render
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class PathSimilarityConfig:
    """The path-similarity check after rendering (stimuli_gen.path_similarity; Geirhos et al. 2023)."""

    enabled: bool = True
    metric: str = "spearman"  # spearman | pearson | cosine
    pooling: str = "mean"  # mean (spatially averaged channel vectors) | flat (flattened maps)
    n_unrelated: int = 20  # unrelated natural images per unit (seeded with run.seed)


@dataclass
class RunConfig:
    out: str = ""
    device: str = "auto"
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    progress: bool = True


@dataclass
class GeneratorConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    collection: CollectionConfig = field(default_factory=CollectionConfig)
    units: UnitsConfig = field(default_factory=UnitsConfig)
    exemplars: ExemplarConfig = field(default_factory=ExemplarConfig)
    feature_vis: FeatureVisConfig = field(default_factory=FeatureVisConfig)
    path_similarity: PathSimilarityConfig = field(default_factory=PathSimilarityConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "GeneratorConfig":
        cfg = cls()
        for section, values in d.items():
            if section not in {f.name for f in dataclasses.fields(cls)}:
                raise ValueError(f"{where}: unknown section [{section}]; sections: "
                                 f"{[f.name for f in dataclasses.fields(cls)]}")
            if not isinstance(values, dict):
                raise ValueError(f"{where}: [{section}] must be a table")
            for key, value in values.items():
                cfg.set(f"{section}.{key}", value, where)
        return cfg

    @classmethod
    def from_toml(cls, path: str | Path) -> "GeneratorConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML ({e})") from e
        return cls.from_dict(data, str(path))

    def check(self) -> None:
        """Refuse values no run can use (ValueError naming the setting and its flag), before any work or
        folder is made: e.g. ``--units-per-group 0`` ended in a StopIteration and left ``out/.work`` behind."""
        def need(ok: bool, key: str, flag: str, what: str, value: Any) -> None:
            if not ok:
                raise ValueError(f"{key} ({flag}) must be {what}, got {value!r}")

        u, ex, col, fv = self.units, self.exemplars, self.collection, self.feature_vis
        if not u.explicit and not u.file:
            need(u.per_group >= 1, "units.per_group", "--units-per-group", ">= 1", u.per_group)
        need(u.reserve >= 0, "units.reserve", "--reserve-units", ">= 0", u.reserve)
        need(u.reserve == 0 or fv.per_unit > 0, "units.reserve", "--reserve-units",
             "0 when no feature visualizations are rendered (--fv-per-unit 0): nothing can fail", u.reserve)
        need(ex.k >= 1, "exemplars.k", "--k", ">= 1", ex.k)
        need(ex.spares >= 0, "exemplars.spares", "--spares", ">= 0", ex.spares)
        need(ex.margin is None or ex.margin >= 0, "exemplars.margin", "--margin", ">= 0", ex.margin)
        need(ex.dedupe_hamming >= -1, "exemplars.dedupe_hamming", "--dedupe-hamming", ">= -1 (-1: off)", ex.dedupe_hamming)
        need(ex.checkpoint_every_s > 0, "exemplars.checkpoint_every_s", "config", "> 0 seconds", ex.checkpoint_every_s)
        need(col.resize >= 1, "collection.resize", "--resize", ">= 1 px", col.resize)
        need(1 <= col.crop <= col.resize, "collection.crop", "--crop", f"between 1 and the resize size ({col.resize}) px",
             col.crop)
        need(col.min_side >= 1, "collection.min_side", "--min-side", ">= 1 px", col.min_side)
        need(col.batch_size >= 1, "collection.batch_size", "--batch-size", ">= 1", col.batch_size)
        need(col.workers >= -1, "collection.workers", "--workers", ">= -1 (-1: automatic)", col.workers)
        need(len(col.background) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in col.background),
             "collection.background", "config", "three integers 0-255", col.background)
        need(fv.per_unit >= 0, "feature_vis.per_unit", "--fv-per-unit", ">= 0 (0: no rendering)", fv.per_unit)
        for key, flag in (("steps", "--fv-steps"), ("size", "--fv-size")):
            if key in fv.overrides:
                v = fv.overrides[key]
                need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"feature_vis.{key}", flag, ">= 1", v)
        need(self.run.seed >= 0, "run.seed", "--seed", ">= 0", self.run.seed)

    def set(self, dotted: str, value: Any, where: str = "override") -> None:
        """Set ``section.key`` with a type check against the default (a CLI override or a TOML entry)."""
        section, _, key = dotted.partition(".")
        obj = getattr(self, section, None)
        if obj is None or key not in {f.name for f in dataclasses.fields(obj)}:
            names = [f.name for f in dataclasses.fields(obj)] if obj is not None else []
            raise ValueError(f"{where}: unknown setting {dotted!r}" + (f"; [{section}] has {names}" if names else ""))
        current = getattr(obj, key)
        if isinstance(current, bool) and not isinstance(value, bool):
            raise ValueError(f"{where}: {dotted} must be true or false, got {value!r}")
        if isinstance(current, int) and not isinstance(current, bool) and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError(f"{where}: {dotted} must be an integer, got {value!r}")
        if isinstance(current, float) and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise ValueError(f"{where}: {dotted} must be a number, got {value!r}")
        setattr(obj, key, value)
