from __future__ import annotations

import gzip

import numpy as np
import pytest

from genailab.data.gene_sets import EdgeList, read_edges, read_gmt
from genailab.errors import InvalidInputError, MissingKeyError
from tests.conftest import shared_file


def _write(path, text, *, gz=False):
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_read_gmt_plain_and_gz(tmp_path, gz):
    name = "sets.gmt.gz" if gz else "sets.gmt"
    p = _write(tmp_path / name, "A\tdesc\tG1\tG2\tG1\t\nB\t\tG3\r\n\nC\tx\t G4 \tG5\n", gz=gz)
    sets = read_gmt(p)
    assert list(sets) == ["A", "B", "C"]
    assert sets["A"] == ("G1", "G2")
    assert sets["B"] == ("G3",)
    assert sets["C"] == ("G4", "G5")


def test_read_gmt_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_gmt(tmp_path / "missing.gmt")
    with pytest.raises(InvalidInputError, match="no gene sets"):
        read_gmt(_write(tmp_path / "empty.gmt", "\n\n"))
    with pytest.raises(InvalidInputError, match="line 2"):
        read_gmt(_write(tmp_path / "nogenes.gmt", "A\td\tG1\nB\td\n"))
    with pytest.raises(InvalidInputError, match="appears twice"):
        read_gmt(_write(tmp_path / "dup.gmt", "A\td\tG1\nA\td\tG2\n"))


def test_read_edges_autodetect_prefers_symbols(tmp_path):
    text = "source\ttarget\tmor\ttarget_symbol\nTF1\tP12345\t1\tG1\nTF1\tQ1\t-1\tG2\nTF2\tQ2\t0\t\n\tQ3\t1\tG3\n"
    edges = read_edges(_write(tmp_path / "e.tsv.gz", text, gz=True))
    assert isinstance(edges, EdgeList)
    assert edges.source.tolist() == ["TF1", "TF1"]
    assert edges.target.tolist() == ["G1", "G2"]
    np.testing.assert_array_equal(edges.sign, [1.0, -1.0])
    assert edges.genes == ("G1", "G2", "TF1")
    assert len(edges) == 2


def test_read_edges_csv_default_sign_and_explicit_columns(tmp_path):
    p = _write(tmp_path / "e.csv", "tf,gene,score\nA,B,2.5\nA,C,-0.3\n")
    edges = read_edges(p)
    np.testing.assert_array_equal(edges.sign, [1.0, 1.0])
    edges = read_edges(p, source_col="tf", target_col="gene", sign_col="score")
    np.testing.assert_array_equal(edges.sign, [1.0, -1.0])


def test_read_edges_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        read_edges(tmp_path / "nope.tsv")
    p = _write(tmp_path / "bad.tsv", "a\tb\nx\ty\n")
    with pytest.raises(MissingKeyError, match="available columns: a, b"):
        read_edges(p)
    with pytest.raises(MissingKeyError, match="sign_col='s'"):
        read_edges(p, source_col="a", target_col="b", sign_col="s")
    with pytest.raises(InvalidInputError, match="no edges"):
        read_edges(_write(tmp_path / "empty.tsv", "source\ttarget\n\tX\n"))
    with pytest.raises(InvalidInputError, match="numeric"):
        read_edges(_write(tmp_path / "sign.tsv", "source\ttarget\tsign\nA\tB\tup\n"))


def test_edge_list_validates_shapes():
    with pytest.raises(InvalidInputError, match="one length"):
        EdgeList(source=np.array(["a"]), target=np.array(["b", "c"]), sign=np.array([1.0]))


@pytest.mark.real_data
def test_real_hallmark_and_collectri(shared_data):
    sets = read_gmt(shared_file(shared_data, "gene_sets/h.all.v7.5.1.symbols.gmt"))
    assert len(sets) == 50
    assert all(name.startswith("HALLMARK_") for name in sets)
    assert "NFKBIA" in sets["HALLMARK_TNFA_SIGNALING_VIA_NFKB"]
    edges = read_edges(shared_file(shared_data, "grn/omnipath_CollecTRI_subset_edges.tsv.gz"))
    assert 60_000 < len(edges) <= 64_186
    assert set(np.unique(edges.sign)) <= {-1.0, 0.0, 1.0}
    assert "MYC" in edges.source
    assert "TERT" in edges.target  # target_symbol chosen over UniProt accessions
    assert not any(t.startswith("O14746") for t in edges.target[:10])
