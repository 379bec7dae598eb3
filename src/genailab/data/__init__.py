"""Data layer: count matrices, AnnData registration, gene alignment, splits and mini-batch loading.

Typical use::

    from genailab import data

    adata = data.pbmc68k_reduced()                      # integer counts, obs['bulk_labels']
    data.validate_counts(adata)                         # raises InvalidCountsError with a fix if not counts
    registry = data.setup_anndata(adata, cell_type_key="bulk_labels")
    split = data.SPLITS.get("random")(adata.n_obs, seed=0)
    loader = data.make_dataloader(data.CountsDataset(adata, registry, indices=split.train), batch_size=128)
"""

from genailab.data.counts import (
    CountsSummary,
    RecoveryReport,
    get_counts,
    log_normalize,
    read_h5ad,
    recover_counts,
    validate_counts,
)
from genailab.data.datasets import load_shared, pbmc68k_reduced, shared_data_dir
from genailab.data.gene_sets import EdgeList, read_edges, read_gmt
from genailab.data.genes import (
    GeneAlignment,
    GeneAlignmentReport,
    GeneIdMap,
    align_genes,
    apply_alignment,
    detect_id_type,
)
from genailab.data.loading import BatchSampler, CountsDataset, TensorBatchDataset, make_dataloader
from genailab.data.spec import (
    DataRegistry,
    DataSpec,
    label_strings,
    obs_column,
    obs_labels,
    parse_dose,
    setup_anndata,
    split_label,
)
from genailab.data.splits import (
    SPLITS,
    SPLITTERS,
    Split,
    carve_validation,
    combination_split,
    context_split,
    holdout_category_split,
    holdout_perturbation_split,
    holdout_split,
    parse_holdouts,
    random_split,
)

__all__ = [
    "EdgeList",
    "read_edges",
    "read_gmt",
    "SPLITS",
    "SPLITTERS",
    "carve_validation",
    "holdout_split",
    "parse_holdouts",
    "BatchSampler",
    "CountsDataset",
    "CountsSummary",
    "DataRegistry",
    "DataSpec",
    "GeneAlignment",
    "GeneAlignmentReport",
    "GeneIdMap",
    "RecoveryReport",
    "Split",
    "align_genes",
    "apply_alignment",
    "combination_split",
    "context_split",
    "detect_id_type",
    "get_counts",
    "log_normalize",
    "holdout_category_split",
    "holdout_perturbation_split",
    "load_shared",
    "TensorBatchDataset",
    "make_dataloader",
    "pbmc68k_reduced",
    "read_h5ad",
    "recover_counts",
    "label_strings",
    "obs_column",
    "obs_labels",
    "parse_dose",
    "setup_anndata",
    "split_label",
    "shared_data_dir",
    "random_split",
    "validate_counts",
]
