"""Compound prior features from SMILES: Morgan (ECFP-like) fingerprints through RDKit (optional).

The result is a :class:`~genailab.foundation.perturbation.GenePriors` table keyed by compound name, so
the ``compound`` agent encoder embeds a compound never seen in training from its structure, the same
way the ``gene`` encoder uses gene-set features. RDKit is an optional dependency
(``pip install 'genailab[chem]'``); everything else works without it.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from genailab.errors import InvalidInputError, MissingKeyError
from genailab.foundation.perturbation.priors import GenePriors

__all__ = ["compound_priors", "read_smiles"]


def _rdkit():  # noqa: ANN202 - the optional module
    try:
        from rdkit import Chem, RDLogger
        from rdkit.Chem import rdFingerprintGenerator
    except ImportError as err:
        raise InvalidInputError(
            "SMILES featurisation needs RDKit, which is not installed; run pip install 'genailab[chem]' "
            "(or pip install rdkit), or drop the SMILES and use compound identities only."
        ) from err
    RDLogger.DisableLog("rdApp.*")  # we raise our own error for unparsable SMILES
    return Chem, rdFingerprintGenerator


def compound_priors(smiles: Mapping[str, str], *, radius: int = 2, n_bits: int = 1024) -> GenePriors:
    """Morgan fingerprints (Rogers & Hahn 2010) of compounds, as prior features.

    Parameters
    ----------
    smiles
        Compound name -> SMILES string (names as they appear in the perturbation labels).
    radius, n_bits
        Fingerprint radius (2 = ECFP4-like) and length.

    Returns
    -------
    :class:`GenePriors` with one ``n_bits``-wide binary row per compound (source ``"morgan"``).

    Raises
    ------
    InvalidInputError
        RDKit missing, an empty mapping, or a SMILES RDKit cannot parse (named).
    """
    if not smiles:
        raise InvalidInputError("smiles is empty; give at least one compound -> SMILES pair.")
    if radius < 0 or n_bits < 8:
        raise InvalidInputError(f"radius={radius} must be >= 0 and n_bits={n_bits} >= 8.")
    chem, gen_mod = _rdkit()
    generator = gen_mod.GetMorganGenerator(radius=radius, fpSize=n_bits)
    names = sorted(smiles)
    feats = np.zeros((len(names), n_bits), dtype=np.float32)
    for i, name in enumerate(names):
        mol = chem.MolFromSmiles(str(smiles[name]))
        if mol is None:
            raise InvalidInputError(f"compound {name!r}: RDKit cannot parse SMILES {smiles[name]!r}.")
        feats[i] = generator.GetFingerprintAsNumPy(mol).astype(np.float32)
    return GenePriors(genes=tuple(names), features=feats, sources=("morgan",), block_dims=(n_bits,))


def read_smiles(path: str | Path, *, name_col: str | None = None, smiles_col: str | None = None) -> dict[str, str]:
    """Read a TSV/CSV of compound names and SMILES (columns auto-detected: ``name``/``compound``, ``smiles``)."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"SMILES file {str(path)!r} does not exist.")
    text = p.read_text(encoding="utf-8")
    dialect = "excel-tab" if "\t" in text.splitlines()[0] else "excel"
    rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
    if not rows:
        raise InvalidInputError(f"SMILES file {str(path)!r} has no rows.")
    cols = list(rows[0])
    lower = {c.lower(): c for c in cols}
    name_col = name_col or next((lower[c] for c in ("name", "compound", "drug", "perturbation") if c in lower), None)
    smiles_col = smiles_col or lower.get("smiles")
    if name_col not in cols or smiles_col not in cols:
        raise MissingKeyError(
            f"SMILES file {str(path)!r} needs a name column and a 'smiles' column; found columns {cols}."
        )
    out = {}
    for row in rows:
        name, smi = (row.get(name_col) or "").strip(), (row.get(smiles_col) or "").strip()
        if name and smi:
            if name in out and out[name] != smi:
                raise InvalidInputError(f"SMILES file {str(path)!r} gives compound {name!r} two different SMILES.")
            out[name] = smi
    return out
