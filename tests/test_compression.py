"""Pure-tier tests of mpisim.compression: hand-worked payload bytes, the
compressors' formulas written out independently in plain numpy, payload
sizes, QSGD's unbiasedness, row and single-vector agreement, side norms,
the norm field and parameter checks."""

import math
import struct

import numpy as np
import pytest
import torch

from mpisim import compression as C

D_SIZES = (1, 7, 8, 9, 13, 431_080)


def t(values):
    return torch.tensor(values, dtype=torch.float32)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def f32_bytes(*values):
    return b"".join(struct.pack("<f", v) for v in values)


def all_codecs():
    """One instance of every codec and wrapper, with their names for ids."""
    inner = [C.REGISTRY["none"](), C.REGISTRY["sign"](), C.REGISTRY["scaled_sign"](),
             C.REGISTRY["topk"](k=3), C.REGISTRY["topk"](ratio=0.25), C.REGISTRY["qsgd"](s=1),
             C.REGISTRY["qsgd"](s=2), C.REGISTRY["qsgd"](s=15), C.REGISTRY["qsgd"](s=200)]
    return inner + [C.with_side_norm(C.REGISTRY["scaled_sign"](), 2),
                    C.with_side_norm(C.REGISTRY["sign"](), 1),
                    C.with_side_norm(C.REGISTRY["qsgd"](s=3), 2)]


CODECS = all_codecs()
CODEC_IDS = [f"{c.name}{c.params().get('s', '') or ''}{'k' if c.params().get('k') else ''}"
             for c in CODECS]


def encode(codec, x, seed=0):
    return codec.encode(x, rng=gen(seed) if codec.stochastic else None)


# Reference formulas, written from the definitions without the library.

def ref_sign(x):
    x = np.asarray(x, dtype=np.float32)
    return np.where(x < 0, -1.0, 1.0).astype(np.float32)


