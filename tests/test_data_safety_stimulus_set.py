"""Stimulus-set integrity (issue 11 item 10): an edited manifest.json is refused by the experiment and the
analysis; the random-weights status cannot be removed by editing one field; sets older than 1.1 are read
with a warning that they lack the check."""

import json
import shutil

import pytest

from analysis.load import InputError, load_sessions
from analysis.simulate import SimulationSpec, write_sessions
from contracts import ContractError
from contracts.common import sha256_file
from contracts.stimulus_set import CONTENT_HASH_FIELD, load_stimulus_set, manifest_content_sha256
from experiment import cli as session_cli


def _edit(root, fn, rehash=False):
    p = root / "manifest.json"
    m = json.loads(p.read_text())
    fn(m)
    if rehash:
        m[CONTENT_HASH_FIELD] = manifest_content_sha256(m)
    p.write_text(json.dumps(m, indent=2))


def _not_random(m):
    m["random_weights"] = False
    m["model"]["weights"] = {"source": "pretrained", "identity": "GoogLeNet_Weights.IMAGENET1K_V1", "sha256": None}


@pytest.fixture
def set_copy(fixture_set, tmp_path):
    d = tmp_path / "fixture-set"
    shutil.copytree(fixture_set, d)
    return d


@pytest.mark.parametrize("edit", [_not_random, lambda m: m.update(set_id="other-set"),
                                  lambda m: m["parameters"].update(edited=True)])
def test_an_edited_manifest_is_refused(edit, set_copy, capsys):
    assert load_stimulus_set(set_copy).warnings == []
    _edit(set_copy, edit)
    with pytest.raises(ContractError, match="manifest was edited after it was written"):
        load_stimulus_set(set_copy)
    assert session_cli.main(["--stimuli", str(set_copy), "--participant", "P1", "--no-dialog", "--check-only"]) == 2
    assert "manifest was edited" in capsys.readouterr().err


def test_random_weights_cannot_be_removed_by_editing_the_manifest_alone(set_copy):
    _edit(set_copy, _not_random, rehash=True)  # even with its content hash recomputed
    with pytest.raises(ContractError, match="images.csv: column 'random_weights'.*disagrees"):
        load_stimulus_set(set_copy)


def test_a_set_older_than_1_1_is_read_with_a_warning(set_copy, capsys):
    def old(m):
        m["schema_version"] = "1.0"
        del m[CONTENT_HASH_FIELD]
    _edit(set_copy, old)
    s = load_stimulus_set(set_copy)
    assert any("cannot be detected" in w for w in s.warnings)
    assert session_cli.main(["--stimuli", str(set_copy), "--design", "demo", "--participant", "P1", "--no-dialog", "--check-only"]) == 0
    assert "written before stimulus-set schema 1.1" in capsys.readouterr().err
    _edit(set_copy, lambda m: m.update(schema_version="1.1"))  # a 1.1 manifest without its hash was edited
    with pytest.raises(ContractError, match=f"missing field '{CONTENT_HASH_FIELD}'"):
        load_stimulus_set(set_copy)


def test_the_analysis_refuses_sessions_of_an_edited_set(set_copy, tmp_path):
    spec = SimulationSpec(n_participants=2, reps_per_cell=1, n_practice=0, n_catch=0, experiment="exp")
    folders = write_sessions(tmp_path / "sessions", spec, seed=1)
    for f in folders:  # the sessions ran with this set
        p = f / "session.json"
        info = json.loads(p.read_text())
        info["stimulus_set"] = {"set_id": set_copy.name, "path": str(set_copy), "random_weights": True,
                                "manifest_sha256": sha256_file(set_copy / "manifest.json")}
        p.write_text(json.dumps(info))
    loaded = load_sessions([tmp_path / "sessions" / "exp"])
    assert set(loaded.sessions.set_rechecked) == {"checked"}
    _edit(set_copy, _not_random)
    with pytest.raises(InputError, match="stimulus set cannot be trusted.*manifest was edited"):
        load_sessions([tmp_path / "sessions" / "exp"])
