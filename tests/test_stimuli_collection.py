"""Reading collections: listing, every bad-input case of issue 3, both decoders, preprocessing."""

import builtins
import io

import numpy as np
import pytest
import torch
from PIL import Image

from stimuli_gen import collection as C

PP = C.Preprocess(resize=80, crop=64, min_side=32)


def photo(w=300, h=200, seed=0):
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    return Image.fromarray(np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    photo().save(d / "good.jpg", quality=90)
    data = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "zero.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image\n")
    photo(seed=1).convert("L").save(d / "gray.jpg")
    photo(seed=2).convert("CMYK").save(d / "cmyk.jpg")
    rgba = photo(seed=3).convert("RGBA")
    a = np.asarray(rgba).copy()
    a[:, : a.shape[1] // 2, 3] = 0  # left half fully transparent
    Image.fromarray(a).save(d / "rgba.png")
    photo(seed=4).convert("P", palette=Image.Palette.ADAPTIVE).save(d / "palette.png")
    Image.fromarray(np.full((100, 120), 32896, dtype=np.uint16)).save(d / "gray16.png")  # 16-bit mid grey
    Image.new("RGB", (8, 8), (10, 20, 30)).save(d / "tiny.png")
    Image.new("L", (10000, 10000), 77).save(d / "huge.png")  # constant colour: small on disk
    (d / "notes.txt").write_text("ignored: not an image extension")
    (d / "locked.jpg").write_bytes(data)
    return d


EXPECT = {  # file -> ("ok", note substring or None) or ("skip", reason substring)
    "good.jpg": ("ok", None),
    "truncated.jpg": ("skip", "corrupt or truncated JPEG"),
    "zero.jpg": ("skip", "empty file (0 bytes)"),
    "text.jpg": ("skip", "not an image"),
    "gray.jpg": ("ok", "converted from L"),
    "cmyk.jpg": ("ok", "converted from CMYK"),
    "rgba.png": ("ok", "alpha composited"),
    "palette.png": ("ok", "converted from P"),
    "gray16.png": ("ok", "16-bit scaled"),
    "tiny.png": ("skip", "too small (8x8"),
    "huge.png": ("ok", "converted from L"),
    "locked.jpg": ("skip", "unreadable: permission denied"),
}


@pytest.fixture
def locked(bad_folder, monkeypatch):
    """Unreadable file. Tests run as root, where chmod 000 does not stop reads, so the open() of
    that one path is made to fail the way it fails for an ordinary user (PermissionError)."""
    target = str(bad_folder / "locked.jpg")
    (bad_folder / "locked.jpg").chmod(0)
    real_open = builtins.open

    def fake_open(file, *a, **k):
        if str(file) == target:
            raise PermissionError(13, "Permission denied", target)
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    yield
    (bad_folder / "locked.jpg").chmod(0o644)


@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
def test_every_bad_input_is_converted_or_skipped_with_reason(bad_folder, locked, decoder):
    paths, root = C.list_collection(bad_folder)
    names = [p.rsplit("/", 1)[-1] for p in paths]
    assert sorted(names) == sorted(EXPECT)  # notes.txt not listed
    ds = C.ImageDataset(paths, list(range(len(paths))), PP, decoder)
    loader = C.make_loader(ds, batch_size=5, workers=0, device=torch.device("cpu"))
    crops, skipped, converted = {}, {}, {}
    for batch in loader:
        x, idx = C.batch_to_device(batch, paths, PP, torch.device("cpu"))
        assert x.dtype == torch.uint8 and x.shape[1:] == (3, 64, 64)
        crops.update({names[int(i)]: x[j] for j, i in enumerate(idx)})
        skipped.update({names[i]: r for i, r in batch.skipped})
        converted.update({names[i]: r for i, r in batch.converted})
    for name, (outcome, text) in EXPECT.items():
        if outcome == "skip":
            assert name in skipped and text in skipped[name], (name, skipped.get(name))
            assert name not in crops
        else:
            assert name in crops and name not in skipped, (name, skipped.get(name))
            if text:
                assert text in converted[name], (name, converted.get(name))
            else:
                assert name not in converted
    g16 = crops["gray16.png"].float()
    assert (g16 - 128).abs().max() <= 1  # scaled from 16 bits, not clipped to white
    assert (crops["huge.png"] == 77).all()
    rgba = crops["rgba.png"]
    assert (rgba[:, :, :8] == 255).all()  # transparent half composited on the white background
    assert crops["gray.jpg"][0].equal(crops["gray.jpg"][1])


def test_decoders_agree_on_plain_jpegs(tmp_path):
    for s in range(3):
        photo(500, 375, seed=s).save(tmp_path / f"{s}.jpg", quality=90)
    paths, _ = C.list_collection(tmp_path)
    out = {}
    for dec in ("pil", "torchvision"):
        ds = C.ImageDataset(paths, [0, 1, 2], PP, dec)
        batch = next(iter(C.make_loader(ds, 3, 0, torch.device("cpu"))))
        if dec == "torchvision":
            assert batch.jpeg_index == [0, 1, 2]  # really took the torchvision.io path
        x, idx = C.batch_to_device(batch, paths, PP, torch.device("cpu"))
        out[dec] = x[idx.argsort()].float()
    diff = (out["pil"] - out["torchvision"]).abs()
    assert diff.mean() < 1.5 and diff.max() <= 40  # IDCT and resampling differ slightly, not the picture


def test_preprocess_resizes_short_side_and_center_crops():
    ramp = np.linspace(0, 255, 400)  # value = column * 255 / 399
    img = Image.fromarray(np.tile(ramp[None, :, None], (100, 1, 3)).round().astype(np.uint8))
    x = C.preprocess_pil(img, C.Preprocess(resize=50, crop=40))
    assert x.shape == (3, 40, 40) and x.dtype == torch.uint8
    # 400x100 -> 200x50; the crop keeps resized columns 80..119 = original columns 160..239
    assert abs(int(x[0, 0, 0]) - 161 * 255 / 399) < 3 and abs(int(x[0, 0, -1]) - 238 * 255 / 399) < 3


def test_listing_tree_flat_textfile_and_errors(tmp_path):
    (tmp_path / "tree" / "n01").mkdir(parents=True)
    (tmp_path / "tree" / "n02").mkdir()
    for rel in ("n02/b.JPEG", "n01/z.png", "n01/a.jpg"):
        photo(40, 40).save(tmp_path / "tree" / rel, format="PNG" if rel.endswith("png") else "JPEG")
    paths, root = C.list_collection(tmp_path / "tree")
    assert [p.split("tree/")[1] for p in paths] == ["n01/a.jpg", "n01/z.png", "n02/b.JPEG"]
    lst = tmp_path / "list.txt"
    lst.write_text("# my images\ntree/n02/b.JPEG\n\n" + str(tmp_path / "tree/n01/a.jpg") + "\nmissing.jpg\n")
    paths, root = C.list_collection(lst)
    assert paths == [str(tmp_path / "tree/n02/b.JPEG"), str(tmp_path / "tree/n01/a.jpg"), str(tmp_path / "missing.jpg")]
    with pytest.raises(C.SkipImage, match="file not found"):
        C.read_bytes(paths[2])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(C.CollectionError, match="is empty"):
        C.list_collection(tmp_path / "empty")
    with pytest.raises(C.CollectionError, match="collection not found"):
        C.list_collection(tmp_path / "nope")


def test_unexpected_decoder_error_is_a_skip_not_a_crash(tmp_path, monkeypatch):
    photo().save(tmp_path / "a.jpg")
    monkeypatch.setattr(C, "preprocess_pil", lambda *a: (_ for _ in ()).throw(MemoryError("boom")))
    item = C.ImageDataset([str(tmp_path / "a.jpg")], [0], PP, "pil")[0]
    assert item[1] == "skip" and "MemoryError: boom" in item[2]


def test_prefetch_keeps_order_and_passes_errors_on(tmp_path):
    for s in range(5):
        photo(100, 80, seed=s).save(tmp_path / f"{s}.jpg")
    paths, _ = C.list_collection(tmp_path)
    loader = C.make_loader(C.ImageDataset(paths, list(range(5)), PP, "pil"), 2, 0, torch.device("cpu"))
    got = [idx.tolist() for _, _, idx in C.prefetch_to_device(loader, paths, PP, torch.device("cpu"))]
    assert got == [[0, 1], [2, 3], [4]]

    def failing():
        yield next(iter(loader))
        raise ValueError("loader broke")

    with pytest.raises(ValueError, match="loader broke"):
        list(C.prefetch_to_device(failing(), paths, PP, torch.device("cpu")))


def test_huge_jpeg_is_drafted_and_bombs_are_skipped(tmp_path, monkeypatch):
    """Scaled down: PIL's limit lowered so that a 400x300 JPEG counts as huge (decoded at reduced DCT
    scale, never below twice the resize target) and a 600x450 one as a decompression bomb."""
    big = photo(400, 300, seed=5)
    big.save(tmp_path / "huge.jpg", quality=95)
    photo(600, 450).save(tmp_path / "bomb.jpg")
    pp = C.Preprocess(resize=64, crop=56, min_side=16)
    full, _ = C.load_crop(str(tmp_path / "huge.jpg"), pp)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    drafted_img, note = C.decode_rgb((tmp_path / "huge.jpg").read_bytes(), pp)
    assert drafted_img.size == (200, 150)  # 1/2 DCT scale: short side 150 >= 2 x 64
    drafted, _ = C.load_crop(str(tmp_path / "huge.jpg"), pp)
    assert (drafted.float() - full.float()).abs().mean() < 3
    with pytest.raises(C.SkipImage, match="too large"):
        C.load_crop(str(tmp_path / "bomb.jpg"), pp)
