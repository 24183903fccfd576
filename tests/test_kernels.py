"""Every kernel table this CPU runs against the scalar reference ("generic"), on ragged shapes."""
import numpy as np
import pytest

from wrinklefree_rt import _core

NAMES = _core.kernel_names()
SIMD = [n for n in NAMES if n != "generic"]
# Shapes straddle the layout's 16-row tiles and 16/128-wide K chunks, and the tiles the SIMD
# loops use (up to 64 rows; 5 or 6 activation rows, below which batches take a streaming path).
NS = [1, 15, 16, 17, 33, 70, 130]
KS = [1, 5, 31, 128, 129, 300, 1000]
MS = [1, 2, 3, 4, 5, 6, 8, 13, 33]


def test_generic_is_always_there():
    assert NAMES[0] == "generic"
    assert _core.default_kernel_name() in NAMES
    assert _core.ternary_layout_version() >= 1


def test_unknown_table_is_refused():
    with pytest.raises(ValueError, match="not supported"):
        _core.ternary_gemm("sse9", np.zeros(64, np.uint8), 1, 1, np.zeros((1, 128), np.int8))


@pytest.mark.parametrize("N,K", [(1, 1), (3, 5), (16, 128), (17, 129), (70, 300)])
def test_pack_round_trip(N, K):
    codes = np.random.default_rng(N * 1000 + K).integers(-1, 2, (N, K)).astype(np.int8)
    packed = _core.ternary_pack(codes)
    assert packed.nbytes == -(-N // 16) * 16 * _core.ternary_padded_k(K) // 4
    np.testing.assert_array_equal(_core.ternary_unpack(packed, N, K), codes)


def test_pack_refuses_bad_codes_and_sizes():
    with pytest.raises(ValueError, match="row 1, column 2"):
        _core.ternary_pack(np.array([[0, 0, 0], [1, -1, 2]], np.int8))
    with pytest.raises(ValueError, match="expected"):
        _core.ternary_unpack(np.zeros(10, np.uint8), 16, 128)


def ternary_reference(codes, X):
    return X[:, : codes.shape[1]].astype(np.int64) @ (codes.astype(np.int64) + 1).T


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("N", NS)
def test_ternary_gemm_matches_reference(name, N):
    rng = np.random.default_rng(N)
    for K in KS:
        codes = rng.integers(-1, 2, (N, K)).astype(np.int8)
        packed = _core.ternary_pack(codes)
        Kp = _core.ternary_padded_k(K)
        for M in MS:
            # A wider row stride than K needs checks ldx handling; padding must be zero.
            X = np.zeros((M, Kp + 64), np.int8)
            X[:, :K] = rng.integers(-128, 128, (M, K))
            want = ternary_reference(codes, X)
            got = _core.ternary_gemm(name, packed, N, K, X)
            np.testing.assert_array_equal(got, want, err_msg=f"{name} N={N} K={K} M={M}")


def test_ternary_gemm_refuses_short_activations():
    packed = _core.ternary_pack(np.zeros((4, 200), np.int8))
    with pytest.raises(ValueError, match="need 256"):
        _core.ternary_gemm("generic", packed, 4, 200, np.zeros((2, 200), np.int8))


@pytest.mark.parametrize("name", NAMES)
def test_i8_gemm_matches_reference(name):
    rng = np.random.default_rng(11)
    for N in NS:
        for K in KS:
            W = rng.integers(-128, 128, (N, K)).astype(np.int8)
            W.flat[0] = -128  # the extremes SIMD sign/offset tricks must get exactly right
            for M in MS:
                X = rng.integers(-127, 128, (M, K)).astype(np.int8)
                X.flat[0] = -127
                want = X.astype(np.int64) @ W.astype(np.int64).T
                np.testing.assert_array_equal(_core.i8_gemm(name, W, X), want, err_msg=f"{name} N={N} K={K} M={M}")


@pytest.mark.parametrize("name", NAMES)
def test_f32_gemm_matches_reference(name):
    rng = np.random.default_rng(13)
    for N in NS:
        for K in KS:
            W = rng.standard_normal((N, K)).astype(np.float32)
            for M in MS:
                X = rng.standard_normal((M, K)).astype(np.float32)
                want = X.astype(np.float64) @ W.astype(np.float64).T
                # fp32 sums in any order: error bounded by K ulps of the sum of |products|.
                bound = (np.abs(X).astype(np.float64) @ np.abs(W).astype(np.float64).T) * K * 2**-24
                got = _core.f32_gemm(name, W, X)
                assert (np.abs(got - want) <= bound + 1e-30).all(), f"{name} N={N} K={K} M={M}"


@pytest.mark.parametrize("name", SIMD)
def test_row_major_gemm_row_ranges(name):
    rng = np.random.default_rng(17)
    N, K, M = 150, 300, 7
    Wi = rng.integers(-128, 128, (N, K)).astype(np.int8)
    Xi = rng.integers(-127, 128, (M, K)).astype(np.int8)
    Wf = rng.standard_normal((N, K)).astype(np.float32)
    Xf = rng.standard_normal((M, K)).astype(np.float32)
    want_i = Xi.astype(np.int64) @ Wi.astype(np.int64).T
    want_f = _core.f32_gemm("generic", Wf, Xf)
    for n0, n1 in [(0, 64), (64, 150), (5, 6), (17, 149), (33, 33)]:
        out_i = np.full((M, N), -7, np.int32)
        _core.i8_gemm(name, Wi, Xi, out=out_i, n0=n0, n1=n1)
        np.testing.assert_array_equal(out_i[:, n0:n1], want_i[:, n0:n1])
        assert (out_i[:, :n0] == -7).all() and (out_i[:, n1:] == -7).all()
        out_f = np.full((M, N), -7, np.float32)
        _core.f32_gemm(name, Wf, Xf, out=out_f, n0=n0, n1=n1)
        np.testing.assert_allclose(out_f[:, n0:n1], want_f[:, n0:n1], rtol=1e-4, atol=1e-4)
        assert (out_f[:, :n0] == -7).all() and (out_f[:, n1:] == -7).all()


def quantize_reference(x):
    a = np.float32(127) / max(np.float32(np.abs(x).max()), np.float32(1e-5))
    q = np.clip(np.rint(x * a), -128, 127).astype(np.int8)
    return q, a


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("K", [1, 7, 8, 31, 32, 33, 100, 1000, 2560])
def test_quantize_row_matches_reference(name, K):
    rng = np.random.default_rng(K)
    x = (rng.standard_normal(K) * 3).astype(np.float32)
    if K > 2:
        # Exact halves after scaling must round to even, like torch.round.
        amax = np.float32(np.abs(x).max())
        x[K // 2] = np.float32(2.5) * amax / np.float32(127)
    q_want, a_want = quantize_reference(x)
    Kp = _core.ternary_padded_k(K)
    q, a, s = _core.quantize_row_i8(name, x)
    assert q.shape == (Kp,) and (q[K:] == 0).all()
    np.testing.assert_array_equal(q[:K], q_want)
    assert a == a_want and s == int(q_want.astype(np.int64).sum())


@pytest.mark.parametrize("name", NAMES)
def test_quantize_all_zero_row(name):
    q, a, s = _core.quantize_row_i8(name, np.zeros(40, np.float32))
    assert (q == 0).all() and s == 0 and a == np.float32(127) / np.float32(1e-5)


@pytest.mark.parametrize("name", SIMD)
def test_simd_tables_equal_generic_on_model_shapes(name):
    # One pass at the real 2B-4T widths (K = 2560 and 6912, several row tiles) per table.
    rng = np.random.default_rng(3)
    for N, K in [(200, 2560), (130, 6912)]:
        codes = rng.integers(-1, 2, (N, K)).astype(np.int8)
        packed = _core.ternary_pack(codes)
        X = rng.integers(-127, 128, (9, K)).astype(np.int8)
        np.testing.assert_array_equal(_core.ternary_gemm(name, packed, N, K, X),
                                      _core.ternary_gemm("generic", packed, N, K, X))



def q4_quantize_reference(W):
    """The q4 layout's definition: per 32-input group d = max|w| / 7, q = clip(rint(w / d), -8, 7)."""
    N, K = W.shape
    G = -(-K // 32)
    Wp = np.zeros((N, G * 32), np.float32)
    Wp[:, :K] = W
    Wg = Wp.reshape(N, G, 32)
    d = np.abs(Wg).max(-1) / np.float32(7)
    q = np.clip(np.rint(Wg / np.where(d > 0, d, 1)[..., None]), -8, 7).astype(np.int8)
    return q.reshape(N, G * 32)[:, :K], d


@pytest.mark.parametrize("N,K", [(1, 1), (7, 31), (8, 32), (9, 33), (70, 300), (130, 1000)])
def test_q4_pack_matches_definition(N, K):
    rng = np.random.default_rng(N * 1000 + K)
    W = rng.standard_normal((N, K)).astype(np.float32)
    W[0, :min(K, 32)] = 0  # an all-zero group: scale 0, codes 0
    codes, scales = _core.q4_pack(W)
    assert codes.nbytes == -(-N // 8) * 8 * -(-K // 32) * 16 and scales.size == codes.nbytes // 16
    assert _core.q4_sizes(N, K) == (codes.nbytes, scales.size)
    q, d = _core.q4_unpack(codes, scales, N, K)
    q_want, d_want = q4_quantize_reference(W)
    np.testing.assert_array_equal(q, q_want)
    np.testing.assert_array_equal(d, d_want)
    assert (d[0, 0] == 0) and (q[0, :min(K, 32)] == 0).all()


def test_q4_pack_refuses_non_finite_weights():
    W = np.zeros((3, 40), np.float32)
    W[2, 35] = np.inf
    with pytest.raises(ValueError, match="row 2, column 35 is not finite"):
        _core.q4_pack(W)
    with pytest.raises(ValueError, match="expected"):
        _core.q4_unpack(np.zeros(10, np.uint8), np.zeros(8, np.float32), 8, 32)


def q4_gemm_reference(q, d, X):
    """sum over groups in order of d * (exact integer group dot), each step rounded once to float32
    (fmaf), in float64 arithmetic (exact but for rare sums spanning over 53 bits)."""
    N, K = q.shape
    G = d.shape[1]
    qp = np.zeros((N, G * 32), np.int64)
    qp[:, :K] = q
    S = np.einsum("ngk,mgk->mng", qp.reshape(N, G, 32), X[:, :G * 32].astype(np.int64).reshape(len(X), G, 32))
    acc = np.zeros((len(X), N), np.float32)
    for g in range(G):
        acc = (d[:, g].astype(np.float64) * S[:, :, g] + acc).astype(np.float32)
    return acc


@pytest.mark.parametrize("name", NAMES)
def test_q4_gemm_matches_reference(name):
    # Ragged N around the 8-row tiles, K off the 32/128 multiples, M around the 4-row blocks.
    rng = np.random.default_rng(19)
    for N in NS:
        for K in KS:
            W = rng.standard_normal((N, K)).astype(np.float32)
            codes, scales = _core.q4_pack(W)
            q, d = _core.q4_unpack(codes, scales, N, K)
            for M in [1, 2, 3, 4, 5, 7, 9, 33, 70]:
                # Activations past K are arbitrary: q = 0 there.
                X = rng.integers(-127, 128, (M, _core.ternary_padded_k(K) + 32)).astype(np.int8)
                X.flat[0] = -127
                got = _core.q4_gemm(name, codes, scales, N, K, X)
                if name == "generic":
                    np.testing.assert_allclose(got, q4_gemm_reference(q, d, X), rtol=1e-6, atol=1e-30,
                                               err_msg=f"N={N} K={K} M={M}")
                else:  # bit-identical by construction (ternary.h)
                    np.testing.assert_array_equal(got, _core.q4_gemm("generic", codes, scales, N, K, X),
                                                  err_msg=f"{name} N={N} K={K} M={M}")


@pytest.mark.parametrize("name", SIMD)
def test_q4_gemm_row_ranges_and_wide_shapes(name):
    # K = 2560 (2B-4T): 400 rows span several L2 bands when M > 4; K = 33000: more groups than
    # one pass keeps activation sums for.
    rng = np.random.default_rng(23)
    for N, K in [(400, 2560), (40, 33000)]:
        W = rng.standard_normal((N, K)).astype(np.float32)
        codes, scales = _core.q4_pack(W)
        for M in (1, 6):
            X = rng.integers(-127, 128, (M, _core.ternary_padded_k(K))).astype(np.int8)
            want = _core.q4_gemm("generic", codes, scales, N, K, X)
            for n0, n1 in [(0, N), (0, 32), (5, 6), (17, N - 1), (33, 33)]:
                out = np.full((M, N), -7, np.float32)
                _core.q4_gemm(name, codes, scales, N, K, X, out=out, n0=n0, n1=n1)
                np.testing.assert_array_equal(out[:, n0:n1], want[:, n0:n1], err_msg=f"N={N} K={K} M={M}")
                assert (out[:, :n0] == -7).all() and (out[:, n1:] == -7).all()


# Attention: head widths around the 8/16-float vectors and the 8-vector register blocks, GQA
# groups around the 4-head blocks, cache rows wider than a head (a KV head's slice of a row).
ATTN_DS = [1, 7, 8, 16, 17, 64, 128, 130]
ATTN_GS = [1, 3, 4, 5, 8]


def _attn_bound(A, B, n):
    # fp32 sums in any order: error bounded by n ulps of the sum of |products|.
    return (np.abs(A).astype(np.float64) @ np.abs(B).astype(np.float64).T) * n * 2**-24 + 1e-30


@pytest.mark.parametrize("name", NAMES)
def test_attn_scores_match_reference(name):
    rng = np.random.default_rng(17)
    for d in ATTN_DS:
        for G in ATTN_GS:
            for count in (1, 5, 32):
                Q = rng.standard_normal((G, d + 3)).astype(np.float32)
                Kc = rng.standard_normal((count, d + 5)).astype(np.float32)
                want = 0.5 * (Q[:, :d].astype(np.float64) @ Kc[:, :d].astype(np.float64).T)
                got = _core.attn_scores(name, Q, Kc, 0.5, d=d)
                assert got.shape == (G, count)
                assert (np.abs(got - want) <= 0.5 * _attn_bound(Q[:, :d], Kc[:, :d], d)).all(), f"{name} d={d} G={G}"


@pytest.mark.parametrize("name", NAMES)
def test_attn_accumulate_matches_reference(name):
    rng = np.random.default_rng(19)
    for d in ATTN_DS:
        for G in ATTN_GS:
            for count in (1, 5, 32):
                P = rng.random((G, count)).astype(np.float32)
                Vc = rng.standard_normal((count, d + 5)).astype(np.float32)
                O = rng.standard_normal((G, d + 2)).astype(np.float32)
                before = O.copy()
                want = before[:, :d].astype(np.float64) + P.astype(np.float64) @ Vc[:, :d].astype(np.float64)
                _core.attn_accumulate(name, P, Vc, O, d=d)
                bound = _attn_bound(P, np.abs(Vc[:, :d]).T, count + 1) + np.abs(before[:, :d]) * (count + 1) * 2**-24
                assert (np.abs(O[:, :d] - want) <= bound).all(), f"{name} d={d} G={G} count={count}"
                # Columns past d belong to other heads: untouched.
                np.testing.assert_array_equal(O[:, d:], before[:, d:])


def test_attn_refuses_bad_widths():
    with pytest.raises(ValueError, match="head width"):
        _core.attn_scores("generic", np.zeros((2, 8), np.float32), np.zeros((3, 4), np.float32), 1.0)
    with pytest.raises(ValueError, match="Vc needs 3 rows"):
        _core.attn_accumulate("generic", np.zeros((2, 3), np.float32), np.zeros((4, 8), np.float32),
                              np.zeros((2, 8), np.float32))


@pytest.mark.parametrize("name", NAMES)
def test_exp_sum_matches_reference(name):
    rng = np.random.default_rng(23)
    for n in (0, 1, 7, 8, 15, 16, 17, 100, 128256):
        # Logit-like rows: most terms far below the top, some underflowing entirely.
        x = (rng.standard_normal(n) * 8).astype(np.float32)
        for mul, sub in ((1.0, float(x.max()) if n else 0.0), (0.7, 3.0), (1.0, 200.0)):
            t = (x * np.float32(mul) - np.float32(sub)).astype(np.float64)
            want = float(np.exp(t).sum())
            got = _core.exp_sum(name, x, mul, sub)
            # Terms below e^-87 may count as 0 (outside float's normal range).
            assert got == pytest.approx(want, rel=1e-6, abs=n * 1.7e-38), f"{name} n={n} mul={mul} sub={sub}"
    # The generic entry is the exact double-precision definition.
    x = rng.standard_normal(1000).astype(np.float32)
    assert _core.exp_sum("generic", x, 1.0, 0.0) == pytest.approx(float(np.exp(x.astype(np.float64)).sum()), rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_relu2_mul_is_exact(name):
    rng = np.random.default_rng(29)
    for n in (1, 7, 8, 15, 16, 17, 6912):
        x = rng.standard_normal(n).astype(np.float32)
        x[0] = np.nan
        up = rng.standard_normal(n).astype(np.float32)
        r = np.maximum(np.nan_to_num(x, nan=0.0), np.float32(0))
        np.testing.assert_array_equal(_core.relu2_mul(name, x, up), r * r * up, err_msg=f"{name} n={n}")
    with pytest.raises(ValueError, match="up has 2 values"):
        _core.relu2_mul(name, np.zeros(3, np.float32), np.zeros(2, np.float32))


@pytest.mark.parametrize("name", NAMES)
def test_softmax_matches_reference(name):
    rng = np.random.default_rng(31)
    for n in (1, 7, 8, 15, 16, 17, 64, 1000, 4096):
        x = (rng.standard_normal(n) * 6).astype(np.float32)
        x[-1] = x.max() + 1  # the maximum in the tail
        z = np.exp(x.astype(np.float64) - x.max())
        want = z / z.sum()
        got = _core.softmax(name, x)
        # Exps within an ulp or two; the float sum in any order within n ulps.
        np.testing.assert_allclose(got, want, rtol=2e-6 + n * 2**-24, atol=1e-45, err_msg=f"{name} n={n}")
    with pytest.raises(ValueError, match="at least one"):
        _core.softmax(name, np.zeros(0, np.float32))


@pytest.mark.parametrize("name", NAMES)
def test_sum_squares_matches_reference(name):
    rng = np.random.default_rng(37)
    for n in (0, 1, 7, 8, 15, 16, 17, 31, 32, 33, 2560, 6912):
        x = (rng.standard_normal(n) * 3).astype(np.float32)
        want = float(np.sum(x.astype(np.float64) ** 2))
        assert _core.sum_squares(name, x) == pytest.approx(want, rel=1e-14, abs=0), f"{name} n={n}"


# LUT kernels (cpp/kernels/lut.h): each of every table's ISA, and the scalar twin, against the
# reference; row counts straddle their 16/32/64-token blocks and the 4-row lookup groups.
LUT = [(name, k) for name in NAMES for k in _core.lut_kernel_names(name)] + [("generic", "lut-generic")]
LUT_MS = [1, 2, 5, 15, 16, 17, 31, 33, 64, 65, 70]


@pytest.mark.parametrize("N,K", [(1, 1), (3, 5), (16, 128), (17, 129), (70, 300)])
def test_lut_pack_round_trip(N, K):
    codes = np.random.default_rng(N * 1000 + K).integers(-1, 2, (N, K)).astype(np.int8)
    packed = _core.lut_pack(codes)
    assert packed.nbytes == N * _core.ternary_padded_k(K) // 4
    np.testing.assert_array_equal(_core.lut_unpack(packed, N, K), codes)
    # The engine builds the LUT layout from the tiles it loaded: same bytes.
    np.testing.assert_array_equal(_core.lut_pack_from_tiles(_core.ternary_pack(codes), N, K), packed)


def test_lut_pack_refuses_bad_codes_sizes_and_names():
    with pytest.raises(ValueError, match="row 1, column 2"):
        _core.lut_pack(np.array([[0, 0, 0], [1, -1, 2]], np.int8))
    with pytest.raises(ValueError, match="expected"):
        _core.lut_unpack(np.zeros(10, np.uint8), 16, 128)
    with pytest.raises(ValueError, match="unknown for table"):
        _core.lut_gemm("generic", "lut99", np.zeros(32, np.uint8), 1, 1, np.zeros((1, 128), np.int8))


@pytest.mark.parametrize("name,kernel", LUT)
@pytest.mark.parametrize("N", [1, 15, 17, 70, 130])
def test_lut_gemm_matches_reference(name, kernel, N):
    rng = np.random.default_rng(N + 1)
    for K in [1, 5, 129, 300, 1000]:
        codes = rng.integers(-1, 2, (N, K)).astype(np.int8)
        # The extreme the int16 slab sums must hold: row 0 all -1 against activations all -128.
        codes[0, :] = -1
        packed = _core.lut_pack(codes)
        Kp = _core.ternary_padded_k(K)
        for M in LUT_MS:
            X = np.zeros((M, Kp + 64), np.int8)
            X[:, :K] = rng.integers(-128, 128, (M, K))
            X[0, :K] = -128
            want = ternary_reference(codes, X)
            got = _core.lut_gemm(name, kernel, packed, N, K, X)
            np.testing.assert_array_equal(got, want, err_msg=f"{kernel} N={N} K={K} M={M}")


# The base-3 layout (cpp/kernels/base3.h): 5 codes per byte, row groups of 5 tiles (80 rows).
@pytest.mark.parametrize("N,K", [(1, 1), (3, 5), (79, 128), (80, 129), (81, 300), (170, 1000)])
def test_base3_pack_round_trip(N, K):
    codes = np.random.default_rng(N * 1000 + K).integers(-1, 2, (N, K)).astype(np.int8)
    packed = _core.base3_pack(codes)
    # 1.6 bits a code over whole 80-row groups and padded K.
    assert packed.nbytes == _core.base3_packed_bytes(N, K) == -(-N // 80) * 80 * _core.ternary_padded_k(K) // 5
    np.testing.assert_array_equal(_core.base3_unpack(packed, N, K), codes)
    np.testing.assert_array_equal(_core.base3_pack_from_tiles(_core.ternary_pack(codes), N, K), packed)


def test_base3_holds_every_pattern_of_five_codes():
    # Row r of tile i is row 16 i + r: give column k of rows 0, 16, ..., 64 the digits of k.
    patterns = np.array(np.meshgrid(*[[-1, 0, 1]] * 5, indexing="ij")).reshape(5, -1)
    codes = np.zeros((80, patterns.shape[1]), np.int8)
    codes[::16] = patterns
    packed = _core.base3_pack(codes)
    np.testing.assert_array_equal(_core.base3_unpack(packed, *codes.shape), codes)
    X = np.random.default_rng(0).integers(-128, 128, (3, _core.ternary_padded_k(codes.shape[1]))).astype(np.int8)
    for name in NAMES:
        np.testing.assert_array_equal(_core.base3_gemm(name, packed, *codes.shape, X), ternary_reference(codes, X))


def test_base3_refuses_bad_codes_and_sizes():
    with pytest.raises(ValueError, match="row 1, column 2"):
        _core.base3_pack(np.array([[0, 0, 0], [1, -1, 2]], np.int8))
    with pytest.raises(ValueError, match="base-3 ternary weights hold 10 bytes"):
        _core.base3_unpack(np.zeros(10, np.uint8), 16, 128)
    with pytest.raises(ValueError, match="expected"):
        _core.base3_gemm("generic", np.zeros(10, np.uint8), 16, 128, np.zeros((1, 128), np.int8))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("N", [1, 16, 79, 81, 170])
def test_base3_gemm_matches_reference(name, N):
    rng = np.random.default_rng(N + 3)
    for K in [1, 5, 129, 300, 1000]:
        codes = rng.integers(-1, 2, (N, K)).astype(np.int8)
        # The extremes the int16 block sums must hold: u = 2 and u = 0 rows against x = -128.
        codes[0, :] = 1
        codes[-1, :] = -1
        packed = _core.base3_pack(codes)
        for M in [1, 2, 3, 4, 5, 9]:
            X = np.zeros((M, _core.ternary_padded_k(K) + 64), np.int8)
            X[:, :K] = rng.integers(-128, 128, (M, K))
            X[0, :K] = -128
            got = _core.base3_gemm(name, packed, N, K, X)
            np.testing.assert_array_equal(got, ternary_reference(codes, X), err_msg=f"N={N} K={K} M={M}")


def packed_gemm(name, kernel, codes):
    """gemm(X, **kw) on `codes` packed for the tiles (kernel None), the base-3 layout ("base3")
    or a LUT kernel."""
    N, K = codes.shape
    if kernel is None:
        tiles = _core.ternary_pack(codes)
        return lambda X, **kw: _core.ternary_gemm(name, tiles, N, K, X, **kw)
    if kernel == "base3":
        base3 = _core.base3_pack(codes)
        return lambda X, **kw: _core.base3_gemm(name, base3, N, K, X, **kw)
    lut = _core.lut_pack(codes)
    return lambda X, **kw: _core.lut_gemm(name, kernel, lut, N, K, X, **kw)


@pytest.mark.parametrize("name,kernel", [(n, None) for n in SIMD] + [(n, "base3") for n in NAMES] + LUT)
def test_ternary_gemm_row_ranges(name, kernel):
    # Threads hand kernels [n0, n1) cuts anywhere; rows outside must stay untouched.
    rng = np.random.default_rng(7)
    N, K, M = 150, 300, 37
    codes = rng.integers(-1, 2, (N, K)).astype(np.int8)
    gemm = packed_gemm(name, kernel, codes)
    X = np.zeros((M, _core.ternary_padded_k(K)), np.int8)
    X[:, :K] = rng.integers(-128, 128, (M, K))
    want = ternary_reference(codes, X)
    for n0, n1 in [(0, 64), (64, 150), (5, 6), (17, 149), (33, 33)]:
        out = np.full((M, N), -7, np.int32)
        gemm(X, out=out, n0=n0, n1=n1)
        np.testing.assert_array_equal(out[:, n0:n1], want[:, n0:n1])
        assert (out[:, :n0] == -7).all() and (out[:, n1:] == -7).all()
