"""Explicit hold-outs and validation conditions for ``genailab perturb train`` (kept import path).

Their home is :mod:`genailab.data.splits.holdout`, beside the other split kinds; this module
re-exports the same objects so ``from genailab.data.perturbation_splits import holdout_split`` keeps
working.
"""

from genailab.data.splits.holdout import VAL_KINDS, carve_validation, holdout_split, parse_holdouts

__all__ = ["VAL_KINDS", "carve_validation", "holdout_split", "parse_holdouts"]
