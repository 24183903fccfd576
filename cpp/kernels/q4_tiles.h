// The q4 GEMM (layout in ternary.h) over 256-bit vectors: q4_gemm_tiled<Dot> with a dot policy of
// ternary_tiles.h (maddubs or vpdpbusd on unsigned codes u = q + 8). Include after the file's
// target pragma and ymm.h, inside its anonymous namespace.
//
// Bit-identical to the generic kernel: a tile's int32 lane r is row r's exact group sum
// sum u*x - 8 * sum x = sum q*x, converted to float exactly (|sum| <= 32 * 8 * 128), then one
// fused multiply-add per group, groups in order, per lane: the same operations as generic's fmaf.

// Activation rows per register block (their int16 or int32 dots and float sums stay in registers),
// and groups whose activation sums one pass keeps on the stack (K above 32768 takes several).
constexpr int kQ4Rows = 3;
constexpr int kQ4SpanGroups = 1024;
constexpr size_t kQ4PrefetchBytes = 8192;

// Rows of one tile against MA activation rows over groups [g0, g1): acc holds the float sums
// so far (zeros for g0 = 0) and receives the new ones. xs8[m][g - g0] = 8 * sum of row m's group g.
template <class D, int MA>
inline void q4_tile(const uint8_t* codes, const float* scales, const int8_t* X, int ldx,
                    const int32_t (*xs8)[kQ4SpanGroups], int g0, int g1, float acc_io[MA][kQ4RowTile]) {
    static_assert(D::kLanes == kQ4RowTile, "one int32 lane per row of the tile");
    const __m256i nibble = _mm256_set1_epi8(15);
    __m256 acc[MA];
    WFRT_UNROLL for (int m = 0; m < MA; ++m) acc[m] = _mm256_loadu_ps(acc_io[m]);
    for (int g = g0; g < g1; ++g) {
        const uint8_t* c = codes + (size_t)g * kQ4RowTile * 16;
        // Both 64-byte lines of the group's codes, and its scales, the same groups ahead.
        _mm_prefetch((const char*)(c + kQ4PrefetchBytes), _MM_HINT_T0);
        _mm_prefetch((const char*)(c + kQ4PrefetchBytes + 64), _MM_HINT_T0);
        _mm_prefetch((const char*)(scales + (size_t)g * kQ4RowTile) + kQ4PrefetchBytes / 4, _MM_HINT_T0);
        // Low and high nibbles in separate sums: two short dependency chains instead of one long.
        typename D::V dots[MA][2];
        WFRT_UNROLL for (int m = 0; m < MA; ++m) dots[m][0] = dots[m][1] = D::zero();
        WFRT_UNROLL for (int j = 0; j < 4; ++j) {
            const __m256i raw = _mm256_loadu_si256((const __m256i*)(c + 32 * j));
            const __m256i lo = _mm256_and_si256(raw, nibble);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), nibble);
            WFRT_UNROLL for (int m = 0; m < MA; ++m) {
                const int8_t* x = X + (size_t)m * ldx + (size_t)g * kQ4Group + 4 * j;
                // int16 dots (maddubs) peak at 4 * 2 * 15 * 128 = 15360: no overflow in a group.
                dots[m][0] = D::dot(dots[m][0], lo, D::bcast(x));
                dots[m][1] = D::dot(dots[m][1], hi, D::bcast(x + 16));
            }
        }
        const __m256 d = _mm256_loadu_ps(scales + (size_t)g * kQ4RowTile);
        WFRT_UNROLL for (int m = 0; m < MA; ++m) {
            const __m256i sum = _mm256_add_epi32(D::widen(dots[m][0]), D::widen(dots[m][1]));
            const __m256i s = _mm256_sub_epi32(sum, _mm256_set1_epi32(xs8[m][g - g0]));
            acc[m] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[m]);
        }
    }
    WFRT_UNROLL for (int m = 0; m < MA; ++m) _mm256_storeu_ps(acc_io[m], acc[m]);
}

template <class D>
struct Q4Micro {
    const uint8_t* codes; const float* scales; int groups; const int8_t* X; int ldx;
    const int32_t (*xs8)[kQ4SpanGroups]; float* Y; int ldy; int n0, n1;
    // Tile t against activation rows [m0, m0 + ma), ma in 1..MA (the tail runs a smaller instance).
    template <int MA>
    void run(int t, int m0, int ma, int g0, int g1) const {
        if constexpr (MA > 1) {
            if (ma < MA) return run<MA - 1>(t, m0, ma, g0, g1);
        }
        const int r0 = t * kQ4RowTile;
        const int lo = n0 > r0 ? n0 - r0 : 0, hi = n1 - r0 < kQ4RowTile ? n1 - r0 : kQ4RowTile;
        float acc[MA][kQ4RowTile] = {};
        if (g0 > 0)
            for (int m = 0; m < MA; ++m)
                for (int r = lo; r < hi; ++r) acc[m][r] = Y[(size_t)(m0 + m) * ldy + r0 + r];
        const size_t tile = (size_t)t * groups;
        q4_tile<D, MA>(codes + tile * kQ4RowTile * 16, scales + tile * kQ4RowTile, X + (size_t)m0 * ldx, ldx, xs8,
                       g0, g1, acc);
        for (int m = 0; m < MA; ++m)
            for (int r = lo; r < hi; ++r) Y[(size_t)(m0 + m) * ldy + r0 + r] = acc[m][r];
    }
};

// Tiles covering [n0, n1) in bands (~256 KiB) that stay in L2 while every block of activation rows
// passes; one activation row streams all of them once.
template <class D>
void q4_gemm_tiled(const uint8_t* codes, const float* scales, int N, int K, const int8_t* X, int ldx, int M, float* Y,
                   int ldy, int n0, int n1) {
    (void)N;
    if (n0 >= n1) return;
    const int groups = q4_groups(K);
    const int t0 = n0 / kQ4RowTile, t1 = (n1 + kQ4RowTile - 1) / kQ4RowTile;
    const size_t tile_bytes = (size_t)groups * kQ4RowTile * (16 + sizeof(float));
    const int fit = (int)((256 * 1024) / tile_bytes);
    const int band = M <= kQ4Rows ? t1 - t0 : (fit > 1 ? fit : 1);
    int32_t xs8[kQ4Rows][kQ4SpanGroups];
    const Q4Micro<D> micro{codes, scales, groups, X, ldx, xs8, Y, ldy, n0, n1};
    for (int b0 = t0; b0 < t1; b0 += band) {
        const int b1 = t1 - b0 < band ? t1 : b0 + band;
        for (int m0 = 0; m0 < M; m0 += kQ4Rows) {
            const int ma = M - m0 < kQ4Rows ? M - m0 : kQ4Rows;
            for (int g0 = 0; g0 < groups; g0 += kQ4SpanGroups) {
                const int g1 = groups - g0 < kQ4SpanGroups ? groups : g0 + kQ4SpanGroups;
                for (int m = 0; m < ma; ++m)
                    for (int g = g0; g < g1; ++g) {
                        const int8_t* x = X + (size_t)(m0 + m) * ldx + (size_t)g * kQ4Group;
                        int32_t s = 0;
                        for (int k = 0; k < kQ4Group; ++k) s += x[k];
                        xs8[m][g - g0] = 8 * s;
                    }
                for (int t = b0; t < b1; ++t) micro.template run<kQ4Rows>(t, m0, ma, g0, g1);
            }
        }
    }
}
