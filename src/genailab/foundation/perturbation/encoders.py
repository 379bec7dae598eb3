"""Perturbation encoders: perturbation tokens -> one embedding per cell.

A cell's perturbation is a *set* of agents (``'SET+KLF1'`` is two genes; a drug combination is two
compounds), each with a dose. Encoding has two steps, each a registered, switchable module:

1. an **agent encoder** embeds every agent of the set: ``(B, S)`` vocabulary ids + doses ->
   ``(B, S, C)`` tokens (:data:`PERTURBATION_ENCODERS`: ``gene``, ``compound``);
2. a **composer** pools the set order-invariantly: ``(B, S, C)`` -> ``(B, C)`` (:data:`COMPOSERS`:
   ``sum``, ``attention``).

The vocabulary lists the agents seen in training first, then every other agent with prior features
(gene-set / GRN features from :class:`~genailab.foundation.perturbation.GenePriors`, or compound
fingerprints). An agent's embedding is a learned identity vector (only for agents seen in training) plus a
learned map of its prior features; *identity dropout* hides the identity vector during training so the
prior path alone must carry the response, which is what an unseen agent is left with at prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from genailab.config import Config, check_fraction, check_positive
from genailab.errors import InvalidInputError
from genailab.registry import Registry

__all__ = [
    "COMPOSERS",
    "PERTURBATION_ENCODERS",
    "AdditiveComposer",
    "AttentionComposer",
    "CompoundEncoder",
    "GeneEncoder",
    "PerturbationEncoderConfig",
    "SumComposer",
]

PERTURBATION_ENCODERS: Registry = Registry("perturbation encoder")
COMPOSERS: Registry = Registry("perturbation composer")


@dataclass(frozen=True)
class PerturbationEncoderConfig(Config):
    """Config of the agent encoders.

    Parameters
    ----------
    n_vocab
        Number of agents in the vocabulary (ids ``0 .. n_vocab-1``; ``-1`` pads a set).
    n_trained
        The first ``n_trained`` ids are the agents seen in training; only they have identity vectors.
    n_prior
        Width of the prior feature vectors (0 = no priors: identities only).
    dim
        Width C of an agent token.
    hidden_dim
        Width of the MLP over prior features.
    identity_dropout
        Training probability of hiding an agent's identity vector (so priors learn to stand alone).
    """

    n_vocab: int = 1
    n_trained: int = 1
    n_prior: int = 0
    dim: int = 64
    hidden_dim: int = 128
    identity_dropout: float = 0.5

    def __post_init__(self) -> None:
        check_positive("n_vocab", self.n_vocab, integer=True)
        check_positive("n_trained", self.n_trained, integer=True)
        if self.n_trained > self.n_vocab:
            raise InvalidInputError(f"n_trained={self.n_trained} exceeds n_vocab={self.n_vocab}.")
        check_positive("n_prior", self.n_prior, strict=False, integer=True)
        check_positive("dim", self.dim, integer=True)
        check_positive("hidden_dim", self.hidden_dim, integer=True)
        check_fraction("identity_dropout", self.identity_dropout)


class _AgentEncoder(nn.Module):
    """Identity embedding (for trained agents) + MLP of prior features, shared by all agent kinds.

    The prior table is a non-persistent buffer ``prior`` ``(V, P)`` with flags ``has_prior`` ``(V,)``:
    it is shared by every member of an ensemble and saved once beside them, so
    :meth:`set_priors` installs it after construction or loading.
    """

    def __init__(self, config: PerturbationEncoderConfig) -> None:
        super().__init__()
        self.config = config
        c = config.dim
        self.identity = nn.Embedding(config.n_trained, c)
        nn.init.normal_(self.identity.weight, std=0.02)
        self.prior_mlp = (
            nn.Sequential(nn.Linear(config.n_prior, config.hidden_dim), nn.GELU(), nn.Linear(config.hidden_dim, c))
            if config.n_prior
            else None
        )
        self.register_buffer("prior", torch.zeros(config.n_vocab, max(config.n_prior, 1)), persistent=False)
        self.register_buffer("has_prior", torch.zeros(config.n_vocab, dtype=torch.bool), persistent=False)

    def set_priors(self, prior: torch.Tensor, has_prior: torch.Tensor) -> None:
        """Install the vocabulary's prior table ``(V, P)`` and its ``(V,)`` flags."""
        v, p = self.config.n_vocab, self.config.n_prior
        if has_prior.shape != (v,):
            raise InvalidInputError(f"has_prior has shape {tuple(has_prior.shape)}; expected ({v},).")
        if p and prior.shape != (v, p):
            raise InvalidInputError(f"prior table has shape {tuple(prior.shape)}; expected ({v}, {p}).")
        if p:
            self.prior = prior.to(self.prior.dtype)
        self.has_prior = has_prior.to(torch.bool)

    def agent_tokens(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S)`` ids (``-1`` = padding) -> ``(B, S, C)`` tokens and ``(B, S)`` mask of real agents."""
        mask = ids >= 0  # (B, S)
        safe = ids.clamp(min=0)
        has_prior = self.has_prior[safe] if self.prior_mlp is not None else torch.zeros_like(mask)
        keep_id = safe < self.config.n_trained  # (B, S) identities exist only for agents seen in training
        if self.training and self.config.identity_dropout > 0:
            hide = torch.rand(ids.shape, device=ids.device) < self.config.identity_dropout
            keep_id = keep_id & ~(hide & has_prior)  # never hide an agent that has nothing else
        tok = self.identity(safe.clamp(max=self.config.n_trained - 1))  # (B, S, C)
        tok = tok * keep_id.unsqueeze(-1).to(tok.dtype)
        if self.prior_mlp is not None:
            tok = tok + self.prior_mlp(self.prior[safe]) * has_prior.unsqueeze(-1).to(tok.dtype)  # (B, S, C)
        return tok * mask.unsqueeze(-1).to(tok.dtype), mask


@PERTURBATION_ENCODERS.register("gene")
class GeneEncoder(_AgentEncoder):
    """Genetic perturbations (CRISPR KO/i/a, overexpression): gene identity + gene prior features.

    The dose of a genetic perturbation (e.g. guide copies) scales nothing; genes are present or not.
    Priors follow GEARS' idea (Roohani et al. 2024, Nat Biotechnol) of giving unseen genes the
    embedding of their functional neighbourhood, here from gene-set and GRN features.
    """

    def forward(self, ids: torch.Tensor, dose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S)`` ids and doses -> ``(B, S, C)`` tokens and ``(B, S)`` mask."""
        return self.agent_tokens(ids)


