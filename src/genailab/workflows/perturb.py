"""End-to-end perturbation workflows behind ``genailab perturb train | predict | evaluate``.

A run directory (opened through :class:`~genailab.workflows.rundir.RunDirectory`) holds the resolved
run config (written first, once the keys, labels, hold-outs and VAE settings are validated), ``split.json``,
``vae/`` (trained on the training cells only), ``member_K/`` (checkpoints and logs of each ensemble
member), the model files (``config.json`` last) and the run summary (written when training finished).

The held-out set of a run is drawn by the split kind named in its config (``--split``), one function
per kind in :data:`PERTURB_SPLITS`. The k-fold kinds (``combo_kfold``, ``single_kfold``, ``context_pair``)
hold out fold ``split_fold``; the run records, for each held-out condition, how many of its agents are
seen in training (``split.json`` params and ``run.json``: ``seen``). ``perturb evaluate`` lives in
:mod:`genailab.workflows.perturb_evaluate` (re-exported here).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from genailab.data import (
    DataSpec,
    Split,
    carve_validation,
    combination_split,
    holdout_split,
    obs_labels,
    parse_holdouts,
    read_h5ad,
    split_label,
    validate_counts,
)
from genailab.errors import InvalidInputError
from genailab.foundation.perturbation.compounds import compound_priors, read_smiles
from genailab.foundation.perturbation.priors import build_gene_priors
from genailab.foundation.recipes import LatentTokenVAE, PerturbDeltaModel, load_model
from genailab.io import check_writable, write_h5ad
from genailab.registry import Registry
from genailab.serialization import CONFIG_NAME
from genailab.training import seed_everything
from genailab.workflows.perturb_evaluate import count_seen_agents, evaluate_perturb, resolve_library, seen_label
from genailab.workflows.runconfig import PerturbRunConfig, VAERunConfig, resolve_run_config
from genailab.workflows.rundir import RunDirectory, write_output_record
from genailab.workflows.vae import VAEJob, prepare_vae

__all__ = [
    "PERTURB_SPLITS",
    "SplitInputs",
    "evaluate_perturb",
    "make_split",
    "predict_perturb",
    "train_perturb",
    "train_perturb_on",
]


def _context_labels(adata: Any, key: str | None) -> np.ndarray:
    if key is None:
        return np.full(adata.n_obs, "", dtype=object)
    return obs_labels(adata, key, "--context-key")


def _load_priors(config: PerturbRunConfig, readout: Sequence[str]) -> Any:
    if config.smiles is not None:
        if config.gene_sets or config.grn:
            raise InvalidInputError("give either --smiles (compounds) or --gene-sets/--grn (genes), not both.")
        return compound_priors(read_smiles(config.smiles))
    if not config.gene_sets and not config.grn:
        return None
    return build_gene_priors(
        gene_sets=[str(p) for p in config.gene_sets],
        grn=[str(p) for p in config.grn],
        readout_genes=list(readout),
        n_components=config.prior_components,
        seed=config.seed,
    )


@dataclass(frozen=True)
class SplitInputs:
    """What a split kind draws its held-out set from.

    Parameters
    ----------
    adata
        The perturbation screen.
    config
        The resolved run config.
    priors
        Prior features of the agents (``None`` without priors).
    labels, contexts
        Per-cell condition and context labels.
    parts
        Each condition's agents (``()`` for the control).
    everywhere, pairs
        The explicit ``--holdout P`` and ``--holdout P@C`` hold-outs.
    rng
        The run's random generator (seeded with ``config.seed``).
    """

    adata: Any
    config: PerturbRunConfig
    priors: Any
    labels: np.ndarray
    contexts: np.ndarray
    parts: Mapping[str, tuple[str, ...]]
    everywhere: list[str]
    pairs: list[tuple[str, str]]
    rng: np.random.Generator


PERTURB_SPLITS: Registry[Callable[[SplitInputs], Split]] = Registry("split kind")
"""``--split`` kinds: ``name -> draw(inputs) -> Split`` (validation conditions carved)."""


def make_split(adata: Any, config: PerturbRunConfig, priors: Any = None) -> Split:
    """The held-out split of a run config (``holdouts`` and/or ``split``), validation conditions carved."""
    labels = obs_labels(adata, config.perturbation_key, "--perturbation-key")
    contexts = _context_labels(adata, config.context_key)
    if config.control not in set(labels.tolist()):
        shown = ", ".join(sorted(set(labels.tolist()))[:15])
        raise InvalidInputError(
            f"--control {config.control!r} is not a value of obs[{config.perturbation_key!r}] (values: {shown})."
        )
    if config.delimiter in config.control:
        raise InvalidInputError(
            f"the control label {config.control!r} contains the combination delimiter {config.delimiter!r}; "
            "set delimiter to a character that no label uses."
        )
    everywhere, pairs = parse_holdouts(config.holdouts)
    if pairs and config.context_key is None:
        raise InvalidInputError("--holdout P@C needs --context-key (the obs column of contexts).")
    rng = np.random.default_rng(config.seed)
    parts = {
        lab: split_label(lab, config.control, config.delimiter, key=config.perturbation_key)
        for lab in set(labels.tolist())
    }
    inputs = SplitInputs(adata, config, priors, labels, contexts, parts, everywhere, pairs, rng)
    return PERTURB_SPLITS.get(config.split)(inputs)


def _carve(inputs: SplitInputs, split: Split, val_kind: str) -> Split:
    config = inputs.config
    return carve_validation(
        split,
        inputs.labels,
        inputs.contexts,
        kind=val_kind,
        fraction=config.model.val_fraction,
        seed=config.seed + 1,
        control=config.control,
        delimiter=config.delimiter,
        eligible=[] if inputs.priors is None else list(inputs.priors.genes),
    )


def _hold_out(inputs: SplitInputs, name: str, everywhere: list[str], pairs: list[tuple[str, str]]) -> Split:
    config = inputs.config
    return holdout_split(
        inputs.labels,
        inputs.contexts,
        everywhere=everywhere,
        pairs=pairs,
        control=config.control,
        delimiter=config.delimiter,
        name=name,
        params={"seed": config.seed, "perturbation_key": config.perturbation_key, "context_key": config.context_key},
    )


@PERTURB_SPLITS.register("none")
def _split_none(inputs: SplitInputs) -> Split:
    """Only the explicit ``--holdout`` hold-outs; validation conditions of the same kind."""
    everywhere, pairs = inputs.everywhere, inputs.pairs
    split = _hold_out(inputs, "holdout", everywhere, pairs)
    if pairs and not everywhere:
        val_kind = "pair"
    elif any(len(inputs.parts[p]) == 1 for p in everywhere):
        val_kind = "agent"
    else:
        val_kind = "combination"
    return _carve(inputs, split, val_kind)


@PERTURB_SPLITS.register("unseen_single")
def _split_unseen_single(inputs: SplitInputs) -> Split:
    """A fraction ``split_fraction`` of the single agents with prior features, held out everywhere."""
    config, everywhere = inputs.config, inputs.everywhere
    singles = sorted(lab for lab, ps in inputs.parts.items() if len(ps) == 1)
    eligible = [s for s in singles if inputs.priors is None or s in inputs.priors]
    pool = [s for s in eligible if s not in everywhere]
    if len(pool) < 2:
        raise InvalidInputError(
            "--split unseen_single needs at least 2 single perturbations with prior features; "
            f"found {pool}. Pass --gene-sets / --grn files that cover the perturbed genes."
        )
    k = min(max(1, int(round(config.split_fraction * len(pool)))), len(pool) - 1)
    everywhere = everywhere + sorted(inputs.rng.choice(np.array(pool, dtype=object), k, replace=False).tolist())
    return _carve(inputs, _hold_out(inputs, "unseen_single", everywhere, inputs.pairs), "agent")


@PERTURB_SPLITS.register("context")
def _split_context(inputs: SplitInputs) -> Split:
    """``split_n_pairs`` perturbations that occur in two or more contexts, each held out in one of them."""
    config, labels, contexts = inputs.config, inputs.labels, inputs.contexts
    if config.context_key is None:
        raise InvalidInputError("--split context needs --context-key.")
    multi = sorted(
        {(lab, c) for lab, c in zip(labels.tolist(), contexts.tolist(), strict=True) if lab != config.control}
    )
    by_label: dict[str, list[str]] = {}
    for lab, c in multi:
        by_label.setdefault(lab, []).append(c)
    candidates = [(lab, c) for lab, cs in by_label.items() if len(cs) > 1 for c in cs]
    if not candidates:
        raise InvalidInputError("--split context: no perturbation occurs in two or more contexts.")
    order = inputs.rng.permutation(len(candidates))[: config.split_n_pairs]
    pairs = inputs.pairs + [candidates[int(i)] for i in order]
    return _carve(inputs, _hold_out(inputs, "context", inputs.everywhere, pairs), "pair")


@PERTURB_SPLITS.register("combo")
def _split_combo(inputs: SplitInputs) -> Split:
    """Combinations with ``split_seen`` of their singles seen in training; the test set holds the combinations."""
    config, labels = inputs.config, inputs.labels
    base = combination_split(
        inputs.adata.obs,
        config.perturbation_key,
        seen=config.split_seen,
        control=config.control,
        delimiter=config.delimiter,
        val_fraction=0.0,
        seed=config.seed,
    )
    held = list(base.params["held_out"])
    everywhere = inputs.everywhere
    if config.split_seen < 2:
        everywhere = everywhere + list(base.params["removed_singles"])
    split = _hold_out(inputs, "combo", everywhere + held, inputs.pairs)
    if config.split_seen < 2:
        # removed singles are unseen agents, not targets: keep the test set to the combinations
        test_labels = set(held)
        keep = np.array([labels[i] in test_labels for i in split.test])
        split = Split(
            split.name,
            train=split.train,
            val=split.val,
            test=split.test[keep],
            params={
                **split.params,
                "excluded": sorted(set(split.params["excluded"]) | set(split.test[~keep].tolist())),
            },
        )
    return _carve(inputs, split, "combination")


@PERTURB_SPLITS.register("all")
def _split_all(inputs: SplitInputs) -> Split:
    """Every cell trains (a base model to adapt later); validation conditions are still carved for calibration."""
    config, labels = inputs.config, inputs.labels
    if inputs.everywhere or inputs.pairs:
        raise InvalidInputError("--split all trains on every cell; do not combine it with --holdout.")
    empty = np.zeros(0, dtype=np.int64)
    params = {"seed": config.seed, "perturbation_key": config.perturbation_key, "context_key": config.context_key,
              "test_fraction": 0, "held_out": [], "held_out_pairs": [], "excluded": [], "control": config.control,
              "delimiter": config.delimiter, "n_obs": len(labels)}  # fmt: skip
    split = Split("all", train=np.arange(len(labels)), val=empty, test=empty, params=params)
    combos = any(len(ps) > 1 for ps in inputs.parts.values())
    return _carve(inputs, split, "combination" if combos else "agent")


def _folds(inputs: SplitInputs, pool: list[str], what: str) -> tuple[list[str], list[list[str]]]:
    """``pool`` in ``split_folds`` folds (a seeded permutation): (fold ``split_fold``, every fold)."""
    config = inputs.config
    if inputs.everywhere or inputs.pairs:
        raise InvalidInputError(f"--split {config.split} draws its own held-out set; do not combine it with --holdout.")
    if len(pool) < config.split_folds:
        raise InvalidInputError(
            f"--split {config.split} needs at least split_folds={config.split_folds} {what}; found {len(pool)}"
            f" ({', '.join(pool[:10])}). Lower --set split_folds=K."
        )
    order = np.random.default_rng(config.seed).permutation(len(pool))
    folds = [sorted(pool[int(i)] for i in part) for part in np.array_split(order, config.split_folds)]
    return folds[config.split_fold], folds


def _with_seen(inputs: SplitInputs, split: Split, extra: Mapping[str, Any]) -> Split:
    """Record ``extra`` and each held-out condition's seen-ness (``"k/n"`` agents seen in training) in the params."""
    config = inputs.config
    seen = count_seen_agents(inputs.labels, split.train, control=config.control, delimiter=config.delimiter)
    held = sorted(set(inputs.labels[split.test].tolist()))
    seen_of = {c: seen_label(c, seen, control=config.control, delimiter=config.delimiter) for c in held}
    params = {**split.params, **extra, "seen": seen_of}
    return Split(split.name, train=split.train, val=split.val, test=split.test, params=params)


