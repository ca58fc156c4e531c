"""Named registries: methods, datasets and DAS anomaly kinds are looked up by name.

In the manner of timm's ``register_model``/``list_models`` and open_clip's ``list_models``:
each kind of thing has one :class:`Registry`; a module adds an entry when it is imported
(``register``, also usable as a decorator), and everything else finds it by name
(``get``) or lists the names (``names``), so adding one is one new file plus its
registration. The registries are the package's only module-level mutable state:

* methods: :mod:`vtfusion.methods.registry` (``register_method``, ``list_methods``, ``get_method``);
* datasets: :mod:`vtfusion.data.registry` (``register_dataset``, ``list_datasets``, ``get_dataset``);
* DAS anomaly kinds: :mod:`vtfusion.das` (``register_das_kind``, ``list_das_kinds``, ``get_das_kind``).

``vtfusion list methods|datasets|das-kinds`` prints them.
"""

from __future__ import annotations

import re
from typing import Callable, Generic, Iterator, TypeVar, overload

T = TypeVar("T")

#: Registered names: lower case, digits and underscores (they become folder names of results).
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class Registry(Generic[T]):
    """Entries of one kind by name, in registration order.

    Args:
        kind: what an entry is, in words (``"method"``): error messages use it.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str, entry: None = None, *, replace: bool = False) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T, *, replace: bool = False) -> T: ...

    def register(self, name: str, entry: T | None = None, *, replace: bool = False):
        """Add ``entry`` under ``name`` and return it; without ``entry``, a decorator that does so.

        A name that is taken is an error unless ``replace=True`` (e.g. a notebook cell that
        defines and registers a method, run twice).
        """
        if not NAME.match(name):
            raise ValueError(f"invalid {self.kind} name {name!r}; use lower-case letters, digits and "
                             "underscores, starting with a letter")

        def add(value: T) -> T:
            if name in self._entries and not replace and self._entries[name] is not value:
                raise ValueError(f"{self.kind} {name!r} is already registered; pick another name "
                                 "or pass replace=True")
            self._entries[name] = value
            return value

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return its entry (tests use it to clean up)."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    def get(self, name: str) -> T:
        """The entry named ``name``; a one-line ``ValueError`` naming the known ones otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self._entries) or '(none)'}") from None

    def names(self) -> tuple[str, ...]:
        """Every registered name, in registration order."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
