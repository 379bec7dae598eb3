"""Cost of sparse GRN graph attention vs dense masked attention, at 2k, 5k and 20k genes.

The GRN tokenizer lets every gene attend only to its regulators. :class:`~genailab.tokenizers.GraphAttention`
does this over the edge list (segment softmax, O(B x E x W)); the dense alternative is ordinary attention
over all G genes with a ``G x G`` mask (here :func:`~genailab.tokenizers.dense_graph_attention_reference`,
``torch.nn.functional.scaled_dot_product_attention`` with the mask plus the per-head edge-sign bias),
O(B x H x G^2). Both get the same weights, inputs and edges.

Edges: the CollecTRI TF -> target network from the shared data folder (``grn/omnipath_CollecTRI_subset_edges
.tsv.gz``) restricted to the G genes with the most edges (genes beyond the ~7k genes the network names are
isolated), with a self-loop on every gene, as the GRN tokenizer builds it. Without the file: ~10 random
edges per gene.

Each ``(genes, method)`` runs in a fresh process (so its peak RSS is its own): one warm-up, then
``--repeats`` forward + backward passes through the attention with batch 8, width 32, 2 heads. Reported:
median seconds per forward + backward, and peak RSS above the process's RSS before the first pass.
Dense attention is skipped where it does not fit (default: above 5k genes; at 20k the mask and one
score tensor alone need ~28 GB). A separate check runs both on the 2k-gene graph and reports the largest
absolute difference of their outputs.

Usage::

    .venv/bin/python benchmarks/bench_grn_attention.py                # ~1-2 min on 1 thread
    .venv/bin/python benchmarks/bench_grn_attention.py --genes 2000 5000 --threads 2

Writes ``benchmarks/results/grn_attention_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, CpuMeter, machine_info, peak_rss_mb, print_table, run_worker

EDGE_FILE = "grn/omnipath_CollecTRI_subset_edges.tsv.gz"
OUT_NAME = "grn_attention_cost.json"
RANDOM_EDGES_PER_GENE = 10


# ----------------------------------------------------------------------------------------- graph
def make_graph(n_genes: int, seed: int = 0) -> tuple[Any, Any, dict[str, Any]]:
    """``(edge_index, sign, info)`` over ``n_genes`` genes with self-loops (see the module docstring)."""
    import numpy as np
    import torch

    from genailab.data import read_edges, shared_data_dir
    from genailab.tokenizers import edge_index_from

    root = shared_data_dir()
    path = None if root is None else root / EDGE_FILE
    if path is not None and path.is_file():
        edges = read_edges(path)
        ids = np.concatenate([edges.source, edges.target])
        names, degree = np.unique(ids[~np.char.startswith(ids.astype(str), "COMPLEX:")], return_counts=True)
        ranked = [names[i] for i in np.lexsort((names, -degree))]
        genes = ranked[:n_genes] + [f"FILLER_{i}" for i in range(max(0, n_genes - len(ranked)))]
        edge_index, sign, report = edge_index_from(edges, genes, self_loops=True)
        source = f"CollecTRI ({len(ranked)} named genes, {len(edges)} edges in the file)"
    else:
        rng = np.random.default_rng(seed)
        n = RANDOM_EDGES_PER_GENE * n_genes
        pairs = np.unique(rng.integers(0, n_genes, size=(n, 2)), axis=0)
        edge_index = torch.as_tensor(pairs.T.copy(), dtype=torch.long)
        sign = torch.as_tensor(rng.choice([-1.0, 0.0, 1.0], edge_index.shape[1]), dtype=torch.float32)
        from genailab.tokenizers.sparse_attention import add_self_loops

        edge_index, sign, n_loops = add_self_loops(edge_index, sign, n_genes)
        report = {"n_edges_kept": int(pairs.shape[0]), "n_self_loops_added": n_loops}
        source = f"random, ~{RANDOM_EDGES_PER_GENE} per gene ({EDGE_FILE} not found)"
    info = {
        "edge_source": source,
        "n_edges": int(edge_index.shape[1]),
        "n_prior_edges": int(report["n_edges_kept"]),
        "n_self_loops": int(report["n_self_loops_added"]),
    }
    return edge_index, sign, info


# ---------------------------------------------------------------------------------------- worker
def _current_rss_mb() -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / 2**20


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Time ``args.repeats`` forward + backward passes of one method at one size."""
    import torch

    from genailab.tokenizers import GraphAttention, dense_graph_attention_reference

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    edge_index, sign, info = make_graph(args.genes)
    attn = GraphAttention(args.width, n_heads=args.heads)
    with torch.no_grad():
        attn.sign_bias.normal_()
    h = torch.randn(args.batch, args.genes, args.width, requires_grad=True)

    if args.worker == "check":
        out = attn(h, edge_index, sign)
        ref = dense_graph_attention_reference(attn, h, edge_index, sign)
        return {**info, "genes": args.genes, "max_abs_diff": float((out - ref).abs().max())}

    def step() -> None:
        fn = attn if args.worker == "sparse" else lambda *a: dense_graph_attention_reference(attn, *a)
        out = fn(h, edge_index, sign)
        out.pow(2).mean().backward()
        h.grad = None
        attn.zero_grad(set_to_none=True)

    rss_before = _current_rss_mb()
    peak_before = peak_rss_mb()
    step()  # warm-up
    meter = CpuMeter()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    cpu = meter.stop()
    peak = peak_rss_mb()
    base = rss_before if rss_before is not None else peak_before
    return {
        **info,
        "genes": args.genes,
        "method": args.worker,
        "seconds": sorted(times)[len(times) // 2],
        "seconds_all": times,
        "peak_rss_mb": peak,
        "peak_extra_mb": peak - base,
        "other_cpu_fraction": cpu["other_cpu_fraction"],
    }


# ---------------------------------------------------------------------------------------- parent
def _contention(rows: list[dict[str, Any]]) -> str:
    other = [r.get("other_cpu_fraction") for r in rows]
    if not other or any(o is None for o in other):
        return "CPU use of other processes unknown (no /proc/stat)."
    note = f"other processes used {100 * min(other):.0f}-{100 * max(other):.0f}% of the CPU during the timings"
    if max(other) > 0.1:
        note += ": wall-clock figures are inflated; rerun on a quiet machine"
    return note


def dense_estimate_gb(genes: int, batch: int, heads: int) -> float:
    """Lower bound of dense masked attention's memory: the (H, G, G) mask plus one (B, H, G, G) score tensor."""
    return 4 * heads * genes**2 * (1 + batch) / 1e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--genes", type=int, nargs="+", default=[2000, 5000, 20000])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dense-max-genes", type=int, default=5000, help="skip dense attention above this size")
    parser.add_argument("--worker", choices=["sparse", "dense", "check"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.genes = args.genes[0]
        args.out.write_text(json.dumps(worker(args)))
        return 0

    script = Path(__file__).resolve()
    common = ["--batch", str(args.batch), "--width", str(args.width), "--heads", str(args.heads)]
    common += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    rows: list[dict[str, Any]] = []
    for genes in args.genes:
        for method in ("sparse", "dense"):
            if method == "dense" and genes > args.dense_max_genes:
                est = dense_estimate_gb(genes, args.batch, args.heads)
                rows.append({"genes": genes, "method": method, "skipped": f"does not fit: needs > {est:.0f} GB"})
                print(f"{genes:>6} genes  dense : skipped (mask + one score tensor alone need {est:.1f} GB)")
                continue
            r = run_worker(script, ["--worker", method, "--genes", str(genes), *common], args.threads)
            rows.append(r)
            print(
                f"{genes:>6} genes  {method:6s}: {r['n_edges']:>7} edges  {1e3 * r['seconds']:9.1f} ms  "
                f"+{r['peak_extra_mb']:8.1f} MiB",
                flush=True,
            )
    check_genes = min(args.genes)
    check = run_worker(script, ["--worker", "check", "--genes", str(check_genes), *common], args.threads)
    by_size = {(r["genes"], r["method"]): r for r in rows}
    table = []
    for genes in args.genes:
        s, d = by_size[(genes, "sparse")], by_size[(genes, "dense")]
        dense_ms = "skipped" if "skipped" in d else f"{1e3 * d['seconds']:,.1f}"
        dense_mb = d["skipped"] if "skipped" in d else f"{d['peak_extra_mb']:,.0f}"
        speedup = "-" if "skipped" in d else f"{d['seconds'] / s['seconds']:,.1f}x"
        table.append(
            [
                f"{genes:,}",
                f"{s['n_edges']:,}",
                f"{1e3 * s['seconds']:,.1f}",
                dense_ms,
                speedup,
                f"{s['peak_extra_mb']:,.0f}",
                dense_mb,
            ]
        )
    print()
    print_table(
        ["genes", "edges (+self-loops)", "sparse ms", "dense ms", "dense/sparse", "sparse MiB", "dense MiB"], table
    )
    print(f"\nsparse vs dense max |diff| at {check_genes:,} genes: {check['max_abs_diff']:.2e}")
    contention = _contention([r for r in rows if "skipped" not in r])
    print(contention)
    result = {
        "benchmark": "grn_attention_cost",
        "settings": {
            "batch": args.batch,
            "width": args.width,
            "heads": args.heads,
            "repeats": args.repeats,
            "dense_max_genes": args.dense_max_genes,
            "measure": "median seconds per forward+backward; peak RSS above the RSS before the first pass (MiB)",
        },
        "machine": machine_info(args.threads),
        "edge_source": rows[0].get("edge_source"),
        "rows": rows,
        "check": check,
        "contention": contention,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / OUT_NAME
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
