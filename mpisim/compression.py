"""Gradient compressors (codecs): a float32 vector -> the bytes an agent sends.

A codec is built by config name, ``REGISTRY[name](**params)``, and maps a
flat float32 vector x of length d to a fixed-size uint8 payload and back:

* ``nbytes(d)``: payload size in bytes (every codec here is fixed-size);
* ``encode(x, *, rng=None) -> np.ndarray``: the exact bytes on the wire,
  uint8, shape (nbytes(d),); ``decode(payload, d) -> Tensor`` (d,) float32;
* ``encode_rows(x, *, rngs=None, out=None)`` / ``decode_rows(payloads, d,
  out=None)``: the same for (a, d) rows at once (a rank's hosted agents;
  the server's n received payloads). ``encode(x, rng=g)`` is
  ``encode_rows(x[None], rngs=[g])[0]`` bit for bit, and row i of
  ``encode_rows(x, rngs=gs)`` is ``encode(x[i], rng=gs[i])``;
* ``name``, ``stochastic`` (needs a torch.Generator per row), ``norm_field``
  (the payload starts with a float32 scale that :func:`read_norm_field` /
  :func:`write_norm_field` reach), ``embeds_norm`` (the decoded vector
  carries the input's norm: Ghosh et al.'s class C_norm).

The compressors are those listed in Section 3 of Ghosh et al., "Communication
-Efficient and Byzantine-Robust Distributed Learning with Error Feedback"
(Definition 4, delta-approximate compressors), with
:func:`with_side_norm` adding the side information ||x||_q of their
Algorithm 1, C(x) = {||x||_q, Q(x)}.

Payload layouts (all multi-byte numbers little-endian; bit j of a bit stream
is bit j % 8, least significant first, of byte j // 8; unused bits of the
last byte are 0):

=============== ============================================ =====================
name            decoded vector                               payload bytes
=============== ============================================ =====================
``none``        x                                            4d: x as float32
``sign``        sign(x) in {-1, +1}                          ceil(d/8): bit i = 1
                                                             iff coordinate i is +1
``scaled_sign`` (||x||_1 / d) sign(x)  (l1-QSGD, Karimireddy  4 + ceil(d/8): float32
                et al. 2019)                                 scale, then the signs
``topk``        x on the k largest |x_i|, 0 elsewhere        8k: k float32 values,
                                                             then their k int32
                                                             indices, ascending
``qsgd``        ||x||_2 sign(x_i) l_i / s, l_i stochastic     4 + ceil(d(1+b)/8),
                levels in {0..s} (Alistarh et al. 2017)      b = ceil(log2(s+1)):
                                                             float32 ||x||_2, then
                                                             per coordinate a
                                                             (1+b)-bit field
=============== ============================================ =====================

Sign convention (``sign``, ``scaled_sign``, :func:`pack_signs`, the sign bit
of ``qsgd``): bit 1 means +1 and bit 0 means -1, and a coordinate is -1 only
when ``x_i < 0``. So sign(0) = sign(-0.0) = +1, and NaN (which is not < 0)
is +1 too.

Norms are computed in float64 from the float32 input and rounded once to
float32: ||x||_1 as a float64 (pairwise) sum of |x_i|, ||x||_2 as the square
root of a float64 sum of float64 squares (``np.einsum`` with float64
accumulation, so no entry below 1.8e308 ** 0.5 overflows). Both are numpy
reductions along each row, which give the same value for a row whether it
is reduced alone or among others, on any number of torch threads; the
float32 result is the correctly rounded norm except when the float64 sum
falls within its own rounding error of a float32 rounding boundary.
No full float64 copy of the input is made.

Non-finite input: ``none`` and ``topk`` send the values as they are (topk
ranks NaN as +inf, ties with +-inf going to the lower index); ``sign`` sends
NaN as +1; ``scaled_sign`` and ``qsgd`` send a NaN or inf norm (also when a
finite ||x|| exceeds float32's range) with all ``qsgd`` levels 0, so the row
decodes to NaN everywhere (inf * 0), visibly faulty.

Decoding never trusts a payload beyond its size: a ``topk`` index outside
[0, d) is ignored and repeated indices add up (the decoded vector is
sum_j v_j e_{i_j}); a ``qsgd`` level field above s decodes as written
(level / s). A payload of the wrong width raises ValueError.

Speed (one thread, d = 431,080): bits are packed with ``np.packbits`` on a
boolean array and unpacked through a 256 x 8 float32 lookup table indexed by
the payload bytes; qsgd's (1+b)-bit fields are packed and read in groups of
8 coordinates (exactly 1+b bytes) with shifts on 32-bit windows, one pass per
position in the group, never a Python loop over coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from . import registry

__all__ = [
    "REGISTRY",
    "Codec",
    "NoCompression",
    "Sign",
    "ScaledSign",
    "TopK",
    "QSGD",
    "SideNorm",
    "with_side_norm",
    "check",
    "param_defaults",
    "read_norm_field",
    "write_norm_field",
    "side_norms",
    "pack_signs",
    "unpack_signs",
]

Tensor = torch.Tensor

_F32 = np.dtype("<f4")
_I32 = np.dtype("<i4")

#: byte value -> its 8 signs as float32 (+1 for a set bit), least significant bit first
_SIGN_TABLE = np.where((np.arange(256)[:, None] >> np.arange(8)) & 1, 1.0, -1.0).astype(np.float32)

#: qsgd levels are exact float32 integers and a field (1 + b <= 16 bits) fits a small table
_QSGD_MAX_S = 2 ** 15 - 1


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _rows_of(name: str, x: Any) -> np.ndarray:
    """x as a C-contiguous (a, d) float32 numpy view (a copy only if x is not contiguous)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name}: rows must have shape (a, d) with a, d >= 1, got {tuple(x.shape)}")
    if x.dtype != torch.float32:
        raise ValueError(f"{name}: x must be float32, got {x.dtype}")
    if x.device.type != "cpu":
        raise ValueError(f"{name}: x must live on the CPU, got {x.device}")
    return x.detach().contiguous().numpy()


