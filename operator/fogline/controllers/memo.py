"""What reconciles derive and meet again: results kept from one reconcile (a round) to the
next while they are asked for, and let go when they are not. A rollout of 500 nodes
reconciles about a hundred times; each time it parsed the whole status (its site rows, its
history), observed all 500 pods and built every site's DaemonSet to compare template
hashes, while the events between two reconciles change a few of them.

`Remembered` keys results by value (a template hash by spec generation, site and model).
`SameObjects` keys them by the identity of watched objects: kopf gives every watch event a
new body, and an index entry is replaced, never changed in place, so an object's identity
is its version. It holds the objects, so their ids cannot be reused while remembered."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
R = TypeVar("R")


class Remembered(Generic[K, R]):
    """Results by key; a round keeps only those found or kept since the last round."""

    def __init__(self) -> None:
        self._kept: dict[K, R] = {}
        self._asked: dict[K, R] = {}

    def found(self, key: K) -> R | None:
        if key in self._asked:
            return self._asked[key]
        if key in self._kept:
            self._asked[key] = self._kept[key]
            return self._asked[key]
        return None

    def keep(self, key: K, result: R) -> None:
        self._asked[key] = result

    def round(self) -> None:
        self._kept, self._asked = self._asked, {}

    def __len__(self) -> int:
        return len(self._kept.keys() | self._asked.keys())


class SameObjects(Remembered[tuple[int, ...], tuple[tuple[object, ...], R]]):
    """`compute(*objects)`, remembered for those very objects."""

    def __init__(self, compute: Callable[..., R]) -> None:
        super().__init__()
        self._compute = compute
        self.computed = 0  # how many calls were not found, for tests and benchmarks

    def __call__(self, *objects: object) -> R:
        key = tuple(id(o) for o in objects)
        found = self.found(key)
        if found is None:
            found = (objects, self._compute(*objects))
            self.computed += 1
            self.keep(key, found)
        return found[1]
