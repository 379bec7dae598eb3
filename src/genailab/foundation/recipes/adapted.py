"""Adapted models: a pretrained base plus small trained modules, saved as the modules only.

The pretrain-then-adapt workflow ("fine-tune the steering wheel"): a synthesis or perturbation model
is pretrained once; a new cohort, donor or cell line is handled by a tuning method
(:data:`~genailab.foundation.tuning.TUNING_METHODS`: LoRA, adapters, partial unfreezing,
conditioning-only, a linear head, or full fine-tuning) applied to the base's trained modules.

New condition values (a donor or cell line the base never saw) extend the condition embedding
tables first (:meth:`~genailab.data.DataRegistry.with_categories`,
:meth:`~genailab.foundation.conditioning.ConditionEncoder.add_categories`); the extended tables
always train, whatever the method, since their new rows have nothing to be frozen at.

Each kind of adapted model (``"synthesis"``, ``"perturbation"``) is an :class:`AdaptedKind`
registered by name in :data:`ADAPTED_KINDS`: how its base loads, how its condition tables extend and
the method applies, which parameters it saves and what it saves besides them. The kind's name is
stored in ``adapter.json`` and ``config.json``; an unknown name lists the registered ones.

An adapted directory holds ``adapter.safetensors`` (only the parameters the method trained),
``adapter.json`` (the base's path and SHA-256, the tuning config and report, the new categories)
and, last, ``config.json``. Loading rebuilds the base, refuses one whose hash differs, re-applies
the same method and loads the trained parameters, so the directory stays small.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from genailab._version import __version__
from genailab.data import obs_labels
from genailab.data.splits import Split, carve_validation
from genailab.errors import CheckpointError, InvalidInputError
from genailab.foundation.recipes.latent_diffusion import LatentDiffusionModel
from genailab.foundation.recipes.perturb import PerturbDeltaModel
from genailab.foundation.recipes.perturb.calibration import load_calibration, write_calibration
from genailab.foundation.recipes.vae import LatentTokenVAE
from genailab.foundation.tuning import TuningConfig, TuningReport, apply_tuning, count_parameters
from genailab.io import atomic_write, atomic_write_json, check_writable
from genailab.registry import Registry
from genailab.serialization import (
    ADAPTER_NAME,
    CONFIG_NAME,
    hash_model_dir,
    is_adapted_dir,
    read_config,
    read_json,
    write_config,
)
from genailab.training import TrainConfig, seed_everything

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = [
    "ADAPTED_KINDS",
    "ADAPTER_NAME",
    "AdaptedKind",
    "adapt_perturbation",
    "adapt_synthesis",
    "hash_model_dir",
    "is_adapted_dir",
    "load_adapted",
    "load_model",
    "prepare_perturbation",
    "prepare_synthesis",
    "save_adapted",
]

ADAPTER_WEIGHTS = "adapter.safetensors"


# ------------------------------------------------------------------------------------------ helpers
def _new_labels(adata: AnnData, key: str, known: Sequence[str]) -> list[str]:
    """Values of ``adata.obs[key]`` outside ``known``, sorted."""
    seen = set(known)
    return sorted({str(v) for v in obs_labels(adata, key, "condition key").tolist()} - seen)


def _train_tables(encoder: nn.Module, keys: Sequence[str]) -> list[str]:
    """Make the embedding tables of ``keys`` (and their null tokens) trainable; returns their names."""
    names = []
    for key in keys:
        j = encoder.keys.index(key)
        encoder.embeddings[j].requires_grad_(True)
        names.append(f"embeddings.{j}")
    if keys:
        encoder.null.requires_grad_(True)
        names.append("null")
    return names


def _tune(
    module: nn.Module, tuning: TuningConfig, encoder: nn.Module, extended: Sequence[str], prefix: str
) -> TuningReport:
    """Apply ``tuning`` to ``module``, then train the extended tables of ``encoder`` too (added to the report)."""
    report = apply_tuning(module, tuning)
    tables = [f"{prefix}.{n}" for n in _train_tables(encoder, extended)]
    if not tables:
        return report
    n_train, n_total = count_parameters(module)
    targeted = tuple(dict.fromkeys((*report.targeted, *tables)))
    return replace(report, targeted=targeted, n_trainable=n_train, n_total=n_total)


def _trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().clone() for n, p in module.named_parameters() if p.requires_grad}


def _load_trainable(module: nn.Module, state: Mapping[str, torch.Tensor], *, where: str) -> None:
    expected = {n for n, p in module.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: the adapter weights do not fit the base + tuning method (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})."
        )
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            if params[name].shape != value.shape:
                raise CheckpointError(
                    f"{where}: adapter weight {name!r} has shape {tuple(value.shape)}, the model expects "
                    f"{tuple(params[name].shape)}."
                )
            params[name].copy_(value)


def _report_dict(report: TuningReport) -> dict[str, Any]:
    return {
        "method": report.method,
        "targeted": list(report.targeted),
        "n_trainable": report.n_trainable,
        "n_total": report.n_total,
        "trainable_fraction": report.trainable_fraction,
    }


# -------------------------------------------------------------------------------------------- kinds
class AdaptedKind(abc.ABC):
    """One kind of adapted model: how its base loads, extends, tunes, saves and reloads.

    Subclasses set :attr:`base_class` and implement the four abstract steps; :meth:`extra_save` and
    :meth:`extra_load` (files besides the adapter weights) default to nothing.
    """

    base_class: type[nn.Module]

    def load_base(self, base_dir: str | Path) -> nn.Module:
        """The pretrained base model in ``base_dir``."""
        return self.base_class.from_pretrained(base_dir)

    @abc.abstractmethod
    def new_categories(self, model: nn.Module, adata: AnnData) -> dict[str, list[str]]:
        """Condition key -> the values of ``adata`` the base has never seen (possibly empty lists)."""

    @abc.abstractmethod
    def prepare(self, model: nn.Module, tuning: TuningConfig, new: Mapping[str, Sequence[str]]) -> TuningReport:
        """Extend the condition tables by ``new`` and apply ``tuning`` to the trained modules."""

    @abc.abstractmethod
    def saved_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The trained parameters to write to ``adapter.safetensors``."""

    @abc.abstractmethod
    def load_trainable(self, model: nn.Module, state: Mapping[str, torch.Tensor], *, where: str) -> None:
        """Copy :meth:`saved_state`'s tensors into a prepared ``model``."""

    def extra_save(self, model: nn.Module, directory: Path) -> None:
        """Write what the kind keeps besides the adapter weights (called before the weights are written)."""
        return None  # by default a kind keeps nothing besides the adapter weights

    def extra_load(self, model: nn.Module, directory: Path, *, what: str) -> None:
        """Read what :meth:`extra_save` wrote (called after the weights are loaded)."""
        return None