def _byte_rows(name: str, payloads: Any, width: int | None, what: str) -> np.ndarray:
    p = np.asarray(payloads)
    if p.dtype != np.uint8 or p.ndim != 2:
        raise ValueError(f"{name}: {what} must be a 2-D uint8 array, got {p.dtype} of shape {p.shape}")
    if width is not None and p.shape[1] != width:
        raise ValueError(f"{name}: {what} must have {width} bytes a row, got {p.shape[1]}")
    return p


def _norm_l1(X: np.ndarray) -> np.ndarray:
    """(a,) float64 ||row||_1: float64 pairwise sum of the float32 |x_i|."""
    return np.add.reduce(np.abs(X), axis=1, dtype=np.float64)


def _norm_l2(X: np.ndarray) -> np.ndarray:
    """(a,) float64 ||row||_2: float64 squares, float64 accumulation (no overflow)."""
    return np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64))


def _pack_signs_into(X: np.ndarray, out: np.ndarray) -> None:
    """Write the sign bits of the rows of X (bit 1 unless x_i < 0) into out (a, ceil(d/8))."""
    d = X.shape[1]
    packed = np.packbits(np.less(X, 0), axis=1, bitorder="little")  # bit 1 = negative ...
    np.invert(packed, out=packed)                                   # ... flipped: bit 1 = +1
    if d % 8:
        packed[:, -1] &= np.uint8((1 << (d % 8)) - 1)               # padding bits stay 0
    out[...] = packed


def _signs_from_bits(bits: np.ndarray, d: int, out: np.ndarray) -> None:
    """Write +-1 for the first d bits of every row of bits into out (n, d) float32 (C-contiguous)."""
    n = bits.shape[0]
    full, rem = divmod(d, 8)
    if full:
        # Splitting the contiguous last axis of a C-contiguous array is a view, so
        # np.take writes straight into out (mode="clip" avoids a buffered copy).
        np.take(_SIGN_TABLE, bits[:, :full], axis=0, mode="clip",
                out=out[:, :8 * full].reshape(n, full, 8))
    if rem:
        out[:, 8 * full:] = _SIGN_TABLE[bits[:, full], :rem]


