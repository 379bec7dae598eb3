from __future__ import annotations

import numpy as np
import pytest
import torch

from genailab.errors import InvalidInputError
from genailab.foundation.tuning import LinearProbe, TuningConfig, apply_linear_probe, apply_tuning
from tests.foundation.tuning.test_contract import make_dit, make_model


def _blobs(n: int = 150, d: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array(["B cell", "T cell", "monocyte"]), size=n)
    centres = {"B cell": 0, "T cell": 1, "monocyte": 2}
    x = rng.normal(size=(n, d))
    x[np.arange(n), [centres[lab] for lab in labels]] += 4.0  # separable along one axis per class
    return x, labels


def test_probe_classifies_separable_blobs_with_string_labels():
    x, labels = _blobs()
    result = LinearProbe.fit(x, labels, task="classification", val_fraction=0.2, seed=0)
    assert result.metric == "accuracy"
    assert result.val_metric > 0.9
    assert result.train_metric > 0.9
    assert result.n_params == 6 * 3 + 3
    assert (result.n_train, result.n_val) == (120, 30)
    pred = result.probe.predict(x)
    assert pred.shape == (150,)
    assert set(pred) <= {"B cell", "T cell", "monocyte"}
    assert (pred == labels).mean() > 0.9
    assert result.to_dict()["task"] == "classification"


def test_probe_regression_r2():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 5)) * np.array([1.0, 10.0, 0.1, 1.0, 1.0])  # unequal scales: standardised
    w = np.array([[1.0, -0.5], [0.2, 0.1], [3.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    y = x @ w + 0.05 * rng.normal(size=(200, 2)) + 7.0
    result = LinearProbe.fit(torch.as_tensor(x), y, task="regression", seed=3)
    assert result.metric == "r2"
    assert result.val_metric > 0.9
    pred = result.probe.predict(x)
    assert pred.shape == (200, 2)
    assert np.abs(pred - y).mean() < 0.5
    single = LinearProbe.fit(x, y[:, 0], task="regression", val_fraction=0.0)
    assert single.val_metric is None
    assert single.probe.predict(x[:4]).shape == (4,)


def test_probe_on_noise_is_at_chance():
    rng = np.random.default_rng(2)
    result = LinearProbe.fit(rng.normal(size=(200, 3)), rng.integers(0, 2, 200), seed=1)
    assert result.val_metric < 0.75  # nothing to find


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"targets": np.zeros(10)}, "at least 2 classes"),
        ({"targets": np.arange(9)}, "9 rows"),
        ({"targets": np.arange(10), "task": "ranking"}, "task='ranking'"),
        ({"targets": np.arange(10), "val_fraction": 1.0}, "val_fraction"),
        ({"embeddings": np.zeros(10), "targets": np.arange(10)}, r"shape \(N, D\)"),
        ({"embeddings": np.full((10, 2), np.nan), "targets": np.arange(10)}, "NaN"),
        ({"targets": np.array(["a"] * 10), "task": "regression"}, "numbers"),
    ],
)
def test_probe_errors(kwargs, match):
    args = {"embeddings": np.random.default_rng(0).normal(size=(10, 2)), **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        LinearProbe.fit(args.pop("embeddings"), args.pop("targets"), **args)


def test_linear_probe_method_trains_only_the_head():
    model = make_model("recipe")
    report = apply_tuning(model, TuningConfig(method="linear_probe"))
    assert report.targeted == ("backbone.final.linear",)  # the backbone's head, not the encoder's Linear
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        "backbone.final.linear.weight",
        "backbone.final.linear.bias",
    }
    explicit = apply_linear_probe(make_dit(), head="final.modulation")
    assert explicit.targeted == ("final.modulation",)
    with pytest.raises(InvalidInputError, match=r"head='time_mlp.1' is not a module with parameters"):
        apply_linear_probe(make_dit(), head="time_mlp.1")  # the SiLU


@pytest.mark.real_data
def test_probe_recovers_louvain_clusters_of_pbmc68k_from_pca():
    from genailab.data.datasets import load_shared, shared_data_dir

    if shared_data_dir() is None:
        pytest.skip("shared real-data folder not found (set GENAILAB_SHARED_DATA)")
    try:
        adata = load_shared("pbmc68k_reduced")
    except InvalidInputError as err:
        pytest.skip(f"pbmc68k_reduced is absent from the shared data: {err}")
    counts = np.asarray(adata.X.todense(), dtype=np.float64)  # (700, 765)
    x = torch.as_tensor(np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4), dtype=torch.float32)
    x = x - x.mean(dim=0)
    _, _, v = torch.pca_lowrank(x, q=30, niter=4)
    labels = adata.obs["louvain"].astype(str).to_numpy()
    result = LinearProbe.fit((x @ v).numpy(), labels, val_fraction=0.3, seed=0)  # 30 PCs -> 11 clusters
    chance = max(np.mean(labels == c) for c in np.unique(labels))
    assert result.val_metric > 0.8 > chance
