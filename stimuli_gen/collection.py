"""Natural-image collections: listing, robust decoding, preprocessing, and batched loading.

A collection is a folder tree (ImageNet-val layout or flat; every file with an image extension,
sorted by relative path) or a text file of paths (one per line, relative to the text file). An
image's *index* is its position in that list; it is the tie-breaker of the exemplar ranking and
the identity used when shards are merged.

Decoding never lets one bad file stop a run. Each file is either read as RGB (converted, noted in
the converted-files table) or skipped with its reason (skipped-files table):

* zero-byte, missing, unreadable (permission), non-image, truncated/corrupt -> skipped;
* grayscale, CMYK, palette, 16-bit -> converted to 8-bit RGB (16-bit scaled, not clipped);
* RGBA / LA / palette with transparency -> composited on ``background`` (recorded);
* an EXIF orientation tag (a camera's rotated photo) -> applied with ``ImageOps.exif_transpose`` before
  anything else, so the image is upright as any viewer shows it (recorded as a conversion);
* smaller than ``min_side`` on the short side (e.g. 8x8) -> skipped (upscaling 8 px to 224 px shows
  a blur, not the image); larger than PIL's decompression-bomb limit (~179 MP) -> skipped; huge
  JPEGs below it are decoded at reduced DCT scale (``draft``) first, which is faster and never
  goes below twice the resize target.

Preprocessing: resize the short side to ``resize`` (bilinear, antialiased) then center-crop
``crop`` (default 256 / 224, as Borowski et al.), rounded to uint8: the exact pixels the network
sees are the pixels written as exemplar PNGs.

Decoders: ``pil`` decodes and preprocesses in DataLoader workers (CPU). ``torchvision`` sends the
JPEG bytes to the main process and decodes them in batches with ``torchvision.io.decode_jpeg`` on
the pass device (nvjpeg on CUDA), then resizes on the device; files that are not plain
RGB/grayscale JPEGs, or lack the end-of-image marker (truncated), go through the PIL path.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DECODERS = ("pil", "torchvision")


class CollectionError(ValueError):
    """The collection cannot be used (missing, empty); raised before any work starts."""


class SkipImage(Exception):
    """This file cannot be used; the message is the reason recorded in the skipped-files table."""


@dataclass(frozen=True)
class Preprocess:
    resize: int = 256
    crop: int = 224
    min_side: int = 32
    background: tuple[int, int, int] = (255, 255, 255)  # for transparent pixels

    def to_dict(self) -> dict:
        d = asdict(self)
        d["background"] = list(self.background)
        d["interpolation"] = "bilinear, antialiased; then center crop; rounded to uint8"
        d["exif_orientation"] = "applied (PIL ImageOps.exif_transpose; each rotated file noted as a conversion)"
        return d


# ---- listing ----------------------------------------------------------------------------------

def list_collection(source: os.PathLike | str) -> tuple[list[str], Path]:
    """Image paths of a collection and its root (for relative ``source`` paths). Errors before any work."""
    src = Path(source)
    if src.is_dir():
        paths = sorted((p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and (p.is_file() or p.is_symlink())),
                       key=lambda p: p.relative_to(src).as_posix())
        root = src
    elif src.is_file():
        root = src.parent
        paths = []
        for line in src.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line)
                paths.append(p if p.is_absolute() else root / p)
    else:
        raise CollectionError(f"collection not found: {src} (give a folder of images or a text file of paths)")
    if not paths:
        raise CollectionError(f"collection {src} is empty: no files with extensions {', '.join(IMAGE_EXTENSIONS)}")
    return [str(p) for p in paths], root


# ---- decoding ---------------------------------------------------------------------------------

def read_bytes(path: str) -> bytes:
    """The file's bytes, or SkipImage with the reason (missing, unreadable, empty)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise SkipImage("file not found (or broken link)") from None
    except PermissionError:
        raise SkipImage("unreadable: permission denied") from None
    except IsADirectoryError:
        raise SkipImage("unreadable: is a directory") from None
    except OSError as e:
        raise SkipImage(f"unreadable: {e.strerror or e}") from None
    if not data:
        raise SkipImage("empty file (0 bytes)")
    return data


