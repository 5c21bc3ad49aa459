"""The numeric pieces of the metrics, in numpy alone: map scaling, curve area, rank
correlation, SSIM, the blur baseline and ROAD's noisy linear imputation.

ROAD's imputation solves a sparse linear system. With scipy installed (the optional
``evaluate`` extra) it is solved by scipy's sparse LU, as pytorch-grad-cam does; without it,
by conjugate gradients whose matrix-vector product is eight array slices (the 8-neighbour
stencil), numpy only: the system is symmetric positive definite whenever some pixel is kept.
Both agree to 1e-7; the sparse LU is several times faster on large images whose removed region
is large (224 x 224, 90% removed: about 0.5 s against 2 s).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "NEIGHBOUR_WEIGHTS", "auc", "gaussian_blur", "impute", "minmax", "spearman", "ssim",
]

#: ROAD's neighbour weights: (row offset, column offset) -> weight (1/6 edge, 1/12 diagonal)
NEIGHBOUR_WEIGHTS: tuple[tuple[int, int, float], ...] = (
    (1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12),
    (0, -1, 1 / 6), (-1, -1, 1 / 12), (1, 0, 1 / 6), (-1, 0, 1 / 6),
)


def minmax(heatmap: np.ndarray) -> np.ndarray:
    """``(E - min E) / (max E - min E)`` as float64; all zeros for a constant map."""
    e = np.asarray(heatmap, np.float64)
    low, span = e.min(), np.ptp(e)
    return (e - low) / span if span > 0 else np.zeros_like(e)


def auc(curve: np.ndarray) -> float:
    """Trapezoid area under ``curve`` sampled at equally spaced fractions 0, 1/n, ..., 1
    (``n = len(curve) - 1``): ``(sum(c) - c[0]/2 - c[-1]/2) / n``."""
    c = np.asarray(curve, np.float64)
    if c.size < 2:
        raise ValueError(f"a curve needs at least 2 points, got {c.size}")
    return float((c.sum() - c[0] / 2 - c[-1] / 2) / (c.size - 1))


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (as ``scipy.stats.rankdata``)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, values.size])
    average = first + (counts + 1) / 2  # 1-based average rank of each tie group
    ranks = np.empty(values.size)
    ranks[order] = average[group]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps (flattened): the Pearson correlation of their
    average ranks. NaN when either map is constant (the correlation is undefined)."""
    ra = _ranks(np.asarray(a, np.float64).ravel())
    rb = _ranks(np.asarray(b, np.float64).ravel())
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def _gaussian(size: int, sigma: float) -> np.ndarray:
    t = np.arange(size) - (size - 1) / 2
    k = np.exp(-(t * t) / (2 * sigma * sigma))
    return k / k.sum()


def _filter(image: np.ndarray, kernel: np.ndarray, mode: str) -> np.ndarray:
    """Separable filtering of the last two axes by ``kernel`` (1-D): ``"valid"`` or
    ``"same"`` (zero padding)."""
    out = np.asarray(image, np.float64)
    for axis in (-2, -1):
        out = np.apply_along_axis(np.convolve, axis, out, kernel, mode=mode)
    return out


def ssim(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03, data_range: float = 1.0) -> float:
    """Mean structural similarity of two maps [H, W] (Wang et al. 2004).

    Local means, variances and covariance come from a Gaussian window (``window`` x
    ``window``, ``sigma``; shrunk to the map's smaller side, kept odd, for maps smaller than
    it) applied where it fits (``valid``, as the authors' reference code); with
    ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2`` and ``L = data_range``::

        SSIM = mean((2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2)))

    Identical maps give 1.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    size = min(window, *a.shape)
    size -= 1 - size % 2
    kernel = _gaussian(size, sigma)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_a, mu_b = _filter(a, kernel, "valid"), _filter(b, kernel, "valid")
    var_a = _filter(a * a, kernel, "valid") - mu_a**2
    var_b = _filter(b * b, kernel, "valid") - mu_b**2
    cov = _filter(a * b, kernel, "valid") - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(index.mean())


def gaussian_blur(image: np.ndarray, size: int = 11, sigma: float = 5.0) -> np.ndarray:
    """An image [C, H, W] blurred by a normalized ``size`` x ``size`` Gaussian (``sigma``),
    zero-padded at the border as RISE's insertion baseline (``conv2d(padding=size // 2)``)."""
    return _filter(image, _gaussian(size, sigma), "same")


