from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from genailab.errors import CheckpointError, InvalidInputError
from genailab.foundation import tuning
from genailab.foundation.tuning import (
    LoRA,
    TuningConfig,
    add_adapters,
    apply_peft,
    apply_tuning,
    resolve_lora_targets,
)
from tests.foundation.tuning.test_contract import adamw_step, make_dit, make_inputs, make_model, run, snapshot

peft = pytest.importorskip("peft")


def _set_lora_weights(model, adapter_name: str, seed: int) -> None:
    """Give an adapter non-zero B (as after training), deterministically."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f".{adapter_name}." in name and "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def test_wrap_is_identity_at_init_and_trains_only_lora():
    model, inputs = make_dit(), make_inputs()
    base = run(model, inputs)
    report = LoRA.wrap(model, rank=4, target_modules=["attention"])
    assert report.method == "lora"
    assert report.details["adapter_name"] == "default"
    assert report.details["rank"] == 4
    assert report.details["alpha"] == 8.0
    assert report.targeted == ("blocks.0.attn.qkv", "blocks.0.attn.out", "blocks.1.attn.qkv", "blocks.1.attn.out")
    assert torch.equal(run(model, inputs), base)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert all(".lora_A.default." in n or ".lora_B.default." in n for n in trainable)
    assert LoRA.adapter_names(model) == ("default",)


def test_wrap_twice_and_duplicate_names_raise():
    model = make_dit()
    LoRA.wrap(model, rank=2)
    with pytest.raises(InvalidInputError, match="already wrapped.*LoRA.add"):
        LoRA.wrap(model, rank=2, adapter_name="other")
    with pytest.raises(InvalidInputError, match="already has an adapter named 'default'"):
        LoRA.add(model, "default", rank=2)
    with pytest.raises(InvalidInputError, match="without '.'"):
        LoRA.add(model, "a.b", rank=2)


def test_two_adapters_and_set_active():
    model, inputs = make_dit(), make_inputs()
    base = run(model, inputs)
    LoRA.wrap(model, rank=4, adapter_name="donor_a")
    report = LoRA.add(model, "donor_b", rank=4)
    assert LoRA.adapter_names(model) == ("donor_a", "donor_b")
    assert report.details["adapter_name"] == "donor_b"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert all(".donor_b." in n for n in trainable)
    _set_lora_weights(model, "donor_a", 1)
    _set_lora_weights(model, "donor_b", 2)
    LoRA.set_active(model, "donor_a")
    out_a = run(model, inputs)
    assert all(".donor_a." in n for n, p in model.named_parameters() if p.requires_grad)
    LoRA.set_active(model, "donor_b")
    out_b = run(model, inputs)
    assert not torch.allclose(out_a, out_b)
    assert not torch.allclose(out_a, base)
    assert not torch.allclose(out_b, base)
    LoRA.set_active(model, "donor_a")
    torch.testing.assert_close(run(model, inputs), out_a, rtol=0, atol=0)
    with pytest.raises(InvalidInputError, match="'nobody' is not an adapter"):
        LoRA.set_active(model, "nobody")


def test_merge_equals_unmerged_and_unmerge_restores():
    model, inputs = make_dit(), make_inputs()
    LoRA.wrap(model, rank=4, target_modules=["attention", "mlp"])
    _set_lora_weights(model, "default", 0)
    base_weight = model.blocks[0].attn.qkv.base_layer.weight.detach().clone()
    unmerged = run(model, inputs)
    LoRA.merge(model)
    assert not torch.equal(model.blocks[0].attn.qkv.base_layer.weight, base_weight)  # really folded in
    torch.testing.assert_close(run(model, inputs), unmerged, rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidInputError, match="merged"):
        LoRA.merge(model)
    with pytest.raises(InvalidInputError, match="merged"):
        LoRA.add(model, "second", rank=2)
    LoRA.unmerge(model)
    torch.testing.assert_close(model.blocks[0].attn.qkv.base_layer.weight, base_weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(run(model, inputs), unmerged, rtol=1e-5, atol=1e-5)
    with pytest.raises(InvalidInputError, match="no merged adapter"):
        LoRA.unmerge(model)


def test_disable_gives_the_base_output_and_restores_state():
    model, inputs = make_dit(), make_inputs()
    base = run(model, inputs)
    LoRA.wrap(model, rank=4)
    _set_lora_weights(model, "default", 0)
    adapted = run(model, inputs)
    flags = [p.requires_grad for p in model.parameters()]
    with LoRA.disable(model):
        assert torch.equal(run(model, inputs), base)
    assert torch.equal(run(model, inputs), adapted)
    assert [p.requires_grad for p in model.parameters()] == flags
    LoRA.merge(model)  # disabling a merged model unmerges for the duration and merges back
    with LoRA.disable(model):
        torch.testing.assert_close(run(model, inputs), base, rtol=1e-5, atol=1e-5)
    assert model.blocks[0].attn.qkv.merged
    torch.testing.assert_close(run(model, inputs), adapted, rtol=1e-5, atol=1e-5)


def test_adapter_state_dict_round_trips_onto_a_fresh_backbone():
    torch.manual_seed(3)
    model = make_dit()
    base_weights = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = make_inputs()
    LoRA.wrap(model, rank=4, adapter_name="persona")
    _set_lora_weights(model, "persona", 5)  # as if trained
    expected = run(model, inputs)
    state = LoRA.state_dict(model, "persona")
    assert state
    assert all("lora_" in k and "persona" not in k for k in state)
    assert sum(v.numel() for v in state.values()) == sum(
        p.numel() for n, p in model.named_parameters() if ".persona." in n
    )  # adapter weights only, no base weight
    fresh = make_dit()
    fresh.load_state_dict(base_weights)
    LoRA.wrap(fresh, rank=4, adapter_name="persona")
    assert not torch.allclose(run(fresh, inputs), expected)
    LoRA.load_state_dict(fresh, state, "persona")
    torch.testing.assert_close(run(fresh, inputs), expected, rtol=0, atol=0)


def test_load_state_dict_rejects_what_does_not_fit():
    model = make_dit()
    LoRA.wrap(model, rank=4)
    state = LoRA.state_dict(model)
    other = make_dit()
    LoRA.wrap(other, rank=2)
    with pytest.raises(CheckpointError, match="wrong shape"):
        LoRA.load_state_dict(other, state)
    key = next(iter(state))
    with pytest.raises(CheckpointError, match="missing"):
        LoRA.load_state_dict(model, {k: v for k, v in state.items() if k != key})
    with pytest.raises(CheckpointError, match="unexpected"):
        LoRA.load_state_dict(model, {**state, "blocks.9.attn.qkv.lora_A.weight": state[key]})
    with pytest.raises(InvalidInputError, match="is not an adapter"):
        LoRA.load_state_dict(model, state, "missing_name")


def test_state_dict_of_a_wrapped_sub_module_from_the_container():
    model, inputs = make_model("recipe"), make_inputs()
    LoRA.wrap(model["backbone"], rank=2)
    _set_lora_weights(model, "default", 0)
    state = LoRA.state_dict(model)
    assert state
    assert all(k.startswith("backbone.blocks.") for k in state)
    expected = run(model, inputs)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.zero_()
    LoRA.load_state_dict(model, state)
    assert torch.equal(run(model, inputs), expected)


def test_target_aliases():
    cross = make_dit("cross_attention")
    assert resolve_lora_targets(cross, "attention") == tuple(
        f"blocks.{i}.{n}"
        for i in range(2)
        for n in ("attn.qkv", "attn.out", "conditioner.cross.q", "conditioner.cross.kv", "conditioner.cross.out")
    )
    model = make_model("recipe")
    assert resolve_lora_targets(model, ["mlp"]) == tuple(
        f"backbone.blocks.{i}.mlp.{j}" for i in range(2) for j in (0, 3)
    )
    all_linear = resolve_lora_targets(model, ["all_linear"])
    assert "backbone.final.linear" not in all_linear  # the head is excluded
    assert {"backbone.inp", "backbone.final.modulation", "conditioning.embeddings.1"} <= set(all_linear)
    cond = resolve_lora_targets(model, ["conditioning"])
    assert set(cond) == {"backbone.cond_pool", "backbone.blocks.0.conditioner.modulation",
                         "backbone.blocks.1.conditioner.modulation", "backbone.final.modulation",
                         "conditioning.embeddings.1"}  # fmt: skip
    assert resolve_lora_targets(model, [r"blocks\.1\.attn\.qkv$"]) == ("backbone.blocks.1.attn.qkv",)
    assert resolve_lora_targets(model, ["backbone.inp"]) == ("backbone.inp",)  # an exact name
    wrapped = make_dit()
    add_adapters(wrapped, where=["mlp"])  # the MLP's Linears move under the wrapper; adapters' own are skipped
    assert resolve_lora_targets(wrapped, "mlp") == tuple(f"blocks.{i}.mlp.inner.{j}" for i in range(2) for j in (0, 3))


def test_bad_targets_fail_before_peft_runs():
    model = make_dit()
    with pytest.raises(InvalidInputError, match="matches no nn.Linear"):
        LoRA.wrap(model, target_modules=["attention", "decoder"])
    assert LoRA.adapter_names(model) == ()
    assert not hasattr(model, "peft_config")
    with pytest.raises(InvalidInputError, match="not a valid regular expression"):
        LoRA.wrap(model, target_modules=["attn("])
    with pytest.raises(InvalidInputError, match="not allowed"):
        LoRA.wrap(model, use_doraa=True)


def test_lora_applied_to_a_self_attention_that_calls_its_linears_directly():
    # _SelfAttention.forward calls self.qkv(h): PEFT replaces the attribute, so the LoRA path is used.
    model, inputs = make_dit(), make_inputs()
    LoRA.wrap(model, rank=2, target_modules=[r"blocks\.0\.attn\.qkv"])
    calls = []
    hook = model.blocks[0].attn.qkv.lora_B["default"].register_forward_hook(lambda *a: calls.append(1))
    run(model, inputs)
    hook.remove()
    assert calls == [1]


def test_dora_through_the_tuning_config():
    model, inputs = make_dit(), make_inputs()
    base = run(model, inputs)
    report = apply_tuning(model, TuningConfig(method="lora", rank=4, peft={"use_dora": True}))
    assert report.details["use_dora"] is True
    assert torch.equal(run(model, inputs), base)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_magnitude_vector" in n for n in trainable)
    before = snapshot(model)
    adamw_step(model, inputs)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed
    assert changed <= trainable
    assert any("lora_magnitude_vector" in k for k in LoRA.state_dict(model))


def test_ia3_through_apply_peft_and_the_tuning_config():
    model, inputs = make_dit(), make_inputs()
    base = run(model, inputs)
    config = peft.IA3Config(target_modules=r".*attn\.(qkv|out)", feedforward_modules=[])
    report = apply_peft(model, config, "ia3_persona")
    assert report.method == "ia3"
    assert report.details["peft_type"] == "IA3"
    assert len(report.targeted) == 4
    assert torch.equal(run(model, inputs), base)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert all(".ia3_l.ia3_persona" in n for n in trainable)
    assert report.n_trainable == 2 * (3 * 64 + 64)  # one scale per output feature of qkv and out

    other = make_dit()
    other_base = run(other, inputs)
    report = apply_tuning(other, TuningConfig(method="lora", targets=("mlp",), peft={"type": "IA3"}))
    assert report.method == "lora"
    assert report.details["peft_type"] == "IA3"
    assert report.targeted == ("blocks.0.mlp.0", "blocks.0.mlp.3", "blocks.1.mlp.0", "blocks.1.mlp.3")
    assert torch.equal(run(other, inputs), other_base)
    before = snapshot(other)
    adamw_step(other, inputs)
    changed = {n for n, p in other.named_parameters() if not torch.equal(p, before[n])}
    assert changed
    assert all("ia3_l" in n for n in changed)


def test_apply_peft_rejects_bad_configs():
    model = make_dit()
    with pytest.raises(InvalidInputError, match="peft.PeftConfig"):
        apply_peft(model, {"r": 4})
    with pytest.raises(InvalidInputError, match="feedforward_modules"):
        apply_peft(model, peft.IA3Config(target_modules=r".*attn\.qkv"))
    with pytest.raises(InvalidInputError, match="PEFT could not inject"):
        apply_peft(model, peft.LoraConfig(r=2, target_modules=r"^nothing$"))
    with pytest.raises(InvalidInputError, match="not a PEFT method"):
        apply_tuning(model, TuningConfig(method="lora", peft={"type": "NoSuchMethod"}))


def test_importing_tuning_does_not_import_peft():
    # PEFT takes seconds to import: no module of the tuning package imports it at module level.
    for path in Path(tuning.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "peft" for a in node.names), path.name
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "peft", path.name