# --------------------------------------------------------------------------
# Codecs
# --------------------------------------------------------------------------

class Codec:
    """A fixed-size compressor; subclasses implement ``nbytes``, ``_encode_into``
    and ``_decode_into`` on numpy rows, the public methods validate and route."""

    name: str = ""
    stochastic: bool = False
    norm_field: bool = False
    embeds_norm: bool = False

    def nbytes(self, d: int) -> int:
        """Payload size in bytes for a float32 vector of length d."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The codec's parameters, as given to its constructor."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    # -- public API --------------------------------------------------------

    def encode(self, x: Tensor, *, rng: torch.Generator | None = None) -> np.ndarray:
        """The payload (uint8, shape (nbytes(d),)) of the float32 vector x of shape (d,).

        ``rng`` is required by stochastic codecs and ignored by the others.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.name}: x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 1:
            raise ValueError(f"{self.name}: x must be 1-D, got shape {tuple(x.shape)}")
        if self.stochastic and rng is None:
            raise ValueError(f"{self.name}: encode needs rng=<torch.Generator> (the codec is stochastic)")
        return self.encode_rows(x[None], rngs=None if rng is None else [rng])[0]

    def decode(self, payload: np.ndarray, d: int) -> Tensor:
        """The decoded (d,) float32 vector of one payload of nbytes(d) bytes."""
        p = np.asarray(payload)
        if p.ndim != 1:
            raise ValueError(f"{self.name}: payload must be 1-D, got shape {p.shape}")
        return self.decode_rows(p[None], d)[0]

    def encode_rows(self, x: Tensor, *, rngs: Sequence[torch.Generator] | None = None,
                    out: np.ndarray | None = None) -> np.ndarray:
        """Payloads (a, nbytes(d)) uint8 of the rows of x (a, d) float32.

        ``rngs``: one torch.Generator per row for stochastic codecs (row i
        draws only from ``rngs[i]``); ignored otherwise. ``out``: a writable
        (a, nbytes(d)) uint8 array to write into (it is returned).
        """
        X = _rows_of(self.name, x)
        a, d = X.shape
        width = self.nbytes(d)
        gens = None
        if self.stochastic:
            if rngs is None or len(rngs) != a or not all(isinstance(g, torch.Generator) for g in rngs):
                got = "None" if rngs is None else f"{len(rngs)} items"
                raise ValueError(f"{self.name}: encode_rows needs rngs, one torch.Generator per row "
                                 f"({a}), got {got}")
            gens = list(rngs)
        if out is None:
            out = np.empty((a, width), dtype=np.uint8)
        else:
            out = _byte_rows(self.name, out, width, "out")
            if out.shape[0] != a:
                raise ValueError(f"{self.name}: out must have {a} rows, got {out.shape[0]}")
        self._encode_into(X, out, gens)
        return out

    def decode_rows(self, payloads: np.ndarray, d: int, out: Tensor | None = None) -> Tensor:
        """Decoded rows (n, d) float32 of payloads (n, nbytes(d)) uint8.

        ``out``: a float32 (n, d) tensor to write into (it is returned).
        Raises ValueError when the payloads are not nbytes(d) bytes wide.
        """
        if not _is_int(d) or d < 1:
            raise ValueError(f"{self.name}: d must be an integer >= 1, got d={d!r}")
        P = _byte_rows(self.name, payloads, self.nbytes(d), f"payloads for d={d}")
        n = P.shape[0]
        if out is None:
            target = torch.empty(n, d, dtype=torch.float32)
        else:
            if not isinstance(out, torch.Tensor) or out.dtype != torch.float32 or tuple(out.shape) != (n, d):
                raise ValueError(f"{self.name}: out must be a float32 tensor of shape {(n, d)}")
            target = out if out.is_contiguous() else torch.empty(n, d, dtype=torch.float32)
        if n:
            self._decode_into(P, d, target.numpy())
        if out is not None and target is not out:
            out.copy_(target)
            return out
        return target

    # -- implementation ----------------------------------------------------

    def _encode_into(self, X: np.ndarray, out: np.ndarray, gens: list | None) -> None:
        raise NotImplementedError

    def _decode_into(self, P: np.ndarray, d: int, out: np.ndarray) -> None:
        raise NotImplementedError


