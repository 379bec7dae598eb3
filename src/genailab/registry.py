"""Name -> class registries (backbones, tokenizers, count heads, dispersions, tuning methods, ...).

YAML and the CLI pick components by name. An unknown name raises an error that lists the registered
ones, instead of an ``if/elif`` chain that silently falls through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from genailab.errors import InvalidInputError

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """A named mapping from strings to components.

    Parameters
    ----------
    kind
        What the registry holds (``"backbone"``, ``"count head"``, ...); used in error messages.

    Examples
    --------
    >>> HEADS = Registry("count head")
    >>> @HEADS.register("nb")
    ... class NBHead: ...
    >>> HEADS.get("nb") is NBHead
    True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Return a decorator that registers its argument under ``name``."""
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"{self.kind} registry: name must be a non-empty string, got {name!r}.")

        def decorator(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise InvalidInputError(
                    f"{self.kind} {name!r} is already registered to {self._items[name]!r}; choose another name."
                )
            self._items[name] = item
            return item

        return decorator

    def get(self, name: str) -> T:
        """Return the component registered as ``name``; raise listing the known names otherwise."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise InvalidInputError(
                f"unknown {self.kind} {name!r}; registered {self.kind}s are: {', '.join(self.names())}."
            ) from None

    def names(self) -> tuple[str, ...]:
        """Registered names, sorted."""
        return tuple(sorted(self._items))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self.names())})"
