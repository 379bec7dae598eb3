"""How a member's network output becomes the predicted perturbed latent (registry :data:`FORMULATIONS`).

A formulation chooses the backbone's input (the control cell's latent, zeros or noise) and how its
output combines with the control cell's latent. Pick one by name in
:attr:`~genailab.foundation.recipes.perturb.config.PerturbDeltaConfig.formulation`; an unknown name
lists the registered ones.
"""

from __future__ import annotations

import torch

from genailab.registry import Registry

__all__ = ["FORMULATIONS", "DeltaFormulation", "DirectFormulation", "ShiftFormulation"]

FORMULATIONS: Registry = Registry("perturbation formulation")


@FORMULATIONS.register("delta")
class DeltaFormulation:
    """``z = z_base + f(z_base, p, c)``: the network predicts the shift of each control cell.

    With a base shift (``PerturbDeltaConfig.base_shift='context_mean'``) the network's output is the
    deviation from it: ``z = z_base + n_agents * base(c) + f(...)``.
    """

    uses_base = True  # the network output is added to the base shift

    def inputs(self, z_base: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Backbone input ``(B, m, d)``."""
        return z_base

    def combine(self, z_base: torch.Tensor, out: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        """Predicted latent; unperturbed rows (controls) keep ``z_base``."""
        return z_base + out * perturbed.view(-1, 1, 1).to(out.dtype)


@FORMULATIONS.register("shift")
class ShiftFormulation(DeltaFormulation):
    """``z = z_base + f(p, c)``: one latent shift per (perturbation, context), the same for every cell.

    scGen's latent vector arithmetic (Lotfollahi et al. 2019, Nat Methods) made conditional: each
    control cell keeps its own position, so the predicted population inherits the controls'
    heterogeneity, and the shift cannot distort the population's spread (on small screens a
    cell-dependent shift overfits that spread, which moves the decoded mean).
    """

    def inputs(self, z_base: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Zeros ``(B, m, d)``: the network does not see the cell."""
        return torch.zeros_like(z_base)


@FORMULATIONS.register("direct")
class DirectFormulation:
    """``z = f(noise, p, c)``: the seed's direct formulation, a one-step conditional generator.

    The network sees no control cell; per-cell variation comes from Gaussian noise on the
    standardised latent scale. Compare it with ``delta`` on the same split to see what anchoring
    predictions on real control cells buys. A base shift does not apply (the output is a latent).
    """

    uses_base = False

    def inputs(self, z_base: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal ``(B, m, d)``."""
        if generator is None:
            return torch.randn_like(z_base)
        return torch.randn(z_base.shape, generator=generator, dtype=z_base.dtype).to(z_base.device)

    def combine(self, z_base: torch.Tensor, out: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
        """Predicted latent; unperturbed rows (controls) keep ``z_base``."""
        return torch.where(perturbed.view(-1, 1, 1), out, z_base)