#: Adapted-model kinds by name (the ``kind`` saved in ``adapter.json``).
ADAPTED_KINDS: Registry[AdaptedKind] = Registry("adapted-model kind")


class SynthesisKind(AdaptedKind):
    """A :class:`LatentDiffusionModel` whose backbone and conditioning were tuned (the VAE stays frozen)."""

    base_class = LatentDiffusionModel

    def new_categories(self, model: LatentDiffusionModel, adata: AnnData) -> dict[str, list[str]]:
        registry = model.vae.registry
        return {
            key: _new_labels(adata, key, registry.categories[key])
            for key in model.conditioning.keys
            if registry is not None and key in registry.categories
        }

    def prepare(
        self, model: LatentDiffusionModel, tuning: TuningConfig, new: Mapping[str, Sequence[str]]
    ) -> TuningReport:
        registry = model.vae.registry
        batch_key = registry.spec.batch_key if registry is not None else None
        for key, labels in new.items():
            if not labels:
                continue
            if key not in model.conditioning.keys:
                raise InvalidInputError(
                    f"cannot add categories to {key!r}: the model is conditioned on {model.conditioning.keys}."
                )
            if key == batch_key:
                raise InvalidInputError(
                    f"{key!r} is also the VAE decoder's batch key; the frozen VAE cannot learn a new {key!r} value. "
                    "Condition the diffusion model on it without making it the VAE's batch key."
                )
            model.vae.registry = model.vae.registry.with_categories(key, labels)
            model.conditioning.add_categories(key, len(labels))
        extended = [k for k, v in new.items() if v]
        report = _tune(model.trained_modules(), tuning, model.conditioning, extended, "conditioning")
        model.reset_ema()
        return report

    def saved_state(self, model: LatentDiffusionModel) -> dict[str, torch.Tensor]:
        model.use_ema_weights()  # the EMA weights are the ones saved
        return _trainable_state(model.trained_modules())

    def load_trainable(self, model: LatentDiffusionModel, state: Mapping[str, torch.Tensor], *, where: str) -> None:
        _load_trainable(model.trained_modules(), state, where=where)

    def extra_load(self, model: LatentDiffusionModel, directory: Path, *, what: str) -> None:
        model.ema = None  # the saved weights already are the EMA weights


