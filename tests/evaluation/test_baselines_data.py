"""The data-only baselines: shrunk additive, kNN in prior space, linear with data-derived embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from genailab.errors import InvalidInputError, UnknownLabelError
from genailab.evaluation import BASELINES, PseudoBulk
from genailab.foundation.perturbation import GenePriors


def _pb(groups: dict[tuple[str, str], np.ndarray], genes: tuple[str, ...] | None = None) -> PseudoBulk:
    keys = tuple(groups)
    means = np.stack([groups[k] for k in keys])
    genes = genes or tuple(f"g{j}" for j in range(means.shape[1]))
    return PseudoBulk(
        keys=keys, means=means, n_cells=np.full(len(keys), 20), genes=genes, control="control", delimiter="+"
    )


# ------------------------------------------------------------------------------------------ shrunk_additive
def _shrinkage_setup(a: float = 0.6, noise: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_genes = 30
    control = rng.uniform(1, 2, n_genes)
    delta = {s: rng.normal(0, 0.5, n_genes) for s in "ABCDEF"}
    train = _pb({("control", ""): control, **{(s, ""): control + d for s, d in delta.items()}})
    doubles = ["A+B", "C+D", "E+F", "A+F"]
    validation = _pb(
        {  # no control cells: a held-out set carved from training; one double with an untrained single
            (c, ""): control + a * sum(delta[s] for s in c.split("+")) + rng.normal(0, noise, n_genes) for c in doubles
        }
        | {("A+Z", ""): control + rng.normal(0, 5, n_genes), ("B", ""): control + 3 * delta["B"]}
    )
    return train, validation, control, delta


def test_shrunk_additive_recovers_planted_shrinkage():
    train, validation, control, delta = _shrinkage_setup(a=0.6)
    model = BASELINES.get("shrunk_additive")().fit(train, validation=validation)
    assert model.shrinkage == pytest.approx(0.6, abs=1e-12)
    assert model.n_fit_ == 4  # A+Z (Z untrained) and the single B are not used
    np.testing.assert_allclose(model.predict("B+C"), control + 0.6 * (delta["B"] + delta["C"]))
    np.testing.assert_array_equal(model.predict("control"), control)
    assert model.predict("B+Z") is None
    with pytest.raises(UnknownLabelError):
        model.predict("A+B", "other")
    # with noise, the fit is still close, and it beats plain additive on L2 for a shrunk held-out double
    train, validation, control, delta = _shrinkage_setup(a=0.6, noise=0.1, seed=1)
    model = BASELINES.get("shrunk_additive")().fit(train, validation=validation)
    assert model.shrinkage == pytest.approx(0.6, abs=0.05)
    truth = control + 0.6 * (delta["B"] + delta["D"])
    additive = BASELINES.get("additive")().fit(train).predict("B+D")
    assert np.linalg.norm(model.predict("B+D") - truth) < 0.2 * np.linalg.norm(additive - truth)


def test_shrunk_additive_refuses_without_validation_combinations():
    train, validation, *_ = _shrinkage_setup()
    with pytest.raises(InvalidInputError, match="needs validation combinations.*validation=None"):
        BASELINES.get("shrunk_additive")().fit(train)
    singles_only = _pb({("B", ""): validation.mean("B"), ("A+Z", ""): validation.mean("A+Z")})
    with pytest.raises(InvalidInputError, match=r"needs validation combinations.*usable: 0"):
        BASELINES.get("shrunk_additive")().fit(train, validation=singles_only)
    other_genes = _pb({("A+B", ""): validation.mean("A+B")}, genes=tuple(f"x{j}" for j in range(30)))
    with pytest.raises(InvalidInputError, match="same genes"):
        BASELINES.get("shrunk_additive")().fit(train, validation=other_genes)
    with pytest.raises(InvalidInputError, match="not fitted"):
        BASELINES.get("shrunk_additive")().predict("A+B")


# ------------------------------------------------------------------------------------------ knn_prior
def _knn_setup():
    rng = np.random.default_rng(0)
    n_genes = 10
    control = {"A": rng.uniform(1, 2, n_genes), "B": rng.uniform(1, 2, n_genes)}
    delta = {s: rng.normal(0, 1, n_genes) for s in ("P", "Q", "R")}
    # features: P, Q, R along three axes; U close to Q, then P; V close to R; NOPE has zero features
    genes = ("P", "Q", "R", "U", "V", "NOPE")
    feats = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.3, 1.0, 0.0], [0.0, 0.1, 2.0], [0, 0, 0]], dtype=np.float64)
    priors = GenePriors(genes=genes, features=feats, sources=("test",), block_dims=(3,))
    groups = {("control", "A"): control["A"], ("control", "B"): control["B"]}
    groups |= {(s, "A"): control["A"] + d for s, d in delta.items()}
    groups |= {("P+Q", "A"): control["A"] + 7.0}  # combinations are not neighbours
    return _pb(groups), priors, control, delta


def test_knn_prior_picks_the_nearest_agents():
    train, priors, control, delta = _knn_setup()
    one = BASELINES.get("knn_prior")(k=1).fit(train, priors=priors)
    np.testing.assert_allclose(one.predict("U", "A"), control["A"] + delta["Q"])
    np.testing.assert_allclose(one.predict("V", "A"), control["A"] + delta["R"])
    np.testing.assert_allclose(one.predict("P", "A"), control["A"] + delta["P"])  # a trained agent is its own nearest
    np.testing.assert_allclose(one.predict("U+V", "A"), control["A"] + delta["Q"] + delta["R"])
    two = BASELINES.get("knn_prior")(k=2).fit(train, priors=priors)
    np.testing.assert_allclose(two.predict("U", "A"), control["A"] + (delta["Q"] + delta["P"]) / 2)
    five = BASELINES.get("knn_prior")().fit(train, priors=priors)  # k=5 > 3 trained agents: all of them
    np.testing.assert_allclose(five.predict("U", "A"), control["A"] + np.mean(list(delta.values()), axis=0))
    # context B has controls but no trained singles: neighbours come from every context
    np.testing.assert_allclose(one.predict("U", "B"), control["B"] + delta["Q"])
    np.testing.assert_array_equal(one.predict("control", "A"), control["A"])
    assert one.predict("NOPE", "A") is None  # all-zero prior features
    assert one.predict("U+MISSING", "A") is None


def test_knn_prior_refuses_missing_inputs():
    train, priors, *_ = _knn_setup()
    with pytest.raises(InvalidInputError, match="knn_prior needs gene priors"):
        BASELINES.get("knn_prior")().fit(train)
    unrelated = GenePriors(genes=("ZZZ",), features=np.ones((1, 2)), sources=("x",), block_dims=(2,))
    with pytest.raises(InvalidInputError, match="no single agent in training with non-zero prior features"):
        BASELINES.get("knn_prior")().fit(train, priors=unrelated)
    with pytest.raises(InvalidInputError, match="k=0"):
        BASELINES.get("knn_prior")(k=0)


# ------------------------------------------------------------------------------------------ linear_data
def _linear_setup(seed: int = 0):
    """Knocking down gene j shifts expression by L A L[j]: linear in the gene's own loading L[j]."""
    rng = np.random.default_rng(seed)
    n_genes, d = 40, 3
    loadings = rng.normal(size=(n_genes, d))
    mixing = rng.normal(size=(d, d))
    control = rng.uniform(1, 2, n_genes)
    genes = tuple(f"g{j}" for j in range(n_genes))

    def effect(condition: str) -> np.ndarray:
        return sum(loadings @ mixing @ loadings[int(s[1:])] for s in condition.split("+"))

    train_conditions = [f"g{j}" for j in range(20)] + ["g0+g1", "g2+g3"]
    groups = {("control", ""): control} | {(c, ""): control + effect(c) for c in train_conditions}
    return _pb(groups, genes), control, effect


