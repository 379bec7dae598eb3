from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from genailab.constants import ADATA_KEYS, BATCH_KEYS
from genailab.data import DataSpec
from genailab.errors import InvalidInputError
from genailab.foundation.objectives import FeatureProjection, feature_matching_loss, output_matching_loss
from genailab.foundation.recipes import (
    DistillConfig,
    DistilledStudent,
    LatentDiffusionConfig,
    LatentDiffusionModel,
    LatentTokenVAE,
    build_student,
    distill_latent_diffusion,
    generate_teacher_pairs,
    save_distilled,
)
from genailab.foundation.recipes.distill import DISTILL_RECORD, NOISE_KEY, PAIRS_FILE
from genailab.foundation.recipes.distill.pairs import cached_pairs
from genailab.training import TrainConfig

from ..conftest import make_count_adata

FAST = TrainConfig(max_epochs=2, batch_size=32, progress_bar=False, early_stopping_patience=0)
TEACHER_TRAIN = TrainConfig(
    max_epochs=30, batch_size=32, lr=3e-3, val_fraction=0.0, progress_bar=False, early_stopping_patience=0
)
STUDENT_TRAIN = TrainConfig(
    max_epochs=20, batch_size=64, lr=3e-3, val_fraction=0.125, progress_bar=False, early_stopping_patience=0
)
DISTILL = DistillConfig(student_preset="tiny", steps=4, teacher_steps=50, n_pairs=256, feature_weight=0.5)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two threads spin against other jobs (~30x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def adata():
    return make_count_adata(n_obs=96, n_vars=24)


@pytest.fixture(scope="module")
def vae(adata):
    spec = DataSpec(batch_key="batch", categorical_covariate_keys=("cell_type",))
    model = LatentTokenVAE.from_anndata(adata, spec, preset="tiny")
    model.fit(adata, FAST, seed=0)
    return model


def _teacher(vae, keys=("cell_type",)):
    """A DiT teacher a bit larger than the ``tiny`` preset (width 96, depth 3), so a tiny student is smaller."""
    config = LatentDiffusionConfig(objective="flow", sampler="euler", steps=50)
    return LatentDiffusionModel.from_vae(
        vae,
        condition_keys=keys,
        backbone="dit",
        backbone_preset="tiny",
        backbone_overrides={"hidden_dim": 96, "depth": 3},
        config=config,
    )


@pytest.fixture(scope="module")
def teacher(vae, adata):
    model = _teacher(vae)
    model.fit(adata, TEACHER_TRAIN, seed=0)
    return model


@pytest.fixture(scope="module")
def conds(teacher, adata):
    return teacher.latent_dataset(adata).tensors[BATCH_KEYS.CONDITIONS]  # (96, 1) cell-type codes


@pytest.fixture(scope="module")
def distilled(teacher, conds, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill_run")
    flags = [p.requires_grad for p in teacher.parameters()]
    student, report = distill_latent_diffusion(teacher, conds, DISTILL, STUDENT_TRAIN, out_dir=out, seed=0)
    return student, report, out, flags


def _fresh_noise(conds, n=128, seed=123):
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 4, 8, generator=gen)  # (n, m, d) of the tiny VAE
    return noise, conds[torch.randint(0, conds.shape[0], (n,), generator=gen)]


# ---------------------------------------------------------------------------------------------- losses
def test_output_matching_loss_zero_when_equal_and_gradient_reaches_student_only():
    teacher = torch.randn(4, 3, 5, requires_grad=True)
    student = teacher.detach().clone().requires_grad_(True)
    same = output_matching_loss(student, teacher)
    assert same.shape == (4,)
    assert torch.equal(same, torch.zeros(4))
    shifted = student + torch.arange(4.0).view(4, 1, 1)
    loss = output_matching_loss(shifted, teacher)
    torch.testing.assert_close(loss, torch.arange(4.0) ** 2)
    loss.sum().backward()
    assert student.grad is not None
    assert student.grad.abs().sum() > 0
    assert teacher.grad is None  # the teacher is a detached target
    weighted = output_matching_loss(shifted.detach(), teacher, weight=torch.tensor([1.0, 0.0, 2.0, 0.5]))
    torch.testing.assert_close(weighted, torch.tensor([0.0, 0.0, 8.0, 4.5]))
    with pytest.raises(InvalidInputError, match="shape of student"):
        output_matching_loss(torch.zeros(4, 3), torch.zeros(4, 2))
    with pytest.raises(InvalidInputError, match="weight must have shape"):
        output_matching_loss(torch.zeros(4, 3), torch.zeros(4, 3), weight=torch.ones(3))


def test_feature_projection_starts_as_identity_embedding_and_maps_widths():
    same = FeatureProjection((8, 8), (8, 8))
    f = [torch.randn(2, 5, 8), torch.randn(2, 8)]
    for got, want in zip(same(f), f, strict=True):
        torch.testing.assert_close(got, want)  # equal widths: the identity at init
    wider = FeatureProjection((4,), (6,))
    x = torch.randn(3, 7, 4)
    (y,) = wider([x])
    assert y.shape == (3, 7, 6)
    torch.testing.assert_close(y[..., :4], x)  # narrower student: zero-padded
    assert torch.equal(y[..., 4:], torch.zeros(3, 7, 2))
    with pytest.raises(InvalidInputError, match="width 5"):
        wider([torch.randn(3, 5)])
    with pytest.raises(InvalidInputError, match="one entry per matched layer"):
        FeatureProjection((4, 4), (6,))
    with pytest.raises(InvalidInputError, match="positive integers"):
        FeatureProjection((0,), (6,))


def test_feature_matching_loss_zero_when_equal_scale_free_and_trains_the_projection():
    t = [torch.randn(3, 5, 8), torch.randn(3, 5, 8)]
    assert torch.equal(feature_matching_loss([x.clone() for x in t], t), torch.zeros(3))
    assert torch.equal(
        feature_matching_loss([x.clone() for x in t], t, FeatureProjection((8, 8), (8, 8))), torch.zeros(3)
    )
    s = [torch.randn(3, 5, 4, requires_grad=True), torch.randn(3, 5, 4, requires_grad=True)]
    proj = FeatureProjection((4, 4), (8, 8))
    loss = feature_matching_loss(s, t, proj)
    assert loss.shape == (3,)
    assert bool((loss > 0).all())
    loss.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj.parameters())
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    # normalised: scaling student and teacher features together leaves the loss unchanged
    a, b = [torch.randn(2, 6)], [torch.randn(2, 6)]
    torch.testing.assert_close(feature_matching_loss(a, b), feature_matching_loss([10 * a[0]], [10 * b[0]]))
    raw = feature_matching_loss(a, b, normalize=False)
    torch.testing.assert_close(raw, (a[0] - b[0]).pow(2).mean(dim=1))
    with pytest.raises(InvalidInputError, match="same non-zero number of layers"):
        feature_matching_loss(s[:1], t)
    with pytest.raises(InvalidInputError, match="give a FeatureProjection"):
        feature_matching_loss([torch.randn(3, 5, 4)], [torch.randn(3, 5, 8)])


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps=0"),
        ({"teacher_steps": -1}, "teacher_steps"),
        ({"teacher_sampler": "ddpm"}, "teacher_sampler"),
        ({"student_backbone": "transformerxl"}, "transformerxl"),
        ({"student_backbone": "dit", "student_preset": "huge"}, "'tiny'"),
        ({"n_pairs": 0}, "n_pairs"),
        ({"pair_weight": 0.0, "output_weight": 0.0}, "at least one must be positive"),
        ({"feature_weight": -1.0}, "feature_weight"),
        ({"guidance_scale": math.nan}, "guidance_scale"),
    ],
)
def test_distill_config_rejects_bad_values(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        DistillConfig(**kwargs)


def test_unknown_preset_of_the_teachers_backbone_lists_presets(teacher, conds):
    config = DistillConfig(student_preset="huge")  # validated against the teacher's backbone ('dit')
    with pytest.raises(InvalidInputError, match=r"'base', 'large', 'small', 'tiny'"):
        build_student(teacher, config)
    with pytest.raises(InvalidInputError, match="huge"):
        distill_latent_diffusion(teacher, conds, config, FAST)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda c: torch.cat([c, c], dim=1), r"shape \(N >= 1, 1\)"),
        (lambda c: c[:, 0], r"shape \(N >= 1, 1\)"),
        (lambda c: None, "conditions=None"),
        (lambda c: torch.full_like(c, float("nan")), "finite"),
        (lambda c: torch.full_like(c, 7.0), r"must be in \[-1, 2\]"),
        (lambda c: c.tolist(), "tensor or None"),
    ],
)
def test_bad_conditions_fail_before_any_work(teacher, conds, tmp_path, make, match):
    with pytest.raises(InvalidInputError, match=match):
        distill_latent_diffusion(teacher, make(conds), DISTILL, FAST, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_feature_matching_needs_the_same_block_layout(teacher):
    student = build_student(teacher, DistillConfig(student_backbone="mlp"))  # MLP blocks are (B, W), DiT's (B, N, W)
    with pytest.raises(InvalidInputError, match="layouts differ"):
        DistilledStudent(teacher, student, DistillConfig(student_backbone="mlp", feature_weight=1.0))


# ---------------------------------------------------------------------------------------------- pairs, recipe
def test_teacher_pairs_are_seeded_teacher_samples(teacher, conds):
    pairs = generate_teacher_pairs(teacher, conds, 10, steps=5, seed=3, batch_size=4)
    again = generate_teacher_pairs(teacher, conds, 10, steps=5, seed=3)
    other = generate_teacher_pairs(teacher, conds, 10, steps=5, seed=4)
    assert len(pairs) == 10
    assert pairs.noise.shape == pairs.samples.shape == (10, 4, 8)
    assert pairs.conditions.shape == (10, 1)
    assert torch.equal(pairs.noise, again.noise)
    torch.testing.assert_close(pairs.samples, again.samples)  # batching does not change the pairs
    assert not torch.equal(pairs.noise, other.noise)
    assert set(pairs.conditions.view(-1).tolist()) <= set(conds.view(-1).tolist())
    direct = teacher.sample_latents(pairs.conditions, steps=5, x_start=pairs.noise)
    torch.testing.assert_close(pairs.samples, direct)
    batch = pairs[[0, 2]]
    assert set(batch) == {NOISE_KEY, BATCH_KEYS.LATENT, BATCH_KEYS.CONDITIONS}
    assert batch[NOISE_KEY].shape == (2, 4, 8)
    with pytest.raises(InvalidInputError, match="stochastic"):
        generate_teacher_pairs(teacher, conds, 4, sampler="ddpm")


def test_recipe_trains_student_and_projection_only_with_teacher_in_eval(teacher, conds):
    student = build_student(teacher, DISTILL)
    flags = [p.requires_grad for p in teacher.parameters()]
    teacher.zero_grad(set_to_none=True)  # drop the gradients left by the teacher's own training
    recipe = DistilledStudent(teacher, student, DISTILL)
    pairs = generate_teacher_pairs(teacher, conds, 8, steps=3)
    recipe.train()
    assert student.training
    assert not teacher.training
    assert not teacher.conditioning.training
    out = recipe.training_step(pairs[list(range(8))])
    assert set(out.terms) == {"pair", "output", "feature"}
    assert out.n_obs == 8
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.backbone.parameters())
    assert all(p.grad is not None for p in recipe.projection.parameters())
    assert len(recipe.projection.maps) == len(student.backbone.blocks)  # one map per student block
    assert recipe.projection.maps[0].weight.shape == (96, 64)  # student width 64 -> teacher width 96
    for p, flag in zip(teacher.parameters(), flags, strict=True):  # distill_latent_diffusion restores them itself
        p.requires_grad_(flag)