@PERTURBATION_ENCODERS.register("compound")
class CompoundEncoder(_AgentEncoder):
    """Chemical perturbations: compound identity (+ fingerprint priors) scaled by a dose-response curve.

    Each compound has a learned Hill-type curve ``sigmoid(slope * (log10(dose) - log10_ec50))``
    (CPA's dose encoder, Lotfollahi et al. 2023, Mol Syst Biol, with one curve per compound);
    compounds unseen in training use the mean curve. Dose 0 gives no effect.
    """

    def __init__(self, config: PerturbationEncoderConfig) -> None:
        super().__init__(config)
        self.log_ec50 = nn.Parameter(torch.zeros(config.n_trained))
        self.log_slope = nn.Parameter(torch.zeros(config.n_trained))

    def response(self, ids: torch.Tensor, dose: torch.Tensor) -> torch.Tensor:
        """``(B, S)`` fraction of the maximal effect at each dose."""
        n = self.config.n_trained
        safe = ids.clamp(min=0)
        trained = safe < n
        idx = safe.clamp(max=n - 1)
        ec50 = torch.where(trained, self.log_ec50[idx], self.log_ec50.mean())  # (B, S)
        slope = torch.where(trained, self.log_slope[idx], self.log_slope.mean()).exp()
        log_dose = torch.log10(dose.clamp(min=1e-12))
        return torch.sigmoid(slope * (log_dose - ec50)) * (dose > 0).to(dose.dtype)

    def forward(self, ids: torch.Tensor, dose: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S)`` ids and doses -> ``(B, S, C)`` dose-scaled tokens and ``(B, S)`` mask."""
        tok, mask = self.agent_tokens(ids)
        return tok * self.response(ids, dose).unsqueeze(-1), mask


@COMPOSERS.register("sum")
class SumComposer(nn.Module):
    """Sum of the agent tokens: additive in embedding space (non-additive only through the delta network)."""

    def __init__(self, dim: int, n_heads: int = 4) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, S, C)`` tokens, ``(B, S)`` mask -> ``(B, C)``."""
        return (tokens * mask.unsqueeze(-1).to(tokens.dtype)).sum(1)


@COMPOSERS.register("additive")
class AdditiveComposer(nn.Module):
    """Additive *in latent space*: the delta network runs once per agent and the shifts are summed.

    ``delta_z(A+B) = f(z, A) + f(z, B) + gate * f(z, interaction(A, B))``: the decoded response of a
    combination is non-additive in gene space (the decoder saturates), and a zero-gated attention term
    learns genetic interactions where training combinations call for them. :meth:`forward` returns the
    interaction token; :attr:`per_agent` tells the delta network to run per agent.
    """

    per_agent = True

    def __init__(self, dim: int, n_heads: int = 4) -> None:
        super().__init__()
        self.interaction = AttentionComposer(dim, n_heads)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, S, C)`` tokens, ``(B, S)`` mask -> ``(B, C)`` interaction token (zero at init)."""
        base = (tokens * mask.unsqueeze(-1).to(tokens.dtype)).sum(1)
        return self.interaction(tokens, mask) - base  # the attention term alone


@COMPOSERS.register("attention")
class AttentionComposer(nn.Module):
    """Sum plus a set-attention interaction term (Deep Sets / Set Transformer, Lee et al. 2019).

    Every agent attends to the others (no positions, so the result is order-invariant); the attended
    tokens go through a zero-initialised projection and are summed, so the composer starts as
    :class:`SumComposer` and learns non-additive interactions (buffering, synergy) only where
    combinations in training call for them. A single agent attends only to itself, so its
    interaction term is a learned function of that agent alone.
    """

    def __init__(self, dim: int, n_heads: int = 4) -> None:
        super().__init__()
        if dim % n_heads:
            raise InvalidInputError(f"dim={dim} must be divisible by n_heads={n_heads}.")
        self.dim = dim
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, n_heads, batch_first=True)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, S, C)`` tokens, ``(B, S)`` mask -> ``(B, C)``."""
        m = mask.unsqueeze(-1).to(tokens.dtype)  # (B, S, 1)
        base = (tokens * m).sum(1)  # (B, C)
        empty = ~mask.any(1)  # controls: nothing to attend over
        pad = ~mask & ~empty.unsqueeze(1)  # (B, S); an empty row attends to its padding, then is masked out
        h = self.norm(tokens)
        att, _ = self.attn(h, h, h, key_padding_mask=pad, need_weights=False)  # (B, S, C)
        inter = (self.out(att) * m).sum(1)  # (B, C)
        return base + inter
