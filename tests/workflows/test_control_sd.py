import numpy as np

from genailab.foundation.objectives.uncertainty import ConformalCalibrator
from genailab.workflows.perturb_evaluate import control_sd


def test_control_sd_floors_genes_without_variation():
    rng = np.random.default_rng(0)
    cells = rng.normal(size=(50, 6))
    cells[:, 0] = 0.0  # a gene never expressed in the controls
    sd = control_sd(cells)
    positive = cells[:, 1:].std(0, ddof=1)
    assert sd[0] == np.quantile(positive, 0.1)
    np.testing.assert_allclose(sd[1:], np.maximum(positive, sd[0]))


def test_floored_reference_gives_finite_calibrated_intervals():
    """Unfloored, a zero SD makes |error| / sigma unbounded and the conformal width explodes."""
    rng = np.random.default_rng(1)
    cells = rng.gamma(1.0, 1.0, size=(40, 30)) * (rng.random(30) > 0.3)
    y, mu = rng.normal(size=(8, 30)) * 0.1, np.zeros((8, 30))
    cal = ConformalCalibrator.fit(y, mu, np.broadcast_to(control_sd(cells), y.shape))
    lo, hi = cal.interval(mu[0], control_sd(cells), 0.9)
    assert np.isfinite(hi - lo).all()
    assert (hi - lo).max() < 10.0
