"""Linear probes: how much a frozen representation already knows (Alain & Bengio 2016, arXiv:1610.01644).

Two forms:

- the ``"linear_probe"`` tuning method trains only the output head of a generative backbone (a linear
  read-out of its frozen last-layer features);
- :class:`LinearProbe` fits a linear classifier / regressor on fixed embeddings ``(N, D)`` (e.g. cell
  embeddings of a foundation model) and reports held-out accuracy or R^2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genailab.config import check_choice, check_fraction, check_positive
from genailab.errors import InvalidInputError
from genailab.foundation.tuning.freeze import TuningReport
from genailab.foundation.tuning.methods import (
    TUNING_METHODS,
    TuningConfig,
    check_not_applied,
    find_head,
    freeze_all,
    make_report,
    mark_applied,
    unfreeze,
)

__all__ = ["PROBE_TASKS", "LinearProbe", "ProbeResult", "apply_linear_probe"]

PROBE_TASKS = ("classification", "regression")


def apply_linear_probe(module: nn.Module, head: str | None = None) -> TuningReport:
    """Freeze ``module`` except its output head: a linear probe over the frozen features.

    Parameters
    ----------
    module
        A backbone or a container holding one.
    head
        Qualified name of the head; ``None`` = :func:`~genailab.foundation.tuning.methods.find_head`'s
        choice (``final.linear`` for DiT, ``out`` for the MLP backbone, ``out.2`` for the U-Net).

    Raises
    ------
    InvalidInputError
        If ``head`` names no module with parameters, or the method was already applied.
    """
    check_not_applied(module, "linear_probe")
    name = find_head(module, head)
    freeze_all(module)
    unfreeze([module.get_submodule(name)])
    mark_applied(module, "linear_probe")
    return make_report(module, "linear_probe", (name,))


@TUNING_METHODS.register("linear_probe")
def _linear_probe(module: nn.Module, config: TuningConfig) -> TuningReport:
    return apply_linear_probe(module, config.method_config().head)  # LinearProbeConfig


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of :meth:`LinearProbe.fit`.

    Attributes
    ----------
    probe
        The fitted probe (eval mode).
    task
        ``"classification"`` or ``"regression"``.
    metric
        ``"accuracy"`` or ``"r2"``.
    train_metric, val_metric
        The metric on the training and held-out cells (``val_metric`` is ``None`` when
        ``val_fraction=0``).
    n_params
        Number of fitted parameters (weights and biases).
    n_train, n_val
        Training and held-out sizes.
    """

    probe: LinearProbe
    task: str
    metric: str
    train_metric: float
    val_metric: float | None
    n_params: int
    n_train: int
    n_val: int

    def to_dict(self) -> dict[str, Any]:
        """Plain-data dict of everything but the probe."""
        return {
            "task": self.task,
            "metric": self.metric,
            "train_metric": self.train_metric,
            "val_metric": self.val_metric,
            "n_params": self.n_params,
            "n_train": self.n_train,
            "n_val": self.n_val,
        }


def _as_matrix(embeddings: Any) -> torch.Tensor:
    """``(N, D)`` finite float tensor of the default dtype, on the CPU."""
    if isinstance(embeddings, torch.Tensor):
        if embeddings.is_complex():
            raise InvalidInputError(f"embeddings must be real numbers, got dtype {embeddings.dtype}.")
        x = embeddings.detach().cpu()
    else:
        try:
            x = torch.as_tensor(np.asarray(embeddings, dtype=np.float64))
        except (TypeError, ValueError):
            raise InvalidInputError("embeddings must be an (N, D) array of real numbers.") from None
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise InvalidInputError(f"embeddings must have shape (N, D) with N, D >= 1, got {tuple(x.shape)}.")
    x = x.to(torch.get_default_dtype())
    if not torch.isfinite(x).all():
        raise InvalidInputError("embeddings hold NaN or infinite values.")
    return x


def _r2(y: torch.Tensor, pred: torch.Tensor) -> float:
    """Coefficient of determination averaged over target columns (scikit-learn's convention)."""
    ss_res = (y - pred).pow(2).sum(dim=0)  # (T,)
    ss_tot = (y - y.mean(dim=0)).pow(2).sum(dim=0)  # (T,)
    ok = ss_tot > 0
    r2 = torch.where(ok, 1 - ss_res / ss_tot.clamp(min=1e-30), (ss_res == 0).to(y.dtype))  # (T,)
    return float(r2.mean())


