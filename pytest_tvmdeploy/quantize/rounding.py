"""Rounding int8 weights against the data: each weight's rounding error is compensated by the
weights not yet rounded, along the statistics of the site's inputs (the GPTQ method).

Rounding every weight to its nearest step minimises the error of each weight alone. What the
network needs is the error of each output, ``(W - Q) x``, small over the inputs it sees. With
``H = sum(x x^T)`` over calibration inputs (the *input Hessian*, one per conv group over its
im2col patches), rounding column by column and moving each column's error onto the columns
after it, weighted by the inverse of ``H``, minimises that output error greedily. The scales
are the usual ones (from max |w|); only the choice between the two neighbouring steps changes.

The *search* goes further: it also chooses each output channel's step, among a few slightly
coarser than max |w| / 127, by the same output error ``d^T H d`` (``d`` the channel's weight
error). A coarser step puts the grid where the channel's important weights fall; rows of at most
``EXHAUSTIVE_WEIGHTS`` weights (a 3x3 depthwise channel) are rounded by trying every up/down
choice, larger ones by GPTQ.
"""

from __future__ import annotations

import numpy as np

from pytest_tvmdeploy.quantize.graph import CONV, Site
from pytest_tvmdeploy.quantize.scales import QMAX, round_half_away

#: Added to the Hessian's diagonal, as a share of its mean: keeps it invertible when inputs
#: are correlated or constant (GPTQ's usual 1 %).
DAMPING = 0.01
#: The searched steps: max |w| / 127 times these (never finer: the largest weight stays in range).
SEARCH_FACTORS = tuple(1.0 + 0.01 * i for i in range(26))
#: Rows of GPTQ-rounded weights try every fifth factor only (each factor is one GPTQ pass).
GPTQ_SEARCH_FACTORS = SEARCH_FACTORS[::5]
#: Rows of at most this many weights try all 2**k roundings (512 for a 3x3 depthwise channel).
EXHAUSTIVE_WEIGHTS = 9