@PERTURB_SPLITS.register("combo_kfold")
def _split_combo_kfold(inputs: SplitInputs) -> Split:
    """Every double in ``split_folds`` folds, fold ``split_fold`` held out; its seen-ness recorded per double.

    Doubles with an agent that has neither single-agent cells nor prior features cannot be embedded
    when held out; they stay in training (``params['not_in_folds']``).
    """
    config, parts = inputs.config, inputs.parts
    singles = {ps[0] for ps in parts.values() if len(ps) == 1}
    doubles = sorted(lab for lab, ps in parts.items() if len(ps) == 2)
    known = set() if inputs.priors is None else {a for ps in parts.values() for a in ps if a in inputs.priors}
    pool = [d for d in doubles if all(a in singles or a in known for a in parts[d])]
    held, folds = _folds(inputs, pool, "doubles whose agents are single-perturbed or have priors")
    split = _carve(inputs, _hold_out(inputs, "combo_kfold", held, []), "combination")
    extra = {"fold": config.split_fold, "folds": folds, "not_in_folds": sorted(set(doubles) - set(pool))}
    return _with_seen(inputs, split, extra)


@PERTURB_SPLITS.register("single_kfold")
def _split_single_kfold(inputs: SplitInputs) -> Split:
    """The single agents with prior features in ``split_folds`` folds; fold ``split_fold`` held out everywhere."""
    config = inputs.config
    if inputs.priors is None:
        raise InvalidInputError("--split single_kfold holds out unseen agents; give priors (--gene-sets / --grn).")
    pool = sorted(lab for lab, ps in inputs.parts.items() if len(ps) == 1 and lab in inputs.priors)
    held, folds = _folds(inputs, pool, "single perturbations with prior features")
    split = _carve(inputs, _hold_out(inputs, "single_kfold", held, []), "agent")
    return _with_seen(inputs, split, {"fold": config.split_fold, "folds": folds})