def ref_sign_bytes(x):
    x = np.asarray(x, dtype=np.float32)
    out = bytearray(-(-len(x) // 8))
    for i, v in enumerate(x):
        if not v < 0:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def ref_topk_indices(x, k):
    # a stable sort of -|x| keeps the lower index first among ties; NaN counts as +inf
    a = np.abs(np.asarray(x, dtype=np.float64))
    a[np.isnan(a)] = np.inf
    return np.sort(np.argsort(-a, kind="stable")[:k])


def exact_norm(x, q):
    x = np.asarray(x, dtype=np.float64)
    return math.fsum(np.abs(x)) if q == 1 else math.sqrt(math.fsum(x * x))


def qsgd_fields(payload, d, s):
    """(sign bits, levels) read bit by bit from a qsgd payload, independently of the codec."""
    b = max(1, math.ceil(math.log2(s + 1)))
    w = 1 + b
    bits = np.unpackbits(np.asarray(payload[4:]), bitorder="little")[:d * w].reshape(d, w)
    levels = (bits[:, 1:].astype(np.int64) << np.arange(b)).sum(axis=1)
    return bits[:, 0], levels


# --------------------------------------------------------------------------
# Payload sizes
# --------------------------------------------------------------------------

EXPECTED_BYTES = {
    "none": lambda d: 4 * d,
    "sign": lambda d: math.ceil(d / 8),
    "scaled_sign": lambda d: 4 + math.ceil(d / 8),
    "topk3": lambda d: 8 * 3,
    "topk_ratio": lambda d: 8 * max(1, math.ceil(0.25 * d)),
    "qsgd1": lambda d: 4 + math.ceil(d * 2 / 8),
    "qsgd2": lambda d: 4 + math.ceil(d * 3 / 8),
    "qsgd15": lambda d: 4 + math.ceil(d * 5 / 8),
    "qsgd200": lambda d: 4 + math.ceil(d * 9 / 8),
    "scaled_sign+norm2": lambda d: 8 + math.ceil(d / 8),
    "sign+norm1": lambda d: 4 + math.ceil(d / 8),
    "qsgd3+norm2": lambda d: 8 + math.ceil(d * 3 / 8),
}
SIZE_KEYS = ["none", "sign", "scaled_sign", "topk3", "topk_ratio", "qsgd1", "qsgd2", "qsgd15",
             "qsgd200", "scaled_sign+norm2", "sign+norm1", "qsgd3+norm2"]


@pytest.mark.parametrize("d", D_SIZES)
def test_payload_sizes_follow_the_table_and_match_the_encoded_bytes(d):
    x = torch.randn(d, generator=gen(d))
    for key, codec in zip(SIZE_KEYS, CODECS):
        if key == "topk3" and d < 3:
            continue
        payload = encode(codec, x)

        assert codec.nbytes(d) == EXPECTED_BYTES[key](d), (key, d)
        assert payload.dtype == np.uint8 and payload.shape == (codec.nbytes(d),), (key, d)


def test_topk_ratio_rounds_up_and_keeps_at_least_one():
    topk = C.REGISTRY["topk"]
    assert topk(ratio=0.01).k_for(431_080) == 4311        # ceil(4310.8)
    assert topk(ratio=0.3).k_for(10) == 3                 # 0.3 * 10 = 3.0000000000000004
    assert topk(ratio=0.01).k_for(10) == 1
    assert topk(ratio=1.0).k_for(7) == 7
    assert topk(ratio=0.5).k_for(9) == 5


# --------------------------------------------------------------------------
# Hand-worked payloads
# --------------------------------------------------------------------------

def test_sign_bytes_of_a_hand_worked_vector():
    # Prepare: bits, least significant first: 1 0 1 0 1 1 0 1 | 1
    x = t([1, -2, 0, -0.5, 3, -0.0, -7, 2, 5])
    # Execute
    payload = C.REGISTRY["sign"]().encode(x)
    decoded = C.REGISTRY["sign"]().decode(payload, 9)
    # Assert: 1 + 4 + 16 + 32 + 128 = 0xB5; unused bits of byte 1 are 0
    assert payload.tobytes() == bytes([0xB5, 0x01])
    assert decoded.tolist() == [1, -1, 1, -1, 1, 1, -1, 1, 1]


def test_scaled_sign_bytes_of_a_hand_worked_vector():
    x = t([1, -2, 0, -0.5, 3])
    payload = C.REGISTRY["scaled_sign"]().encode(x)
    decoded = C.REGISTRY["scaled_sign"]().decode(payload, 5)
    # ||x||_1 / d = 6.5 / 5 = 1.3 = 0x3FA66666 as float32; signs 1 0 1 0 1 = 21
    assert payload.tobytes() == bytes.fromhex("6666a63f") + bytes([21])
    s = np.float32(1.3)
    assert decoded.numpy().tolist() == [s, -s, s, -s, s]


def test_none_sends_little_endian_float32():
    x = t([1.0, -2.0, float("nan"), -0.0])
    payload = C.REGISTRY["none"]().encode(x)
    decoded = C.REGISTRY["none"]().decode(payload, 4)

    assert payload[:8].tobytes() == bytes.fromhex("0000803f000000c0")
    assert payload.tobytes() == x.numpy().astype("<f4").tobytes()
    assert decoded.numpy().tobytes() == x.numpy().tobytes()   # NaN and -0.0 bit for bit


def test_topk_bytes_and_ties_going_to_the_lower_index():
    # |x| = 3 5 5 1 3 0: the two 5s, then the 3 at index 0 beats the 3 at index 4
    x = t([3, -5, 5, 1, -3, 0])
    codec = C.REGISTRY["topk"](k=3)
    payload = codec.encode(x)

    assert payload.tobytes() == f32_bytes(3, -5, 5) + struct.pack("<3i", 0, 1, 2)
    assert codec.decode(payload, 6).tolist() == [3, -5, 5, 0, 0, 0]
    four = C.REGISTRY["topk"](k=4)
    assert four.decode(four.encode(x), 6).tolist() == [3, -5, 5, 0, -3, 0]


def test_qsgd_bytes_of_a_hand_worked_vector():
    # ||x|| = 2, s = 2: s |x_i| / ||x|| = 1 exactly, so every level is 1 whatever the draw.
    # Fields of 1 + 2 bits: + -> 0b011, - -> 0b010, at bit offsets 0, 3, 6, 9.
    x = t([1, -1, 1, -1])
    codec = C.REGISTRY["qsgd"](s=2)
    payload = codec.encode(x, rng=gen(0))

    assert payload.tobytes() == f32_bytes(2.0) + bytes([0xD3, 0x04])
    assert codec.decode(payload, 4).tolist() == [1, -1, 1, -1]


# --------------------------------------------------------------------------
# Formulas on edge cases
# --------------------------------------------------------------------------

EDGE_VECTORS = {
    "zeros": [0.0] * 13,
    "negative_zeros": [-0.0, 0.0, -0.0, 1.0, -0.0],
    "ties": [2, -2, 2, 1, -2, 2, 0.5, -2, 2, 2, -1, 2, -2],
    "d13": [0.3, -1.2, 4.0, 0.0, -0.7, 2.2, -3.1, 0.05, 1.5, -2.5, 0.9, -0.2, 3.3],
    "huge": [1e30, -1.0, 2.0, 0.5, -3.0, 0.0, 1.0, 1.0, -1.0],
    "tiny": [1e-30, -3e-31, 0.0, 2e-30],
}


@pytest.mark.parametrize("name", EDGE_VECTORS)
def test_sign_decodes_to_sign_with_zero_as_plus_one(name):
    x = t(EDGE_VECTORS[name])
    codec = C.REGISTRY["sign"]()
    payload = codec.encode(x)

    assert payload.tobytes() == ref_sign_bytes(x)
    assert np.array_equal(codec.decode(payload, len(x)).numpy(), ref_sign(x))


@pytest.mark.parametrize("name", EDGE_VECTORS)
def test_scaled_sign_decodes_to_mean_magnitude_times_sign(name):
    x = t(EDGE_VECTORS[name])
    codec = C.REGISTRY["scaled_sign"]()
    payload = codec.encode(x)
    scale = np.float32(exact_norm(x, 1) / len(x))

    assert payload[:4].tobytes() == f32_bytes(scale)
    assert payload[4:].tobytes() == ref_sign_bytes(x)
    assert np.array_equal(codec.decode(payload, len(x)).numpy(), scale * ref_sign(x))


@pytest.mark.parametrize("name", EDGE_VECTORS)
@pytest.mark.parametrize("k", [1, 3, 4])
def test_topk_keeps_the_k_largest_magnitudes(name, k):
    x = t(EDGE_VECTORS[name])
    codec = C.REGISTRY["topk"](k=k)
    payload = codec.encode(x)
    idx = ref_topk_indices(x, k)
    expected = np.zeros(len(x), dtype=np.float32)
    expected[idx] = x.numpy()[idx]

    assert payload.tobytes() == x.numpy()[idx].astype("<f4").tobytes() + idx.astype("<i4").tobytes()
    assert codec.decode(payload, len(x)).numpy().tobytes() == expected.tobytes()  # -0.0 kept


def test_topk_matches_a_stable_sort_on_many_ties():
    rng = np.random.default_rng(0)
    rows = torch.from_numpy(rng.integers(-3, 4, size=(6, 50)).astype(np.float32))
    for k in (1, 7, 25, 50):
        payloads = C.REGISTRY["topk"](k=k).encode_rows(rows)
        for i in range(rows.shape[0]):
            idx = np.frombuffer(payloads[i, 4 * k:].tobytes(), dtype="<i4")
            assert np.array_equal(idx, ref_topk_indices(rows[i], k)), (i, k)


def test_topk_ranks_nan_as_infinity():
    x = t([1, float("nan"), 2, float("inf"), -float("inf")])
    payload = C.REGISTRY["topk"](k=2).encode(x)

    assert np.frombuffer(payload[8:].tobytes(), dtype="<i4").tolist() == [1, 3]
    assert np.isnan(np.frombuffer(payload[:4].tobytes(), dtype="<f4")[0])


def test_topk_with_ratio():
    x = torch.randn(101, generator=gen(3))
    codec = C.REGISTRY["topk"](ratio=0.1)            # k = ceil(10.1) = 11
    decoded = codec.decode(codec.encode(x), 101)
    idx = ref_topk_indices(x, 11)

    assert torch.count_nonzero(decoded) == 11
    assert np.array_equal(np.flatnonzero(decoded.numpy()), idx)


def test_topk_decoding_ignores_indices_out_of_range_and_adds_repeats():
    # a hand-made (faulty) payload: k = 4 with indices 1, 7 (out of range), 1, -1
    payload = np.frombuffer(f32_bytes(1.0, 2.0, 3.0, 4.0) + struct.pack("<4i", 1, 7, 1, -1), dtype=np.uint8)
    decoded = C.REGISTRY["topk"](k=4).decode(payload, 5)

    assert decoded.tolist() == [0, 4, 0, 0, 0]


@pytest.mark.parametrize("s", [1, 2, 4, 15, 200])
def test_qsgd_values_lie_on_the_grid_next_to_the_input(s):
    codec = C.REGISTRY["qsgd"](s=s)
    for name, values in EDGE_VECTORS.items():
        x = np.asarray(values, dtype=np.float32)
        payload = codec.encode(torch.from_numpy(x), rng=gen(7))
        decoded = codec.decode(payload, len(x)).numpy()
        norm = np.float32(exact_norm(x, 2))
        signs, levels = qsgd_fields(payload, len(x), s)
        low = np.floor(s * np.abs(x.astype(np.float64)) / max(float(norm), 1e-300))

        assert payload[:4].tobytes() == f32_bytes(norm), name
        assert np.all((levels == low) | (levels == low + 1)) and np.all(levels <= s), name
        expected = norm * np.where(signs == 1, 1.0, -1.0) * levels / s
        assert np.allclose(decoded, expected, rtol=1e-6, atol=0), name
        assert not np.signbit(decoded[levels == 0]).any(), name          # level 0 is +0.0
        if name == "zeros":
            assert np.array_equal(decoded, np.zeros(len(x)))


def test_qsgd_rounds_up_exactly_where_the_row_generator_draws_below_the_remainder():
    # the documented draw: u = torch.rand(d, generator=rng); level = l + [u < s|x|/||x|| - l]
    s, d = 3, 2000
    x = torch.randn(d, generator=gen(8))
    payload = C.REGISTRY["qsgd"](s=s).encode(x, rng=gen(9))
    u = torch.rand(d, generator=gen(9)).numpy().astype(np.float64)
    r = s * np.abs(x.numpy().astype(np.float64)) / exact_norm(x, 2)
    p = r - np.floor(r)
    _, levels = qsgd_fields(payload, d, s)
    clear = np.abs(u - p) > 1e-6                     # away from float32 rounding of p

    assert clear.sum() > 0.99 * d
    assert np.array_equal(levels[clear], (np.floor(r) + (u < p))[clear])


@pytest.mark.parametrize("s", [1, 4])
def test_qsgd_is_unbiased(s):
    # Prepare: 4000 independent seeded draws of the same vector, as rows
    x = t([0.3, -1.2, 4.0, 0.0, -0.7, 2.2, -3.1, 0.05, 1.5])
    draws = 4000
    codec = C.REGISTRY["qsgd"](s=s)
    # Execute
    payloads = codec.encode_rows(x.repeat(draws, 1), rngs=[gen(i) for i in range(draws)])
    decoded = codec.decode_rows(payloads, len(x)).numpy().astype(np.float64)
    # Assert: mean within 5 standard errors of the Bernoulli rounding, per coordinate
    xn = x.numpy().astype(np.float64)
    norm = exact_norm(xn, 2)
    r = s * np.abs(xn) / norm
    p = r - np.floor(r)
    stderr = norm / s * np.sqrt(p * (1 - p) / draws)
    assert np.all(np.abs(decoded.mean(axis=0) - xn) <= 5 * stderr + 1e-5 * norm)
    assert len({row.tobytes() for row in payloads}) > 50     # the rows drew differently


def test_qsgd_bytes_are_determined_by_the_generator():
    x = torch.randn(100, generator=gen(1))
    codec = C.REGISTRY["qsgd"](s=3)

    assert np.array_equal(codec.encode(x, rng=gen(5)), codec.encode(x, rng=gen(5)))
    assert not np.array_equal(codec.encode(x, rng=gen(5)), codec.encode(x, rng=gen(6)))


def test_qsgd_needs_a_generator():
    with pytest.raises(ValueError, match="rng"):
        C.REGISTRY["qsgd"]().encode(t([1, 2]))
    with pytest.raises(ValueError, match="one torch.Generator per row"):
        C.REGISTRY["qsgd"]().encode_rows(torch.ones(3, 2), rngs=[gen(0)])


def test_qsgd_of_a_non_finite_vector_decodes_to_nan():
    codec = C.REGISTRY["qsgd"](s=4)
    decoded = codec.decode(codec.encode(t([1, float("inf"), 2]), rng=gen(0)), 3)

    assert torch.isnan(decoded).all()


# --------------------------------------------------------------------------
# Rows and single vectors agree
# --------------------------------------------------------------------------

@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
@pytest.mark.parametrize("d", [13, 64, 431_080])
def test_encode_rows_and_decode_rows_agree_with_single_vectors(codec, d):
    rows = 3 if d < 1000 else 2
    x = torch.randn(rows, d, generator=gen(d)) * torch.tensor([[1.0], [1e-3], [50.0]][:rows])
    seeds = [11, 12, 13][:rows]
    payloads = codec.encode_rows(x, rngs=[gen(s) for s in seeds] if codec.stochastic else None)
    decoded = codec.decode_rows(payloads, d)
    for i in range(rows):
        single = codec.encode(x[i], rng=gen(seeds[i]) if codec.stochastic else None)
        assert np.array_equal(payloads[i], single), i
        assert torch.equal(decoded[i], codec.decode(single, d)), i


@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
def test_rows_are_written_into_out_buffers(codec):
    d = 13
    x = torch.randn(3, d, generator=gen(2))
    rngs = [gen(i) for i in range(3)] if codec.stochastic else None
    out = np.full((3, codec.nbytes(d)), 0xAB, dtype=np.uint8)
    dec = torch.full((3, d), 7.0)
    strided = torch.full((d, 3), 7.0).T                  # a non-contiguous target

    assert codec.encode_rows(x, rngs=rngs, out=out) is out
    assert np.array_equal(out, codec.encode_rows(x, rngs=[gen(i) for i in range(3)] if rngs else None))
    assert codec.decode_rows(out, d, out=dec) is dec
    assert codec.decode_rows(out, d, out=strided) is strided
    assert torch.equal(dec, codec.decode_rows(out, d)) and torch.equal(strided, dec)


@pytest.mark.parametrize("codec", CODECS, ids=CODEC_IDS)
def test_decoding_payloads_of_the_wrong_width_names_the_size(codec):
    d = 13
    width = codec.nbytes(d)
    with pytest.raises(ValueError, match=f"must have {width} bytes a row"):
        codec.decode_rows(np.zeros((2, width + 1), dtype=np.uint8), d)
    with pytest.raises(ValueError, match=f"must have {width} bytes a row"):
        codec.decode(np.zeros(width - 1, dtype=np.uint8), d)


def test_encode_rejects_other_dtypes_and_shapes():
    with pytest.raises(ValueError, match="float32"):
        C.REGISTRY["sign"]().encode(torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="1-D"):
        C.REGISTRY["sign"]().encode(torch.ones(2, 3))


# --------------------------------------------------------------------------
# Side norm, norm field
# --------------------------------------------------------------------------

@pytest.mark.parametrize("q", [1, 2])
@pytest.mark.parametrize("name", ["scaled_sign", "sign", "topk", "qsgd"])
def test_side_norm_header_is_the_norm_and_decoding_ignores_it(q, name):
    inner = C.REGISTRY[name](**({"k": 2} if name == "topk" else {}))
    codec = C.with_side_norm(inner, q)
    for values in EDGE_VECTORS.values():
        x = t(values)
        rng = gen(3) if codec.stochastic else None
        payload = codec.encode(x, rng=rng)
        inner_payload = inner.encode(x, rng=gen(3) if codec.stochastic else None)

        assert codec.name == f"{name}+norm{q}" and codec.norm_field
        assert payload[:4].tobytes() == f32_bytes(exact_norm(x, q))      # 1e30 does not overflow
        assert np.array_equal(payload[4:], inner_payload)
        assert np.array_equal(C.side_norms(payload[None]), [np.float32(exact_norm(x, q))])
        changed = payload.copy()
        C.write_norm_field(changed[None], [123.0])
        assert torch.equal(codec.decode(changed, len(x)), inner.decode(inner_payload, len(x)))


def test_with_side_norm_rejects_other_norms():
    with pytest.raises(ValueError, match="q must be 1 or 2"):
        C.with_side_norm(C.REGISTRY["sign"](), 3)


def test_norm_field_round_trip_and_its_effect_on_decoding():
    x = torch.randn(3, 20, generator=gen(4))
    codec = C.REGISTRY["scaled_sign"]()
    payloads = codec.encode_rows(x)
    scales = C.read_norm_field(payloads)

    assert np.array_equal(scales, (np.abs(x.numpy().astype(np.float64)).sum(axis=1) / 20).astype(np.float32))
    C.write_norm_field(payloads, [-1.0, 5e3, float("nan")])
    read = C.read_norm_field(payloads)
    assert read.dtype == np.float32 and read[0] == -1.0 and read[1] == 5e3 and np.isnan(read[2])
    decoded = codec.decode_rows(payloads, 20)
    assert torch.equal(decoded[0], -torch.from_numpy(ref_sign(x[0])))
    assert torch.equal(decoded[1], 5e3 * torch.from_numpy(ref_sign(x[1])))
    assert torch.isnan(decoded[2]).all()


def test_codec_flags():
    flags = {c.name: (c.stochastic, c.norm_field, c.embeds_norm) for c in CODECS}

    assert flags["none"] == (False, False, True)
    assert flags["sign"] == (False, False, False)
    assert flags["scaled_sign"] == (False, True, True)
    assert flags["topk"] == (False, False, True)
    assert flags["qsgd"] == (True, True, True)
    assert flags["sign+norm1"] == (False, True, False)


# --------------------------------------------------------------------------
# Sign bits
# --------------------------------------------------------------------------

def test_pack_and_unpack_signs():
    x = torch.randn(4, 21, generator=gen(5))
    x[0, 3] = 0.0
    x[1, 4] = -0.0
    bits = C.pack_signs(x)

    assert bits.shape == (4, 3)
    assert [bits[i].tobytes() for i in range(4)] == [ref_sign_bytes(x[i]) for i in range(4)]
    assert np.array_equal(C.unpack_signs(bits, 21).numpy(), ref_sign(x))


# --------------------------------------------------------------------------
# Parameter checks
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name, d, params, words", [
    ("topk", 5, {"k": 6}, ["topk", "k must be <= d", "k=6, d=5"]),
    ("topk", 5, {"k": 0}, ["k must be an integer >= 1", "k=0"]),
    ("topk", 5, {"k": 2.0}, ["k must be an integer"]),
    ("topk", 5, {"ratio": 0}, ["ratio must be a number in (0, 1]", "ratio=0"]),
    ("topk", 5, {"ratio": 1.5}, ["ratio must be a number in (0, 1]"]),
    ("topk", 5, {"k": 2, "ratio": 0.5}, ["exactly one of k and ratio"]),
    ("topk", 5, {}, ["exactly one of k and ratio"]),
    ("qsgd", 5, {"s": 0}, ["qsgd: s must be an integer in [1,", "s=0"]),
    ("qsgd", 5, {"s": 2.5}, ["s must be an integer"]),
    ("qsgd", 5, {"s": 2 ** 15}, ["s must be an integer in [1, 32767]"]),
    ("gzip", 5, {}, ["unknown codec 'gzip'", "none, qsgd, scaled_sign, sign, topk"]),
    ("sign", 5, {"k": 1}, ["sign: unknown parameter 'k'", "accepted parameters: none"]),
    ("qsgd", 5, {"levels": 4}, ["unknown parameter 'levels'", "accepted parameters: s"]),
    ("sign", 0, {}, ["d must be an integer >= 1"]),
])
def test_check_names_the_parameter_and_the_constraint(name, d, params, words):
    msg = C.check(name, d, params)

    assert msg is not None
    for word in words:
        assert word in msg


def test_check_accepts_good_settings_and_constructors_refuse_bad_ones():
    assert C.check("topk", 5, {"k": 5}) is None
    assert C.check("topk", 5, {"ratio": 1.0}) is None
    assert C.check("qsgd", 5, {}) is None
    assert C.check("sign", 1) is None
    with pytest.raises(ValueError, match="s must be an integer"):
        C.REGISTRY["qsgd"](s=0)
    with pytest.raises(ValueError, match="exactly one of k and ratio"):
        C.REGISTRY["topk"]()
    with pytest.raises(ValueError, match="k must be <= d, got k=6, d=5"):
        C.REGISTRY["topk"](k=6).encode(torch.ones(5))


def test_param_defaults():
    assert C.param_defaults("topk") == {"k": None, "ratio": None}
    assert C.param_defaults("qsgd") == {"s": 1}
    assert C.param_defaults("sign") == {}
    with pytest.raises(KeyError, match="unknown codec"):
        C.param_defaults("gzip")