def test_unconditional_teacher_distils_without_conditions(vae):
    try:
        teacher = _teacher(vae, keys=())
    except InvalidInputError as err:  # LatentDiffusionModel's shape check rejects cond_dim 0 with no keys
        pytest.skip(f"an unconditional LatentDiffusionModel cannot be built here: {err}")
    pairs = generate_teacher_pairs(teacher, None, 6, steps=2)
    assert pairs.conditions.shape == (6, 0)
    with pytest.raises(InvalidInputError, match=r"shape \(N >= 1, 0\)"):
        generate_teacher_pairs(teacher, torch.zeros(6, 1), 6, steps=2)
    config = DistillConfig(feature_weight=1.0)
    recipe = DistilledStudent(teacher, build_student(teacher, config), config)
    out = recipe.training_step(pairs[list(range(6))])
    assert torch.isfinite(out.loss)
    assert set(out.terms) == {"pair", "output", "feature"}


# ---------------------------------------------------------------------------------------------- end to end
def test_distilled_student_is_smaller_few_step_euler_flow_and_seeded(distilled, teacher):
    student, report, _, flags = distilled
    assert [p.requires_grad for p in teacher.parameters()] == flags  # teacher left as it was
    assert report["student"]["n_params"] < report["teacher"]["n_params"]
    assert report["param_ratio"] < 0.5
    assert report["terms"] == ["pair", "output", "feature"]
    assert report["n_pairs"] == 256
    assert report["n_train_pairs"] + report["n_val_pairs"] == 256
    assert report["history"]
    assert report["train"]["steps"] > 0
    json.dumps(report)  # JSON-serialisable as it is
    assert (student.config.objective, student.config.sampler, student.config.steps) == ("flow", "euler", 4)
    assert student.ema is None
    assert not student.training
    assert student.vae is teacher.vae
    syn = student.sample(12, {"cell_type": "type1"}, seed=5)
    assert syn.shape == (12, 24)
    assert syn.uns[ADATA_KEYS.SAMPLING]["steps"] == 4
    assert syn.uns[ADATA_KEYS.SAMPLING]["sampler"] == "euler"
    again = student.sample(12, {"cell_type": "type1"}, seed=5)
    other = student.sample(12, {"cell_type": "type1"}, seed=6)
    assert (syn.X != again.X).nnz == 0
    assert not torch.equal(
        torch.from_numpy(syn.obsm[ADATA_KEYS.SYNTH_LATENT]), torch.from_numpy(other.obsm[ADATA_KEYS.SYNTH_LATENT])
    )


