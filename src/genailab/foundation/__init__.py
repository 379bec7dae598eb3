"""The foundation layer: backbones, conditioning, tuning, objectives and recipes.

- :mod:`genailab.foundation.backbones`: token-sequence networks behind one contract.
- :mod:`genailab.foundation.conditioning`: covariate embeddings and conditioners (FiLM, ...).
- :mod:`genailab.foundation.tuning`: what trains and what stays frozen.
- :mod:`genailab.foundation.objectives`: losses and their structured output.
- :mod:`genailab.foundation.recipes`: user-facing models that compose the above.
"""
