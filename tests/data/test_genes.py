from __future__ import annotations

import gzip

import numpy as np
import pytest
import scipy.sparse as sp

from genailab.data import GeneIdMap, align_genes, apply_alignment, detect_id_type, read_h5ad
from genailab.data.genes import strip_ensembl_version
from genailab.errors import GeneOverlapError, InvalidInputError, MissingKeyError

from .conftest import KANG, ORG_HS, PBMC

MAP = GeneIdMap.from_pairs([("CD3D", "ENSG00000167286"), ("MS4A1", "ENSG00000156738"), ("NKG7", "ENSG00000105374")])


def test_detect_id_type():
    assert detect_id_type(["ENSG00000167286", "ENSMUSG00000032094.3", "CD3D"]) == "ensembl"
    assert detect_id_type(["CD3D", "MS4A1", "ENSG00000167286"]) == "symbol"
    with pytest.raises(InvalidInputError, match="empty"):
        detect_id_type([])
    with pytest.raises(InvalidInputError, match="strings"):
        detect_id_type([1, 2])


def test_strip_version():
    assert strip_ensembl_version("ENSG00000141510.17") == "ENSG00000141510"
    assert strip_ensembl_version("CD3D.1") == "CD3D.1"


def test_align_symbols_with_duplicates():
    al = align_genes(["B", "A", "Z", "A", "Y"], ["A", "B", "C", "D"])
    assert al.source_index.tolist() == [1, 0, -1, -1]
    assert al.mask.tolist() == [True, True, False, False]
    r = al.report
    assert (r.n_target, r.n_source, r.n_matched, r.n_missing, r.n_extra, r.n_duplicates) == (4, 5, 2, 2, 2, 1)
    assert r.fraction_matched == 0.5
    assert not r.translated
    assert r.missing_examples == ("C", "D")
    assert r.extra_examples == ("Z", "Y")
    text = str(al.report)
    assert "2 of 4 model genes (50.0%)" in text
    assert "duplicate" in text


def test_align_strips_versions():
    al = align_genes(["ENSG00000167286.5", "ENSG00000156738.17"], ["ENSG00000156738", "ENSG00000167286.2"])
    assert al.source_index.tolist() == [1, 0]


def test_align_translation():
    src = ["ENSG00000167286.3", "ENSG00000105374", "ENSG00000000001"]
    with pytest.raises(GeneOverlapError, match="id_map"):
        align_genes(src, ["NKG7", "CD3D", "MS4A1"])
    al = align_genes(src, ["NKG7", "CD3D", "MS4A1"], id_map=MAP)
    assert al.source_index.tolist() == [1, 0, -1]
    assert al.report.translated
    assert al.report.n_untranslated == 1
    assert al.report.n_extra == 1
    back = align_genes(["NKG7", "MS4A1"], ["ENSG00000156738", "ENSG00000105374"], id_map=MAP)
    assert back.source_index.tolist() == [1, 0]


def test_align_overlap_errors():
    with pytest.raises(GeneOverlapError, match="shares no genes"):
        align_genes(["X", "Y"], ["A", "B"], argument="query")
    with pytest.raises(GeneOverlapError, match=r"shares 1 of the model's 4 genes .*at least 3"):
        align_genes(["A", "Y"], ["A", "B", "C", "D"], min_overlap=0.75)
    with pytest.raises(GeneOverlapError, match="at least 2"):
        align_genes(["A", "Y"], ["A", "B", "C", "D"], min_overlap=2)
    assert align_genes(["A", "B"], ["A", "B"], min_overlap=1.0).report.n_matched == 2
    with pytest.raises(InvalidInputError, match="min_overlap"):
        align_genes(["A"], ["A"], min_overlap=1.5)
    with pytest.raises(InvalidInputError, match="min_overlap"):
        align_genes(["A"], ["A"], min_overlap=True)
    with pytest.raises(InvalidInputError, match="duplicate"):
        align_genes(["A"], ["A", "A"])
    with pytest.raises(InvalidInputError, match="no genes"):
        align_genes([], ["A"])
    with pytest.raises(InvalidInputError, match="sequence"):
        align_genes("ABC", ["A"])


def test_apply_alignment_dense_and_csr():
    rng = np.random.default_rng(0)
    x = rng.poisson(2.0, size=(6, 5)).astype(np.float32)
    al = align_genes(["g0", "g1", "g2", "g3", "g4"], ["g3", "new", "g0", "g4"])
    dense = apply_alignment(x, al)
    expected = np.stack([x[:, 3], np.zeros(6), x[:, 0], x[:, 4]], axis=1)
    np.testing.assert_array_equal(dense, expected)
    assert dense.dtype == np.float32
    np.testing.assert_array_equal(apply_alignment(sp.csr_matrix(x), al), expected)
    with pytest.raises(InvalidInputError, match=r"expected \(B, 5\)"):
        apply_alignment(x[:, :4], al)


def test_gene_id_map_from_tsv(tmp_path):
    path = tmp_path / "map.tsv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("sym\tens\nCD3D\tENSG00000167286.4\nCD3D\tENSG99999999999\nNKG7\t\n")
    m = GeneIdMap.from_tsv(path, symbol_col="sym", ensembl_col="ens")
    assert m.symbol_to_ensembl == {"CD3D": "ENSG00000167286"}  # first pair wins, empty skipped
    with pytest.raises(MissingKeyError, match="columns are"):
        GeneIdMap.from_tsv(path)
    with pytest.raises(InvalidInputError, match="does not exist"):
        GeneIdMap.from_tsv(tmp_path / "nope.tsv")


@pytest.mark.real_data
def test_align_kang_to_pbmc_symbols(shared):
    kang = read_h5ad(shared(KANG))
    symbols = list(read_h5ad(shared(PBMC)).var_names)  # a 765-symbol model gene list
    id_map = GeneIdMap.from_tsv(shared(ORG_HS))
    assert detect_id_type(kang.var_names) == "ensembl"
    al = align_genes(kang.var_names, symbols, id_map=id_map, min_overlap=0.5)
    r = al.report
    assert r.translated
    assert (r.n_target, r.n_source) == (765, 2511)
    assert r.n_matched + r.n_missing == 765
    assert r.n_matched + r.n_extra + r.n_duplicates == 2511
    # pinned numbers of this real dataset (org.Hs.eg.db 3.16 map)
    assert (r.n_matched, r.n_missing, r.n_extra, r.n_untranslated, r.n_duplicates) == (506, 259, 2005, 25, 0)
    # the map-based translation agrees with the symbols the data ship in var['feature']
    direct = align_genes(list(kang.var["feature"]), symbols)
    assert abs(r.n_matched - direct.report.n_matched) <= 0.1 * direct.report.n_matched
    both = al.mask & direct.mask
    assert (al.source_index[both] == direct.source_index[both]).mean() > 0.95
    assert "506 of 765 model genes" in str(r)
