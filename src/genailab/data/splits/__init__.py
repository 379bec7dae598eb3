"""Train/validation/test splits of cells, saved as JSON so every run can be reproduced.

Each split kind is a pure function of ``obs`` (or ``n_obs``, or label arrays) and a seed, registered
once by name in :data:`SPLITS` so configs and the CLI pick one by name; an unknown name raises an
error listing the registered kinds:

- ``"random"``: :func:`random_split`, cells at random;
- ``"category"``: :func:`holdout_category_split`, whole labels held out (a cell type, a donor);
- ``"perturbation"``: :func:`holdout_perturbation_split`, single
  perturbations held out (unseen genes);
- ``"combination"``: :func:`combination_split`, double perturbations held out with
  0, 1 or 2 seen singles;
- ``"context"``: :func:`context_split`, a perturbation held out in one context (cell line) only;
- ``"holdout"``: :func:`holdout_split`, named perturbations (``P``) or pairs (``P@C``) held out, as
  ``genailab perturb train --holdout`` does.

In the ``obs`` perturbation splits the control cells stay in the training set, and the validation set
is carved at random from the remaining (non-test) cells; :func:`carve_validation` instead carves
validation *conditions* in the image of the test set. Modules: :mod:`.base` (:class:`Split`, the
registry, shared helpers), :mod:`.generic`, :mod:`.perturbation`, :mod:`.holdout`.
"""

from genailab.data.splits.base import SPLITS, SPLITTERS, Split
from genailab.data.splits.generic import holdout_category_split, random_split
from genailab.data.splits.holdout import VAL_KINDS, carve_validation, holdout_split, parse_holdouts
from genailab.data.splits.perturbation import combination_split, context_split, holdout_perturbation_split

__all__ = [
    "SPLITS",
    "SPLITTERS",
    "VAL_KINDS",
    "Split",
    "carve_validation",
    "combination_split",
    "context_split",
    "holdout_category_split",
    "holdout_perturbation_split",
    "holdout_split",
    "parse_holdouts",
    "random_split",
]
