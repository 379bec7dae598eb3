"""Tuning: decide what trains and what stays frozen, and report it.

Every tuning method returns a :class:`TuningReport` of trainable vs total parameters and the modules
it touched. :func:`apply_freeze` freezes a module (or the modules matching name patterns), which the
staged recipes use to keep a pretrained VAE or backbone fixed.
"""

from genailab.foundation.tuning.freeze import TuningReport, apply_freeze, count_parameters

__all__ = ["TuningReport", "apply_freeze", "count_parameters"]