def test_student_four_steps_track_the_teachers_fifty_better_than_undistilled(distilled, teacher, conds):
    student, report, _, _ = distilled
    noise, cv = _fresh_noise(conds)  # not the training pairs
    reference = teacher.sample_latents(cv, steps=50, x_start=noise)

    def mse(z):
        return float((z - reference).pow(2).mean())

    student_err = mse(student.sample_latents(cv, steps=4, x_start=noise))
    teacher_err = mse(teacher.sample_latents(cv, steps=4, x_start=noise))
    untrained_err = mse(build_student(teacher, DISTILL).sample_latents(cv, steps=4, x_start=noise))
    assert student_err < 0.6 * teacher_err, (student_err, teacher_err)
    assert student_err < 0.3 * untrained_err, (student_err, untrained_err)
    fid = report["fidelity"]  # the report's own check, on held-out pairs
    assert fid["n"] == report["n_val_pairs"]
    assert fid["student_mse"] < fid["teacher_same_steps_mse"]


def test_student_round_trips_with_its_record(distilled, vae, conds, tmp_path):
    student, report, _, _ = distilled
    vae_dir = vae.save_pretrained(tmp_path / "vae")
    d = save_distilled(student, report, tmp_path / "student", vae_dir=vae_dir)
    record = json.loads((d / DISTILL_RECORD).read_text())
    assert record["student"]["steps"] == 4
    assert record["config"]["student_preset"] == "tiny"
    loaded = LatentDiffusionModel.from_pretrained(d)
    assert (loaded.config.steps, loaded.config.sampler, loaded.config.objective) == (4, "euler", "flow")
    assert not (d / "vae").exists()  # the teacher's VAE directory is referenced, not copied
    noise, cv = _fresh_noise(conds, n=16)
    torch.testing.assert_close(
        loaded.sample_latents(cv, x_start=noise), student.sample_latents(cv, x_start=noise), atol=1e-5, rtol=1e-5
    )