class PerturbationKind(AdaptedKind):
    """A :class:`PerturbDeltaModel` whose members were tuned alike, re-calibrated in the new context."""

    base_class = PerturbDeltaModel

    def new_categories(self, model: PerturbDeltaModel, adata: AnnData) -> dict[str, list[str]]:
        return {key: _new_labels(adata, key, model.context_categories[key]) for key in model.config.context_keys}

    def prepare(self, model: PerturbDeltaModel, tuning: TuningConfig, new: Mapping[str, Sequence[str]]) -> TuningReport:
        for key, labels in new.items():
            if not labels:
                continue
            if key not in model.context_categories:
                raise InvalidInputError(
                    f"cannot add contexts to {key!r}: the model's context keys are {model.config.context_keys}."
                )
            model.context_categories[key] = (*model.context_categories[key], *labels)
            for net in model.nets:
                net.context.add_categories(key, len(labels))
        extended = [k for k, v in new.items() if v]
        reports = [_tune(net, tuning, net.context, extended, "context") for net in model.nets]
        return reports[0]  # every member is tuned the same way

    def saved_state(self, model: PerturbDeltaModel) -> dict[str, torch.Tensor]:
        return {f"member_{k}.{n}": v for k, net in enumerate(model.nets) for n, v in _trainable_state(net).items()}

    def load_trainable(self, model: PerturbDeltaModel, state: Mapping[str, torch.Tensor], *, where: str) -> None:
        for k, net in enumerate(model.nets):
            prefix = f"member_{k}."
            _load_trainable(net, {n[len(prefix) :]: v for n, v in state.items() if n.startswith(prefix)}, where=where)

    def extra_save(self, model: PerturbDeltaModel, directory: Path) -> None:
        write_calibration(directory, model)  # re-calibrated in the new context

    def extra_load(self, model: PerturbDeltaModel, directory: Path, *, what: str) -> None:
        load_calibration(directory, model, what=what)


ADAPTED_KINDS.register("synthesis")(SynthesisKind())
ADAPTED_KINDS.register("perturbation")(PerturbationKind())
#: Registered kind names (kept for callers of the former tuple).
KINDS = ADAPTED_KINDS.names()


# ---------------------------------------------------------------------------------------- synthesis
def prepare_synthesis(
    model: LatentDiffusionModel, tuning: TuningConfig, new_categories: Mapping[str, Sequence[str]]
) -> TuningReport:
    """Extend the condition tables by ``new_categories`` and apply ``tuning`` to the trained modules.

    Returns
    -------
    The method's :class:`~genailab.foundation.tuning.TuningReport`, with the extended tables added
    to the touched modules.
    """
    return ADAPTED_KINDS.get("synthesis").prepare(model, tuning, new_categories)


