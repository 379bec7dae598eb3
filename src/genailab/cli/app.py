"""``genailab`` commands: parse the options, call a workflow (:mod:`genailab.workflows`), print the result.

:mod:`genailab.workflows` loads a job's module (and torch) only when the command runs, so ``--help`` is fast.

Every command that writes saves its resolved config, seed, library versions and metrics beside its
outputs; every output file is written atomically (the workflows do both).
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from genailab import workflows
from genailab.errors import GenailabError

__all__ = ["app", "main"]

app = typer.Typer(
    name="genailab",
    help="Adapt pretrained foundation models to gene-expression synthesis and perturbation response.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
vae_app = typer.Typer(help="Latent-token count VAE: train, encode.", no_args_is_help=True)
app.add_typer(vae_app, name="vae")
synth_app = typer.Typer(
    help="Conditional latent diffusion: train, sample, counterfactual, evaluate.", no_args_is_help=True
)
app.add_typer(synth_app, name="synth")
perturb_app = typer.Typer(
    help="Perturbation response (delta in latent space, calibrated ensemble): train, predict, evaluate.",
    no_args_is_help=True,
)
app.add_typer(perturb_app, name="perturb")
data_app = typer.Typer(help="Data files: convert-dict.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_STATE = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for refused input.")] = False,
) -> None:
    """Genailab command line."""
    _STATE["debug"] = debug


def _console() -> Console:
    return Console(stderr=True)


@vae_app.command("train")
def vae_train(
    data: Annotated[Path, typer.Argument(help="Training data (.h5ad) with raw integer counts.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory: model, checkpoints, logs, run.json.")],
    layer: Annotated[str | None, typer.Option("--layer", help="Layer holding counts (default: X).")] = None,
    batch_key: Annotated[str | None, typer.Option("--batch-key", help="obs column with batch/donor.")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML config (sections seed, preset, data, train, vae).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key, e.g. --set train.max_epochs=5.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="One seed for everything (default 0).")] = None,
    backed: Annotated[
        bool, typer.Option("--backed", help="Stream cells from disk (for data larger than memory).")
    ] = False,
) -> None:
    """Train the latent-token count VAE on DATA and save it to OUT (rerunning resumes)."""
    summary = workflows.train_vae(
        data,
        out,
        layer=layer,
        batch_key=batch_key,
        config_path=config,
        sets=set_ or [],
        seed=seed,
        backed=backed,
    )
    _console().print(
        f"[green]trained[/green] {summary['model_dir']}: "
        f"held-out NLL/cell {summary['metrics'].get('val_nll_per_cell', float('nan')):.2f}, "
        f"{summary['train']['train_cells_per_s']:.0f} cells/s"
    )


@vae_app.command("encode")
def vae_encode(
    model_dir: Annotated[Path, typer.Argument(help="A model directory written by 'genailab vae train'.")],
    data: Annotated[Path, typer.Argument(help="Cells to embed (.h5ad).")],
    out: Annotated[Path, typer.Option("--out", help="Output .h5ad with obsm['X_genailab'] and tokens.")],
    gene_key: Annotated[
        str | None, typer.Option("--gene-key", help="var column with gene IDs (default var_names).")
    ] = None,
    id_map: Annotated[Path | None, typer.Option("--id-map", help="TSV with 'symbol' and 'ensembl_id' columns.")] = None,
    min_overlap: Annotated[float, typer.Option("--min-overlap", help="Minimum fraction of model genes present.")] = 0.5,
    unknown: Annotated[str, typer.Option("--unknown", help="Unseen batch labels: 'error' or 'unknown'.")] = "error",
    standardize: Annotated[
        bool, typer.Option("--standardize", help="Write standardised (diffusion-scale) latents.")
    ] = False,
) -> None:
    """Embed DATA with a trained model: latent in obsm['X_genailab'], tokens in obsm['X_genailab_tokens']."""
    path = workflows.encode_vae(
        model_dir,
        data,
        out,
        gene_key=gene_key,
        id_map=id_map,
        min_overlap=min_overlap,
        unknown=unknown,
        standardize=standardize,
    )
    _console().print(f"[green]wrote[/green] {path}")


def _split_keys(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(k.strip() for k in value.split(",") if k.strip())


@synth_app.command("train")
def synth_train(
    data: Annotated[Path, typer.Argument(help="Training data (.h5ad) with raw integer counts.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory (model, vae/, checkpoints, logs).")],
    layer: Annotated[str | None, typer.Option("--layer", help="Layer holding counts (default: X).")] = None,
    condition_keys: Annotated[
        str | None, typer.Option("--condition-keys", help="Comma-separated obs keys to condition on.")
    ] = None,
    batch_key: Annotated[
        str | None,
        typer.Option("--batch-key", help="obs key the VAE decoder is conditioned on (batch/donor)."),
    ] = None,
    vae: Annotated[Path | None, typer.Option("--vae", help="Reuse a trained VAE directory.")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML config (see README).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key, e.g. --set train.max_epochs=50.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="One seed for everything (default 0).")] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option("--tokenizer", help="latent | pathway | grn | rank | latent+pathway | grn+latent."),
    ] = None,
    gene_sets: Annotated[
        str | None, typer.Option("--gene-sets", help="GMT file for pathway tokens, or nmf / nmf:K for data modules.")
    ] = None,
    grn: Annotated[str | None, typer.Option("--grn", help="TSV/CSV of regulator->target edges (GRN tokens).")] = None,
    gene_medians: Annotated[
        str | None,
        typer.Option("--gene-medians", help="Gene-median dictionary for rank tokens: .json, .tsv or Geneformer .pkl."),
    ] = None,
    id_map: Annotated[
        str | None, typer.Option("--id-map", help="TSV with symbol / ensembl_id columns to match gene IDs.")
    ] = None,
    symbols_key: Annotated[
        str | None, typer.Option("--symbols-key", help="var column of gene symbols (when var_names are Ensembl).")
    ] = None,
) -> None:
    """Train the VAE (unless --vae) and the conditional diffusion model; rerunning resumes."""
    summary = workflows.train_synth(
        data,
        out,
        layer=layer,
        condition_keys=_split_keys(condition_keys),
        batch_key=batch_key,
        config_path=config,
        sets=set_ or [],
        seed=seed,
        vae_dir=vae,
        tokenizer={
            "tokenizer.name": tokenizer,
            "gene_sets": gene_sets,
            "grn": grn,
            "gene_medians": gene_medians,
            "id_map": id_map,
            "symbols_key": symbols_key,
        },
    )
    _console().print(f"[green]trained[/green] {summary['model_dir']} in {summary['wall_s']:.0f} s")


_TUNING_HELP = "full | linear_probe | adapter | lora | partial | conditioning | distill (options: --set tuning.*)."


@synth_app.command("adapt")
def synth_adapt(
    base_dir: Annotated[Path, typer.Argument(help="A directory written by 'genailab synth train' (the base).")],
    data: Annotated[Path, typer.Argument(help="New cells (.h5ad, raw counts); condition values may be new.")],
    out: Annotated[Path, typer.Option("--out", help="Adapted model directory (adapter weights only, + logs).")],
    tuning: Annotated[str | None, typer.Option("--tuning", help=_TUNING_HELP)] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML config (sections tuning, train, ...).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key, e.g. --set tuning.rank=8.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="One seed for everything (default 0).")] = None,
) -> None:
    """Adapt a pretrained synthesis model to new cells (a new donor, disease, cohort) with one tuning method."""
    summary = workflows.adapt_synth(base_dir, data, out, tuning=tuning, config_path=config, sets=set_ or [], seed=seed)
    _report_adapt(summary)


@synth_app.command("distill")
def synth_distill(
    model_dir: Annotated[Path, typer.Argument(help="A trained synthesis model directory (the teacher).")],
    out: Annotated[Path, typer.Option("--out", help="Student model directory.")],
    student_preset: Annotated[
        str | None, typer.Option("--student-preset", help="Size preset of the student backbone (default tiny).")
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Student sampling steps (default 4).")] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="Cells whose conditions to learn (default: the teacher's data).")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML config (sections distill, train).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key, e.g. --set distill.n_pairs=8192.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="One seed for everything (default 0).")] = None,
) -> None:
    """Distil a trained model into a small student that samples in a few steps."""
    summary = workflows.distill_synth(
        model_dir,
        out,
        data=data,
        student_preset=student_preset,
        steps=steps,
        config_path=config,
        sets=set_ or [],
        seed=seed,
    )
    _report_adapt(summary)


def _report_adapt(summary: dict) -> None:
    report = summary.get("report")
    if report:
        _console().print(
            f"[green]adapted[/green] {summary['model_dir']} with {report['method']}: "
            f"{report['n_trainable']:,} of {report['n_total']:,} parameters trained "
            f"({100 * report['trainable_fraction']:.2f}%) in {summary['wall_s']:.0f} s"
        )
    else:
        d = summary["distill"]
        _console().print(
            f"[green]distilled[/green] {summary['model_dir']}: student {d['student']['n_params']:,} vs teacher "
            f"{d['teacher']['n_params']:,} parameters, {d['student']['steps']} vs {d['teacher']['steps']} steps, "
            f"in {summary['wall_s']:.0f} s"
        )


@synth_app.command("sample")
def synth_sample(
    model_dir: Annotated[Path, typer.Argument(help="A directory written by 'genailab synth train'.")],
    out: Annotated[Path, typer.Option("--out", help="Output .h5ad of synthetic integer counts.")],
    n: Annotated[int | None, typer.Option("--n", help="Number of cells to generate.")] = None,
    condition: Annotated[list[str] | None, typer.Option("--condition", help="key=value, once per key.")] = None,
    like: Annotated[Path | None, typer.Option("--like", help="Reference .h5ad: one synthetic cell per cell.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Sampling steps.")] = None,
    guidance: Annotated[
        str | None, typer.Option("--guidance", help="Guidance scale, or per key: cell_type=3,sample_id=1.")
    ] = None,
    sampler: Annotated[str | None, typer.Option("--sampler", help="euler, heun, ddim, ddpm or dpm++2m.")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Generate synthetic cells (integer counts) for given conditions or like a reference."""
    path = workflows.sample_synth(
        model_dir,
        out,
        n=n,
        conditions=condition,
        like=like,
        steps=steps,
        guidance=guidance,
        sampler=sampler,
        seed=seed,
    )
    _console().print(f"[green]wrote[/green] {path}")


