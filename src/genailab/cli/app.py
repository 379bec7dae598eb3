"""``genailab`` commands.

Heavy libraries (torch, anndata, lightning) are imported inside the commands, so ``--help`` is fast.
Every command that writes saves its resolved config, seed, library versions and metrics beside its
outputs; every output file is written atomically.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

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

_STATE = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks for refused input.")] = False,
) -> None:
    """Genailab command line."""
    _STATE["debug"] = debug


def _console():  # noqa: ANN202 - rich is imported lazily
    from rich.console import Console

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
    from genailab.workflows import train_vae

    summary = train_vae(
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
    id_map: Annotated[
        Path | None, typer.Option("--id-map", help="TSV with 'symbol' and 'ensembl_id' columns.")
    ] = None,
    min_overlap: Annotated[
        float, typer.Option("--min-overlap", help="Minimum fraction of model genes present.")
    ] = 0.5,
    unknown: Annotated[
        str, typer.Option("--unknown", help="Unseen batch labels: 'error' or 'unknown'.")
    ] = "error",
    standardize: Annotated[
        bool, typer.Option("--standardize", help="Write standardised (diffusion-scale) latents.")
    ] = False,
) -> None:
    """Embed DATA with a trained model: latent in obsm['X_genailab'], tokens in obsm['X_genailab_tokens']."""
    from genailab.workflows import encode_vae

    path = encode_vae(
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


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output directory.")] = Path("demo_out"),
    epochs: Annotated[int, typer.Option("--epochs", help="Training epochs.")] = 60,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """The main job end to end on scanpy's bundled pbmc68k_reduced (no download).

    Recovers integer counts exactly, trains the VAE, writes the embedding (h5ad) and an HTML report.
    """
    from genailab.workflows import run_demo

    summary = run_demo(out, epochs=epochs, seed=seed)
    _console().print(
        f"[green]demo finished[/green]: report {summary['report']}, embedding {summary['embedding']}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 2 refused input or usage error, 1 unexpected error)."""
    from genailab.errors import GenailabError

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
        from rich.text import Text

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
