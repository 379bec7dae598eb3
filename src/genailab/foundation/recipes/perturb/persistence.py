"""Model directories of the perturbation ensemble: what :meth:`PerturbDeltaModel.save_pretrained` writes.

Files: ``member_K.safetensors`` (and ``decoder_K.safetensors`` with ``finetune='decoder'``),
``backbone_config.json``, ``perturbation.json`` (vocabulary, keys, context categories, agent
encoder), ``calibration.json`` (:mod:`~genailab.foundation.recipes.perturb.calibration`; also the
OOD model and the base shift),
``gene_priors.*``, ``vae_source.json`` (or the VAE itself in ``vae/``) and ``config.json`` (last,
so a directory without it is incomplete). A ``config.json`` written before a field existed loads
with the value that means the old behaviour (:data:`~genailab.foundation.recipes.perturb.config.LEGACY_DEFAULTS`).
Adapted directories (``adapter.json``) are loaded by
:func:`genailab.foundation.recipes.load_model`, which sits above this recipe.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

from genailab.errors import CheckpointError, InvalidInputError
from genailab.foundation.backbones import backbone_from_dict, backbone_to_dict
from genailab.foundation.perturbation.encoders import PerturbationEncoderConfig
from genailab.foundation.perturbation.priors import GenePriors
from genailab.foundation.perturbation.vocab import PerturbationVocab
from genailab.foundation.recipes.perturb.calibration import apply_calibration, read_calibration, write_calibration
from genailab.foundation.recipes.perturb.config import LEGACY_DEFAULTS, PerturbDeltaConfig
from genailab.foundation.recipes.perturb.net import PerturbDeltaNet, context_encoder_config
from genailab.foundation.recipes.vae.model import LatentTokenVAE
from genailab.io import atomic_write_json, check_writable
from genailab.serialization import (
    CONFIG_NAME,
    VAE_DIR,
    check_vae_reference,
    is_adapted_dir,
    load_state_dict_strict,
    read_config,
    read_json,
    resolve_vae_reference,
    save_weights,
    write_config,
    write_vae_reference,
)

if TYPE_CHECKING:
    from genailab.foundation.recipes.perturb.model import PerturbDeltaModel

__all__ = ["BACKBONE_CONFIG_NAME", "PERTURBATION_NAME", "load_perturb_model", "save_perturb_model"]

BACKBONE_CONFIG_NAME = "backbone_config.json"
PERTURBATION_NAME = "perturbation.json"


def save_perturb_model(model: PerturbDeltaModel, directory: str | Path, *, vae_dir: str | Path | None = None) -> Path:
    """Write ``model`` to ``directory`` (the VAE to ``directory/vae`` unless ``vae_dir`` refers to it)."""
    d = check_writable(directory, argument="directory")
    d.mkdir(parents=True, exist_ok=True)
    (d / CONFIG_NAME).unlink(missing_ok=True)
    if vae_dir is None:
        vae_dir = d / VAE_DIR
        model.vae.save_pretrained(vae_dir)
    for k, net in enumerate(model.nets):
        save_weights(d, net, name=f"member_{k}.safetensors")
        if model.decoders[k] is not None:
            save_weights(d, model.decoders[k].decoder, name=f"decoder_{k}.safetensors")
    if model.priors is not None:
        model.priors.save(d)
    net0 = model.nets[0]
    atomic_write_json(d / BACKBONE_CONFIG_NAME, backbone_to_dict(net0.backbone))
    atomic_write_json(
        d / PERTURBATION_NAME,
        {
            "vocab": model.vocab.to_dict(),
            "perturbation_key": model.perturbation_key,
            "dose_key": model.dose_key,
            "context_categories": {k: list(v) for k, v in model.context_categories.items()},
            "encoder": net0.encoder.config.to_dict(),
        },
    )
    write_calibration(d, model)
    write_vae_reference(d, Path(vae_dir))
    write_config(d, type(model).__name__, model.config.to_dict())
    return d


def load_perturb_model(cls: type[PerturbDeltaModel], directory: str | Path) -> PerturbDeltaModel:
    """Load a plain directory written by :func:`save_perturb_model` as a ``cls``.

    Raises
    ------
    CheckpointError
        An adapted directory (load it with :func:`genailab.foundation.recipes.load_model`), or a
        missing, incomplete or mismatched one.
    """
    d = Path(directory)
    if is_adapted_dir(d):
        raise CheckpointError(
            f"{str(d)!r} is an adapted model directory (adapter.json); load it with "
            "genailab.foundation.recipes.load_model(dir), which loads its base and the adapter on top."
        )
    payload = read_config(d, cls.__name__)
    what = f"model directory {str(d)!r}"
    try:
        config = PerturbDeltaConfig.from_dict({**LEGACY_DEFAULTS, **payload["config"]})
        braw = dict(read_json(d / BACKBONE_CONFIG_NAME, what=what))
        info = read_json(d / PERTURBATION_NAME, what=what)
        vocab = PerturbationVocab.from_dict(info["vocab"])
        econf = PerturbationEncoderConfig.from_dict(info["encoder"])
        categories = {k: tuple(v) for k, v in info["context_categories"].items()}
        calib = read_calibration(d, what=what)
    except (InvalidInputError, TypeError, KeyError) as err:
        raise CheckpointError(f"{what} holds an invalid config: {err}") from err
    vae_dir, source = resolve_vae_reference(d)
    vae = LatentTokenVAE.from_pretrained(vae_dir)
    check_vae_reference(vae_dir, source)
    priors = GenePriors.load(d) if econf.n_prior else None
    cconf = context_encoder_config(config, [len(categories[k]) for k in config.context_keys])
    nets = [PerturbDeltaNet(config, econf, cconf, backbone_from_dict(braw)) for _ in range(config.n_members)]
    for k, net in enumerate(nets):
        load_state_dict_strict(d, net, name=f"member_{k}.safetensors")
    model = cls(
        vae,
        nets,
        vocab,
        config,
        perturbation_key=info["perturbation_key"],
        context_categories=categories,
        priors=priors,
        dose_key=info.get("dose_key"),
    )
    if config.finetune == "decoder":
        for k in range(config.n_members):
            dec = copy.deepcopy(vae)
            load_state_dict_strict(d, dec.decoder, name=f"decoder_{k}.safetensors")
            model.decoders[k] = dec.requires_grad_(False)
    apply_calibration(model, calib)
    model.vae_source = source
    model.eval()
    return model