@synth_app.command("counterfactual")
def synth_counterfactual(
    model_dir: Annotated[Path, typer.Argument(help="A directory written by 'genailab synth train'.")],
    data: Annotated[Path, typer.Argument(help="Real cells (.h5ad) to transform.")],
    out: Annotated[Path, typer.Option("--out", help="Output .h5ad, one counterfactual cell per input cell.")],
    set_condition: Annotated[list[str], typer.Option("--set-condition", help="key=value to impose.")],
    strength: Annotated[float, typer.Option("--strength", help="Noise level in (0, 1]: how far cells may move.")] = 0.6,
    steps: Annotated[int | None, typer.Option("--steps")] = None,
    guidance: Annotated[str | None, typer.Option("--guidance")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Re-generate real cells under changed conditions (e.g. donor A -> B; all -> one batch = correction)."""
    path = workflows.counterfactual_synth(
        model_dir,
        data,
        out,
        set_conditions=set_condition,
        strength=strength,
        steps=steps,
        guidance=guidance,
        seed=seed,
    )
    _console().print(f"[green]wrote[/green] {path}")


@synth_app.command("evaluate")
def synth_evaluate(
    real: Annotated[Path, typer.Argument(help="Real cells (.h5ad).")],
    syn: Annotated[Path, typer.Argument(help="Synthetic cells (.h5ad) with the same genes.")],
    out: Annotated[Path, typer.Option("--out", help="Report directory (metrics.json, report.html).")],
    condition_key: Annotated[str | None, typer.Option("--condition-key", help="Report per value of this key.")] = None,
    layer: Annotated[str | None, typer.Option("--layer")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            help="Model directory SYN was sampled from: adds the diagnosis ladder (VAE ceiling, latent prior, "
            "library sizes and zeros, per condition) to metrics.json and the report.",
        ),
    ] = None,
    n_boot: Annotated[int, typer.Option("--n-boot", help="Re-splits of the real cells for the ladder's floors.")] = 20,
) -> None:
    """Compare synthetic with real cells (MMD, energy, W1, classifier AUC, marginals) beside a real-vs-real floor."""
    workflows.evaluate_synth(
        real, syn, out, condition_key=condition_key, layer=layer, seed=seed, model_dir=model, n_boot=n_boot
    )
    _console().print(f"[green]wrote[/green] {out}/report.html and {out}/metrics.json")


@perturb_app.command("train")
def perturb_train(
    data: Annotated[Path, typer.Argument(help="Perturbation screen (.h5ad) with raw integer counts.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory (model, vae/, member_K/, split.json, run.json).")],
    perturbation_key: Annotated[
        str | None, typer.Option("--perturbation-key", help="obs column of conditions (default 'condition').")
    ] = None,
    control: Annotated[str | None, typer.Option("--control", help="Control label (default 'control').")] = None,
    context_key: Annotated[
        str | None, typer.Option("--context-key", help="obs column of the cell context (cell line/type).")
    ] = None,
    holdout: Annotated[
        list[str] | None,
        typer.Option("--holdout", help="Hold out P everywhere, or P@C only in context C (repeatable)."),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            "--split",
            help="unseen_single | combo | context (drawn with --seed); combo_kfold | single_kfold | context_pair "
            "(fold --set split_fold=K of --set split_folds=N); or all (no held-out set: a base to adapt).",
        ),
    ] = None,
    gene_sets: Annotated[
        list[Path] | None, typer.Option("--gene-sets", help="GMT file(s) of gene-set priors (repeatable).")
    ] = None,
    grn: Annotated[
        list[Path] | None, typer.Option("--grn", help="TF->target edge list(s) for GRN priors (repeatable).")
    ] = None,
    smiles: Annotated[
        Path | None, typer.Option("--smiles", help="TSV/CSV of compound name + SMILES (chemical screens, RDKit).")
    ] = None,
    dose_key: Annotated[str | None, typer.Option("--dose-key", help="obs column of doses (e.g. 0.1, '1+1').")] = None,
    vae: Annotated[Path | None, typer.Option("--vae", help="Reuse a trained VAE directory (frozen).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML config (see README).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key, e.g. --set model.n_members=3.")
    ] = None,
    library_key: Annotated[
        str | None,
        typer.Option("--library-key", help="obs column of whole-transcriptome library sizes (e.g. ncounts)."),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="One seed for everything (default 0).")] = None,
) -> None:
    """Hold out perturbations, train the VAE on training cells, train and calibrate the ensemble (reruns resume)."""
    summary = workflows.train_perturb(
        data,
        out,
        perturbation_key=perturbation_key,
        control=control,
        context_key=context_key,
        holdouts=holdout or [],
        split=split,
        gene_sets=[str(p) for p in gene_sets or []],
        grn=[str(p) for p in grn or []],
        smiles=smiles,
        dose_key=dose_key,
        config_path=config,
        sets=set_ or [],
        seed=seed,
        vae_dir=vae,
        library_key=library_key,
    )
    held = summary["held_out"] + ["@".join(p) for p in summary["held_out_pairs"]]
    _console().print(
        f"[green]trained[/green] {summary['model_dir']} in {summary['wall_s']:.0f} s; held out: {', '.join(held)}"
    )
    for note in summary.get("warnings", []):
        _console().print(f"[yellow]warning[/yellow]: {note}")


@perturb_app.command("adapt")
def perturb_adapt(
    base_dir: Annotated[Path, typer.Argument(help="A directory written by 'genailab perturb train' (the base).")],
    data: Annotated[Path, typer.Argument(help="New cells (.h5ad): controls and perturbed cells of the new context.")],
    out: Annotated[Path, typer.Option("--out", help="Adapted model directory (adapter weights only, + logs).")],
    tuning: Annotated[str | None, typer.Option("--tuning", help=_TUNING_HELP)] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML config (sections tuning, train, ...).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key, e.g. --set tuning.rank=4.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="One seed for everything (default 0).")] = None,
) -> None:
    """Adapt a pretrained perturbation model to a new context (e.g. a cell line) with one tuning method."""
    summary = workflows.adapt_perturb(
        base_dir, data, out, tuning=tuning, config_path=config, sets=set_ or [], seed=seed
    )
    _report_adapt(summary)


@perturb_app.command("predict")
def perturb_predict(
    model_dir: Annotated[Path, typer.Argument(help="A directory written by 'genailab perturb train'.")],
    controls: Annotated[Path, typer.Option("--controls", help="Control cells (.h5ad) to perturb in silico.")],
    perturbation: Annotated[str, typer.Option("--perturbation", help="e.g. KLF1 or SET+KLF1.")],
    out: Annotated[Path, typer.Option("--out", help="Output .h5ad (one predicted cell per control cell).")],
    context: Annotated[
        str | None, typer.Option("--context", help="Context value (e.g. k562) of the control cells to use.")
    ] = None,
    allow_ood: Annotated[
        bool, typer.Option("--allow-ood", help="Allow a context never seen in training; read the OOD score.")
    ] = False,
    dose: Annotated[str | None, typer.Option("--dose", help="Dose (e.g. 0.5, or '1+0.5' for a combination).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Predict perturbed cells: sampled counts in X, mean and 90% interval layers, OOD score in obs/uns."""
    info = workflows.predict_perturb(
        model_dir, controls, perturbation, out, context=context, allow_ood=allow_ood, seed=seed, dose=dose
    )
    _console().print(
        f"[green]wrote[/green] {info['out']}: {info['n_cells']} cells, OOD score {info['ood_score']:.2f}"
        + (" [yellow](out of distribution)[/yellow]" if info["ood"] else "")
    )


@perturb_app.command("evaluate")
def perturb_evaluate(
    model_dir: Annotated[Path, typer.Argument(help="A directory written by 'genailab perturb train'.")],
    data: Annotated[Path, typer.Argument(help="The data the model was trained on (.h5ad).")],
    out: Annotated[Path, typer.Option("--out", help="Report directory (metrics.json, report.html).")],
    gene_sets: Annotated[
        list[Path] | None,
        typer.Option("--gene-sets", help="GMT for pathway consistency (default: the first training GMT)."),
    ] = None,
    library_key: Annotated[
        str | None,
        typer.Option("--library-key", help="obs column of whole-transcriptome library sizes (default: the run's)."),
    ] = None,
    cell_eval: Annotated[
        bool, typer.Option("--cell-eval", help="Also score with cell-eval (the [eval] extra), beside ours.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Score the model and every baseline on the held-out split saved in MODEL_DIR."""
    summary = workflows.evaluate_perturb(
        model_dir,
        data,
        out,
        gene_sets=[str(p) for p in gene_sets] if gene_sets else None,
        seed=seed,
        library_key=library_key,
        cell_eval=cell_eval,
    )
    for note in summary.get("warnings", []):
        _console().print(f"[yellow]warning[/yellow]: {note}")
    _console().print(f"[green]wrote[/green] {out}/report.html and {out}/metrics.json ({summary['n_queries']} queries)")


@data_app.command("convert-dict")
def data_convert_dict(
    source: Annotated[
        Path, typer.Argument(metavar="IN", help="A gene dictionary: Geneformer .pkl (or .json, two-column .tsv).")
    ],
    out: Annotated[Path, typer.Option("--out", help="The JSON file to write.")],
) -> None:
    """Convert a pickled gene dictionary (e.g. Geneformer's gene_median_dictionary.pkl) to JSON, once.

    The pickle is read safely: anything but dictionaries, lists, strings, numbers and NumPy scalars is
    refused. Pass the JSON to --gene-medians afterwards.
    """
    record = workflows.convert_dictionary(source, out)
    _console().print(f"[green]wrote[/green] {record['out']} ({record['n_entries']} entries)")


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("demo_out"),
    seed: Annotated[int, typer.Option("--seed")] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny settings: a smoke test in seconds.")] = False,
) -> None:
    """The main job end to end on scanpy's bundled pbmc68k_reduced (no download).

    Recovers integer counts exactly, trains the VAE and the cell-type-conditioned diffusion model, samples
    one synthetic cell per real cell, evaluates it beside a real-vs-real floor and writes the synthetic
    h5ad, the embedding and HTML reports.
    """
    summary = workflows.run_demo(out, seed=seed, quick=quick)
    _console().print(
        f"[green]demo finished[/green]: report {summary['report']}, synthetic cells {summary['synthetic']}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 2 refused input or usage error, 1 unexpected error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        app(args=args, prog_name="genailab", standalone_mode=True)
    except SystemExit as exc:  # typer exits after --help, usage errors and normal completion
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except GenailabError as exc:
        if debug:
            traceback.print_exc()
        _console().print(Text("error: ", style="bold red") + Text(str(exc)), highlight=False, soft_wrap=True)
        if not debug:
            _console().print("(run with --debug for the traceback)", style="dim")
        return 2
    except KeyboardInterrupt:
        _console().print("interrupted: rerun the same command to resume from the last checkpoint")
        return 130
    return 0


def _entry() -> None:  # pragma: no cover - console-script shim
    sys.exit(main())
