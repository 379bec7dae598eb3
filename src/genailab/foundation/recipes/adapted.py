"""Adapted models: a pretrained base plus small trained modules, saved as the modules only.

The pretrain-then-adapt workflow ("fine-tune the steering wheel"): a synthesis or perturbation model
is pretrained once; a new cohort, donor or cell line is handled by a tuning method
(:data:`~genailab.foundation.tuning.TUNING_METHODS`: LoRA, adapters, partial unfreezing,
conditioning-only, a linear head, or full fine-tuning) applied to the base's trained modules.

New condition values (a donor or cell line the base never saw) extend the condition embedding
tables first (:meth:`~genailab.data.DataRegistry.with_categories`,
:meth:`~genailab.foundation.conditioning.ConditionEncoder.add_categories`); the extended tables
always train, whatever the method, since their new rows have nothing to be frozen at.

An adapted directory holds ``adapter.safetensors`` (only the parameters the method trained),
``adapter.json`` (the base's path and SHA-256, the tuning config and report, the new categories)
and, last, ``config.json``. Loading rebuilds the base, refuses one whose hash differs, re-applies
the same method and loads the trained parameters, so the directory stays small.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from genailab._version import __version__
from genailab.data.spec import obs_labels
from genailab.errors import CheckpointError, InvalidInputError
from genailab.io import atomic_write_json, check_writable
from genailab.serialization import (
    ADAPTER_NAME,
    CONFIG_NAME,
    hash_model_dir,
    is_adapted_dir,
    read_config,
    read_json,
    write_config,
)

if TYPE_CHECKING:
    from anndata import AnnData

    from genailab.foundation.recipes.latent_diffusion import LatentDiffusionModel
    from genailab.foundation.recipes.perturb.model import PerturbDeltaModel
    from genailab.foundation.tuning import TuningConfig, TuningReport
    from genailab.training import TrainConfig

__all__ = [
    "ADAPTER_NAME",
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
KINDS = ("synthesis", "perturbation")


def _new_labels(adata: AnnData, key: str, known: Sequence[str]) -> list[str]:

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
    from dataclasses import replace

    from genailab.foundation.tuning import apply_tuning, count_parameters

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
    registry = model.vae.registry
    batch_key = registry.spec.batch_key if registry is not None else None
    for key, labels in new_categories.items():
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
    extended = [k for k, v in new_categories.items() if v]
    report = _tune(model.trained_modules(), tuning, model.conditioning, extended, "conditioning")
    model.reset_ema()
    return report


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
    from genailab.foundation.recipes.latent_diffusion import LatentDiffusionModel
    from genailab.training import seed_everything

    seed_everything(seed)
    model = LatentDiffusionModel.from_pretrained(base_dir)
    registry = model.vae.registry
    new = {
        key: _new_labels(adata, key, registry.categories[key])
        for key in model.conditioning.keys
        if registry is not None and key in registry.categories
    }
    report = prepare_synthesis(model, tuning, new)
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
    for key, labels in new_contexts.items():
        if not labels:
            continue
        if key not in model.context_categories:
            raise InvalidInputError(
                f"cannot add contexts to {key!r}: the model's context keys are {model.config.context_keys}."
            )
        model.context_categories[key] = (*model.context_categories[key], *labels)
        for net in model.nets:
            net.context.add_categories(key, len(labels))
    extended = [k for k, v in new_contexts.items() if v]
    reports = [_tune(net, tuning, net.context, extended, "context") for net in model.nets]
    return reports[0]  # every member is tuned the same way


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
    from genailab.data.perturbation_splits import carve_validation
    from genailab.data.splits import Split
    from genailab.foundation.recipes.perturb.model import PerturbDeltaModel
    from genailab.training import seed_everything

    seed_everything(seed)
    model = PerturbDeltaModel.from_pretrained(base_dir)
    new = {key: _new_labels(adata, key, model.context_categories[key]) for key in model.config.context_keys}
    report = prepare_perturbation(model, tuning, new)
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
def _report_dict(report: TuningReport) -> dict[str, Any]:
    return {
        "method": report.method,
        "targeted": list(report.targeted),
        "n_trainable": report.n_trainable,
        "n_total": report.n_total,
        "trainable_fraction": report.trainable_fraction,
    }


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

    from genailab.io import atomic_write

    kind = record["kind"]
    if kind not in KINDS:
        raise InvalidInputError(f"record kind={kind!r} is not one of {KINDS}.")
    d = check_writable(directory, argument="directory")
    d.mkdir(parents=True, exist_ok=True)
    (d / CONFIG_NAME).unlink(missing_ok=True)
    if kind == "synthesis":
        model.use_ema_weights()
        state = _trainable_state(model.trained_modules())
    else:
        state = {f"member_{k}.{n}": v for k, net in enumerate(model.nets) for n, v in _trainable_state(net).items()}
        _write_calibration(model, d)
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
    write_config(d, "AdaptedModel", {"kind": kind, "version": __version__})
    return d


def _write_calibration(model: PerturbDeltaModel, d: Path) -> None:
    atomic_write_json(
        d / "calibration.json",
        {
            "calibrator": model.calibrator.to_dict() if model.calibrator is not None else None,
            "ood_reference": model.ood_reference,
            "seen_ood_scores": model.seen_ood_scores,
            "val_conditions": model.val_conditions,
        },
    )


def load_adapted(directory: str | Path) -> nn.Module:
    """Load an adapted model: the base (hash-checked), the same tuning method, then the trained weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from genailab.foundation.tuning import TuningConfig

    d = Path(directory)
    read_config(d, "AdaptedModel")
    what = f"adapted model directory {str(d)!r}"
    info = read_json(d / ADAPTER_NAME, what=what)
    try:
        kind = info["kind"]
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
    if kind == "synthesis":
        from genailab.foundation.recipes.latent_diffusion import LatentDiffusionModel

        model = LatentDiffusionModel.from_pretrained(base)
        prepare_synthesis(model, tuning, new)
        _load_trainable(model.trained_modules(), state, where=what)
        model.ema = None
    elif kind == "perturbation":
        from genailab.foundation.objectives.uncertainty import ConformalCalibrator
        from genailab.foundation.recipes.perturb.model import PerturbDeltaModel

        model = PerturbDeltaModel.from_pretrained(base)
        prepare_perturbation(model, tuning, new)
        for k, net in enumerate(model.nets):
            prefix = f"member_{k}."
            _load_trainable(net, {n[len(prefix) :]: v for n, v in state.items() if n.startswith(prefix)}, where=what)
        calib = read_json(d / "calibration.json", what=what)
        model.calibrator = ConformalCalibrator.from_dict(calib["calibrator"]) if calib.get("calibrator") else None
        model.ood_reference = float(calib.get("ood_reference", 1.0))
        model.seen_ood_scores = [float(v) for v in calib.get("seen_ood_scores", [])]
        model.val_conditions = [list(p) for p in calib.get("val_conditions", [])]
    else:
        raise CheckpointError(f"{what}: unknown kind {kind!r}; expected one of {KINDS}.")
    model.adapter_info = info
    model.requires_grad_(False)
    model.eval()
    return model


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
    from genailab.foundation.recipes.latent_diffusion import LatentDiffusionModel
    from genailab.foundation.recipes.perturb import PerturbDeltaModel
    from genailab.foundation.recipes.vae import LatentTokenVAE

    d = Path(directory)
    if is_adapted_dir(d):
        model = load_adapted(d)
    else:
        if not d.is_dir():
            raise CheckpointError(f"model directory {str(d)!r} does not exist or is not a directory.")
        payload = read_json(d / CONFIG_NAME, what=f"model directory {str(d)!r}")
        classes = {c.__name__: c for c in (LatentTokenVAE, LatentDiffusionModel, PerturbDeltaModel)}
        name = payload.get("_class_name") if isinstance(payload, dict) else None
        if name not in classes:
            raise CheckpointError(
                f"{str(d)!r} holds a {name!r}, not a genailab model; expected one of {sorted(classes)}."
            )
        model = classes[name].from_pretrained(d)
    if expected is not None and not isinstance(model, expected):
        raise CheckpointError(f"{str(d)!r} holds a {type(model).__name__}, not a {expected.__name__}.")
    return model