@PERTURB_SPLITS.register("context_pair")
def _split_context_pair(inputs: SplitInputs) -> Split:
    """One (perturbation, context) pair per fold, over every pair whose perturbation occurs in 2+ contexts."""
    config, labels, contexts = inputs.config, inputs.labels, inputs.contexts
    if config.context_key is None:
        raise InvalidInputError("--split context_pair needs --context-key.")
    if inputs.everywhere or inputs.pairs:
        raise InvalidInputError("--split context_pair draws its own held-out pair; do not combine it with --holdout.")
    found = sorted(
        {(lab, c) for lab, c in zip(labels.tolist(), contexts.tolist(), strict=True) if lab != config.control}
    )
    n_ctx: dict[str, int] = {}
    for lab, _ in found:
        n_ctx[lab] = n_ctx.get(lab, 0) + 1
    candidates = [(lab, c) for lab, c in found if n_ctx[lab] > 1]
    if config.split_fold >= len(candidates):
        raise InvalidInputError(
            f"--split context_pair has {len(candidates)} folds (one per (perturbation, context) pair whose "
            f"perturbation occurs in two or more contexts); split_fold={config.split_fold} is out of range."
        )
    pair = candidates[config.split_fold]
    split = _carve(inputs, _hold_out(inputs, "context_pair", [], [pair]), "pair")
    extra = {"fold": config.split_fold, "folds": [[f"{p}@{c}"] for p, c in candidates]}
    return _with_seen(inputs, split, extra)


