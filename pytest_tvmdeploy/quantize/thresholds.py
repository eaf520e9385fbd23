"""Calibration of activation clipping thresholds: running |x| statistics and the max / percentile / KL rules."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pytest_tvmdeploy.quantize.config import QuantConfig

#: Weight given to a uniform distribution mixed into Q so that it is never 0 where P is not.
_SMOOTHING = 1e-4
#: Candidate thresholds evaluated at once by :func:`kl_divergence_threshold` (bounds memory).
_CHUNK = 2048


#: :func:`mse_threshold` tries every this many bin edges, then each edge near the best of them.
_REFINE = 8

#: Fewer non-zero values than this and ``kl_divergence`` falls back to the max.
MIN_KL_SAMPLES = 4096


class ActivationObserver:
    """Statistics of one activation tensor over a calibration set: max |x| and a histogram of |x|.

    The histogram has ``bins`` equal bins over ``[0, R)`` where ``R`` is the smallest power of two
    strictly above the running max |x|. When a batch goes beyond ``R``, ``R`` is multiplied by a
    power of two ``k`` and each group of ``k`` old bins merges exactly into one new bin, so feeding
    the data in batches gives the same histogram as feeding it at once. Memory is O(bins).
    """

    def __init__(self, name: str, *, bins: int = 2048) -> None:
        if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
            raise ValueError(f"ActivationObserver {name!r}: bins={bins!r} must be an int >= 1")
        self.name = name
        self.bins = bins
        self.max_abs: float = 0.0
        self.minimum: float = math.inf  # the least value seen: >= 0 for an activation never negative
        self.count: int = 0
        self.zeros: int = 0  # exact zeros (e.g. after a ReLU): every quantizer keeps them exact
        self._range: float = 0.0  # 0 while every value seen is 0
        self._counts = np.zeros(bins, dtype=np.int64)

    def update(self, values: np.ndarray) -> None:
        """Add one batch of values of the tensor."""
        raw = np.asarray(values, dtype=np.float64).reshape(-1)
        magnitudes = np.abs(raw)
        if magnitudes.size == 0:
            return
        batch_max = float(magnitudes.max())
        if not math.isfinite(batch_max):
            raise ValueError(f"ActivationObserver {self.name!r}: the calibration values contain NaN or infinity")
        if batch_max >= self._range and batch_max > 0:
            self._widen(math.ldexp(1.0, math.frexp(batch_max)[1]))  # smallest power of two > batch_max
        if self._range > 0:
            # bins / range is exact (range is a power of two): the bin of v is floor(v * bins / range).
            index = (magnitudes * (self.bins / self._range)).astype(np.int64)
            np.minimum(index, self.bins - 1, out=index)
        else:
            index = np.zeros(magnitudes.size, dtype=np.int64)
        self._counts += np.bincount(index, minlength=self.bins)
        self.max_abs = max(self.max_abs, batch_max)
        self.minimum = min(self.minimum, float(raw.min()))
        self.count += int(magnitudes.size)
        self.zeros += int(np.count_nonzero(magnitudes == 0))

    def _widen(self, new_range: float) -> None:
        if self._range > 0:
            factor = int(round(new_range / self._range))
            padded = np.zeros(-(-self.bins // factor) * factor, dtype=np.int64)
            padded[: self.bins] = self._counts
            merged = padded.reshape(-1, factor).sum(axis=1)
            self._counts = np.zeros(self.bins, dtype=np.int64)
            self._counts[: merged.size] = merged
        self._range = new_range

    @property
    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """``(counts, edges)``: ``bins`` int64 counts and ``bins + 1`` float64 edges from 0."""
        edges = np.arange(self.bins + 1, dtype=np.float64) * (self._range / self.bins)
        return self._counts.copy(), edges

    def __repr__(self) -> str:
        return f"ActivationObserver({self.name!r}, count={self.count}, max_abs={self.max_abs:g})"


def kl_divergence_threshold(counts: np.ndarray, edges: np.ndarray, *, levels: int = 128) -> float:
    """The clipping threshold (a bin edge) minimising KL(P || Q), as TensorRT's calibration does.

    For ``i`` kept bins (``levels <= i <= `` the last non-empty bin): P is the histogram cut after
    bin ``i - 1`` with the cut-off counts added to that bin; Q merges the kept bins (without the
    cut-off counts) into ``levels`` near-equal groups, spreads each group's count evenly over its
    bins where P is non-zero, and is mixed with a little of the uniform distribution over P's
    support so it is never 0 where P is not. Returns ``edges[i]`` of the best ``i``.
    Computed from prefix sums in O(levels) per candidate.
    """
    counts, edges = _checked_histogram("kl_divergence_threshold", counts, edges, levels)
    nonzero = np.flatnonzero(counts)
    end = int(nonzero[-1]) + 1 if nonzero.size else 1  # bins up to the last non-empty one
    if end <= levels:
        return float(edges[end])
    total = counts.sum()
    cum = np.concatenate(([0.0], np.cumsum(counts)))  # cum[b] = sum of counts[:b]
    with np.errstate(divide="ignore", invalid="ignore"):
        c_log_c = np.where(counts > 0, counts * np.log(counts), 0.0)
    cum_clogc = np.concatenate(([0.0], np.cumsum(c_log_c)))
    cum_nz = np.concatenate(([0], np.cumsum(counts > 0)))

    candidates = np.arange(levels, end + 1)
    divergence = np.empty(candidates.size)
    for lo in range(0, candidates.size, _CHUNK):
        divergence[lo : lo + _CHUNK] = _divergences(
            candidates[lo : lo + _CHUNK], counts, total, cum, cum_clogc, cum_nz, levels
        )
    best = int(candidates[int(np.argmin(divergence))])
    return float(edges[best])


def _divergences(
    kept: np.ndarray,
    counts: np.ndarray,
    total: float,
    cum: np.ndarray,
    cum_clogc: np.ndarray,
    cum_nz: np.ndarray,
    levels: int,
) -> np.ndarray:
    """KL(P || Q) for each number of kept bins in ``kept`` (see :func:`kl_divergence_threshold`)."""
    last = kept - 1
    outliers = total - cum[kept]
    last_p = counts[last] + outliers  # count of P's last bin
    last_nz = (last_p > 0).astype(np.int64) - (counts[last] > 0)  # change of the last bin's non-zero flag

    # sum of p log p over the kept bins, with p = count / total
    with np.errstate(divide="ignore", invalid="ignore"):
        last_term = np.where(last_p > 0, last_p * np.log(last_p), 0.0)
    p_log_p = (cum_clogc[last] + last_term) / total - math.log(total)

    # group boundaries: group j holds bins [start[j], start[j + 1])
    bounds = (np.arange(levels + 1)[None, :] * kept[:, None]) // levels
    group_count = cum[bounds[:, 1:]] - cum[bounds[:, :-1]]
    group_nz = cum_nz[bounds[:, 1:]] - cum_nz[bounds[:, :-1]]
    group_nz[:, -1] += last_nz
    group_p = group_count / total
    group_p[:, -1] += outliers / total
    support = group_nz.sum(axis=1)
    kept_count = cum[kept]

    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.where(group_nz > 0, group_count / (kept_count[:, None] * group_nz), 0.0)
        spread = np.nan_to_num(spread)
        q = (1 - _SMOOTHING) * spread + _SMOOTHING / support[:, None]
        cross = np.where(group_p > 0, group_p * np.log(q), 0.0)
    return p_log_p - cross.sum(axis=1)


def _checked_histogram(caller: str, counts: np.ndarray, edges: np.ndarray,
                       levels: int) -> tuple[np.ndarray, np.ndarray]:
    """``counts`` and ``edges`` as float64 arrays, after checking they make a histogram."""
    counts = np.asarray(counts, dtype=np.float64)
    edges = np.asarray(edges, dtype=np.float64)
    if counts.ndim != 1 or edges.shape != (counts.size + 1,):
        raise ValueError(f"{caller}: needs n counts and n + 1 edges, got {counts.shape}, {edges.shape}")
    if np.any(counts < 0) or levels < 1:
        raise ValueError(f"{caller}: counts must be >= 0 and levels >= 1")
    return counts, edges


def mse_threshold(counts: np.ndarray, edges: np.ndarray, *, levels: int = 127, power2: bool = False) -> float:
    """The clipping threshold (a bin edge) with the least expected squared quantization error.

    For a threshold ``T`` the step is ``T / levels``: values below ``T`` lose their rounding
    error, values above it the distance to ``T``. Each bin's values are taken as spread evenly
    over the bin, so the rounding error of a bin narrower than a step is exact rather than the
    ``step**2 / 12`` of a wide one. Counts should leave out exact zeros (no error at any ``T``).
    ``power2``: only powers of two are candidates (the edges of an :class:`ActivationObserver`
    histogram include every power of two up to its range), so the scale needs no rounding up.
    """
    counts, edges = _checked_histogram("mse_threshold", counts, edges, levels)
    nonzero = np.flatnonzero(counts)
    if not nonzero.size:
        return float(edges[1])
    end = int(nonzero[-1]) + 1
    if power2:  # the least power-of-two edge index at or above the last non-empty bin
        end = min(counts.size, 1 << (end - 1).bit_length())
    low, high = edges[:end], edges[1:end + 1]
    weights = counts[:end] / (high - low)  # per unit of |x|: the integrals below are over each bin
    # the clipped tail: sum over bins >= i of integral (x - T)^2, from prefix sums of moments
    first, second = (high**2 - low**2) / 2, (high**3 - low**3) / 3
    tail = lambda moment: np.concatenate((np.cumsum((weights * moment)[::-1])[::-1], [0.0]))  # noqa: E731
    tail_count, tail_first, tail_second = tail(high - low), tail(first), tail(second)

    def errors(kept: np.ndarray) -> np.ndarray:
        threshold = edges[kept]
        clipped = tail_second[kept] - 2 * threshold * tail_first[kept] + threshold**2 * tail_count[kept]
        step = (threshold / levels)[:, None]
        rounding = (_rounding_integral(high[None, :], step) - _rounding_integral(low[None, :], step)) * weights
        return clipped + np.where(np.arange(end)[None, :] < kept[:, None], rounding, 0.0).sum(axis=1)

    if power2:
        candidates = np.array([i for i in (1 << k for k in range(end.bit_length())) if i <= end
                               and math.frexp(edges[i])[0] == 0.5])
        if candidates.size:
            return float(edges[int(candidates[int(np.argmin(errors(candidates)))])])
    # every 8th edge, then the edges around the best of them (the error varies slowly with T)
    coarse = np.unique(np.append(np.arange(1, end + 1, _REFINE), end))
    centre = int(coarse[int(np.argmin(errors(coarse)))])
    fine = np.arange(max(1, centre - _REFINE), min(end, centre + _REFINE) + 1)
    best = int(fine[int(np.argmin(errors(fine)))])
    return float(edges[best])


def _rounding_integral(x: np.ndarray, step: np.ndarray) -> np.ndarray:
    """``integral from 0 to x`` of ``(t - step * round(t / step))**2 dt`` (elementwise, x >= 0)."""
    shifted = x + step / 2
    periods = np.floor(shifted / step)
    rest = shifted - periods * step - step / 2  # in [-step/2, step/2)
    return periods * step**3 / 12 + (rest**3 + (step / 2) ** 3) / 3 - (step / 2) ** 3 / 3


def percentile_threshold(observer: ActivationObserver, percentile: float) -> float:
    """The |x| below which ``percentile`` % of the observed values lie (linear within a bin).

    ``100`` gives exactly ``max_abs``.
    """
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile={percentile!r} must be in (0, 100]")
    if observer.count == 0:
        raise ValueError(f"ActivationObserver {observer.name!r} has seen no data")
    if percentile == 100:
        return observer.max_abs
    counts, edges = observer.histogram
    cum = np.cumsum(counts)
    target = percentile / 100.0 * observer.count
    index = int(np.searchsorted(cum, target, side="left"))
    index = min(index, counts.size - 1)
    before = cum[index] - counts[index]
    fraction = (target - before) / counts[index] if counts[index] else 1.0
    value = edges[index] + fraction * (edges[index + 1] - edges[index])
    return float(min(value, observer.max_abs))


def threshold(observer: ActivationObserver | None, config: QuantConfig, *, levels: int = 127) -> float:
    """The clipping threshold of one activation under ``config.calibrate_mode``.

    ``global_scale``: ``config.global_scale`` (``observer`` may be None); ``max``: ``max_abs``;
    ``percentile``: :func:`percentile_threshold`; ``kl_divergence`` / ``mse``:
    :func:`kl_divergence_threshold` / :func:`mse_threshold` of the histogram, at most ``max_abs``;
    ``levels``: the steps above zero (255 for an unsigned activation).
    """
    mode = config.calibrate_mode
    if mode == "global_scale":
        return float(config.global_scale)
    if observer is None or observer.count == 0:
        name = "an activation" if observer is None else repr(observer.name)
        raise ValueError(f"calibrate_mode={mode!r} needs calibration data for {name}, but none was observed")
    if mode == "max":
        return float(observer.max_abs)
    if mode == "percentile":
        return percentile_threshold(observer, config.percentile)
    if mode == "mse":
        counts, edges = observer.histogram
        counts[0] -= observer.zeros
        chosen = mse_threshold(counts, edges, levels=levels, power2=config.power2)
        return chosen if config.power2 else float(min(chosen, observer.max_abs))
    if mode == "kl_divergence":
        # Exact zeros stay exact at any threshold; left in, a ReLU's spike at 0 makes the
        # divergence favour the narrowest range, clipping most of the real values.
        counts, edges = observer.histogram
        counts[0] -= observer.zeros
        if counts.sum() < MIN_KL_SAMPLES:
            # A few hundred values leave the 2048-bin histogram mostly empty and the divergence
            # meaningless (it then picks the narrowest range): use the max instead.
            return float(observer.max_abs)
        return float(min(kl_divergence_threshold(counts, edges, levels=levels + 1), observer.max_abs))
    raise ValueError(f"unknown calibrate_mode {mode!r}")
