from __future__ import annotations

import pytest

from genailab.config import apply_overrides
from genailab.errors import InvalidInputError
from genailab.foundation.tuning import (
    METHOD_CONFIGS,
    TUNING_METHODS,
    AdapterConfig,
    LinearProbeConfig,
    LoraConfig,
    PartialConfig,
    TuningConfig,
    TuningReport,
    apply_tuning,
)


def test_defaults_and_json_round_trip():
    config = TuningConfig(method="lora", targets=("attn", "mlp"), rank=4, blocks=(-1,), peft={"use_dora": True})
    again = TuningConfig.from_json(config.to_json())
    assert again == config
    assert again.peft == {"use_dora": True}
    assert TuningConfig().method == "full"


def test_cli_overrides_parse_to_typed_values():
    config = apply_overrides(
        TuningConfig(),
        {"method": "lora", "rank": "4", "targets": "attn,mlp", "alpha": "none", "peft": "{use_dora: true}"},
    )
    assert (config.method, config.rank, config.targets, config.alpha) == ("lora", 4, ("attn", "mlp"), None)
    assert config.peft == {"use_dora": True}


def test_peft_mapping_is_read_only():
    config = TuningConfig(peft={"type": "IA3"})
    with pytest.raises(TypeError):
        config.peft["type"] = "LoHa"


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"method": "prompt"}, "expected one of 'adapter', 'conditioning', 'full'"),
        ({"targets": ()}, "targets=()"),
        ({"targets": ("attn(",)}, "not a valid regular expression"),
        ({"rank": 0}, "rank=0"),
        ({"alpha": -1.0}, "alpha=-1.0"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"blocks": ()}, "blocks=()"),
        ({"blocks": (1.5,)}, "blocks"),
        ({"last_k": -1}, "last_k=-1"),
        ({"patterns": ("[",)}, "patterns"),
        ({"head": ""}, "head=''"),
        ({"adapter_name": "a.b"}, "adapter_name='a.b'"),
        ({"peft": "[1, 2]"}, "must be a mapping"),
        ({"peft": {"target_modules": ["x"]}}, "set tuning.targets"),
    ],
)
def test_invalid_configs(fields, match):
    with pytest.raises(InvalidInputError, match=match):
        TuningConfig(**fields)


def test_apply_tuning_checks_its_arguments():
    with pytest.raises(InvalidInputError, match="torch.nn.Module"):
        apply_tuning("model", TuningConfig())
    with pytest.raises(InvalidInputError, match="TuningConfig"):
        apply_tuning(__import__("torch").nn.Linear(2, 2), {"method": "full"})


def test_report_to_dict_and_the_old_positional_form():
    report = TuningReport("freeze", ("a",), 3, 12)
    assert report.to_dict() == {
        "method": "freeze",
        "targeted": ["a"],
        "n_trainable": 3,
        "n_total": 12,
        "trainable_fraction": 0.25,
        "details": {},
    }
    assert "lora" in TUNING_METHODS


# --- per-method typed configs -------------------------------------------------------------------------


def test_every_method_has_a_typed_config_that_round_trips_through_the_flat_one():
    assert METHOD_CONFIGS.names() == TUNING_METHODS.names()
    flat = TuningConfig(method="lora", targets=("mlp",), rank=4, alpha=2.0, last_k=3, peft={"use_dora": True})
    typed = flat.method_config()
    assert typed == LoraConfig(targets=("mlp",), rank=4, alpha=2.0, peft={"use_dora": True})
    assert not hasattr(typed, "last_k")  # options of other methods are not carried
    assert TuningConfig.from_method_config(typed) == flat.replace(last_k=1)
    for name in METHOD_CONFIGS:
        cls = METHOD_CONFIGS.get(name)
        assert cls.method == name
        assert TuningConfig(method=name).method_config() == cls()
        assert TuningConfig.from_method_config(cls()) == TuningConfig(method=name)
        assert cls.from_json(cls().to_json()) == cls()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: LoraConfig(rank=0), "rank=0"),
        (lambda: LoraConfig(peft={"target_modules": ["x"]}), "set tuning.targets"),
        (lambda: AdapterConfig(blocks=()), "blocks=()"),
        (lambda: PartialConfig(last_k=-1), "last_k=-1"),
        (lambda: LinearProbeConfig(head=""), "head=''"),
    ],
)
def test_typed_configs_validate_like_the_flat_one(make, match):
    with pytest.raises(InvalidInputError, match=match):
        make()


def test_typed_peft_string_is_parsed_and_read_only():
    config = LoraConfig(peft="{use_dora: true}")
    assert config.peft == {"use_dora": True}
    with pytest.raises(TypeError):
        config.peft["use_dora"] = False


def test_apply_tuning_takes_a_typed_config():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))

    a, b = make(), make()
    ra = apply_tuning(a, PartialConfig(last_k=0, train_norms=True, patterns=("^2$",)))
    rb = apply_tuning(b, TuningConfig(method="partial", last_k=0, train_norms=True, patterns=("^2$",)))
    assert ra == rb
    assert [n for n, p in a.named_parameters() if p.requires_grad] == [
        n for n, p in b.named_parameters() if p.requires_grad
    ]
