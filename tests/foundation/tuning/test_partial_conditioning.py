from __future__ import annotations

import pytest
import torch
from torch import nn

from genailab.errors import InvalidInputError
from genailab.foundation.backbones import UNet1D, UNet1DConfig
from genailab.foundation.tuning import (
    TuningConfig,
    apply_conditioning,
    apply_partial,
    apply_tuning,
    conditioning_modules,
)
from tests.foundation.tuning.test_contract import (
    C,
    D,
    K,
    N,
    adamw_step,
    make_dit,
    make_encoder,
    make_inputs,
    make_model,
    pretrained,
    snapshot,
)


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_partial_last_k_and_norms():
    model = make_model("mlp")
    report = apply_partial(model, last_k=2, train_norms=True)
    assert report.targeted == ("blocks.0", "blocks.1", "out_norm")
    assert _trainable(model) == {n for n, _ in model.named_parameters() if n.startswith(("blocks.", "out_norm."))}
    other = make_model("mlp")
    apply_partial(other, last_k=1, train_norms=False)
    assert _trainable(other) == {n for n, _ in other.named_parameters() if n.startswith("blocks.1.")}


def test_partial_patterns_instead_of_blocks():
    model = make_dit()
    report = apply_tuning(model, TuningConfig(method="partial", last_k=0, patterns=(r"^final\.", "inp")))
    assert report.targeted == ("inp", "final.modulation", "final.linear")  # final.norm has no parameters
    assert _trainable(model) == {n for n, _ in model.named_parameters() if n.startswith(("inp.", "final."))}


def test_partial_on_a_unet_uses_its_up_list():
    model = pretrained(UNet1D(UNet1DConfig.tiny(N, D, K, C)))
    report = apply_partial(model, last_k=1, train_norms=False)
    assert report.targeted == (f"up.{len(model.up) - 1}",)


def test_partial_errors():
    with pytest.raises(InvalidInputError, match="needs a block list"):
        apply_partial(nn.Sequential(nn.Linear(2, 2)))
    report = apply_partial(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), patterns=[r"^1$"])
    assert report.targeted == ("1",)
    assert report.n_trainable == 3
    with pytest.raises(InvalidInputError, match="last_k=3 exceeds the 2 blocks"):
        apply_partial(make_dit(), last_k=3)
    with pytest.raises(InvalidInputError, match="would train no parameter"):
        apply_partial(make_dit(), last_k=0, train_norms=True)  # adaLN norms have no parameters


def test_conditioning_modules_of_each_conditioner():
    assert conditioning_modules(make_dit("cross_attention")) == (
        "blocks.0.conditioner",
        "blocks.1.conditioner",
        "final.modulation",
    )  # no cond_pool: cross-attention reads the tokens
    assert conditioning_modules(make_model("recipe"))[-1] == "conditioning"
    film = make_dit("film")
    apply_conditioning(film)
    assert {"blocks.0.conditioner.film.proj.weight", "cond_pool.weight"} <= _trainable(film)
    assert not any(n.startswith(("blocks.0.attn", "blocks.0.mlp", "inp", "time_mlp")) for n in _trainable(film))
    with pytest.raises(InvalidInputError, match="no conditioning module"):
        apply_conditioning(nn.Sequential(nn.Linear(2, 2)))


def test_add_categories_extends_the_table_with_the_mean():
    encoder = make_encoder()
    old = encoder.embeddings[0].weight.detach().clone()  # (3, C)
    codes = encoder.add_categories("donor", 2)
    assert codes == range(3, 5)
    assert encoder.config.n_categories == (5, 0)
    table = encoder.embeddings[0].weight
    assert table.shape == (5, C)
    assert torch.equal(table[:3], old)
    torch.testing.assert_close(table[3:], old.mean(dim=0).expand(2, C))
    tokens = encoder(torch.tensor([[4.0, 0.5], [0.0, -1.0]]), drop=None)
    torch.testing.assert_close(tokens[0, 0], old.mean(dim=0))
    with pytest.raises(InvalidInputError, match="codes of condition 'donor' must be in"):
        encoder(torch.tensor([[5.0, 0.0]]))
    encoder.embeddings[0].weight.requires_grad_(False)
    encoder.add_categories("donor", 1)
    assert not encoder.embeddings[0].weight.requires_grad  # keeps the frozen / trainable state


@pytest.mark.parametrize(
    ("key", "n_new", "match"),
    [("dose", 1, "continuous"), ("batch", 1, "not a condition key"), ("donor", 0, "n_new=0"), ("donor", 1.5, "n_new")],
)
def test_add_categories_errors(key, n_new, match):
    with pytest.raises(InvalidInputError, match=match):
        make_encoder().add_categories(key, n_new)


def test_a_new_donor_trains_without_touching_the_rest():
    model = make_model("recipe")
    (new_code,) = model["conditioning"].add_categories("donor", 1)
    apply_tuning(model, TuningConfig(method="conditioning"))
    x, t, cond, values = make_inputs(4)
    values[:, 0] = float(new_code)  # only cells of the new donor
    before = snapshot(model)
    adamw_step(model, (x, t, cond, values))
    after = dict(model.named_parameters())
    table = "conditioning.embeddings.0.weight"
    assert torch.equal(after[table][:new_code], before[table][:new_code])  # the old donors are untouched
    assert not torch.equal(after[table][new_code], before[table][new_code])  # the new one moved
    backbone_frozen = [n for n in before if n.startswith("backbone.") and not after[n].requires_grad]
    assert backbone_frozen
    assert all(torch.equal(after[n], before[n]) for n in backbone_frozen)
