"""Safe at the edges: no code runs from a user's pickle, a model directory or a checkpoint."""

from __future__ import annotations

import builtins
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from genailab.cli import main
from genailab.data import DataSpec, make_dataloader
from genailab.errors import CheckpointError, InvalidInputError
from genailab.foundation.recipes import LatentDiffusionModel, LatentTokenVAE
from genailab.serialization import VAE_SOURCE, confined_path, resolve_vae_reference
from genailab.tokenizers.resources import read_gene_dictionary
from genailab.training import TrainConfig, fit_recipe
from genailab.training.lightning import load_checkpoint

from .conftest import make_count_adata

LEGACY_SYNTH = Path(__file__).parent / "fixtures" / "legacy_0_1_0" / "synth"


class _Payload:
    """Unpickling calls ``func(*args)``: what a crafted "Geneformer dictionary" would run."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _evil_pickles(marker: Path) -> dict[str, object]:
    return {
        "builtins.open": _Payload(builtins.open, str(marker), "w"),
        "os.system": _Payload(os.system, f"touch {marker}"),
        "builtins.exec": _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        # hidden as one value of an otherwise ordinary dictionary
        "nested": {"ENSG00000000003": 1.5, "ENSG00000000005": _Payload(builtins.open, str(marker), "w")},
    }


@pytest.mark.parametrize("kind", ["builtins.open", "os.system", "builtins.exec", "nested"])
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_malicious_pickle_is_refused_and_runs_nothing(tmp_path, kind, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "gene_median_dictionary.pkl"
    path.write_bytes(pickle.dumps(_evil_pickles(marker)[kind], protocol=protocol))
    with pytest.raises(InvalidInputError, match="refused to load it") as err:
        read_gene_dictionary(path, argument="gene_medians")
    assert str(path) in str(err.value)
    refused = {"builtins.open": "open", "os.system": "system", "builtins.exec": "exec", "nested": "open"}[kind]
    assert f".{refused}" in str(err.value)
    assert not marker.exists()


def test_a_malicious_gene_medians_file_stops_training_before_anything_runs_or_is_written(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "medians.pkl"
    evil.write_bytes(pickle.dumps(_Payload(builtins.open, str(marker), "w")))
    data = tmp_path / "data.h5ad"
    make_count_adata(n_obs=32, n_vars=16).write_h5ad(data)
    run = tmp_path / "run"
    argv = ["vae", "train", str(data), "--out", str(run), "--set", "tokenizer.name=rank",
            "--set", f"gene_medians={evil}", "--set", "preset=tiny", "--set", "train.progress_bar=false"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert ".open, which" in err.replace("\n", " ")
    assert "Traceback" not in err
    assert not marker.exists()
    assert not (run / "run_config.json").exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_a_plain_pickled_dictionary_with_numpy_values_loads(tmp_path, protocol):
    table = {
        "ENSG00000000003": np.float64(1.25),
        "ENSG00000000005": np.float32(0.5),
        "ENSG00000000419": 3.0,
        "ENSG00000000457": np.int64(2),
        "ENSG00000000460": np.arange(3.0),
    }
    path = tmp_path / "medians.pkl"
    path.write_bytes(pickle.dumps(table, protocol=protocol))
    got = read_gene_dictionary(path)
    assert set(got) == set(table)
    assert got["ENSG00000000003"] == 1.25
    assert got["ENSG00000000005"] == 0.5
    assert got["ENSG00000000457"] == 2
    np.testing.assert_array_equal(got["ENSG00000000460"], np.arange(3.0))


def test_a_pickle_written_by_numpy_1_loads(tmp_path):
    data = pickle.dumps({"G1": np.float64(2.5), "G2": np.float32(1.0)}, protocol=2)
    # NumPy 1 wrote numpy.core.multiarray; protocol 2 names globals as text, so the rename is exact
    data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in data
    path = tmp_path / "old.pkl"
    path.write_bytes(data)
    assert read_gene_dictionary(path) == {"G1": 2.5, "G2": 1.0}


def test_json_and_tsv_dictionaries(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"G1": 1.5, "G2": 2}))
    assert read_gene_dictionary(tmp_path / "m.json") == {"G1": 1.5, "G2": 2}
    (tmp_path / "m.tsv").write_text("gene\tmedian\nG1\t1.5\n# a comment\nG2\t2\n")
    assert read_gene_dictionary(tmp_path / "m.tsv") == {"G1": 1.5, "G2": 2.0}
    (tmp_path / "bare.tsv").write_text("G1\t1.5\nG2\t2\n")
    assert read_gene_dictionary(tmp_path / "bare.tsv") == {"G1": 1.5, "G2": 2.0}
    (tmp_path / "names.tsv").write_text("symbol\tensembl_id\nGAPDH\tENSG00000111640\n")
    assert read_gene_dictionary(tmp_path / "names.tsv") == {"GAPDH": "ENSG00000111640"}
    (tmp_path / "wide.tsv").write_text("G1\t1\t2\n")
    with pytest.raises(InvalidInputError, match="3 column"):
        read_gene_dictionary(tmp_path / "wide.tsv", argument="gene_medians")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(InvalidInputError, match="not a dictionary"):
        read_gene_dictionary(tmp_path / "list.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InvalidInputError, match="not readable json"):
        read_gene_dictionary(tmp_path / "bad.json")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(InvalidInputError, match="not a readable pickle"):
        read_gene_dictionary(tmp_path / "junk.pkl")
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_gene_dictionary(tmp_path / "missing.pkl")


def test_gene_medians_read_from_json_and_tsv_give_the_pickle_s_resources(tmp_path):
    from genailab.tokenizers.resources import load_tokenizer_resources
    from genailab.workflows.runconfig import VAERunConfig, resolve_run_config

    adata = make_count_adata(n_obs=16, n_vars=8)
    table = {f"G{i}": 1.0 + i / 4 for i in range(6)}
    (tmp_path / "m.pkl").write_bytes(pickle.dumps({k: np.float64(v) for k, v in table.items()}))
    (tmp_path / "m.json").write_text(json.dumps(table))
    (tmp_path / "m.tsv").write_text("".join(f"{k}\t{v}\n" for k, v in table.items()))
    got = {}
    for suffix in ("pkl", "json", "tsv"):
        sets = ["tokenizer.name=rank", f"gene_medians={tmp_path / f'm.{suffix}'}"]
        config = resolve_run_config(None, sets, cli={}, cls=VAERunConfig)
        resources, report = load_tokenizer_resources(adata, config)
        got[suffix] = resources.gene_medians
        assert report["gene_medians"]["n_matched"] == 6
    assert got["pkl"] == got["json"] == got["tsv"] == table
    (tmp_path / "text.json").write_text(json.dumps({"G1": "high"}))
    config = resolve_run_config(
        None, ["tokenizer.name=rank", f"gene_medians={tmp_path / 'text.json'}"], cli={}, cls=VAERunConfig
    )
    with pytest.raises(InvalidInputError, match="not a number"):
        load_tokenizer_resources(adata, config)


def test_cli_converts_a_pickled_dictionary_to_json(tmp_path, capsys):
    src = tmp_path / "gene_median_dictionary.pkl"
    src.write_bytes(pickle.dumps({"ENSG1": np.float64(1.5), "ENSG2": np.float32(0.25), "ENSG3": 2}))
    out = tmp_path / "medians.json"
    assert main(["data", "convert-dict", str(src), "--out", str(out)]) == 0
    assert "entries" in capsys.readouterr().err
    assert json.loads(out.read_text()) == {"ENSG1": 1.5, "ENSG2": 0.25, "ENSG3": 2}
    assert json.loads((tmp_path / "medians.json.run.json").read_text())["command"] == "data convert-dict"
    assert read_gene_dictionary(out) == {"ENSG1": 1.5, "ENSG2": 0.25, "ENSG3": 2}
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_convert_refuses_a_malicious_pickle_and_bad_outputs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(_Payload(os.system, f"touch {marker}")))
    out = tmp_path / "out.json"
    assert main(["data", "convert-dict", str(evil), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "system" in err
    assert "Traceback" not in err
    assert not marker.exists()
    assert not out.exists()
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps({"G1": 1.0}))
    assert main(["data", "convert-dict", str(good), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    bytes_valued = tmp_path / "bytes.pkl"
    bytes_valued.write_bytes(pickle.dumps({"G1": b"\x00"}))
    assert main(["data", "convert-dict", str(bytes_valued), "--out", str(out)]) == 2
    assert "JSON cannot represent" in capsys.readouterr().err.replace("\n", " ")
    assert not out.exists()
    assert main(["data", "--help"]) == 0


# ------------------------------------------------------------------------------------ model directories
@pytest.mark.parametrize("relative", ["../outside_vae", "vae/../../outside_vae", "/etc", "..", "vae\\..\\..\\x"])
def test_stored_relative_paths_are_confined_to_the_model_directory(tmp_path, relative):
    d = tmp_path / "model"
    d.mkdir()
    (d / VAE_SOURCE).write_text(json.dumps({"path": "/somewhere", "relative": relative, "sha256": "0"}))
    with pytest.raises(CheckpointError, match="outside the model directory") as err:
        resolve_vae_reference(d)
    assert VAE_SOURCE in str(err.value)
    assert repr(relative) in str(err.value)


def test_the_usual_references_still_resolve(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / VAE_SOURCE).write_text(json.dumps({"path": "/elsewhere/vae", "relative": "vae", "sha256": "0"}))
    assert resolve_vae_reference(d)[0] == d / "vae"
    (d / VAE_SOURCE).write_text(json.dumps({"path": "/elsewhere/vae", "relative": "", "sha256": "0"}))
    assert resolve_vae_reference(d)[0] == Path("/elsewhere/vae")  # an external VAE stays absolute
    (d / VAE_SOURCE).write_text(json.dumps({"relative": ""}))
    with pytest.raises(CheckpointError, match="names no VAE"):
        resolve_vae_reference(d)
    with pytest.raises(CheckpointError, match="expected a relative path"):
        confined_path(d, 3, where="x")


def test_a_crafted_model_directory_cannot_load_a_vae_from_outside(tmp_path):
    model = tmp_path / "synth"
    shutil.copytree(LEGACY_SYNTH, model)
    shutil.copytree(LEGACY_SYNTH / "vae", tmp_path / "planted_vae")  # a loadable VAE outside the directory
    source = json.loads((model / VAE_SOURCE).read_text())
    for relative in ("../planted_vae", str(tmp_path / "planted_vae")):
        (model / VAE_SOURCE).write_text(json.dumps({**source, "relative": relative}))
        with pytest.raises(CheckpointError, match="outside the model directory"):
            LatentDiffusionModel.from_pretrained(model)
    (model / VAE_SOURCE).write_text(json.dumps(source))
    assert isinstance(LatentDiffusionModel.from_pretrained(model), LatentDiffusionModel)


# ------------------------------------------------------------------------------------------ checkpoints
def _tiny_fit(out_dir, max_epochs):
    adata = make_count_adata(n_obs=32, n_vars=16)
    model = LatentTokenVAE.from_anndata(adata, DataSpec(), preset="tiny")
    loader = make_dataloader(model.count_dataset(adata), batch_size=16)
    cfg = TrainConfig(max_epochs=max_epochs, progress_bar=False, accelerator="cpu", val_fraction=0.0)
    return fit_recipe(model, loader, None, cfg, out_dir=out_dir)


def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"epoch": 0, "global_step": 1, "x": _Payload(builtins.open, str(marker), "w")}, ckpt)
    with pytest.raises(CheckpointError, match="cannot be read safely") as err:
        load_checkpoint(ckpt)
    assert str(ckpt) in str(err.value)
    with pytest.raises(CheckpointError, match="Delete it"):
        _tiny_fit(tmp_path / "run", 1)  # a resume refuses it before Lightning reads it
    assert not marker.exists()
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="truncated"):
        _tiny_fit(tmp_path / "run", 1)


def test_resume_reads_our_checkpoints_safely_and_keeps_the_whole_history(tmp_path):
    first = _tiny_fit(tmp_path / "run", 2)
    assert [r["epoch"] for r in first.history] == [0.0, 1.0]
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert [r["epoch"] for r in state["genailab_history"]] == [0.0, 1.0]
    resumed = _tiny_fit(tmp_path / "run", 3)  # continues from epoch 2: the history covers every epoch
    assert resumed.resumed_from is not None
    assert [r["epoch"] for r in resumed.history] == [0.0, 1.0, 2.0]
    again = _tiny_fit(tmp_path / "run", 3)  # finished: trains nothing, still reports every epoch
    assert [r["epoch"] for r in again.history] == [0.0, 1.0, 2.0]
