"""The contract every registered tuning method honours, on DiT, the MLP backbone and the recipes' ModuleDict.

The helpers at the top (tiny "pretrained" models, inputs, one AdamW step) are shared by the other
tuning test modules.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from genailab.errors import InvalidInputError
from genailab.foundation.backbones import DiT, DiTConfig, MLPBackbone, MLPBackboneConfig
from genailab.foundation.conditioning import ConditionEncoder, ConditionEncoderConfig
from genailab.foundation.tuning import TUNING_METHODS, TuningConfig, apply_tuning, count_parameters

pytest.importorskip("peft")  # imported once at collection: it takes seconds
torch.optim.AdamW([nn.Parameter(torch.zeros(1))])  # so does torch's first optimizer (it imports torch._dynamo)

N, D, K, C, B = 4, 8, 2, 6, 3
W, RANK, BOTTLENECK = 64, 4, 8  # DiT / MLP tiny width, and the tuning sizes used below
KINDS = ("dit", "mlp", "recipe")
METHODS = TUNING_METHODS.names()


def pretrained(module: nn.Module) -> nn.Module:
    """Perturb every weight so zero-initialised layers are non-zero, like a trained model."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return module.eval()


def make_dit(conditioning: str = "adaln") -> DiT:
    return pretrained(DiT(DiTConfig.tiny(N, D, K, C, conditioning=conditioning)))


def make_encoder() -> ConditionEncoder:
    return ConditionEncoder(ConditionEncoderConfig(keys=("donor", "dose"), n_categories=(3, 0), dim=C))


def make_model(kind: str) -> nn.Module:
    if kind == "dit":
        return make_dit()
    if kind == "mlp":
        return pretrained(MLPBackbone(MLPBackboneConfig.tiny(N, D, K, C)))
    return pretrained(nn.ModuleDict({"backbone": DiT(DiTConfig.tiny(N, D, K, C)), "conditioning": make_encoder()}))


def make_inputs(batch: int = B) -> tuple[torch.Tensor, ...]:
    """``x (B, N, D)``, ``t (B,)``, condition tokens ``(B, K, C)``, encoder values ``(B, 2)``."""
    values = torch.stack([torch.randint(0, 3, (batch,)).float(), torch.randn(batch)], dim=1)
    return torch.randn(batch, N, D), torch.rand(batch), torch.randn(batch, K, C), values