def train_perturb(
    data: str | Path,
    out: str | Path,
    *,
    perturbation_key: str | None = None,
    control: str | None = None,
    context_key: str | None = None,
    holdouts: Sequence[str] = (),
    split: str | None = None,
    gene_sets: Sequence[str] = (),
    grn: Sequence[str] = (),
    smiles: str | Path | None = None,
    dose_key: str | None = None,
    config_path: str | Path | None = None,
    sets: list[str] | None = None,
    seed: int | None = None,
    vae_dir: str | Path | None = None,
    library_key: str | None = None,
) -> dict[str, Any]:
    """``genailab perturb train``: split, train the VAE on training cells, train and calibrate the ensemble."""
    check_writable(out, argument="--out")
    cli = {
        "perturbation_key": perturbation_key,
        "control": control,
        "context_key": context_key,
        "holdouts": list(holdouts) if holdouts else None,
        "split": split,
        "gene_sets": [str(Path(p).resolve()) for p in gene_sets] if gene_sets else None,
        "grn": [str(Path(p).resolve()) for p in grn] if grn else None,
        "smiles": str(Path(smiles).resolve()) if smiles else None,
        "dose_key": dose_key,
        "library_key": library_key,
        "seed": seed,
    }
    config = resolve_run_config(config_path, list(sets or []), cli=cli, cls=PerturbRunConfig)
    for path in (*config.gene_sets, *config.grn, *([config.smiles] if config.smiles else [])):
        if not Path(path).is_file():
            raise InvalidInputError(f"prior file {path!r} does not exist.")
    adata = read_h5ad(data)
    return train_perturb_on(adata, out, config, vae_dir=vae_dir, data_desc={"path": str(Path(data).resolve())})