def test_rerun_reuses_pairs_and_resumes_from_checkpoint(distilled, teacher, conds):
    _, first, out, _ = distilled
    assert (out / PAIRS_FILE).is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    again, report = distill_latent_diffusion(teacher, conds, DISTILL, STUDENT_TRAIN, out_dir=out, seed=0)
    assert report["pairs_reused"] is True
    assert report["train"]["resumed_from"] is not None
    # continued from the checkpoint up to max_epochs, not trained from scratch again
    assert report["train"]["steps"] == first["train"]["steps"]
    assert report["fidelity"]["student_mse"] < report["fidelity"]["teacher_same_steps_mse"]


def test_pair_cache_is_keyed_by_teacher_and_settings(distilled, teacher, conds, tmp_path):
    _, _, out, _ = distilled
    shutil.copy(out / PAIRS_FILE, tmp_path / PAIRS_FILE)
    cached, reused = cached_pairs(teacher, conds, DISTILL, 0, tmp_path)
    assert reused
    assert len(cached) == DISTILL.n_pairs
    small = DISTILL.replace(n_pairs=8, teacher_steps=3)
    pairs, reused = cached_pairs(teacher, conds, small, 0, tmp_path)  # other settings: regenerated, rewritten
    assert not reused
    assert len(pairs) == 8
    assert cached_pairs(teacher, conds, small, 0, tmp_path)[1]
    assert not cached_pairs(teacher, conds, small, 1, tmp_path)[1]  # another seed
    assert not cached_pairs(teacher, conds[:10], small, 1, tmp_path)[1]  # other conditions
    (tmp_path / PAIRS_FILE).write_bytes(b"truncated")
    assert not cached_pairs(teacher, conds, small, 0, tmp_path)[1]  # a corrupt cache is regenerated