class LinearProbe(nn.Module):
    """A linear classifier or regressor on standardised embeddings.

    ``forward(x (N, D)) -> (N, out_dim)``: class logits (classification) or predictions in the
    targets' units (regression). Inputs are standardised with the training mean and std, which are
    stored as buffers; regression targets are standardised for fitting and mapped back.

    Parameters
    ----------
    in_dim
        Embedding width D.
    out_dim
        Number of classes, or number of regression targets.
    task
        ``"classification"`` or ``"regression"``.
    classes
        Class labels in logit order (classification); default ``0..out_dim-1``.
    """

    def __init__(
        self, in_dim: int, out_dim: int, task: str = "classification", classes: tuple[Any, ...] | None = None
    ) -> None:
        super().__init__()
        check_positive("in_dim", in_dim, integer=True)
        check_positive("out_dim", out_dim, integer=True)
        check_choice("task", task, PROBE_TASKS)
        self.task = task
        self.classes = tuple(range(out_dim)) if classes is None else tuple(classes)
        if task == "classification" and len(self.classes) != out_dim:
            raise InvalidInputError(f"classes has {len(self.classes)} labels but out_dim={out_dim}.")
        self.linear = nn.Linear(in_dim, out_dim)
        self.register_buffer("x_mean", torch.zeros(in_dim))
        self.register_buffer("x_std", torch.ones(in_dim))
        self.register_buffer("y_mean", torch.zeros(out_dim))
        self.register_buffer("y_std", torch.ones(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(N, D)`` -> logits or predictions ``(N, out_dim)``."""
        out = self.linear((x - self.x_mean) / self.x_std)  # (N, out_dim)
        return out * self.y_std + self.y_mean if self.task == "regression" else out

    @torch.no_grad()
    def predict(self, embeddings: Any) -> np.ndarray:
        """Class labels ``(N,)`` (classification) or predictions ``(N,)`` / ``(N, T)`` (regression)."""
        x = _as_matrix(embeddings).to(self.x_mean.device)
        if x.shape[1] != self.linear.in_features:
            raise InvalidInputError(f"embeddings must have {self.linear.in_features} columns, got {x.shape[1]}.")
        out = self(x)  # (N, out_dim)
        if self.task == "classification":
            return np.asarray(self.classes)[out.argmax(dim=1).cpu().numpy()]
        pred = out.cpu().numpy()
        return pred[:, 0] if pred.shape[1] == 1 else pred

    @classmethod
    def fit(
        cls,
        embeddings: Any,
        targets: Any,
        *,
        task: str = "classification",
        val_fraction: float = 0.2,
        seed: int = 0,
        max_epochs: int = 200,
        weight_decay: float = 1e-4,
    ) -> ProbeResult:
        """Fit a probe on a random train split and score it on the rest.

        Full-batch L-BFGS (strong-Wolfe line search) on cross-entropy or squared error of the
        standardised targets, plus ``weight_decay * ||W||^2``.

        Parameters
        ----------
        embeddings
            ``(N, D)`` array or tensor.
        targets
            ``(N,)`` labels (any hashable values, e.g. strings) for classification; ``(N,)`` or
            ``(N, T)`` numbers for regression.
        task
            ``"classification"`` (metric: accuracy) or ``"regression"`` (metric: R^2).
        val_fraction
            Share of cells held out (at least one when positive); 0 = no held-out score.
        seed
            Seed of the split.
        max_epochs
            L-BFGS iterations.
        weight_decay
            L2 penalty on the weights.

        Returns
        -------
        A :class:`ProbeResult`.
        """
        check_choice("task", task, PROBE_TASKS)
        check_fraction("val_fraction", val_fraction)
        check_positive("max_epochs", max_epochs, integer=True)
        check_positive("weight_decay", weight_decay, strict=False)
        x = _as_matrix(embeddings)
        n = x.shape[0]
        y_np = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
        if y_np.shape[0] != n:
            raise InvalidInputError(f"targets has {y_np.shape[0]} rows but embeddings has {n}.")
        n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
        if n - n_val < 1:
            raise InvalidInputError(f"val_fraction={val_fraction} leaves no training cell out of {n}.")
        perm = torch.as_tensor(np.random.default_rng(seed).permutation(n))
        train, val = perm[n_val:], perm[:n_val]
        if task == "classification":
            if y_np.ndim != 1:
                raise InvalidInputError(f"classification targets must have shape (N,), got {y_np.shape}.")
            classes, codes = np.unique(y_np, return_inverse=True)
            if len(classes) < 2:
                raise InvalidInputError(f"classification needs at least 2 classes, got {classes.tolist()}.")
            y = torch.as_tensor(codes, dtype=torch.long)
            probe = cls(x.shape[1], len(classes), task, tuple(classes.tolist()))
        else:
            try:
                y = torch.as_tensor(y_np.astype(np.float64)).to(torch.get_default_dtype())
            except (TypeError, ValueError):
                raise InvalidInputError("regression targets must be numbers.") from None
            y = y.unsqueeze(1) if y.ndim == 1 else y  # (N, T)
            if y.ndim != 2 or not torch.isfinite(y).all():
                raise InvalidInputError(
                    f"regression targets must be finite with shape (N,) or (N, T), got {y_np.shape}."
                )
            probe = cls(x.shape[1], y.shape[1], task)
            probe.y_mean.copy_(y[train].mean(dim=0))
            probe.y_std.copy_(y[train].std(dim=0, correction=0).clamp(min=1e-8))
        probe.x_mean.copy_(x[train].mean(dim=0))
        probe.x_std.copy_(x[train].std(dim=0, correction=0).clamp(min=1e-8))
        probe._fit(x[train], y[train], max_epochs, weight_decay)
        probe.eval()
        score = probe._score
        return ProbeResult(
            probe=probe,
            task=task,
            metric="accuracy" if task == "classification" else "r2",
            train_metric=score(x[train], y[train]),
            val_metric=score(x[val], y[val]) if n_val else None,
            n_params=sum(p.numel() for p in probe.parameters()),
            n_train=len(train),
            n_val=n_val,
        )

    def _fit(self, x: torch.Tensor, y: torch.Tensor, max_epochs: int, weight_decay: float) -> None:
        """Full-batch L-BFGS from zero weights (the problem is convex)."""
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        z = (x - self.x_mean) / self.x_std  # (N, D)
        target = y if self.task == "classification" else (y - self.y_mean) / self.y_std
        opt = torch.optim.LBFGS(
            self.linear.parameters(), lr=1.0, max_iter=max_epochs, history_size=20, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            out = self.linear(z)  # (N, out_dim)
            loss = F.cross_entropy(out, target) if self.task == "classification" else F.mse_loss(out, target)
            loss = loss + weight_decay * self.linear.weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)

    @torch.no_grad()
    def _score(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Accuracy (classification) or R^2 (regression) on ``x`` ``(N, D)`` and encoded ``y``."""
        out = self(x)  # (N, out_dim)
        if self.task == "classification":
            return float((out.argmax(dim=1) == y).float().mean())
        return _r2(y, out)
