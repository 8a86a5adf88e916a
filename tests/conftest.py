import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from stimset_fixture import make_fixture_set  # noqa: E402

# torch (its dynamo/triton modules) segfaults when first imported into a process that already has a PsychoPy
# (pyglet GL) window open; some tests open windows in-process and later tests import torch. Import it first,
# so a run of any subset of the tests in any order is safe (the CLIs load the network before their window).
import torch  # noqa: E402,F401
import torch._dynamo  # noqa: E402,F401


@pytest.fixture(scope="session")
def builtin_collection(tmp_path_factory) -> Path:
    from stimuli_gen.builtin_collection import write_builtin_collection

    d = tmp_path_factory.mktemp("collection")
    write_builtin_collection(d)
    return d


@pytest.fixture(scope="session")
def fixture_set(tmp_path_factory) -> Path:
    """A valid stimulus set (12 units, 10 images per kind, 64 px), made without torch. Do not modify it."""
    base = tmp_path_factory.mktemp("stimuli")
    return make_fixture_set(base / "fixture-set", base / "collection")


@pytest.fixture(scope="session")
def online_study(fixture_set, tmp_path_factory) -> Path:
    """The demo design exported as an online study from the fixture set (no blind-spot step: the design's
    viewing distance is assumed, so a browser test needs no key presses for calibration)."""
    from contracts.stimulus_set import load_stimulus_set
    from experiment.config import load_design
    from online.config import load_online_config
    from online.export import NODE_MODULES, export_study

    if not (NODE_MODULES / "jspsych" / "package.json").is_file():
        pytest.skip("jsPsych is not installed: run `make online-deps` (npm ci in online/web)")
    out = tmp_path_factory.mktemp("online") / "study"
    export_study(load_stimulus_set(fixture_set), load_design("demo"), out,
                 load_online_config(None, {"blindspot_reps": 0, "completion_url": "https://example.org/done?cc=TEST"}))
    return out
