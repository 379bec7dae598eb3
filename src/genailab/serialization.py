"""Save and load model directories: ``config.json`` + ``model.safetensors`` (+ named JSON extras).

This module is the one home of what model directories share: the config and weight files, the
directory hashes that identify a base model (:func:`hash_model_dir` for adapted models' bases,
:func:`hash_config_and_weights` for a VAE referred to by ``vae_source.json``), the VAE reference itself
(:func:`write_vae_reference`, :func:`resolve_vae_reference`, :func:`vae_reference_dir`,
:func:`check_vae_reference`), the confinement of relative paths stored in a directory
(:func:`confined_path`) and the test for an adapted directory (:func:`is_adapted_dir`).

No pickle anywhere: weights are safetensors, everything else is JSON. Loading checks, in order, that
the directory exists, that ``config.json`` parses and names the expected class, that the library
version is compatible, that the weights file is a complete safetensors file, and that every tensor
name and shape matches the model built from the config. Each failure is a
:class:`~genailab.errors.CheckpointError` that says what is wrong and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genailab._version import __version__
from genailab.errors import CheckpointError
from genailab.io import atomic_write, atomic_write_json

__all__ = [
    "ADAPTER_NAME",
    "CONFIG_NAME",
    "VAE_DIR",
    "VAE_SOURCE",
    "WEIGHTS_NAME",
    "check_vae_reference",
    "check_version",
    "confined_path",
    "hash_config_and_weights",
    "hash_model_dir",
    "is_adapted_dir",
    "load_state_dict_strict",
    "read_config",
    "read_json",
    "resolve_vae_reference",
    "save_weights",
    "vae_reference_dir",
    "write_config",
    "write_vae_reference",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: Where a model directory keeps its own copy of the VAE, and the file that refers to the VAE it uses.
VAE_DIR = "vae"
VAE_SOURCE = "vae_source.json"
#: The file that marks an adapted directory (a base model's path and hash plus the trained modules).
ADAPTER_NAME = "adapter.json"


def write_config(directory: Path, class_name: str, config: Mapping[str, Any], **extra: Any) -> None:
    """Write ``config.json`` with the class name and library version beside the config fields."""
    payload = {"_class_name": class_name, "_genailab_version": __version__, "config": dict(config), **extra}
    atomic_write_json(directory / CONFIG_NAME, payload)


def save_weights(directory: Path, module: nn.Module, name: str = WEIGHTS_NAME) -> None:
    """Atomically save the module's state dict (parameters and buffers) as safetensors."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    atomic_write(directory / name, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))


def check_version(saved: str, *, where: str) -> None:
    """Refuse a directory written by an incompatible (different major, or newer minor) version."""
    try:
        s_major, s_minor = (int(x) for x in saved.split(".")[:2])
        c_major, c_minor = (int(x) for x in __version__.split(".")[:2])
    except (ValueError, AttributeError):
        raise CheckpointError(f"{where}: unreadable genailab version {saved!r} in {CONFIG_NAME}.") from None
    if s_major != c_major or (s_major, s_minor) > (c_major, c_minor):
        raise CheckpointError(
            f"{where} was written by genailab {saved}, which this genailab {__version__} cannot load; "
            f"install genailab {s_major}.{s_minor} or retrain."
        )


def read_json(path: Path, *, what: str) -> Any:
    """Read a JSON file of a model directory or raise a CheckpointError naming it."""
    if not path.is_file():
        raise CheckpointError(f"{what}: {str(path)!r} is missing; the model directory is incomplete.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{what}: {str(path)!r} is not valid JSON (truncated or corrupt): {err}.") from err


def read_config(directory: str | os.PathLike[str], expected_class: str) -> dict[str, Any]:
    """Validate a model directory's ``config.json`` and return its ``config`` mapping.

    Raises
    ------
    CheckpointError
        Missing directory, missing/corrupt ``config.json``, another class, or an incompatible version.
    """
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"model directory {str(d)!r} does not exist or is not a directory.")
    payload = read_json(d / CONFIG_NAME, what=f"model directory {str(d)!r}")
    if not isinstance(payload, dict) or "config" not in payload or "_class_name" not in payload:
        raise CheckpointError(
            f"{str(d / CONFIG_NAME)!r} is not a genailab config (no '_class_name'/'config' entries); "
            "is this directory from another tool?"
        )
    if payload["_class_name"] != expected_class:
        raise CheckpointError(
            f"{str(d)!r} holds a {payload['_class_name']!r}, not a {expected_class!r}; "
            f"load it with {payload['_class_name']}.from_pretrained."
        )
    check_version(str(payload.get("_genailab_version", "")), where=f"model directory {str(d)!r}")
    return payload


