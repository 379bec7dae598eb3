from __future__ import annotations

import pytest
import torch
from torch import nn

from genailab.errors import InvalidInputError
from genailab.foundation.tuning import AdapterWrapper, BottleneckAdapter, add_adapters, remove_adapters
from tests.foundation.tuning.test_contract import N, adamw_step, make_dit, make_inputs, make_model, run, snapshot


def test_bottleneck_adapter_starts_at_zero():
    adapter = BottleneckAdapter(16, 4, dropout=0.1)
    x = torch.randn(2, 5, 16)
    assert adapter(x).shape == (2, 5, 16)
    assert torch.count_nonzero(adapter(x)) == 0
    assert sum(p.numel() for p in adapter.parameters()) == 16 * 4 + 4 + 4 * 16 + 16
    with pytest.raises(InvalidInputError, match="bottleneck"):
        BottleneckAdapter(16, 0)


def test_wrapper_adds_the_adapter_of_the_inner_output():
    inner = nn.Linear(3, 4)
    adapter = BottleneckAdapter(4, 2)
    with torch.no_grad():
        adapter.up.weight.normal_()
    wrapper = AdapterWrapper(inner, adapter)
    x = torch.randn(5, 3)
    y = inner(x)
    torch.testing.assert_close(wrapper(x), y + adapter(y))


def test_add_adapters_to_chosen_blocks_of_a_dit():
    model, inputs = make_dit(), make_inputs()
    base = run(model, inputs)
    report = add_adapters(model, where=("attn", "mlp"), blocks=(-1,), bottleneck=4)
    assert report.method == "adapter"
    assert report.targeted == ("blocks.1.attn", "blocks.1.mlp")
    assert isinstance(model.blocks[1].attn, AdapterWrapper)
    assert not isinstance(model.blocks[0].attn, AdapterWrapper)
    assert model.blocks[1].mlp.adapter.up.out_features == 64  # width read off the MLP's last Linear
    assert torch.equal(run(model, inputs), base)
    mask = torch.ones(inputs[0].shape[0], N, dtype=torch.bool)
    mask[0, -1] = False  # keyword arguments (the attention mask) pass through the wrapper
    assert model(inputs[0], inputs[1], inputs[2], mask).shape == base.shape
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    assert all(".adapter." in n for n in trainable)


def test_adapters_train_then_remove_restores_the_original_modules():
    model, inputs = make_model("mlp"), make_inputs()
    base = run(model, inputs)
    originals = [block.mlp for block in model.blocks]
    add_adapters(model, where=["mlp"], bottleneck=4)
    before = snapshot(model)
    for _ in range(3):
        adamw_step(model, inputs)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed
    assert all(".adapter." in n for n in changed)
    assert not torch.allclose(run(model, inputs), base)
    assert remove_adapters(model) == ("blocks.0.mlp", "blocks.1.mlp")
    assert [block.mlp for block in model.blocks] == originals
    assert not any(isinstance(m, (AdapterWrapper, BottleneckAdapter)) for m in model.modules())
    assert torch.equal(run(model, inputs), base)
    with pytest.raises(InvalidInputError, match="no adapter to remove"):
        remove_adapters(model)


def test_adapters_in_the_recipe_container():
    model, inputs = make_model("recipe"), make_inputs()
    base = run(model, inputs)
    report = add_adapters(model, where=["attention"], bottleneck=4)
    assert report.targeted == ("backbone.blocks.0.attn", "backbone.blocks.1.attn")
    assert torch.equal(run(model, inputs), base)


def test_adapter_errors():
    model = make_dit()
    with pytest.raises(InvalidInputError, match="blocks contains 2"):
        add_adapters(model, blocks=(2,))
    with pytest.raises(InvalidInputError, match="LoRA alias"):
        add_adapters(model, where=["all_linear"])
    with pytest.raises(InvalidInputError, match="'ffn' matches no sub-module"):
        add_adapters(model, where=["ffn"])
    with pytest.raises(InvalidInputError, match="no block list"):
        add_adapters(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(InvalidInputError, match="holds no nn.Linear"):
        add_adapters(nn.ModuleDict({"blocks": nn.ModuleList([nn.ModuleDict({"act": nn.GELU()})])}), where=["act"])
    assert all(p.requires_grad for p in model.parameters())  # nothing was frozen by the failed calls
    add_adapters(model, where=["attn"])
    with pytest.raises(InvalidInputError, match="already added"):
        add_adapters(model, where=["attn"])
    add_adapters(model, where=["mlp"])  # another sub-block is fine
    assert isinstance(model.blocks[0].mlp, AdapterWrapper)