def train_perturb_on(
    adata: Any,
    out: str | Path,
    config: PerturbRunConfig,
    *,
    vae_dir: str | Path | None = None,
    data_desc: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a perturbation model on an AnnData (see :func:`train_perturb`); returns the run summary."""
    out = check_writable(out, argument="--out")
    validate_counts(adata, layer=config.layer)
    library_key = config.library_key or config.model.library_key  # one key for the run and the model
    if (config.library_key, config.model.library_key) != (library_key, library_key):
        config = config.replace(library_key=library_key, model=config.model.replace(library_key=library_key))
    _, warnings = resolve_library(adata, library_key)  # refuses a missing library column early
    if config.context_key is not None and config.context_key not in config.model.context_keys:
        config = config.replace(
            model=config.model.replace(context_keys=(config.context_key, *config.model.context_keys))
        )
    data_desc = dict(data_desc or {}, n_obs=int(adata.n_obs), n_vars=int(adata.n_vars))
    run = RunDirectory.check(out, config, data=data_desc, vae_dir=vae_dir and str(vae_dir))
    t0 = time.perf_counter()
    seed_everything(config.seed)
    priors = _load_priors(config, list(adata.var_names))
    if run.resuming and run.split_path.is_file():
        split = Split.load(run.split_path)  # resuming: the same split
    else:
        split = make_split(adata, config, priors)  # refuses bad keys, labels and hold-outs before any write
    train_rows = split.train
    vae_job: VAEJob | None = None
    if vae_dir is not None:
        vae_path = Path(vae_dir)
    else:
        vae_path = out / "vae"
        if not (vae_path / CONFIG_NAME).is_file():
            vae_cfg = VAERunConfig(
                seed=config.seed,
                preset=config.vae_preset,
                data=DataSpec(layer=config.layer),
                train=config.vae_train,
                vae=config.vae,
            )
            vae_job = prepare_vae(adata[train_rows].copy(), vae_path, vae_cfg, data_desc=data_desc)
    vae = LatentTokenVAE.from_pretrained(vae_path) if vae_job is None else None

    with run.started():
        split.save(run.split_path)
        vae_summary: dict[str, Any] | None = None
        if vae_job is not None:
            vae_summary = vae_job.train()
            vae = LatentTokenVAE.from_pretrained(vae_path)
        t_vae = time.perf_counter() - t0
        seed_everything(config.seed)
        model = PerturbDeltaModel.from_anndata(
            adata[train_rows],
            vae,
            perturbation_key=config.perturbation_key,
            control=config.control,
            delimiter=config.delimiter,
            dose_key=config.dose_key,
            priors=priors,
            config=config.model,
            backbone=config.backbone,
            backbone_preset=config.backbone_preset,
            backbone_overrides=dict(config.backbone_config),
        )
        _check_priors_cover(model, adata, split, config)
        results = model.fit(adata, train_rows, split.val, config.train, out_dir=out, seed=config.seed)
        model.save_pretrained(out, vae_dir=vae_path)
        n_trainable = sum(p.numel() for p in model.nets.parameters() if p.requires_grad)
        return run.finish(
            {
                "split": {"name": split.name, **split.sizes, "val_conditions": split.params.get("val_conditions", [])},
                "held_out": split.params.get("held_out", []),
                "held_out_pairs": split.params.get("held_out_pairs", []),
                "fold": split.params.get("fold"),
                "seen": split.params.get("seen", {}),
                "library_key": config.library_key,
                "warnings": warnings,
                "vae": {"dir": str(vae_path), "wall_s": t_vae, "metrics": (vae_summary or {}).get("metrics", {})},
                "n_trainable_parameters": n_trainable,
                "n_frozen_parameters": sum(p.numel() for p in model.vae.parameters()),
                "calibrated": model.calibrator is not None,
                "seen_ood_scores": model.seen_ood_scores,
                "ood_negatives": model.ood_negatives,
                "members": [r.to_dict() for r in results],
                "wall_s": time.perf_counter() - t0,
            }
        )


def _check_priors_cover(model: Any, adata: Any, split: Any, config: Any) -> None:
    """Refuse a split whose held-out agents the model could never embed."""
    labels = obs_labels(adata, config.perturbation_key, "--perturbation-key")
    for label in sorted(set(labels[split.test].tolist()) | set(labels[split.val].tolist())):
        model.vocab.encode([label])  # raises UnknownLabelError naming the agent without priors


def predict_perturb(
    model_dir: str | Path,
    controls: str | Path,
    perturbation: str,
    out: str | Path,
    *,
    context: str | None = None,
    allow_ood: bool = False,
    seed: int = 0,
    dose: str | None = None,
) -> dict[str, Any]:
    """``genailab perturb predict``: one predicted perturbed cell per control cell, written to ``out``."""
    out = check_writable(out, argument="--out")
    model = load_model(model_dir, expected=PerturbDeltaModel)
    adata = read_h5ad(controls)
    ctx = None
    if context is not None:
        keys = model.config.context_keys
        if not keys:
            raise InvalidInputError("--context was given but this model has no context key.")
        values = context.split("|")
        if len(values) != len(keys):
            raise InvalidInputError(f"--context {context!r} must give {len(keys)} value(s) joined by '|' for {keys}.")
        ctx = dict(zip(keys, values, strict=True))
    pred = model.predict(adata, perturbation, context=ctx, allow_ood=allow_ood, seed=seed, dose=dose)
    write_h5ad(pred, out)
    info = dict(pred.uns["genailab_perturb"])
    write_output_record(
        out,
        {
            **info,
            "model_dir": str(Path(model_dir).resolve()),
            "controls": str(Path(controls).resolve()),
            "n_cells": int(pred.n_obs),
        },
        suffix=".json",
    )
    return {**info, "n_cells": int(pred.n_obs), "out": str(out)}
