import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from stimset_fixture import make_fixture_set  # noqa: E402


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
