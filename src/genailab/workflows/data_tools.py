"""The jobs behind ``genailab data ...``: one-off conversions of the files a run reads.

``convert-dict`` turns a pickled gene dictionary (Geneformer ships its gene-median and gene-name
dictionaries as ``.pkl``) into JSON once, so later runs read plain JSON and never a pickle. The pickle
is read by :class:`~genailab.tokenizers.resources.DictUnpickler`, which refuses anything but plain
containers, strings, numbers and NumPy scalars/arrays; the JSON is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genailab.errors import InvalidInputError, OutputPathError
from genailab.io import atomic_write_json, check_writable
from genailab.tokenizers.resources import read_gene_dictionary
from genailab.workflows.runconfig import versions
from genailab.workflows.rundir import write_output_record

__all__ = ["convert_dictionary"]


def convert_dictionary(source: str | Path, out: str | Path) -> dict[str, Any]:
    """``genailab data convert-dict``: write the dictionary in ``source`` (.pkl, .json or .tsv) to ``out`` as JSON.

    Parameters
    ----------
    source
        A gene dictionary: a pickle (read with the restricted unpickler), JSON or a two-column TSV.
    out
        The JSON file to write (atomically; its record goes beside it in ``OUT.run.json``).

    Returns
    -------
    ``{"source", "out", "n_entries"}``.

    Raises
    ------
    InvalidInputError
        An unreadable or unsafe pickle, a file that is not a dictionary, or values JSON cannot hold.
    OutputPathError
        ``out`` is a directory, the input itself, or cannot be written.
    """
    source, out = Path(source), check_writable(out, argument="--out")
    if out.is_dir():
        raise OutputPathError(
            f"--out={str(out)!r} is a directory; give the JSON file to write (e.g. {str(out / source.stem)}.json)."
        )
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise OutputPathError(f"--out={str(out)!r} is the input file; choose another name (e.g. {source.stem}.json).")
    table = read_gene_dictionary(source, argument="IN")
    try:
        atomic_write_json(out, table)  # serialised before anything is written
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"IN={str(source)!r} holds values that JSON cannot represent: {err}.") from err
    record = {"source": str(source.resolve()), "out": str(out), "n_entries": len(table)}
    write_output_record(out, {"command": "data convert-dict", **record, "versions": versions()})
    return record
