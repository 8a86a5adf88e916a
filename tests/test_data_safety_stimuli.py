"""Data safety of the generator (issue 11): --overwrite never deletes what is not a stimulus set, never the
collection; bad values are refused before any work; EXIF orientation; top/bottom exemplar overlap."""

import shutil

import pytest

from stimuli_gen import cli

SMALL = ["--resize", "72", "--crop", "64", "--weights", "random", "--no-progress", "--workers", "0", "--batch-size", "16",
         "--fv-per-unit", "0", "--units-per-group", "1", "--k", "2", "--spares", "0"]


@pytest.fixture
def no_work(monkeypatch):
    """Every refusal here happens before the network is even loaded."""
    import stimuli_gen.pipeline as P

    monkeypatch.setattr(P, "load_any", lambda *a, **k: pytest.fail("work started"))


@pytest.fixture
def folder_collection(builtin_collection, tmp_path):
    d = tmp_path / "collection"
    d.mkdir()
    for p in sorted(builtin_collection.glob("*/*.jpg"))[:6]:
        shutil.copy(p, d / p.name)
    return d


def test_overwrite_refuses_a_folder_that_is_not_a_stimulus_set(folder_collection, tmp_path, capsys, no_work):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "results").mkdir()
    assert cli.main(["--out", str(out), "--collection", str(folder_collection), "--overwrite", *SMALL]) == 1
    err = capsys.readouterr().err
    assert "is not a stimulus set" in err and "nothing was deleted" in err
    assert (out / "thesis.tex").read_text() == "years of work" and (out / "results").is_dir()


def test_overwrite_refuses_a_set_folder_holding_other_files(folder_collection, tmp_path, capsys, no_work):
    out = tmp_path / "set"
    out.mkdir()
    (out / "manifest.json").write_text('{"schema": "fvmatch.stimulus_set", "files": {"units.csv": "x"}}')
    (out / "units.csv").write_text("unit_id\n")
    (out / "notes.docx").write_text("mine")
    assert cli.main(["--out", str(out), "--collection", str(folder_collection), "--overwrite", *SMALL]) == 1
    assert "notes.docx" in capsys.readouterr().err and (out / "notes.docx").is_file()
    (out / "manifest.json").write_text('{"schema": "something.else"}')
    (out / "notes.docx").unlink()
    assert cli.main(["--out", str(out), "--collection", str(folder_collection), "--overwrite", *SMALL]) == 1
    assert "not a stimulus-set manifest" in capsys.readouterr().err and (out / "units.csv").is_file()


@pytest.mark.parametrize("where", ["same", "inside", "above", "builtin"])
def test_out_is_never_the_collection_or_around_it(where, folder_collection, tmp_path, capsys, no_work):
    before = sorted(p.name for p in folder_collection.iterdir())
    out = {"same": folder_collection, "inside": folder_collection / "sets" / "s1", "above": tmp_path,
           "builtin": folder_collection}[where]
    coll = ["--collection", "builtin", "--builtin-dir", str(folder_collection)] if where == "builtin" else \
        ["--collection", str(folder_collection)]
    assert cli.main(["--out", str(out), *coll, "--overwrite", *SMALL]) == 1
    assert "collection" in capsys.readouterr().err
    assert sorted(p.name for p in folder_collection.iterdir()) == before


def test_out_holding_a_text_file_collection_is_refused(folder_collection, tmp_path, capsys, no_work):
    lst = tmp_path / "paths.txt"
    lst.write_text("\n".join(str(p) for p in sorted(folder_collection.iterdir())) + "\n")
    assert cli.main(["--out", str(tmp_path), "--collection", str(lst), "--overwrite", *SMALL]) == 1
    assert "contains the collection" in capsys.readouterr().err and lst.is_file()


def _rotated_jpeg(path, orientation: int = 6):
    """A 60x40 JPEG stored sideways, as a camera writes it: left half red, right half blue when shown upright."""
    import numpy as np
    from PIL import Image

    upright = np.zeros((40, 60, 3), np.uint8)
    upright[:, :30] = (255, 0, 0)
    upright[:, 30:] = (0, 0, 255)
    stored = np.rot90(upright, k=1)  # orientation 6: the viewer rotates 90 degrees clockwise to show it upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=95, exif=exif.tobytes())
    return upright


@pytest.mark.parametrize("decoder", ["pil", "torchvision"])
def test_exif_orientation_is_applied_and_recorded(decoder, tmp_path):
    import numpy as np

    from stimuli_gen.collection import ImageDataset, Preprocess, load_crop

    path = tmp_path / "rotated.jpg"
    upright = _rotated_jpeg(path)
    pp = Preprocess(resize=40, crop=40, min_side=8)
    crop, note = load_crop(str(path), pp)
    assert note == "EXIF orientation 6 applied"
    img = crop.permute(1, 2, 0).numpy().astype(int)
    # upright: red on the left, blue on the right (the crop is the central 40x40 of the 60x40 image)
    assert img[20, 2, 0] > 200 and img[20, 2, 2] < 60 and img[20, 37, 2] > 200 and img[20, 37, 0] < 60
    assert np.abs(img - upright[:, 10:50].astype(int)).mean() < 10
    index, kind, payload, note = ImageDataset([str(path)], [0], pp, decoder)[0]
    assert kind == "pixels" and note == "EXIF orientation 6 applied"  # never the orientation-blind batch decoder
    assert Preprocess().to_dict()["exif_orientation"].startswith("applied")


@pytest.mark.parametrize("extra, message", [
    (["--units-per-group", "0"], "units.per_group (--units-per-group) must be >= 1, got 0"),
    (["--units-per-group", "-2"], "units.per_group (--units-per-group) must be >= 1, got -2"),
    (["--k", "0"], "exemplars.k (--k) must be >= 1"),
    (["--batch-size", "0"], "collection.batch_size (--batch-size) must be >= 1"),
    (["--crop", "300"], "collection.crop (--crop) must be between 1 and the resize size (72) px"),
    (["--fv-steps", "0"], "feature_vis.steps (--fv-steps) must be >= 1"),
    (["--seed", "-1"], "run.seed (--seed) must be >= 0"),
])
def test_unusable_values_are_refused_before_any_folder_is_made(extra, message, folder_collection, tmp_path, capsys,
                                                              no_work):
    out = tmp_path / "new-set"
    assert cli.main(["--out", str(out), "--collection", str(folder_collection), *SMALL, *extra]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_overlapping_top_and_bottom_exemplars_are_warned_about(folder_collection, tmp_path, capsys):
    import json

    from stimuli_gen.safety import exemplar_overlap_note

    out = tmp_path / "overlap-set"
    args = ["--out", str(out), "--collection", str(folder_collection), *SMALL, "--units", "inception3a:3", "--k", "4"]
    assert cli.main(args) == 0  # 6 images, k = 4: at least 2 images are both top-4 and bottom-4
    err = capsys.readouterr().err
    assert "WARNING: the top-4 and bottom-4 natural exemplars share images for 1 unit(s)" in err
    assert any("share images" in n for n in json.loads((out / "manifest.json").read_text())["notes"])
    import pandas as pd

    disjoint = pd.DataFrame({"unit_id": ["u"] * 4, "kind": ["natural_max"] * 2 + ["natural_min"] * 2,
                             "rank": [0, 1, 0, 1], "image_index": [5, 6, 1, 2]})
    assert exemplar_overlap_note(disjoint, 2) is None
