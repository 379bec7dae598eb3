"""The network of one ensemble member and its training wrapper.

``(z_base, perturbation, context) -> predicted perturbed latent``: an agent encoder and a composer
make the perturbation token, a context encoder the context tokens, and a registered backbone over
the VAE's ``(m, d)`` latent tokens predicts the shift (or the latent) under those condition tokens;
the formulation (:data:`~genailab.foundation.recipes.perturb.formulations.FORMULATIONS`) says how.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from genailab.errors import InvalidInputError
from genailab.foundation.backbones import backbone_config, build_backbone
from genailab.foundation.conditioning import ConditionEncoder, ConditionEncoderConfig
from genailab.foundation.perturbation.encoders import COMPOSERS, PERTURBATION_ENCODERS, PerturbationEncoderConfig
from genailab.foundation.perturbation.vocab import PerturbationVocab
from genailab.foundation.recipes.perturb.config import PerturbDeltaConfig
from genailab.foundation.recipes.perturb.formulations import FORMULATIONS
from genailab.foundation.recipes.vae.model import LatentTokenVAE

if TYPE_CHECKING:
    from genailab.foundation.perturbation.priors import GenePriors

__all__ = ["PerturbDeltaNet", "build_net", "context_encoder_config", "install_priors"]


class PerturbDeltaNet(nn.Module):
    """One ensemble member: ``(z_base, perturbation, context) -> predicted perturbed latent``.

    Parameters
    ----------
    config
        Recipe settings (formulation, encoder, composer).
    encoder_config
        Agent-encoder config (vocabulary and prior sizes).
    context_config
        Context-token config, or ``None`` without context keys.
    backbone
        A registered backbone over ``(m, d)`` latent tokens with ``1 + K`` condition tokens of width
        ``config.perturbation_dim``; it outputs zeros at init, so the member starts as the identity
        (``delta`` formulation: every prediction is the control cell itself).
    """

    def __init__(
        self,
        config: PerturbDeltaConfig,
        encoder_config: PerturbationEncoderConfig,
        context_config: ConditionEncoderConfig | None,
        backbone: nn.Module,
    ) -> None:
        super().__init__()
        n_ctx = context_config.n_keys if context_config is not None else 0
        bc = backbone.config
        if (bc.n_cond_tokens, bc.cond_dim) != (1 + n_ctx, config.perturbation_dim):
            raise InvalidInputError(
                f"backbone expects {bc.n_cond_tokens} condition tokens of width {bc.cond_dim}; the recipe makes "
                f"{1 + n_ctx} of width {config.perturbation_dim}."
            )
        self.config = config
        self.encoder = PERTURBATION_ENCODERS.get(config.encoder)(encoder_config)
        self.composer = COMPOSERS.get(config.composer)(config.perturbation_dim)
        self.context = ConditionEncoder(context_config) if n_ctx else None
        self.backbone = backbone
        self.formulation = FORMULATIONS.get(config.formulation)()

    def perturbation_token(self, ids: torch.Tensor, dose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S)`` ids and doses -> ``(B, C)`` perturbation embedding and ``(B,)`` perturbed flag.

        For the per-agent ``additive`` composer the embedding is the sum of the agent tokens plus the
        gated interaction token (what the OOD score reads).
        """
        tokens, mask = self.encoder(ids, dose)  # (B, S, C), (B, S)
        pooled = self.composer(tokens, mask)
        if getattr(self.composer, "per_agent", False):
            pooled = (tokens * mask.unsqueeze(-1).to(tokens.dtype)).sum(1) + self.composer.gate * pooled
        return pooled, mask.any(1)

    def _shift(self, x: torch.Tensor, token: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """Backbone output ``(B, m, d)`` for input ``x`` under one perturbation token ``(B, C)``."""
        cond = token.unsqueeze(1)  # (B, 1, C)
        if ctx is not None:
            cond = torch.cat([cond, ctx], dim=1)  # (B, 1+K, C)
        return self.backbone(x, None, cond)

    def forward(
        self,
        z_base: torch.Tensor,
        ids: torch.Tensor,
        dose: torch.Tensor,
        context: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        base: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted perturbed latents.

        Parameters
        ----------
        z_base
            ``(B, m, d)`` standardised latents of control cells.
        ids, dose
            ``(B, S)`` agent ids (``-1`` = none) and doses.
        context
            ``(B, K)`` context codes (``-1`` = unknown context -> null token), or ``None`` without keys.
        generator
            Seeds the noise of the ``direct`` formulation.
        base
            ``(B, m, d)`` or ``(m, d)`` per-agent base shift of each row's context
            (:mod:`~genailab.foundation.recipes.perturb.base_shift`); a row with ``n`` agents starts from
            ``n * base`` and the network adds its deviation. ``None`` (or a formulation without a base):
            no base.

        Returns
        -------
        ``(B, m, d)`` standardised predicted latents.
        """
        if self.context is not None and context is None:
            raise InvalidInputError("this model needs context codes (B, K); got None.")
        ctx = self.context(context) if self.context is not None else None  # (B, K, C)
        tokens, mask = self.encoder(ids, dose)  # (B, S, C), (B, S)
        x = self.formulation.inputs(z_base, generator)  # (B, m, d)
        if not getattr(self.composer, "per_agent", False):
            out = self._shift(x, self.composer(tokens, mask), ctx)
        else:
            b, s, c = tokens.shape
            rep = (b * s, *x.shape[1:])
            xs = x.unsqueeze(1).expand(b, s, *x.shape[1:]).reshape(rep)  # (B*S, m, d)
            cs = None if ctx is None else ctx.unsqueeze(1).expand(b, s, *ctx.shape[1:]).reshape(b * s, *ctx.shape[1:])
            out = self._shift(xs, tokens.reshape(b * s, c), cs).view(b, s, *x.shape[1:])  # (B, S, m, d)
            out = (out * mask.view(b, s, 1, 1).to(out.dtype)).sum(1)  # (B, m, d) sum of per-agent shifts
            multi = mask.sum(1) > 1  # (B,)
            if bool(multi.any()):
                inter = self._shift(x, self.composer(tokens, mask), ctx)  # (B, m, d)
                out = out + self.composer.gate * inter * multi.view(-1, 1, 1).to(out.dtype)
        if base is not None and getattr(self.formulation, "uses_base", False):
            n_agents = mask.sum(1).view(-1, 1, 1).to(out.dtype)  # (B, 1, 1)
            out = out + n_agents * base.to(out.dtype)
        return self.formulation.combine(z_base, out, mask.any(1))


def context_encoder_config(config: PerturbDeltaConfig, n_categories: Sequence[int]) -> ConditionEncoderConfig | None:
    """Config of the context tokens: one table per context key (``None`` without context keys)."""
    if not config.context_keys:
        return None
    return ConditionEncoderConfig(
        keys=tuple(config.context_keys),
        n_categories=tuple(int(n) for n in n_categories),
        dim=config.perturbation_dim,
        dropout=(config.context_dropout,) * len(config.context_keys),
    )


def build_net(
    config: PerturbDeltaConfig,
    vae: LatentTokenVAE,
    vocab: PerturbationVocab,
    n_prior: int,
    context_sizes: Sequence[int],
    *,
    backbone: str = "mlp",
    backbone_preset: str = "small",
    backbone_overrides: Mapping[str, Any] | None = None,
) -> PerturbDeltaNet:
    """One fresh member sized for the VAE's latent, the vocabulary and the contexts.

    Parameters
    ----------
    config
        Recipe settings.
    vae
        The VAE whose latent shape ``(m, d)`` the backbone maps.
    vocab
        The perturbation vocabulary (agent-table sizes).
    n_prior
        Width of the agents' prior features (0 = identities only).
    context_sizes
        Number of categories of each context key.
    backbone, backbone_preset, backbone_overrides
        The registered backbone, its size preset and field overrides.
    """
    m, d = vae.config.latent_shape
    n_cond = 1 + len(config.context_keys)
    bconf = backbone_config(
        backbone, backbone_preset, m, d, n_cond, config.perturbation_dim, overrides=backbone_overrides
    )
    econf = PerturbationEncoderConfig(
        n_vocab=len(vocab.agents),
        n_trained=vocab.n_trained,
        n_prior=n_prior,
        dim=config.perturbation_dim,
        hidden_dim=config.prior_hidden_dim,
        identity_dropout=config.identity_dropout,
    )
    cconf = context_encoder_config(config, context_sizes)
    return PerturbDeltaNet(config, econf, cconf, build_backbone(backbone, bconf))


def install_priors(nets: Sequence[PerturbDeltaNet], vocab: PerturbationVocab, priors: GenePriors | None) -> None:
    """Give every member's agent encoder the prior features of ``vocab``'s agents (none without ``priors``)."""
    v = len(vocab.agents)
    if priors is None:
        table, has = torch.zeros(v, 1), torch.zeros(v, dtype=torch.bool)
    else:
        feats, has_np = priors.lookup(list(vocab.agents))
        table, has = torch.as_tensor(np.asarray(feats, np.float32)), torch.as_tensor(has_np)
    for net in nets:
        net.encoder.set_priors(table, has)
