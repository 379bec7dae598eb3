"""Resolved run configs for CLI commands: YAML + ``--set`` overrides, checked against the types."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from genailab.config import Config, apply_overrides, check_positive, load_yaml_overrides, parse_set_options
from genailab.data import DataSpec
from genailab.errors import InvalidInputError
from genailab.foundation.backbones import backbone_config
from genailab.foundation.recipes.distill import DistillConfig
from genailab.foundation.recipes.latent_diffusion import LatentDiffusionConfig
from genailab.foundation.recipes.perturb.model import PerturbDeltaConfig
from genailab.foundation.recipes.vae.model import PRESETS, LatentTokenVAEConfig
from genailab.foundation.tuning import TuningConfig
from genailab.tokenizers import TokenizerConfig
from genailab.training import TrainConfig

__all__ = [
    "AdaptRunConfig",
    "DistillRunConfig",
    "PerturbAdaptRunConfig",
    "PerturbRunConfig",
    "SynthRunConfig",
    "TokenizerRunFields",
    "VAERunConfig",
    "resolve_run_config",
    "versions",
]


@dataclass(frozen=True)
class TokenizerRunFields(Config):
    """The tokenizer choice and the files it is built from (shared by the VAE and synthesis runs).

    Parameters
    ----------
    tokenizer
        ``tokenizer.name`` is ``latent`` (default), ``pathway``, ``grn``, ``rank``, ``latent+pathway``
        or ``grn+latent``; its other fields are the tokenizer's options (``--set tokenizer.top_k=128``).
    gene_sets
        A GMT file of gene sets (pathway tokens), or ``nmf`` / ``nmf:K`` for K data-driven modules fitted
        on the training cells (saved with the model).
    grn
        A TSV/CSV of regulator -> target edges (GRN tokens).
    gene_medians
        A Geneformer gene-median dictionary (Ensembl ID -> median) for rank tokens: ``.json``, a
        two-column ``.tsv`` or a ``.pkl`` (read by a restricted unpickler that builds plain values only).
    id_map
        A TSV of ``symbol`` and ``ensembl_id`` columns, to match gene sets / edges / medians whose ID
        type differs from the data's genes.
    symbols_key
        A ``var`` column holding gene symbols when ``var_names`` are Ensembl IDs (an ID map from the data).
    n_modules, module_genes
        Default number of data-driven modules for ``gene_sets=nmf`` and the genes kept per module (its
        top loadings; capped at the number of genes).
    """

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    gene_sets: str | None = None
    grn: str | None = None
    gene_medians: str | None = None
    id_map: str | None = None
    symbols_key: str | None = None
    n_modules: int = 20
    module_genes: int = 50

    def _check_tokenizer(self) -> None:
        check_positive("n_modules", self.n_modules, integer=True)
        check_positive("module_genes", self.module_genes, integer=True)


@dataclass(frozen=True)
class VAERunConfig(TokenizerRunFields):
    """Everything ``genailab vae train`` needs, as one typed config.

    ``vae`` holds overrides of :class:`~genailab.foundation.recipes.LatentTokenVAEConfig` fields
    (``n_genes`` and ``n_batches`` come from the data); they are validated against that class. The
    tokenizer fields are those of :class:`TokenizerRunFields`.
    """

    seed: int = 0
    preset: str = "small"
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainConfig = field(default_factory=TrainConfig)
    vae: tuple[tuple[str, str], ...] = ()

    PASSTHROUGH: ClassVar[dict[str, type]] = {"vae": LatentTokenVAEConfig}

    def __post_init__(self) -> None:
        check_positive("seed", self.seed, strict=False, integer=True)
        self._check_tokenizer()
        if self.preset not in PRESETS:
            raise InvalidInputError(f"preset={self.preset!r} is not allowed; expected one of {', '.join(PRESETS)}.")
        _check_passthrough("vae", self.vae, LatentTokenVAEConfig.tiny(1, n_batches=1), _VAE_FIXED)

    def vae_overrides(self) -> dict[str, str]:
        """The ``vae.*`` overrides as a dict."""
        return dict(self.vae)


# set from the data, or (the tokenizer) by its own run-config section
_VAE_FIXED = {"n_genes", "n_batches", "tokenizer"}


def _passthrough_fields(cls: type[Config]) -> dict[str, type[Config]]:
    """Fields that hold free-form overrides of another config: ``{field: target config class}``."""
    return dict(getattr(cls, "PASSTHROUGH", {}))


def resolve_run_config(
    config_path: str | Path | None,
    sets: list[str],
    *,
    cli: dict[str, Any] | None = None,
    cls: type[Config] | None = None,
) -> Any:
    """Defaults <- YAML file <- explicit CLI options <- ``--set key=value`` (later wins).

    Keys under a pass-through section (e.g. ``vae.*``) are collected as overrides of that component's
    config and validated against it; every other key is checked against the run config's fields.
    """
    cls = cls or VAERunConfig
    flat: dict[str, Any] = {}
    if config_path is not None:
        flat.update(load_yaml_overrides(config_path))
    flat.update({k: v for k, v in (cli or {}).items() if v is not None})
    flat.update(parse_set_options(sets))
    sections = _passthrough_fields(cls)
    passthrough: dict[str, dict[str, str]] = {name: {} for name in sections}
    rest: dict[str, Any] = {}
    for key, value in flat.items():
        head, _, tail = key.partition(".")
        if head in sections and tail:
            passthrough[head][tail] = value if isinstance(value, str) else _yaml_text(value)
        else:
            rest[key] = value
    config = apply_overrides(cls(), rest)
    # pass-through sections extend the class defaults (e.g. the perturbation run's VAE kl_weight)
    merged = {name: {**dict(getattr(config, name)), **items} for name, items in passthrough.items()}
    return config.replace(**{name: tuple(sorted(items.items())) for name, items in merged.items()})


def _yaml_text(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _check_passthrough(section: str, items: tuple[tuple[str, str], ...], probe: Config, fixed: set[str]) -> None:
    known = set(type(probe).__dataclass_fields__) - fixed
    for key, _ in items:
        if key not in known:
            raise InvalidInputError(f"unknown config key '{section}.{key}'; valid keys are {sorted(known)}.")
    apply_overrides(probe, dict(items))  # type-check the values early


def _check_stack(config: Any) -> None:
    """Validate the VAE preset and overrides and the backbone, preset and overrides of a run config."""
    if config.vae_preset not in PRESETS:
        raise InvalidInputError(
            f"vae_preset={config.vae_preset!r} is not allowed; expected one of {', '.join(PRESETS)}."
        )
    _check_passthrough("vae", config.vae, LatentTokenVAEConfig.tiny(1, n_batches=1), _VAE_FIXED)
    probe = backbone_config(config.backbone, config.backbone_preset, 4, 8)
    fixed = {"n_tokens", "token_dim", "n_cond_tokens", "cond_dim", "out_dim"}
    _check_passthrough("backbone_config", config.backbone_config, probe, fixed)


def versions() -> dict[str, str]:
    """Versions of Python, genailab and the main dependencies (saved beside every output)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("genailab", "torch", "numpy", "anndata", "scanpy", "lightning", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _synth_train_default() -> TrainConfig:
    # Sized for the budget: ~10k cells x 2.5k genes, VAE + diffusion in under 15 min on 2 CPU cores.
    return TrainConfig(max_epochs=200, batch_size=256, lr=1e-3, early_stopping_patience=30, val_fraction=0.05)


def _vae_train_default() -> TrainConfig:
    return TrainConfig(max_epochs=100, batch_size=128, lr=1e-3, early_stopping_patience=10, val_fraction=0.1)


@dataclass(frozen=True)
class SynthRunConfig(TokenizerRunFields):
    """Everything ``genailab synth train`` needs: the VAE stage, then the diffusion stage.

    ``vae`` holds overrides of :class:`~genailab.foundation.recipes.LatentTokenVAEConfig` fields and
    ``backbone_config`` overrides of the chosen backbone's config (e.g. ``backbone_config.depth=2``).
    The tokenizer fields (``--tokenizer``, ``--gene-sets``, ``--grn``, ...) are those of
    :class:`TokenizerRunFields`.
    """

    seed: int = 0
    data: DataSpec = field(default_factory=DataSpec)
    condition_keys: tuple[str, ...] = ()
    vae_preset: str = "small"
    vae: tuple[tuple[str, str], ...] = ()
    vae_train: TrainConfig = field(default_factory=_vae_train_default)
    backbone: str = "dit"
    backbone_preset: str = "small"
    backbone_config: tuple[tuple[str, str], ...] = ()
    diffusion: LatentDiffusionConfig = field(default_factory=LatentDiffusionConfig)
    train: TrainConfig = field(default_factory=_synth_train_default)

    PASSTHROUGH: ClassVar[dict[str, type]] = {"vae": LatentTokenVAEConfig, "backbone_config": Config}

    def __post_init__(self) -> None:
        check_positive("seed", self.seed, strict=False, integer=True)
        self._check_tokenizer()
        _check_stack(self)

    def vae_run(self, spec: DataSpec) -> VAERunConfig:
        """The VAE stage of this run."""
        shared = {f: getattr(self, f) for f in TokenizerRunFields.__dataclass_fields__}
        return VAERunConfig(
            seed=self.seed, preset=self.vae_preset, data=spec, train=self.vae_train, vae=self.vae, **shared
        )


SPLIT_KINDS = ("none", "unseen_single", "combo", "context", "all", "combo_kfold", "single_kfold", "context_pair")


def _perturb_train_default() -> TrainConfig:
    # Each ensemble member: a few hundred small steps on cached latents (seconds to a minute on CPU).
    return TrainConfig(max_epochs=60, batch_size=256, lr=1e-3, early_stopping_patience=15, val_fraction=0.0)


@dataclass(frozen=True)
class PerturbRunConfig(Config):
    """Everything ``genailab perturb train`` needs: data keys, split, VAE stage, priors, ensemble.

    ``vae`` holds overrides of :class:`~genailab.foundation.recipes.LatentTokenVAEConfig` fields,
    ``backbone_config`` overrides of the delta network's backbone config, and ``model`` the
    :class:`~genailab.foundation.recipes.PerturbDeltaConfig` (e.g. ``--set model.n_members=3``).
    ``split`` picks the held-out set: ``none`` (only ``holdouts``), ``unseen_single`` (a fraction
    ``split_fraction`` of the single agents that have prior features), ``combo`` (combinations with
    ``split_seen`` of 2 singles seen) or ``context`` (``split_n_pairs`` perturbations each held out in
    one context) or ``all`` (no held-out set: every cell trains, e.g. a base model to adapt later with
    ``genailab perturb adapt``). The k-fold kinds vary the test set over folds: ``combo_kfold`` (every
    double in ``split_folds`` folds, fold ``split_fold`` held out), ``single_kfold`` (the singles with prior
    features in ``split_folds`` folds) and ``context_pair`` (one (perturbation, context) pair per fold,
    over every pair whose perturbation occurs in two or more contexts; ``split_fold`` picks it).
    ``gene_sets`` / ``grn`` give gene priors; ``smiles`` (a TSV/CSV of compound name and
    SMILES) gives compound fingerprints for ``model.encoder=compound`` (needs RDKit).
    ``library_key`` names the ``obs`` column of whole-transcriptome library sizes (e.g. ``ncounts``)
    used to log-normalise cells when the matrix is a gene subset; ``None`` uses the row sums (the
    model config's ``library_key`` is set from it).
    """

    seed: int = 0
    perturbation_key: str = "condition"
    control: str = "control"
    delimiter: str = "+"
    context_key: str | None = None
    dose_key: str | None = None
    layer: str | None = None
    split: str = "none"
    split_fraction: float = 0.2
    split_seen: int = 2
    split_n_pairs: int = 1
    split_fold: int = 0
    split_folds: int = 5
    library_key: str | None = None
    holdouts: tuple[str, ...] = ()
    gene_sets: tuple[str, ...] = ()
    grn: tuple[str, ...] = ()
    smiles: str | None = None
    prior_components: int = 32
    vae_preset: str = "small"
    # A light KL keeps the posterior sharp enough for gene-level responses (measured on Norman: the
    # default 1.0 shrinks decoded shifts to about a third of the observed ones).
    vae: tuple[tuple[str, str], ...] = (("kl_weight", "0.1"),)
    vae_train: TrainConfig = field(default_factory=_vae_train_default)
    backbone: str = "mlp"
    backbone_preset: str = "small"
    backbone_config: tuple[tuple[str, str], ...] = (("depth", "2"), ("hidden_dim", "256"))
    model: PerturbDeltaConfig = field(default_factory=PerturbDeltaConfig)
    train: TrainConfig = field(default_factory=_perturb_train_default)

    PASSTHROUGH: ClassVar[dict[str, type]] = {"vae": LatentTokenVAEConfig, "backbone_config": Config}

    def __post_init__(self) -> None:
        check_positive("seed", self.seed, strict=False, integer=True)
        if self.split not in SPLIT_KINDS:
            raise InvalidInputError(f"split={self.split!r} is not allowed; expected one of {', '.join(SPLIT_KINDS)}.")
        if self.split_seen not in (0, 1, 2):
            raise InvalidInputError(f"split_seen={self.split_seen!r} must be 0, 1 or 2.")
        check_positive("split_n_pairs", self.split_n_pairs, integer=True)
        check_positive("split_fold", self.split_fold, strict=False, integer=True)
        check_positive("split_folds", self.split_folds, integer=True)
        if self.split_folds < 2:
            raise InvalidInputError(f"split_folds={self.split_folds!r} must be at least 2.")
        if self.split in ("combo_kfold", "single_kfold") and self.split_fold >= self.split_folds:
            raise InvalidInputError(
                f"split_fold={self.split_fold!r} must be in [0, split_folds={self.split_folds}) "
                f"for split={self.split!r}."
            )
        if self.library_key is not None and not str(self.library_key).strip():
            raise InvalidInputError("library_key is empty; give an obs column of library sizes (e.g. ncounts) or None.")
        check_positive("prior_components", self.prior_components, integer=True)
        if not 0 < self.split_fraction < 1:
            raise InvalidInputError(f"split_fraction={self.split_fraction!r} must be in (0, 1).")
        _check_stack(self)


def _adapt_train_default() -> TrainConfig:
    # Adaptation is short: few new cells, few trainable parameters.
    return TrainConfig(max_epochs=100, batch_size=256, lr=1e-3, early_stopping_patience=15, val_fraction=0.1)


@dataclass(frozen=True)
class AdaptRunConfig(Config):
    """Everything ``genailab synth adapt`` / ``perturb adapt`` need: the tuning method and the training.

    ``tuning`` is a :class:`~genailab.foundation.tuning.TuningConfig` (``--tuning lora --set
    tuning.rank=8 --set tuning.targets=[attn]``); ``tuning.method=distill`` (synthesis only) distils
    the base into a small few-step student with ``distill`` settings instead. ``val_fraction`` is
    the share of the new data's perturbation conditions held out to re-calibrate a perturbation
    model's intervals.
    """

    seed: int = 0
    tuning: TuningConfig = field(default_factory=TuningConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=_adapt_train_default)
    val_fraction: float = 0.2

    def __post_init__(self) -> None:
        check_positive("seed", self.seed, strict=False, integer=True)
        if not 0 <= self.val_fraction < 1:
            raise InvalidInputError(f"val_fraction={self.val_fraction!r} must be in [0, 1).")


@dataclass(frozen=True)
class PerturbAdaptRunConfig(AdaptRunConfig):
    """:class:`AdaptRunConfig` for ``genailab perturb adapt``: LoRA / adapters target the delta network's MLP."""

    tuning: TuningConfig = field(default_factory=lambda: TuningConfig(targets=("mlp",)))


def _distill_train_default() -> TrainConfig:
    return TrainConfig(max_epochs=100, batch_size=256, lr=1e-3, early_stopping_patience=15, val_fraction=0.1)


@dataclass(frozen=True)
class DistillRunConfig(Config):
    """Everything ``genailab synth distill`` needs: the student and the training of it."""

    seed: int = 0
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=_distill_train_default)

    def __post_init__(self) -> None:
        check_positive("seed", self.seed, strict=False, integer=True)
