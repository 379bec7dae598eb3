"""Shared contract checks (diffusers/peft style): a test class supplies make_module / make_inputs."""

from __future__ import annotations

import torch


class BackboneContract:
    """Inherit and define ``make_module()`` and ``make_inputs(batch)`` -> (x, t, cond, mask)."""

    batch = 3

    def make_module(self):
        raise AssertionError("subclass must define make_module")

    def make_inputs(self, batch: int):
        raise AssertionError("subclass must define make_inputs")

    def _randomise(self, module):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
        return module

    def test_output_shape(self):
        m = self.make_module().eval()
        x, t, cond, mask = self.make_inputs(self.batch)
        y = m(x, t, cond, mask)
        assert y.shape == (self.batch, m.config.n_tokens, m.config.output_dim)

    def test_eval_is_deterministic(self):
        m = self._randomise(self.make_module()).eval()
        inputs = self.make_inputs(self.batch)
        torch.testing.assert_close(m(*inputs), m(*inputs))

    def test_zero_output_at_init(self):
        m = self.make_module().eval()
        y = m(*self.make_inputs(self.batch))
        assert torch.count_nonzero(y) == 0

    def test_gradients_are_finite(self):
        m = self._randomise(self.make_module()).train()
        m(*self.make_inputs(self.batch)).pow(2).sum().backward()
        grads = [p.grad for p in m.parameters() if p.requires_grad]
        assert grads
        assert all(g is not None and torch.isfinite(g).all() for g in grads)

    def test_samples_are_independent(self):
        m = self._randomise(self.make_module()).eval()
        x, t, cond, mask = self.make_inputs(self.batch)
        y_full = m(x, t, cond, mask)
        pick = lambda v: None if v is None else v[:1]  # noqa: E731
        torch.testing.assert_close(m(pick(x), pick(t), pick(cond), pick(mask)), y_full[:1])

    def test_save_load_round_trip(self, tmp_path):
        m = self._randomise(self.make_module()).eval()
        m.save_pretrained(tmp_path / "bb")
        loaded = type(m).from_pretrained(tmp_path / "bb").eval()
        inputs = self.make_inputs(self.batch)
        torch.testing.assert_close(loaded(*inputs), m(*inputs))
        assert loaded.config == m.config
