"""Seed rows given by their few nonzero elements: a detection's seed touches a handful of the
explained tensor's elements (its class logit, maybe its box terms), and the tensor is large
(YOLOv8n at 640: 84 x 8400 per target). Dense seeds for ten detections were 28 MB of zeros
to fill and then to scan for the level each seed lies in; these build only what a run reads:
the part of the explained tensor a detection's backward starts from, or the whole column
where the dense backward runs (``numpy.asarray`` of either type gives the dense array).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Seeds", "SparseArray", "SparseColumn", "SparseSeeds", "seed_column"]

Index = tuple[int, ...]


class SparseArray:
    """A float32 array of ``shape`` given by ``terms``: index -> value; every other element
    is zero (``numpy.asarray`` gives it dense)."""

    def __init__(self, shape: tuple[int, ...], terms: dict[Index, float]) -> None:
        self.shape, self.terms = shape, terms

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.zeros(self.shape, np.float32)
        for index, value in self.terms.items():
            out[index] = value
        return out if dtype is None else out.astype(dtype)


class SparseColumn(SparseArray):
    """One target column's seed rows [B, ...] (indices batch first)."""

    def live(self, axis: int) -> np.ndarray:
        """The sorted positions along ``axis`` where some nonzero element lies."""
        return np.unique([i[axis] for i, v in self.terms.items() if v != 0]).astype(np.int64)

    def part(self, perm: tuple[int, ...] | None, axis: int, lo: int, hi: int) -> np.ndarray:
        """The dense slice ``[lo, hi)`` along ``axis`` of the column transposed by the inverse
        of ``perm`` (as :meth:`explainer.backward.Parts.seed_of` slices a dense column)."""
        order = list(range(len(self.shape))) if perm is None else list(np.argsort(perm))
        shape = [self.shape[j] for j in order]
        shape[axis] = hi - lo
        out = np.zeros(shape, np.float32)
        for index, value in self.terms.items():
            moved = [index[j] for j in order]
            if lo <= moved[axis] < hi:
                moved[axis] -= lo
                out[tuple(moved)] = value
        return out


class SparseSeeds(SparseArray):
    """Seed rows [B, K, ...] by their nonzero elements (indices ``(b, k, *index)``, ``index``
    one of the explained tensor's, without its batch axis)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__(shape, {})

    def set(self, b: int, k: int, terms: dict[Index, float]) -> None:
        """Target ``k`` of image ``b``: its terms (index -> value, summed where repeated)."""
        for index, value in terms.items():
            key = (b, k, *index)
            self.terms[key] = self.terms.get(key, 0.0) + value

    def column(self, k: int) -> SparseColumn:
        """Target column ``k``: the seed rows [B, ...] of every image."""
        return SparseColumn((self.shape[0], *self.shape[2:]), {
            (i[0], *i[2:]): value for i, value in self.terms.items() if i[1] == k})


#: seed rows [B, K, ...], dense or by their nonzero elements
Seeds = np.ndarray | SparseSeeds


def seed_column(seeds: Seeds, k: int) -> np.ndarray | SparseColumn:
    """Target column ``k`` of seed rows [B, K, ...], dense or sparse as given."""
    if isinstance(seeds, SparseSeeds):
        return seeds.column(k)
    return np.ascontiguousarray(seeds[:, k])