def impute(image: np.ndarray, keep: np.ndarray, noise: float = 0.01,
           rng: np.random.Generator | None = None, tol: float = 1e-10,
           solver: str = "auto") -> np.ndarray:
    """ROAD's noisy linear imputation of an image [C, H, W] outside ``keep`` [H, W] (bool).

    Each removed pixel becomes the weighted mean of its in-image neighbours (weights
    :data:`NEIGHBOUR_WEIGHTS`), kept or removed, i.e. per channel the solution of
    ``sum_j w_ij (u_j - u_i) = 0`` over the removed pixels i, then ``noise * N(0, 1)`` is added
    to each imputed value (``rng``; ``noise=0``: none). Where no pixel is kept, any constant
    solves the system (scipy's sparse solve fails there): each channel's mean is used.

    ``solver``: ``"scipy"`` (sparse LU, as pytorch-grad-cam; several times faster on large
    images with large removed regions), ``"cg"`` (numpy only: Jacobi-preconditioned conjugate
    gradients to a relative residual of ``tol``) or ``"auto"`` (scipy where installed).
    """
    if solver not in ("auto", "scipy", "cg"):
        raise ValueError(f"solver={solver!r} is not one of 'auto', 'scipy', 'cg'")
    x = np.asarray(image, np.float64)
    hole = ~np.asarray(keep, bool)
    if not hole.any():
        return x.copy()
    rng = rng or np.random.default_rng(0)
    if hole.all():  # any constant solves the system: the channel means (scipy's is singular)
        u = np.broadcast_to(x.mean(axis=(-2, -1), keepdims=True), x.shape)
        return u + noise * rng.standard_normal(x.shape) if noise else u.copy()
    if solver == "scipy" or (solver == "auto" and _spsolve() is not None):
        u = _sparse_solution(x, hole)
    else:
        u = _conjugate_gradients(x, hole, tol)
    if noise:
        u = u + noise * rng.standard_normal(u.shape)
    return np.where(hole, u, x)


def _spsolve() -> Any:
    """``scipy.sparse.linalg.spsolve`` where scipy is installed (the ``evaluate`` extra), else
    None."""
    try:
        from scipy.sparse.linalg import spsolve
    except ImportError:
        return None
    return spsolve


def _sparse_solution(x: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The imputation system solved by scipy's sparse LU (as pytorch-grad-cam): the removed
    pixels' values [C, H, W] (zeros elsewhere)."""
    from scipy.sparse import csc_matrix

    h, w = hole.shape
    ys, xs = np.nonzero(hole)
    index = np.full(hole.shape, -1)
    index[ys, xs] = np.arange(ys.size)
    rows, cols, values = [], [], []
    degree = np.zeros(ys.size)
    rhs = np.zeros((ys.size, x.shape[0]))
    for dy, dx, weight in NEIGHBOUR_WEIGHTS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        degree[inside] += weight
        at, ny, nx = np.flatnonzero(inside), ny[inside], nx[inside]
        removed = hole[ny, nx]
        rows.append(at[removed])
        cols.append(index[ny[removed], nx[removed]])
        values.append(np.full(removed.sum(), -weight))
        rhs[at[~removed]] += weight * x[:, ny[~removed], nx[~removed]].T
    diagonal = np.arange(ys.size)
    matrix = csc_matrix((np.concatenate([*values, degree]),
                         (np.concatenate([*rows, diagonal]), np.concatenate([*cols, diagonal]))),
                        shape=(ys.size, ys.size))
    solution = np.asarray(_spsolve()(matrix, rhs)).reshape(ys.size, -1)
    u = np.zeros_like(x)
    u[:, ys, xs] = solution.T
    return u


def _conjugate_gradients(x: np.ndarray, hole: np.ndarray, tol: float) -> np.ndarray:
    """The imputation system solved by Jacobi-preconditioned conjugate gradients, its
    matrix-vector product as array slices: the removed pixels' values [C, H, W]."""
    h, w = hole.shape
    padded = np.zeros((*x.shape[:-2], h + 2, w + 2))  # the border stays 0: outside the image

    def neighbours(u: np.ndarray) -> np.ndarray:
        padded[..., 1:-1, 1:-1] = u
        out = np.zeros_like(u)
        for dy, dx, weight in NEIGHBOUR_WEIGHTS:
            out += weight * padded[..., 1 + dy:h + 1 + dy, 1 + dx:w + 1 + dx]
        return out

    degree = neighbours(np.ones(x.shape))[..., :, :]  # in-image neighbours' weight
    known = np.where(hole, 0.0, x)

    def operator(u: np.ndarray) -> np.ndarray:  # (D - W) restricted to the removed pixels
        return np.where(hole, degree * u - neighbours(u), 0.0)

    rhs = np.where(hole, neighbours(known), 0.0)
    u = np.zeros_like(x)
    inverse = np.where(hole, 1.0 / degree, 0.0)
    residual = rhs - operator(u)
    z = inverse * residual
    direction = z.copy()
    rz = (residual * z).sum(axis=(-2, -1), keepdims=True)
    limit = tol * np.sqrt((rhs * rhs).sum(axis=(-2, -1), keepdims=True)) + 1e-300
    for _ in range(10 * hole.size):
        if np.all(np.sqrt((residual * residual).sum(axis=(-2, -1), keepdims=True)) <= limit):
            break
        product = operator(direction)
        step = rz / np.maximum((direction * product).sum(axis=(-2, -1), keepdims=True), 1e-300)
        u += step * direction
        residual -= step * product
        z = inverse * residual
        rz_next = (residual * z).sum(axis=(-2, -1), keepdims=True)
        direction = z + (rz_next / np.maximum(rz, 1e-300)) * direction
        rz = rz_next
    return u
