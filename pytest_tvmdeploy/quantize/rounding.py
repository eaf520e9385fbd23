"""Rounding int8 weights against the data: each weight's rounding error is compensated by the
weights not yet rounded, along the statistics of the site's inputs (the GPTQ method).

Rounding every weight to its nearest step minimises the error of each weight alone. What the
network needs is the error of each output, ``(W - Q) x``, small over the inputs it sees. With
``H = sum(x x^T)`` over calibration inputs (the *input Hessian*, one per conv group over its
im2col patches), rounding column by column and moving each column's error onto the columns
after it, weighted by the inverse of ``H``, minimises that output error greedily. The scales
are the usual ones (from max |w|); only the choice between the two neighbouring steps changes.
"""

from __future__ import annotations

import numpy as np

from pytest_tvmdeploy.quantize.graph import CONV, Site
from pytest_tvmdeploy.quantize.scales import QMAX, round_half_away

#: Added to the Hessian's diagonal, as a share of its mean: keeps it invertible when inputs
#: are correlated or constant (GPTQ's usual 1 %).
DAMPING = 0.01


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
    weights = site.weight.astype(np.float64)
    if site.kind == CONV:
        out_channels = weights.shape[0]
        groups = hessian.shape[0]
        rows = weights.reshape(groups, out_channels // groups, -1)
        steps = np.broadcast_to(np.asarray(scales, np.float64).reshape(-1), (out_channels,))
        rounded = _gptq(rows, hessian, steps.reshape(groups, -1, 1))
        return rounded.reshape(weights.shape)
    steps = np.broadcast_to(np.asarray(scales, np.float64).reshape(-1), (weights.shape[1],))
    return _gptq(weights.T[None], hessian, steps.reshape(1, -1, 1))[0].T.copy()


def _gptq(weights: np.ndarray, hessian: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """int8 of ``weights`` (groups, rows, k) at ``scales`` (groups, rows, 1), columns rounded in
    order with their errors spread over the later columns through ``hessian`` (groups, k, k)."""
    work = weights.copy()
    hessian = hessian.copy()
    diagonal = np.einsum("gkk->gk", hessian)
    unseen = diagonal == 0  # inputs that were always 0: their weights do not matter
    for group, column in zip(*np.nonzero(unseen)):
        hessian[group, column, column] = 1.0
    hessian += DAMPING * np.eye(hessian.shape[-1]) * np.einsum("gkk->gk", hessian).mean(axis=-1)[:, None, None]
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