class NoCompression(Codec):
    """``none``: the vector itself, 4d bytes of little-endian float32."""

    name = "none"
    embeds_norm = True

    def nbytes(self, d: int) -> int:
        return 4 * d

    def _encode_into(self, X, out, gens):
        out[...] = np.ascontiguousarray(X, dtype=_F32).view(np.uint8)

    def _decode_into(self, P, d, out):
        out[...] = np.ascontiguousarray(P).view(_F32)


class Sign(Codec):
    """``sign`` (signSGD, Bernstein et al. 2018): sign(x) with sign(0) = +1,
    one bit a coordinate (1 = +1, 0 = -1), ceil(d/8) bytes. Carries no norm
    (Ghosh et al.'s C_normless)."""

    name = "sign"
    embeds_norm = False

    def nbytes(self, d: int) -> int:
        return -(-d // 8)

    def _encode_into(self, X, out, gens):
        _pack_signs_into(X, out)

    def _decode_into(self, P, d, out):
        _signs_from_bits(P, d, out)


class ScaledSign(Codec):
    """``scaled_sign`` (l1-QSGD, Karimireddy et al. 2019; Ghosh et al. item 5):
    Q(x) = (||x||_1 / d) sign(x).

    Payload: float32 scale ||x||_1 / d (computed in float64, rounded once),
    then the sign bits as in ``sign``; 4 + ceil(d/8) bytes. The scale is the
    norm field a faulty agent may rewrite.
    """

    name = "scaled_sign"
    norm_field = True
    embeds_norm = True

    def nbytes(self, d: int) -> int:
        return 4 + -(-d // 8)

    def _encode_into(self, X, out, gens):
        scale = (_norm_l1(X) / X.shape[1]).astype(_F32)
        out[:, :4] = scale.reshape(-1, 1).view(np.uint8)
        _pack_signs_into(X, out[:, 4:])

    def _decode_into(self, P, d, out):
        _signs_from_bits(P[:, 4:], d, out)
        out *= read_norm_field(P)[:, None]


class TopK(Codec):
    """``topk`` (Ghosh et al. item 2): x on its k largest |x_i|, 0 elsewhere.

    Give exactly one of ``k`` (an integer, 1 <= k <= d) or ``ratio`` in
    (0, 1], which keeps k = max(1, ceil(ratio * d)) coordinates (ceil, so
    that at least a ``ratio`` share is kept: delta >= ratio in Definition 4;
    a product within 1e-9 relative of an integer counts as that integer, so
    ratio = k/d gives k despite binary rounding). Ties in |x_i| go to the
    lower index; NaN ranks as +inf.

    Payload: k float32 values x_i, then their k int32 indices in ascending
    order; 8k bytes. Selection is O(d): ``np.partition`` finds the k-th
    largest |x_i| = t, then every |x_i| > t is kept plus the lowest-index
    entries equal to t.
    """

    name = "topk"
    embeds_norm = True

    def __init__(self, *, k: int | None = None, ratio: float | None = None):
        msg = _topk_problems(k=k, ratio=ratio, d=None)
        if msg:
            raise ValueError(msg)
        self.k = None if k is None else int(k)
        self.ratio = None if ratio is None else float(ratio)

    def params(self):
        return {"k": self.k, "ratio": self.ratio}

    def k_for(self, d: int) -> int:
        """Number of coordinates kept for vectors of length d."""
        if not _is_int(d) or d < 1:
            raise ValueError(f"topk: d must be an integer >= 1, got d={d!r}")
        if self.k is not None:
            if self.k > d:
                raise ValueError(f"topk: k must be <= d, got k={self.k}, d={d}")
            return self.k
        return _k_of_ratio(self.ratio, d)

    def nbytes(self, d: int) -> int:
        return 8 * self.k_for(d)

    def _encode_into(self, X, out, gens):
        a, d = X.shape
        k = self.k_for(d)
        A = np.abs(X)
        if np.isnan(A.max()):       # np.partition ranks NaN above +inf; here they tie
            A[np.isnan(A)] = np.inf
        kth = d - k
        t = np.partition(A, kth, axis=1)[:, kth:kth + 1]  # (a, 1): k-th largest |x_i|
        keep = A > t                                      # fewer than k per row
        need = k - np.count_nonzero(keep, axis=1)         # >= 1 entries equal to t per row
        rows, cols = np.nonzero(A == t)                   # row-major: ascending index per row
        first = np.searchsorted(rows, np.arange(a))
        rank = np.arange(rows.size) - first[rows]
        chosen = rank < need[rows]
        keep[rows[chosen], cols[chosen]] = True
        idx = np.nonzero(keep)[1].reshape(a, k)           # exactly k per row, ascending
        vals = np.take_along_axis(X, idx, axis=1)
        out[:, :4 * k] = np.ascontiguousarray(vals, dtype=_F32).view(np.uint8)
        out[:, 4 * k:] = idx.astype(_I32).view(np.uint8)

    def _decode_into(self, P, d, out):
        n = P.shape[0]
        k = P.shape[1] // 8
        vals = np.ascontiguousarray(P[:, :4 * k]).view(_F32)
        idx = np.ascontiguousarray(P[:, 4 * k:]).view(_I32).astype(np.int64)
        ok = (idx >= 0) & (idx < d)
        rows = np.broadcast_to(np.arange(n)[:, None], idx.shape)
        out[...] = 0.0
        if np.all(np.diff(idx, axis=1) > 0):     # distinct indices (an honest payload)
            out[rows[ok], idx[ok]] = vals[ok]    # keeps -0.0
        else:
            np.add.at(out, (rows[ok], idx[ok]), vals[ok])


class QSGD(Codec):
    """``qsgd`` with s levels (Alistarh et al. 2017, eq. (3.1); Ghosh et al. item 4):
    Q(x)_i = ||x||_2 sign(x_i) xi_i with xi_i = l/s or (l+1)/s, where
    l = floor(s |x_i| / ||x||_2); (l+1)/s is chosen with probability
    s |x_i| / ||x||_2 - l, so E[Q(x)] = x. Q(0) = 0.

    ``s``: an integer in [1, 32767]; default 1 (ternary: 0 or +-||x||_2).
    Payload: float32 ||x||_2 (float64 accumulation, rounded once), then one
    bit stream of d fields of w = 1 + b bits, b = ceil(log2(s+1)): field i
    holds the sign bit (1 = +, as in ``sign``) and then the level l_i in b
    bits, least significant first; 4 + ceil(d w / 8) bytes.

    In float32: r_i = (|x_i| / n32) * s with n32 the float32 norm (so
    r_i <= s exactly), l_i = floor(r_i) + [u_i < r_i - floor(r_i)] with
    u_i = ``torch.rand(d, generator=rng)`` (each encode draws d float32 from
    its row's generator). Decoding returns n32 * sign * float32(l_i / s).
    """

    name = "qsgd"
    stochastic = True
    norm_field = True
    embeds_norm = True

    def __init__(self, *, s: int = 1):
        msg = _qsgd_problems(s=s)
        if msg:
            raise ValueError(msg)
        self.s = int(s)
        self.bits = self.s.bit_length()       # = ceil(log2(s + 1)): levels 0..s
        self.width = 1 + self.bits
        fields = np.arange(1 << self.width)
        level = (fields >> 1).astype(np.float32) / np.float32(self.s)
        # field -> sign * level / s; level 0 decodes as +0.0 whichever the sign bit
        self._table = (np.where(fields & 1, level, -level) + np.float32(0.0)).astype(np.float32)

    def params(self):
        return {"s": self.s}

    def nbytes(self, d: int) -> int:
        return 4 + -(-d * self.width // 8)

    def _encode_into(self, X, out, gens):
        a, d = X.shape
        w, s = self.width, np.float32(self.s)
        n32 = _norm_l2(X).astype(_F32)
        out[:, :4] = n32.reshape(-1, 1).view(np.uint8)
        bad = ~np.isfinite(n32) | (n32 == 0)
        divisor = np.where(bad, np.float32(1.0), n32).astype(np.float32)

        u = np.empty((a, d), dtype=np.float32)
        for i, g in enumerate(gens):          # row i draws only from its own generator
            torch.rand(d, generator=g, out=torch.from_numpy(u[i]))

        r = np.abs(X)
        r /= divisor[:, None]
        r *= s
        if bad.any():                         # zero or non-finite norm: every level 0
            r[bad] = 0.0
        level = np.floor(r)
        r -= level                            # probability of rounding up
        level += np.less(u, r)
        # field = 2 * level + (x_i >= 0 or NaN), exact in float32 below 2^24
        level *= np.float32(2.0)
        level += np.float32(1.0)
        level -= np.less(X, 0)

        groups = -(-d // 8)
        fields = np.zeros((a, groups * 8), dtype=np.uint32)
        fields[:, :d] = level
        out[:, 4:] = _pack_fields(fields.reshape(a, groups, 8), w)[:, :self.nbytes(d) - 4]

    def _decode_into(self, P, d, out):
        n = P.shape[0]
        w = self.width
        groups = -(-d // 8)
        stream = np.zeros((n, groups * w), dtype=np.uint8)
        stream[:, :P.shape[1] - 4] = P[:, 4:]
        values = np.empty((n, groups, 8), dtype=np.float32)
        for j, field in _unpack_fields(stream.reshape(n, groups, w), w):
            values[:, :, j] = np.take(self._table, field, mode="clip")
        with np.errstate(invalid="ignore"):     # a non-finite norm times level 0 is NaN, as documented
            np.multiply(values.reshape(n, groups * 8)[:, :d], read_norm_field(P)[:, None], out=out)


def _pack_fields(fields: np.ndarray, w: int) -> np.ndarray:
    """(a, G, 8) uint32 fields of w bits -> (a, G * w) bytes of the little-endian bit stream.

    Eight w-bit fields take exactly w bytes, so field j of every group starts
    at byte (j w) // 8 of its group, bit (j w) % 8: one vectorised pass per j.
    """
    a, groups, _ = fields.shape
    stream = np.zeros((a, groups, w), dtype=np.uint8)
    for j in range(8):
        byte, shift = divmod(j * w, 8)
        window = fields[:, :, j] << np.uint32(shift)
        for b in range((shift + w + 7) // 8):
            np.bitwise_or(stream[:, :, byte + b], (window >> np.uint32(8 * b)).astype(np.uint8),
                          out=stream[:, :, byte + b])
    return stream.reshape(a, groups * w)


def _unpack_fields(stream: np.ndarray, w: int):
    """Inverse of :func:`_pack_fields`: yields (j, (n, G) field j of every group)."""
    mask = np.uint32((1 << w) - 1)
    for j in range(8):
        byte, shift = divmod(j * w, 8)
        window = stream[:, :, byte].astype(np.uint32)
        for b in range(1, (shift + w + 7) // 8):
            window |= stream[:, :, byte + b].astype(np.uint32) << np.uint32(8 * b)
        if shift:
            window >>= np.uint32(shift)
        window &= mask
        yield j, window


class SideNorm(Codec):
    """An inner codec plus the side information ||x||_q (Ghosh et al. Algorithm 1).

    Payload: float32 ||x||_q of the vector that was compressed (float64
    accumulation, rounded once), then the inner payload; 4 + inner bytes.
    Decoding returns the inner codec's decoded vector and ignores the
    header, which :func:`side_norms` (= :func:`read_norm_field`) reads. The
    inner codec's own norm field, if any, starts at byte 4.
    """

    norm_field = True

    def __init__(self, inner: Codec, q: int):
        if not isinstance(inner, Codec):
            raise TypeError(f"with_side_norm: codec must be a Codec, got {type(inner).__name__}")
        if q not in (1, 2) or isinstance(q, bool):
            raise ValueError(f"with_side_norm: q must be 1 or 2, got q={q!r}")
        self.inner = inner
        self.q = int(q)
        self.name = f"{inner.name}+norm{self.q}"
        self.stochastic = inner.stochastic
        self.embeds_norm = inner.embeds_norm

    def params(self):
        return {"inner": self.inner, "q": self.q}

    def nbytes(self, d: int) -> int:
        return 4 + self.inner.nbytes(d)

    def _encode_into(self, X, out, gens):
        norm = _norm_l1(X) if self.q == 1 else _norm_l2(X)
        out[:, :4] = norm.astype(_F32).reshape(-1, 1).view(np.uint8)
        self.inner._encode_into(X, out[:, 4:], gens)

    def _decode_into(self, P, d, out):
        self.inner._decode_into(P[:, 4:], d, out)


def with_side_norm(codec: Codec, q: int) -> SideNorm:
    """``codec`` with ||x||_q (q in {1, 2}) sent in front of its payload; see :class:`SideNorm`."""
    return SideNorm(codec, q)


#: config name -> codec class; ``REGISTRY[name](**params)`` builds the codec
#: (:data:`mpisim.registry.codecs`: built-ins and plugins alike).
REGISTRY = registry.codecs


# --------------------------------------------------------------------------
# Parameter checks
# --------------------------------------------------------------------------

def _k_of_ratio(ratio: float, d: int) -> int:
    v = ratio * d
    near = round(v)
    return max(1, near if abs(v - near) <= 1e-9 * v else math.ceil(v))


def _topk_problems(*, k: Any, ratio: Any, d: int | None) -> str | None:
    if (k is None) == (ratio is None):
        return f"topk: give exactly one of k and ratio, got k={k!r}, ratio={ratio!r}"
    if k is not None:
        if not _is_int(k) or k < 1:
            return f"topk: k must be an integer >= 1, got k={k!r}"
        if d is not None and k > d:
            return f"topk: k must be <= d, got k={k}, d={d}"
    elif not _is_real(ratio) or not (0 < ratio <= 1):
        return f"topk: ratio must be a number in (0, 1], got ratio={ratio!r}"
    return None


def _qsgd_problems(*, s: Any) -> str | None:
    if not _is_int(s) or not (1 <= s <= _QSGD_MAX_S):
        return (f"qsgd: s must be an integer in [1, {_QSGD_MAX_S}] "
                f"(at most 16 bits a coordinate), got s={s!r}")
    return None


def _constructor_defaults(cls: type) -> dict[str, Any]:
    if cls.__init__ is object.__init__:
        return {}
    return registry.keyword_defaults(cls.__init__)


def add(name: str, cls: type[Codec], *, check: Callable[..., str | None] | None = None,
        reference: str = "", origin: str | None = None) -> type[Codec]:
    """Register codec class ``cls`` (:data:`mpisim.registry.codecs`; ``mpisim.register.codec``
    calls this too). ``check(d, **params)`` (every constructor parameter, defaults filled in)
    returns a message when the codec cannot be built for vectors of length d, else None."""
    registry.codecs.add(registry.Entry(
        kind="codec", name=name, obj=cls, params=_constructor_defaults(cls), check=check,
        description=registry.first_line(cls), reference=reference,
        origin=origin or registry.current_origin(cls)))
    return cls


_GHOSH = "Ghosh, Maity, Kadhe, Mazumdar, Ramchandran, 2021, Section 7"
for _name, _cls, _check, _reference in (
        ("none", NoCompression, None, "no compression: float32 as on the wire without [compression]"),
        ("sign", Sign, None, "Bernstein, Wang, Azizzadenesheli, Anandkumar, signSGD, ICML 2018"),
        ("scaled_sign", ScaledSign, None, f"Karimireddy, Rebjock, Stich, Jaggi, Error Feedback Fixes SignSGD, "
                                          f"ICML 2019; {_GHOSH}"),
        ("topk", TopK, lambda d, k, ratio: _topk_problems(k=k, ratio=ratio, d=d),
         f"Stich, Cordonnier, Jaggi, Sparsified SGD with Memory, NeurIPS 2018; {_GHOSH}"),
        ("qsgd", QSGD, lambda d, s: _qsgd_problems(s=s),
         f"Alistarh, Grubic, Li, Tomioka, Vojnovic, QSGD, NeurIPS 2017, eq 3.1; {_GHOSH}")):
    add(_name, _cls, check=_check, reference=_reference, origin="mpisim")


def param_defaults(name: str) -> dict[str, Any]:
    """Constructor parameters of codec ``name`` with their defaults,
    e.g. ``{'s': 1}`` for ``'qsgd'``; KeyError for an unknown name."""
    return dict(REGISTRY.entry(name).params)


def check(name: str, d: int, params: Mapping[str, Any] | None = None) -> str | None:
    """Message naming the parameter and its constraint when codec ``name``
    cannot be built with ``params`` for vectors of length d; None when it can."""
    if name not in REGISTRY:
        return f"unknown codec {name!r}; known codecs: {', '.join(sorted(REGISTRY))}"
    params = dict(params or {})
    defaults = param_defaults(name)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        accepted = ", ".join(defaults) if defaults else "none"
        return f"{name}: unknown parameter {unknown[0]!r}; accepted parameters: {accepted}"
    if not _is_int(d) or d < 1:
        return f"{name}: d must be an integer >= 1, got d={d!r}"
    problem = REGISTRY.entry(name).check
    return problem(d, **{**defaults, **params}) if problem else None


# --------------------------------------------------------------------------
# Norm field, sign bits (the vote itself is mpisim.rules.aggregators.majority_vote)
# --------------------------------------------------------------------------

def read_norm_field(payloads: np.ndarray) -> np.ndarray:
    """(n,) float32: the little-endian float32 in bytes 0-3 of every row of
    payloads (n, B) uint8. Only meaningful for codecs with ``norm_field``
    (checking that is the caller's job)."""
    P = _byte_rows("read_norm_field", payloads, None, "payloads")
    if P.shape[1] < 4:
        raise ValueError(f"read_norm_field: payloads must have >= 4 bytes a row, got {P.shape[1]}")
    return np.ascontiguousarray(P[:, :4]).view(_F32).reshape(-1).astype(np.float32)


def write_norm_field(payloads: np.ndarray, values: Any) -> None:
    """Overwrite bytes 0-3 of every row of payloads (n, B) uint8, in place,
    with ``values`` ((n,) or a scalar) as little-endian float32; what a
    faulty agent does to a codec with ``norm_field``."""
    P = _byte_rows("write_norm_field", payloads, None, "payloads")
    if P.shape[1] < 4:
        raise ValueError(f"write_norm_field: payloads must have >= 4 bytes a row, got {P.shape[1]}")
    v = np.broadcast_to(np.asarray(values, dtype=_F32), (P.shape[0],))
    P[:, :4] = np.ascontiguousarray(v).reshape(-1, 1).view(np.uint8)


#: the side norms of :class:`SideNorm` payloads (their norm field)
side_norms = read_norm_field


def pack_signs(x: Tensor) -> np.ndarray:
    """(a, ceil(d/8)) uint8 sign bits of the rows of x (a, d) float32:
    bit i % 8 of byte i // 8 is 1 unless x_i < 0 (so 0, -0.0 and NaN are +1);
    unused bits of the last byte are 0. The ``sign`` codec's payload."""
    X = _rows_of("pack_signs", x)
    out = np.empty((X.shape[0], -(-X.shape[1] // 8)), dtype=np.uint8)
    _pack_signs_into(X, out)
    return out


def unpack_signs(bits: np.ndarray, d: int, out: Tensor | None = None) -> Tensor:
    """(a, d) float32 +-1 from sign bits (a, ceil(d/8)) uint8 (inverse of :func:`pack_signs`)."""
    return Sign().decode_rows(bits, d, out=out)