def load_state_dict_strict(directory: Path, module: nn.Module, name: str = WEIGHTS_NAME) -> None:
    """Load safetensors weights into ``module``, refusing missing, extra or mis-shaped tensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} is missing; the model directory is incomplete.")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{str(path)!r} is not a readable safetensors file (truncated or corrupt): {err}."
        ) from err
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shape_errors = [
        f"{k}: saved {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shape_errors:
        raise CheckpointError(
            f"{str(path)!r} does not match the model built from its config.json "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {shape_errors[:5]})."
        )
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    torch.nn.Module.train(module, False)


def hash_model_dir(directory: str | os.PathLike[str]) -> str:
    """SHA-256 over ``config.json`` and every ``*.safetensors`` file, names included (identifies an adapter's base).

    Parameters
    ----------
    directory
        A model directory.
    """
    d = Path(directory)
    h = hashlib.sha256()
    for path in [d / CONFIG_NAME, *sorted(d.glob("*.safetensors"))]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def hash_config_and_weights(directory: str | os.PathLike[str]) -> str:
    """SHA-256 over ``config.json`` then ``model.safetensors`` (identifies the VAE a model refers to).

    Kept apart from :func:`hash_model_dir` because ``vae_source.json`` files written since 0.1.0 hold this
    hash, and they must keep loading.
    """
    d = Path(directory)
    h = hashlib.sha256()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        h.update((d / name).read_bytes())
    return h.hexdigest()


def is_adapted_dir(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds an adapted model (an ``adapter.json`` beside ``config.json``)."""
    return (Path(directory) / ADAPTER_NAME).is_file()


def write_vae_reference(directory: Path, vae_dir: Path) -> dict[str, str]:
    """Write ``directory/vae_source.json``: the VAE's path, ``"vae"`` when it is the directory's own copy, and hash.

    Returns
    -------
    dict
        The reference written (``path``, ``relative``, ``sha256``).
    """
    inside = vae_dir.resolve() == (directory / VAE_DIR).resolve()
    source = {
        "path": str(vae_dir.resolve()),
        "relative": VAE_DIR if inside else "",
        "sha256": hash_config_and_weights(vae_dir),
    }
    atomic_write_json(directory / VAE_SOURCE, source)
    return source


def confined_path(directory: Path, relative: Any, *, where: str) -> Path:
    """``directory / relative`` for a relative path stored inside a model directory, confined to it.

    A stored relative reference names something inside the directory it is stored in; an absolute path,
    a ``..`` component or a non-string would let a crafted directory point anywhere, so each is refused.

    Parameters
    ----------
    directory
        The model directory holding the reference.
    relative
        The stored value.
    where
        The file and field, for the error message (e.g. ``"'d/vae_source.json' field 'relative'"``).

    Raises
    ------
    CheckpointError
        The value is not a relative path inside ``directory``.
    """
    if not isinstance(relative, str):
        raise CheckpointError(f"{where} is {relative!r}; expected a relative path inside {str(directory)!r}.")
    # both separators: a value written on Windows must not escape on POSIX either
    parts = relative.replace("\\", "/").split("/")
    if Path(relative).is_absolute() or relative.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts:
        raise CheckpointError(
            f"{where} is {relative!r}, which points outside the model directory {str(directory)!r}; a stored "
            "relative path must name something inside it (no absolute path, no '..'). The directory is "
            "corrupt or was crafted; re-save the model or fix the value."
        )
    return directory / relative


def vae_reference_dir(directory: Path, source: Mapping[str, Any]) -> Path:
    """The VAE directory a ``vae_source.json`` reference names: its ``relative`` path (confined) or its ``path``.

    Raises
    ------
    CheckpointError
        ``relative`` leaves ``directory``, or the reference has neither field.
    """
    where = f"{str(Path(directory) / VAE_SOURCE)!r}"
    if not isinstance(source, Mapping):
        raise CheckpointError(f"{where} is not a JSON object; the model directory is corrupt.")
    if source.get("relative"):
        return confined_path(Path(directory), source["relative"], where=f"{where} field 'relative'")
    if not isinstance(source.get("path"), str) or not source["path"]:
        raise CheckpointError(f"{where} names no VAE (neither 'relative' nor 'path'); the model directory is corrupt.")
    return Path(source["path"])


def resolve_vae_reference(directory: Path) -> tuple[Path, dict[str, Any]]:
    """Read ``directory/vae_source.json`` and return the VAE directory it refers to, with the reference.

    Raises
    ------
    CheckpointError
        A missing or corrupt file, or a ``relative`` path that leaves ``directory`` (see :func:`confined_path`).
    """
    source = read_json(directory / VAE_SOURCE, what=f"model directory {str(directory)!r}")
    return vae_reference_dir(directory, source), source


def check_vae_reference(vae_dir: Path, source: Mapping[str, Any]) -> None:
    """Refuse a VAE whose hash differs from the one recorded when the model was trained."""
    if hash_config_and_weights(vae_dir) != source.get("sha256"):
        raise CheckpointError(
            f"the VAE in {str(vae_dir)!r} differs from the one this model was trained on (hash mismatch)."
        )
