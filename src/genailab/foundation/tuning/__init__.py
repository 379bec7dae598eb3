"""Tuning: decide what trains and what stays frozen, and report it.

"Don't fine-tune the world, fine-tune the steering wheel": a pretrained backbone stays frozen and small
modules train. Every tuning method returns a :class:`TuningReport` of trainable vs total parameters and
the modules it touched. :func:`apply_freeze` freezes a module (or the modules matching name patterns),
which the staged recipes use to keep a pretrained VAE or backbone fixed; :func:`apply_tuning` applies a
registered method (:data:`TUNING_METHODS`) picked by :class:`TuningConfig` (the flat form the CLI and
saved files use) or by the method's own typed config (:class:`LoraConfig`, :class:`AdapterConfig`,
:class:`PartialConfig`, :class:`LinearProbeConfig`, :class:`FullConfig`, :class:`ConditioningConfig`;
:data:`METHOD_CONFIGS`, :meth:`TuningConfig.method_config`):

- ``"full"``: everything trains (:func:`apply_full`);
- ``"linear_probe"``: only the output head (:func:`apply_linear_probe`); :class:`LinearProbe` probes
  fixed embeddings;
- ``"adapter"``: Houlsby bottleneck adapters (:func:`add_adapters`, :func:`remove_adapters`);
- ``"lora"``: LoRA through PEFT (:class:`LoRA`), or any PEFT method (:func:`apply_peft`);
- ``"partial"``: the last K blocks and the norms (:func:`apply_partial`);
- ``"conditioning"``: the conditioning paths only (:func:`apply_conditioning`).
"""

from genailab.foundation.tuning.freeze import TuningReport, apply_freeze, count_parameters

__all__ = ["TuningReport", "apply_freeze", "count_parameters"]

# Importing the method modules registers them in TUNING_METHODS.
from genailab.foundation.tuning.adapters import (  # noqa: E402
    AdapterWrapper,
    BottleneckAdapter,
    add_adapters,
    remove_adapters,
)
from genailab.foundation.tuning.conditioning import apply_conditioning, conditioning_modules  # noqa: E402
from genailab.foundation.tuning.lora import LoRA, apply_peft, resolve_lora_targets  # noqa: E402
from genailab.foundation.tuning.method_configs import (  # noqa: E402
    AdapterConfig,
    ConditioningConfig,
    FullConfig,
    LinearProbeConfig,
    LoraConfig,
    PartialConfig,
)
from genailab.foundation.tuning.methods import (  # noqa: E402
    METHOD_CONFIGS,
    TUNING_METHODS,
    MethodConfig,
    TuningConfig,
    apply_tuning,
)
from genailab.foundation.tuning.partial import apply_full, apply_partial  # noqa: E402
from genailab.foundation.tuning.probe import LinearProbe, ProbeResult, apply_linear_probe  # noqa: E402

__all__ += [
    "METHOD_CONFIGS",
    "TUNING_METHODS",
    "AdapterConfig",
    "AdapterWrapper",
    "BottleneckAdapter",
    "ConditioningConfig",
    "FullConfig",
    "LinearProbe",
    "LinearProbeConfig",
    "LoRA",
    "LoraConfig",
    "MethodConfig",
    "PartialConfig",
    "ProbeResult",
    "TuningConfig",
    "add_adapters",
    "apply_conditioning",
    "apply_full",
    "apply_linear_probe",
    "apply_partial",
    "apply_peft",
    "apply_tuning",
    "conditioning_modules",
    "remove_adapters",
    "resolve_lora_targets",
]