class InputHessian:
    """``sum(x x^T)`` of a site's inputs: per conv group over its (channels/groups * kh * kw)
    patches, or over a matmul's input rows."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.total: np.ndarray | None = None

    def update(self, values: np.ndarray) -> None:
        rows = self._rows(np.asarray(values, dtype=np.float64))  # (groups, n, k)
        product = np.einsum("gnk,gnl->gkl", rows, rows)
        self.total = product if self.total is None else self.total + product

    def _rows(self, values: np.ndarray) -> np.ndarray:
        site = self.site
        if site.kind != CONV:
            return values.reshape(1, -1, values.shape[-1])
        attrs = site.call.attrs
        top, left, bottom, right = (int(p) for p in attrs.padding)
        stride_h, stride_w = (int(s) for s in attrs.strides)
        dilation_h, dilation_w = (int(d) for d in attrs.dilation)
        groups = int(attrs.groups)
        _, per_group, kernel_h, kernel_w = site.weight.shape
        padded = np.pad(values, ((0, 0), (0, 0), (top, bottom), (left, right)))
        span_h, span_w = (kernel_h - 1) * dilation_h + 1, (kernel_w - 1) * dilation_w + 1
        windows = np.lib.stride_tricks.sliding_window_view(padded, (span_h, span_w), axis=(2, 3))
        windows = windows[:, :, ::stride_h, ::stride_w, ::dilation_h, ::dilation_w]  # n, c, oh, ow, kh, kw
        batch, channels, out_h, out_w = windows.shape[:4]
        grouped = windows.reshape(batch, groups, per_group, out_h, out_w, kernel_h, kernel_w)
        # rows: one per output position; columns in the weights' (channel, kh, kw) order
        return grouped.transpose(1, 0, 3, 4, 2, 5, 6).reshape(groups, batch * out_h * out_w, -1)


def gptq_weights(site: Site, scales: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """The site's int8 weights (its layout) at ``scales`` (per tensor, or per output channel),
    each rounding error compensated by the weights rounded after it."""
    rows, steps = _rows(site, scales, hessian.shape[0])
    return _from_rows(site, _gptq(rows, _conditioned(hessian), steps[..., None]))


def searched_weights(site: Site, scales: np.ndarray, hessian: np.ndarray, *,
                     per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """The site's int8 weights and their float32 scales (shape of ``scales``): each output
    channel's step (or the tensor's, without ``per_channel``) and rounding chosen for the least
    output error on the calibration inputs, starting from ``scales`` (those of max |w|)."""
    rows, steps = _rows(site, scales, hessian.shape[0])
    hessian = _conditioned(hessian)
    exhaustive = rows.shape[-1] <= EXHAUSTIVE_WEIGHTS
    best = None
    for factor in SEARCH_FACTORS if exhaustive else GPTQ_SEARCH_FACTORS:
        trial = (steps * factor).astype(np.float32).astype(np.float64)  # the steps the graph will use
        rounded = _best_rounding(rows, hessian, trial) if exhaustive else _gptq(rows, hessian, trial[..., None])
        error = rows - rounded * trial[..., None]
        cost = np.einsum("grk,gkl,grl->gr", error, hessian, error)
        if not per_channel:
            cost = np.broadcast_to(cost.sum(), cost.shape)
        if best is None:
            best = [rounded, trial, cost]
            continue
        better = cost < best[2]
        best[0] = np.where(better[..., None], rounded, best[0])
        best[1], best[2] = np.where(better, trial, best[1]), np.where(better, cost, best[2])
    rounded, chosen, _ = best
    chosen_scales = chosen.reshape(-1) if per_channel else chosen.reshape(-1)[0]  # rows are output channels
    return _from_rows(site, rounded), np.asarray(chosen_scales, dtype=np.float32)


def _rows(site: Site, scales: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """The weights as (groups, rows, k), one row per output channel, and each row's step (groups, rows)."""
    weights = site.weight.astype(np.float64)
    if site.kind == CONV:
        out_channels = weights.shape[0]
        steps = np.broadcast_to(np.asarray(scales, np.float64).reshape(-1), (out_channels,))
        return weights.reshape(groups, out_channels // groups, -1), steps.reshape(groups, -1)
    steps = np.broadcast_to(np.asarray(scales, np.float64).reshape(-1), (weights.shape[1],))
    return weights.T[None], steps.reshape(1, -1)


def _from_rows(site: Site, rows: np.ndarray) -> np.ndarray:
    """Rows of :func:`_rows` back in the site's weight layout."""
    return rows.reshape(site.weight.shape) if site.kind == CONV else rows[0].T.copy()


def _conditioned(hessian: np.ndarray) -> np.ndarray:
    """``hessian`` made invertible: inputs that were always 0 get a unit diagonal (their weights do
    not matter), and every diagonal gains ``DAMPING`` times its mean."""
    hessian = hessian.astype(np.float64, copy=True)
    diagonal = np.einsum("gkk->gk", hessian)
    for group, column in zip(*np.nonzero(diagonal == 0)):
        hessian[group, column, column] = 1.0
    return hessian + DAMPING * np.eye(hessian.shape[-1]) * np.einsum("gkk->gk", hessian).mean(axis=-1)[:, None, None]


def _best_rounding(weights: np.ndarray, hessian: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """int8 of ``weights`` (groups, rows, k) at ``steps`` (groups, rows): of the 2**k ways to round
    each row down or up, the one with the least ``d^T H d``."""
    k = weights.shape[-1]
    choices = (np.arange(2 ** k)[:, None] >> np.arange(k)) & 1  # (2**k, k): 0 = down, 1 = up
    floors = np.floor(weights / steps[..., None])
    candidates = np.clip(floors[..., None, :] + choices, -QMAX, QMAX)  # (g, r, 2**k, k)
    errors = weights[..., None, :] - candidates * steps[..., None, None]
    cost = np.einsum("grnk,gkl,grnl->grn", errors, hessian, errors)
    best = cost.argmin(axis=-1)
    return np.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :].astype(np.int8)


def _gptq(weights: np.ndarray, hessian: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """int8 of ``weights`` (groups, rows, k) at ``scales`` (groups, rows, 1), columns rounded in
    order with their errors spread over the later columns through the conditioned ``hessian``
    (groups, k, k)."""
    work = weights.copy()
    # upper Cholesky factor of the inverse: row i holds how column i's error moves onto the later ones
    upper = np.swapaxes(np.linalg.cholesky(np.linalg.inv(hessian)), -1, -2)
    rounded = np.empty(weights.shape, dtype=np.int8)
    for column in range(weights.shape[-1]):
        value = work[..., column]
        steps = np.clip(round_half_away(value / scales[..., 0]), -QMAX, QMAX)
        rounded[..., column] = steps
        error = (value - steps * scales[..., 0]) / upper[:, None, column, column]
        work[..., column + 1:] -= error[..., None] * upper[:, None, column, column + 1:]
    return rounded