def adapt_synthesis(
    base_dir: str | Path,
    adata: AnnData,
    tuning: TuningConfig,
    train: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    seed: int = 0,
) -> tuple[LatentDiffusionModel, dict[str, Any]]:
    """Adapt a pretrained synthesis model to ``adata`` with one tuning method.

    Parameters
    ----------
    base_dir
        A directory written by ``genailab synth train`` (the base; never modified).
    adata
        The new cells (genes aligned to the base VAE's; condition values may be new).
    tuning
        The method and its options.
    train
        Training settings of the adaptation.
    out_dir
        Checkpoints and logs (a rerun resumes); the adapted model is saved there by :func:`save_adapted`.
    seed
        One seed for the split, data order and noise.

    Returns
    -------
    The adapted model and a record (method report, new categories, wall time, training result).
    """
    kind = ADAPTED_KINDS.get("synthesis")
    seed_everything(seed)
    model = kind.load_base(base_dir)
    new = kind.new_categories(model, adata)
    report = kind.prepare(model, tuning, new)
    model.train()
    t0 = time.perf_counter()
    result = model.fit(adata, train, out_dir=out_dir, seed=seed)
    model.eval()
    record = {
        "kind": "synthesis",
        "tuning": tuning.to_dict(),
        "report": _report_dict(report),
        "new_categories": {k: list(v) for k, v in new.items() if v},
        "seed": seed,
        "wall_s": time.perf_counter() - t0,
        "train": result.to_dict(),
    }
    return model, record


# ------------------------------------------------------------------------------------- perturbation
def prepare_perturbation(
    model: PerturbDeltaModel, tuning: TuningConfig, new_contexts: Mapping[str, Sequence[str]]
) -> TuningReport:
    """Extend the context tables of every member by ``new_contexts`` and apply ``tuning`` to each member."""
    return ADAPTED_KINDS.get("perturbation").prepare(model, tuning, new_contexts)


def adapt_perturbation(
    base_dir: str | Path,
    adata: AnnData,
    tuning: TuningConfig,
    train: TrainConfig,
    *,
    val_fraction: float = 0.2,
    out_dir: str | Path | None = None,
    seed: int = 0,
) -> tuple[PerturbDeltaModel, dict[str, Any]]:
    """Adapt a pretrained perturbation model to new cells (e.g. a new cell line) with one tuning method.

    ``adata`` holds the new context's control and perturbed cells. A ``val_fraction`` share of its
    perturbation conditions is held out for early stopping and to re-calibrate the intervals in the
    new context; every member is tuned with the same method.
    """
    kind = ADAPTED_KINDS.get("perturbation")
    seed_everything(seed)
    model = kind.load_base(base_dir)
    new = kind.new_categories(model, adata)
    report = kind.prepare(model, tuning, new)
    labels = obs_labels(adata, model.perturbation_key, "perturbation_key")
    contexts = model.context_labels(adata)
    for label in sorted(set(labels.tolist())):
        model.vocab.encode([label])  # an agent the model cannot embed is refused up front
    empty = np.zeros(0, np.int64)
    split = Split("adapt", train=np.arange(adata.n_obs), val=empty, test=empty, params={"test_fraction": 0})
    if val_fraction > 0:
        split = carve_validation(
            split,
            labels,
            contexts,
            kind="combination" if any(model.vocab.delimiter in str(v) for v in labels) else "agent",
            fraction=val_fraction,
            seed=seed,
            control=model.vocab.control,
            delimiter=model.vocab.delimiter,
        )
    t0 = time.perf_counter()
    results = model.fit(adata, split.train, split.val, train, out_dir=out_dir, seed=seed)
    record = {
        "kind": "perturbation",
        "tuning": tuning.to_dict(),
        "report": _report_dict(report),
        "new_categories": {k: list(v) for k, v in new.items() if v},
        "seed": seed,
        "wall_s": time.perf_counter() - t0,
        "n_val_cells": len(split.val),
        "members": [r.to_dict() for r in results],
    }
    return model, record


