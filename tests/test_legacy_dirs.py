"""Model directories written by genailab 0.1.0 before the restructuring still load and give the same outputs.

``tests/fixtures/legacy_0_1_0`` was written by ``tests/fixtures/make_legacy_dirs.py`` with the code as it was
before the package was reorganised into layers; ``expected.json`` holds what those directories gave then.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "legacy_0_1_0"
sys.path.insert(0, str(FIXTURE.parent))

from make_legacy_dirs import outputs  # noqa: E402


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    """A copy of the fixture whose adapted directories point at the copied bases (as a user moving them would)."""
    root = tmp_path_factory.mktemp("legacy") / "legacy_0_1_0"
    shutil.copytree(FIXTURE, root)
    for adapted, base in (("synth_lora", "synth"), ("perturb_cond", "perturb")):
        info = json.loads((root / adapted / "adapter.json").read_text())
        info["base"]["path"] = str(root / base)
        (root / adapted / "adapter.json").write_text(json.dumps(info))
    return root


def test_legacy_directories_load_and_reproduce_their_outputs(legacy):
    expected = json.loads((FIXTURE / "expected.json").read_text())
    got = outputs(legacy)
    assert set(got) == set(expected)
    for key, value in expected.items():
        if isinstance(value, dict):
            for k, v in value.items():
                np.testing.assert_allclose(got[key][k], v, rtol=0, atol=2e-4, err_msg=f"{key}.{k}")
        else:
            np.testing.assert_allclose(np.asarray(got[key]), np.asarray(value), rtol=0, atol=2e-3, err_msg=key)


def test_old_import_paths_still_work_with_a_deprecation_warning():
    import importlib

    for old, name in (
        ("genailab.perturbation", "pseudobulk"),
        ("genailab.adaptation", "adapt_synth"),
        ("genailab.foundation.recipes.count_vae", "LatentTokenVAE"),
        ("genailab.foundation.recipes.perturb_delta", "PerturbDeltaModel"),
    ):
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert hasattr(module, name), (old, name)
        assert any(issubclass(w.category, DeprecationWarning) for w in caught), old