def test_linear_data_recovers_planted_linear_structure():
    train, control, effect = _linear_setup()
    model = BASELINES.get("linear_data")(k=3, ridge=1e-6).fit(train)
    assert model.n_fit_ == 22
    assert model.gene_embedding_.shape == (40, 3)
    for name in ("g25", "g30+g31", "g5"):  # unseen genes (in the readout), an unseen double, a seen single
        truth = control + effect(name)
        pred = model.predict(name)
        assert pred.shape == (40,)
        no_change_error = np.abs(control - truth).mean()
        assert np.abs(pred - truth).mean() < 0.05 * no_change_error, name
    # the defaults (k=10, ridge=0.1) still beat no-change and train-mean clearly
    default = BASELINES.get("linear_data")().fit(train, validation=train)
    train_mean = BASELINES.get("train_mean")().fit(train)
    for name in ("g25", "g33"):
        truth = control + effect(name)
        err = np.abs(default.predict(name) - truth).mean()
        assert err < 0.2 * np.abs(control - truth).mean()
        assert err < 0.2 * np.abs(train_mean.predict(name) - truth).mean()
    np.testing.assert_array_equal(model.predict("control"), control)


def test_linear_data_none_and_errors():
    train, *_ = _linear_setup()
    model = BASELINES.get("linear_data")().fit(train)
    assert model.predict("KLF1") is None  # not a readout gene: no embedding
    assert model.predict("g1+KLF1") is None
    not_readout = _pb({("control", ""): np.ones(3), ("KLF1", ""): np.zeros(3)})
    with pytest.raises(InvalidInputError, match="no perturbed training group whose genes are all readout genes"):
        BASELINES.get("linear_data")().fit(not_readout)
    with pytest.raises(InvalidInputError, match="k=0"):
        BASELINES.get("linear_data")(k=0)
    with pytest.raises(InvalidInputError, match="ridge"):
        BASELINES.get("linear_data")(ridge=float("nan"))
    same = _pb({("control", ""): np.ones(3), ("g0", ""): np.zeros(3), ("g1", ""): np.zeros(3)})
    flat = BASELINES.get("linear_data")(ridge=0.0).fit(same)  # rank-0 deltas: the mean delta, no crash
    np.testing.assert_allclose(flat.predict("g2"), np.zeros(3))