# ------------------------------------------------------------------------------------- persistence
def save_adapted(model: nn.Module, directory: str | Path, *, base_dir: str | Path, record: Mapping[str, Any]) -> Path:
    """Save only what the adaptation trained, plus the base's path and hash (``config.json`` last).

    Parameters
    ----------
    model
        The adapted :class:`LatentDiffusionModel` or :class:`PerturbDeltaModel`.
    directory
        The adapted model directory (may also hold the run's checkpoints and logs).
    base_dir
        The base model directory the adaptation started from.
    record
        What :func:`adapt_synthesis` / :func:`adapt_perturbation` returned.
    """
    from safetensors.torch import save_file

    kind = ADAPTED_KINDS.get(record["kind"])
    d = check_writable(directory, argument="directory")
    d.mkdir(parents=True, exist_ok=True)
    (d / CONFIG_NAME).unlink(missing_ok=True)
    state = kind.saved_state(model)
    kind.extra_save(model, d)
    atomic_write(d / ADAPTER_WEIGHTS, lambda tmp: save_file(state, str(tmp)))
    base = Path(base_dir).resolve()
    atomic_write_json(
        d / ADAPTER_NAME,
        {
            **{k: v for k, v in record.items() if k not in ("train", "members")},
            "base": {"path": str(base), "sha256": hash_model_dir(base)},
            "n_adapter_parameters": int(sum(v.numel() for v in state.values())),
        },
    )
    write_config(d, "AdaptedModel", {"kind": record["kind"], "version": __version__})
    return d


def load_adapted(directory: str | Path) -> nn.Module:
    """Load an adapted model: the base (hash-checked), the same tuning method, then the trained weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    read_config(d, "AdaptedModel")
    what = f"adapted model directory {str(d)!r}"
    info = read_json(d / ADAPTER_NAME, what=what)
    try:
        name = info["kind"]
        base = Path(info["base"]["path"])
        sha = info["base"]["sha256"]
        tuning = TuningConfig.from_dict(info["tuning"])
        new = {str(k): [str(v) for v in vs] for k, vs in info.get("new_categories", {}).items()}
    except (KeyError, TypeError, InvalidInputError) as err:
        raise CheckpointError(f"{what}: {ADAPTER_NAME} is malformed: {err}") from err
    if not (base / CONFIG_NAME).is_file():
        raise CheckpointError(f"{what}: its base model {str(base)!r} is missing (no {CONFIG_NAME}).")
    if hash_model_dir(base) != sha:
        raise CheckpointError(
            f"{what}: the base model in {str(base)!r} differs from the one it was adapted from (hash mismatch)."
        )
    try:
        state = load_file(str(d / ADAPTER_WEIGHTS))
    except (OSError, SafetensorError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{what}: cannot read {ADAPTER_WEIGHTS}: {err}") from err
    try:
        kind = ADAPTED_KINDS.get(name)
    except InvalidInputError as err:
        raise CheckpointError(f"{what}: {err}") from None
    model = kind.load_base(base)
    kind.prepare(model, tuning, new)
    kind.load_trainable(model, state, where=what)
    kind.extra_load(model, d, what=what)
    model.adapter_info = info
    model.requires_grad_(False)
    model.eval()
    return model


#: The plain (not adapted) model classes :func:`load_model` loads, by the class name in ``config.json``.
MODEL_CLASSES: dict[str, type[nn.Module]] = {
    c.__name__: c for c in (LatentTokenVAE, LatentDiffusionModel, PerturbDeltaModel)
}


def load_model(directory: str | Path, expected: type[nn.Module] | None = None) -> nn.Module:
    """Load any genailab model directory: a plain one (by the class named in its ``config.json``) or an adapted one.

    Parameters
    ----------
    directory
        A directory written by ``save_pretrained``, ``save_adapted`` or ``save_distilled``.
    expected
        Refuse a directory that does not hold this class (or a subclass).

    Raises
    ------
    CheckpointError
        Missing or corrupt directory, an unknown class, or not ``expected``.
    """
    d = Path(directory)
    if is_adapted_dir(d):
        model = load_adapted(d)
    else:
        if not d.is_dir():
            raise CheckpointError(f"model directory {str(d)!r} does not exist or is not a directory.")
        payload = read_json(d / CONFIG_NAME, what=f"model directory {str(d)!r}")
        name = payload.get("_class_name") if isinstance(payload, dict) else None
        if name not in MODEL_CLASSES:
            raise CheckpointError(
                f"{str(d)!r} holds a {name!r}, not a genailab model; expected one of {sorted(MODEL_CLASSES)}."
            )
        model = MODEL_CLASSES[name].from_pretrained(d)
    if expected is not None and not isinstance(model, expected):
        raise CheckpointError(f"{str(d)!r} holds a {type(model).__name__}, not a {expected.__name__}.")
    return model
