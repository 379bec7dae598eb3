"""Deprecated: moved to :mod:`genailab.workflows.adapt` (this path is kept for one release)."""

import warnings

from genailab.workflows.adapt import adapt_perturb, adapt_synth, distill_synth

warnings.warn(
    "genailab.adaptation is deprecated; import from genailab.workflows.adapt.", DeprecationWarning, stacklevel=2
)

__all__ = ["adapt_perturb", "adapt_synth", "distill_synth"]
