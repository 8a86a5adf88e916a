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

    monkeypatch.setattr(P, "load_model", lambda *a, **k: pytest.fail("work started"))


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