def run(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Forward any of the three kinds: the ModuleDict encodes its conditions like the recipes do."""
    x, t, cond, values = inputs
    if isinstance(model, nn.ModuleDict):
        return model["backbone"](x, t, model["conditioning"](values))
    return model(x, t, cond)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def adamw_step(model: nn.Module, inputs: tuple[torch.Tensor, ...], lr: float = 1e-2) -> None:
    """One AdamW step on a random regression loss over *all* parameters (frozen ones get no grad)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    out = run(model, inputs)
    loss = (out - torch.randn_like(out)).pow(2).mean()
    loss.backward()
    opt.step()
    model.eval()


def config_for(method: str, kind: str, **overrides) -> TuningConfig:
    """The config each case uses: attention targets on DiT, MLP targets on the MLP backbone."""
    targets = ("mlp",) if kind == "mlp" else ("attn",)
    fields = {"method": method, "targets": targets, "rank": RANK, "adapter_dim": BOTTLENECK, **overrides}
    return TuningConfig(**fields)


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def expected_trainable(method: str, kind: str, model: nn.Module) -> int:
    """Trainable parameters each method should leave, worked out from the untouched model's structure."""
    bb = model["backbone"] if kind == "recipe" else model
    if method == "full":
        return _numel(model)
    if method == "linear_probe":
        return _numel(bb.out if kind == "mlp" else bb.final.linear)
    if method == "lora":  # r * (in + out) per adapted Linear, two blocks
        per_block = 2 * RANK * (W + W) if kind == "mlp" else RANK * (W + 3 * W) + RANK * (W + W)
        return 2 * per_block
    if method == "adapter":  # one W -> bottleneck -> W adapter per block
        return 2 * (W * BOTTLENECK + BOTTLENECK + BOTTLENECK * W + W)
    if method == "partial":
        return _numel(bb.blocks[-1]) + (_numel(bb.out_norm) if kind == "mlp" else 0)
    if method == "conditioning":
        if kind == "mlp":
            return _numel(bb.cond_proj) + sum(_numel(b.modulation) for b in bb.blocks)
        n = _numel(bb.cond_pool) + sum(_numel(b.conditioner) for b in bb.blocks) + _numel(bb.final.modulation)
        return n + (_numel(model["conditioning"]) if kind == "recipe" else 0)
    raise AssertionError(f"no expectation for {method!r}")


CASES = [pytest.param(m, k, id=f"{m}-{k}") for m in METHODS for k in KINDS]


def test_every_method_is_registered():
    assert set(METHODS) == {"full", "linear_probe", "adapter", "lora", "partial", "conditioning"}


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_report_matches_count_parameters(method, kind):
    model = make_model(kind)
    report = apply_tuning(model, config_for(method, kind))
    assert report.method == method
    assert (report.n_trainable, report.n_total) == count_parameters(model)
    assert report.trainable_fraction == pytest.approx(report.n_trainable / report.n_total)
    assert report.targeted
    assert all(isinstance(n, str) for n in report.targeted)
    for name in report.targeted:
        model.get_submodule(name)  # every touched name is a real module
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload["method"] == method
    assert payload["targeted"] == list(report.targeted)
    assert f"{report.n_trainable:,} of {report.n_total:,}" in str(report)


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_trainable_count_is_what_the_method_promises(method, kind):
    model = make_model(kind)
    expected = expected_trainable(method, kind, model)
    report = apply_tuning(model, config_for(method, kind))
    assert report.n_trainable == expected
    bounds = {"full": (1.0, 1.0), "linear_probe": (1e-3, 0.05), "lora": (0.005, 0.05), "adapter": (0.005, 0.1),
              "partial": (0.2, 0.6), "conditioning": (0.1, 0.6)}  # fmt: skip
    low, high = bounds[method]
    assert low <= report.trainable_fraction <= high


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_applying_twice_raises(method, kind):
    model = make_model(kind)
    apply_tuning(model, config_for(method, kind))
    with pytest.raises(InvalidInputError, match="already"):
        apply_tuning(model, config_for(method, kind))


NOTHING = {
    "adapter": {"targets": ("no_such_module",)},
    "lora": {"targets": ("no_such_module",)},
    "partial": {"patterns": ("no_such_module",)},
    "linear_probe": {"head": "no_such_module"},
}


@pytest.mark.parametrize(("method", "kind"), [pytest.param(m, k, id=f"{m}-{k}") for m in NOTHING for k in KINDS])
def test_target_matching_nothing_raises_and_leaves_the_model_alone(method, kind):
    model = make_model(kind)
    names = [n for n, _ in model.named_modules()]
    with pytest.raises(InvalidInputError, match="no_such_module"):
        apply_tuning(model, config_for(method, kind, **NOTHING[method]))
    assert [n for n, _ in model.named_modules()] == names
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_output_unchanged_at_init(method, kind):
    model = make_model(kind)
    inputs = make_inputs()
    before = run(model, inputs)
    assert torch.count_nonzero(before) > 0  # a "pretrained" model, so the check is not vacuous
    apply_tuning(model, config_for(method, kind))
    assert torch.equal(run(model, inputs), before)


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_one_step_changes_only_tuning_parameters(method, kind):
    model = make_model(kind)
    report = apply_tuning(model, config_for(method, kind))
    before = snapshot(model)
    adamw_step(model, make_inputs())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed, "no tuning parameter moved"
    assert changed <= trainable  # every frozen parameter is bit-identical
    inside = lambda n: any(t == "" or n.startswith(t + ".") for t in report.targeted)  # noqa: E731
    assert all(inside(n) for n in trainable)  # the report names every module that trains