def decode_rgb(data: bytes, pp: Preprocess) -> tuple[Image.Image, str | None]:
    """Decode to an 8-bit RGB PIL image; returns ``(image, conversion note or None)``."""
    fmt = "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "image"
            w, h = img.size
            if min(w, h) < pp.min_side:
                raise SkipImage(f"too small ({w}x{h}; short side below min_side {pp.min_side})")
            if fmt == "JPEG" and w * h > Image.MAX_IMAGE_PIXELS:  # huge: decode at reduced DCT scale
                img.draft(img.mode, (max(1, w * 2 * pp.resize // min(w, h)), max(1, h * 2 * pp.resize // min(w, h))))
            img.load()
            orientation = _exif_orientation(img)
            if orientation != 1:  # a sideways photo must not enter sideways
                img = ImageOps.exif_transpose(img)
    except SkipImage:
        raise
    except Image.DecompressionBombError as e:
        raise SkipImage(f"too large: {e}") from None
    except UnidentifiedImageError:
        raise SkipImage("not an image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        raise SkipImage(f"corrupt or truncated {fmt}: {e}") from None
    img, note = to_rgb(img, pp.background)
    if orientation != 1:
        note = "; ".join(n for n in (f"EXIF orientation {orientation} applied", note) if n)
    return img, note


def _exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright, also when absent or unreadable)."""
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:  # a damaged EXIF block must not cost the image
        return 1


def to_rgb(img: Image.Image, background: tuple[int, int, int]) -> tuple[Image.Image, str | None]:
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        import numpy as np

        a = np.asarray(img).astype(np.float64)
        scale = 255.0 / 65535.0 if mode.startswith("I;16") or a.max() > 255 else 1.0
        img = Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8))  # 2-D uint8: mode L
        return img.convert("RGB"), f"converted from {mode} (16-bit scaled to 8-bit)"
    if mode == "F":
        raise SkipImage("unsupported image mode F (floating point)")
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB"), f"converted from {mode} (alpha composited on {list(background)})"
    return img.convert("RGB"), f"converted from {mode}"


def preprocess_pil(img: Image.Image, pp: Preprocess) -> torch.Tensor:
    """Resize + center crop with torchvision; ``3 x crop x crop`` uint8."""
    from torchvision.transforms import v2

    t = v2.Compose([v2.Resize(pp.resize, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
                    v2.CenterCrop(pp.crop), v2.PILToTensor()])
    return t(img)


def load_crop(path: str, pp: Preprocess) -> tuple[torch.Tensor, str | None]:
    """One image as the network sees it (PIL path): ``(3 x crop x crop uint8, note)``; raises SkipImage."""
    img, note = decode_rgb(read_bytes(path), pp)
    return preprocess_pil(img, pp), note


def _plain_jpeg(data: bytes, pp: Preprocess) -> str | None:
    """Whether these bytes can go to the batched torchvision/nvjpeg decoder: a baseline-looking JPEG
    in RGB or L, complete (ends with the EOI marker), of reasonable size. Returns its mode, or None
    when it must take the PIL path."""
    if data[:3] != b"\xff\xd8\xff" or not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return None
    try:
        img = Image.open(io.BytesIO(data))  # header only
        w, h = img.size
        ok = (img.mode in ("RGB", "L") and pp.min_side <= min(w, h) and w * h <= 40_000_000
              and _exif_orientation(img) == 1)  # rotated photos take the PIL path, which applies the tag
        return img.mode if ok else None
    except Exception:
        return None


# ---- dataset and batches ----------------------------------------------------------------------

class ImageDataset(torch.utils.data.Dataset):
    """Items ``(index, kind, payload, note)``: kind ``pixels`` (uint8 crop), ``jpeg`` (bytes for the
    device decoder) or ``skip`` (payload = reason)."""

    def __init__(self, paths: list[str], indices: list[int], pp: Preprocess, decoder: str = "pil"):
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.paths, self.indices, self.pp, self.decoder = paths, indices, pp, decoder

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        path = self.paths[index]
        try:
            data = read_bytes(path)
            mode = _plain_jpeg(data, self.pp) if self.decoder == "torchvision" else None
            if mode:
                return (index, "jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8),
                        None if mode == "RGB" else f"converted from {mode}")
            img, note = decode_rgb(data, self.pp)
            return index, "pixels", preprocess_pil(img, self.pp), note
        except SkipImage as e:
            return index, "skip", str(e), None
        except Exception as e:  # anything unforeseen in one file must not stop the run
            return index, "skip", f"unexpected error: {type(e).__name__}: {e}", None


@dataclass
class Batch:
    pixel_index: torch.Tensor
    pixels: torch.Tensor  # N x 3 x S x S uint8
    jpeg_index: list[int] = field(default_factory=list)
    jpeg_data: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.uint8))  # all files' bytes
    jpeg_sizes: list[int] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    converted: list[tuple[int, str]] = field(default_factory=list)

    def pin_memory(self) -> "Batch":  # called by the DataLoader's pinning thread
        self.pixels = self.pixels.pin_memory()
        return self

    @property
    def size(self) -> int:
        return len(self.pixel_index) + len(self.jpeg_index) + len(self.skipped)


def make_collate(crop: int):
    def collate(items) -> Batch:
        px = [(i, t) for i, kind, t, _ in items if kind == "pixels"]
        return Batch(
            pixel_index=torch.tensor([i for i, _ in px], dtype=torch.int64),
            pixels=torch.stack([t for _, t in px]) if px else torch.empty(0, 3, crop, crop, dtype=torch.uint8),
            jpeg_index=[i for i, kind, _, _ in items if kind == "jpeg"],
            # one tensor for all JPEG bytes: one shared-memory block per batch, not one per file
            jpeg_data=torch.cat([t for _, kind, t, _ in items if kind == "jpeg"] or [torch.empty(0, dtype=torch.uint8)]),
            jpeg_sizes=[len(t) for _, kind, t, _ in items if kind == "jpeg"],
            skipped=[(i, t) for i, kind, t, _ in items if kind == "skip"],
            converted=[(i, n) for i, kind, _, n in items if n],
        )

    return collate


def make_loader(dataset: ImageDataset, batch_size: int, workers: int, device: torch.device) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=make_collate(dataset.pp.crop),
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None, persistent_workers=False)


def resize_crop_tensor(img: torch.Tensor, pp: Preprocess) -> torch.Tensor:
    """Resize + center crop of ``B x 3 x H x W`` uint8 on its device, same recipe as the PIL path."""
    from torchvision.transforms.v2 import functional as TF

    x = TF.resize(img.float(), [pp.resize], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(x, [pp.crop, pp.crop]).round_().clamp_(0, 255).to(torch.uint8)


def batch_to_device(batch: Batch, paths: list[str], pp: Preprocess, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 crops B x 3 x S x S on device, global indices B)``. JPEG bytes are decoded here
    (batched, on the device); a file the device decoder refuses takes the PIL path, and a file
    that fails there too is appended to ``batch.skipped``."""
    crops = [batch.pixels.to(device, non_blocking=True)]
    index = [batch.pixel_index]
    if batch.jpeg_index:
        from torchvision.io import ImageReadMode, decode_jpeg

        jpegs = list(torch.split(batch.jpeg_data, batch.jpeg_sizes))
        try:
            with warnings.catch_warnings():  # deprecated in favour of TorchCodec, still the nvjpeg route in 0.29
                warnings.simplefilter("ignore", DeprecationWarning)
                decoded = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad stream fails the whole call: retry one by one
            decoded = []
            for t in jpegs:
                try:
                    decoded.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    decoded.append(None)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for j, img in enumerate(decoded):
            if img is not None:
                by_shape.setdefault(tuple(img.shape[1:]), []).append(j)
        for shape, js in by_shape.items():  # one resize call per image size (ImageNet has few sizes)
            crops.append(resize_crop_tensor(torch.stack([decoded[j] for j in js]), pp))
            index.append(torch.tensor([batch.jpeg_index[j] for j in js], dtype=torch.int64))
        for j, img in enumerate(decoded):
            if img is None:
                i = batch.jpeg_index[j]
                try:
                    crop, note = load_crop(paths[i], pp)
                    crops.append(crop.unsqueeze(0).to(device))
                    index.append(torch.tensor([i]))
                except SkipImage as e:
                    batch.skipped.append((i, str(e)))
    return torch.cat(crops), torch.cat(index)


def prefetch_to_device(loader, paths: list[str], pp: Preprocess, device: torch.device, depth: int = 2):
    """Yield ``(batch, crops, index)`` with the next batches already decoded and on the device.

    A background thread runs :func:`batch_to_device` (host-to-device copy, nvjpeg decode, resize)
    on its own CUDA stream while the main thread runs the network, so decoding overlaps with
    inference instead of alternating with it. On the CPU it still overlaps file reading with compute.
    Errors in the thread are re-raised here."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    side = torch.cuda.Stream(device) if device.type == "cuda" else None
    DONE = object()

    def work() -> None:
        try:
            with torch.cuda.stream(side) if side is not None else _nullcontext():
                for batch in loader:
                    if stop.is_set():
                        return
                    crops, index = batch_to_device(batch, paths, pp, device)
                    event = None
                    if side is not None:
                        event = torch.cuda.Event()
                        event.record(side)
                    q.put((batch, crops, index, event))
            q.put(DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(e)

    thread = threading.Thread(target=work, name="fvmatch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is DONE:
                break
            if isinstance(item, BaseException):
                raise item
            batch, crops, index, event = item
            if event is not None:
                torch.cuda.current_stream(device).wait_event(event)
                crops.record_stream(torch.cuda.current_stream(device))  # allocator: used on this stream too
            yield batch, crops, index
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            thread.join(timeout=0.05)


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()