# ---------------------------------------------------------------------------------------------- benchmark
def _sampling_benchmark():
    """``benchmarks/bench_distill_sampling.py`` as a module (the timing code lives there, not in genailab)."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_distill_sampling.py"
    if not path.is_file():
        pytest.skip(f"{path} is not in this checkout")
    spec = importlib.util.spec_from_file_location("bench_distill_sampling", path)
    module = importlib.util.module_from_spec(spec)
    before = list(sys.path)
    try:
        spec.loader.exec_module(module)  # puts benchmarks/ on sys.path for its _common helpers
    finally:
        sys.path[:] = before
    return module


def test_sampling_benchmark_counts_steps_and_compares_student_with_teacher(distilled, teacher, conds):
    bench = _sampling_benchmark()
    student, _, _, _ = distilled
    fast = bench.benchmark_sampling(student, 64, conds, seed=0)
    assert (fast["steps"], fast["sampler"], fast["nfe"]) == (4, "euler", 4)
    assert fast["wall_s"] > 0
    assert fast["cells_per_s"] == pytest.approx(64 / fast["wall_s"])
    rows = bench.compare(teacher, student, conds, n=32, teacher_steps=50, repeats=1)
    assert [(r["steps"], r["nfe"]) for r in rows] == [(50, 50), (4, 4), (4, 4)]
    assert rows[0]["speedup"] == 1.0
    assert rows[2]["n_params"] < rows[0]["n_params"]
    json.dumps(rows)
    with pytest.raises(InvalidInputError, match="n=0"):
        bench.benchmark_sampling(student, 0, conds)
