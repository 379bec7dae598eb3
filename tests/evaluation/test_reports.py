"""The reports package: one home per report, old import paths still served, chunking changes nothing."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import genailab.evaluation as evaluation
from genailab.evaluation import reports, synthesis_embedding
from genailab.evaluation.synthesis import pca_embed

from .test_synthesis import make_cells


@pytest.mark.parametrize(
    ("old_module", "name", "home"),
    [
        ("genailab.evaluation.synthesis", "write_synthesis_report", reports.write_synthesis_report),
        ("genailab.evaluation.perturbation", "write_perturbation_report", reports.write_perturbation_report),
        ("genailab.evaluation.report", "write_html_report", reports.write_html_report),
        ("genailab.evaluation.report", "figure_to_html", reports.figure_to_html),
        ("genailab.evaluation", "write_synthesis_report", reports.write_synthesis_report),
        ("genailab.evaluation", "write_perturbation_report", reports.write_perturbation_report),
        ("genailab.evaluation", "write_html_report", reports.write_html_report),
    ],
)
def test_old_import_paths_serve_the_report_functions(old_module: str, name: str, home: object) -> None:
    assert getattr(importlib.import_module(old_module), name) is home


def test_unknown_names_still_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        importlib.import_module("genailab.evaluation.synthesis").no_such_name  # noqa: B018
    with pytest.raises(AttributeError, match="no_such_name"):
        importlib.import_module("genailab.evaluation.perturbation").no_such_name  # noqa: B018


def test_evaluation_exports_are_importable() -> None:
    for name in evaluation.__all__:
        assert getattr(evaluation, name) is not None
    for name in reports.__all__:
        assert callable(getattr(reports, name))


def test_log_normalising_in_small_blocks_gives_the_same_embedding(monkeypatch) -> None:
    real, syn = make_cells(0, n=60, n_genes=30), make_cells(1, n=40, n_genes=30)
    real.X[:1] = 0  # an empty cell stays at zero expression
    whole = pca_embed(real, syn, condition_key="cond", n_pcs=5, seed=0)
    monkeypatch.setattr(synthesis_embedding, "_DENSE_CHUNK_ELEMENTS", 7 * 30)  # 7 cells at a time
    blocks = pca_embed(real, syn, condition_key="cond", n_pcs=5, seed=0)
    np.testing.assert_array_equal(whole.z_real, blocks.z_real)
    np.testing.assert_array_equal(whole.z_syn, blocks.z_syn)
