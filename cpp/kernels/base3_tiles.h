// The ternary GEMM on the base-3 layout (base3.h), written once over the ternary tiles' SIMD
// traits (ternary_tiles.h, included before this), plus digit(V& y): tile i's codes u in {0, 1, 2}
// from a loaded plane that has given up i digits already, advancing y to the next digit.
//
// One plane load serves five row tiles: the GEMV streams 1.6 bits per weight and decodes them
// with four byte operations per digit instead of v1's shift and mask, so it pays only where the
// weights cannot be streamed as fast as v1's are decoded.

// Y for MA activation rows x one group of kBase3Rows rows over all of K, for the H vectors
// [v0, v0 + H) of each tile (int32 lanes = rows v * kLanes ...). out is [MA][kBase3Rows].
template <class T, int MA, int H>
inline void base3_micro(const uint8_t* Wg, int Kp, const int8_t* X, int ldx, int v0, int32_t* out) {
    using V = typename T::V;
    V tot[T::kWidens ? 1 : MA][kBase3Tiles][H];
    WFRT_UNROLL for (int m = 0; m < MA; ++m)
        WFRT_UNROLL for (int i = 0; i < kBase3Tiles; ++i)
            WFRT_UNROLL for (int h = 0; h < H; ++h) {
                int32_t* o = out + m * kBase3Rows + i * kTernaryRowTile + (v0 + h) * T::kLanes;
                if constexpr (T::kWidens) T::store(o, T::zero());
                else tot[m][i][h] = T::zero();
            }
    for (int kb = 0; kb < Kp; kb += kTernaryKBlock) {
        V blk[MA][kBase3Tiles][H];
        WFRT_UNROLL for (int m = 0; m < MA; ++m)
            WFRT_UNROLL for (int i = 0; i < kBase3Tiles; ++i)
                WFRT_UNROLL for (int h = 0; h < H; ++h) blk[m][i][h] = T::kWidens ? T::zero() : tot[m][i][h];
        for (int g = kb / 16; g < (kb + kTernaryKBlock) / 16; ++g)
            WFRT_UNROLL for (int s = 0; s < 4; ++s) {
                const uint8_t* plane = Wg + ((size_t)g * 4 + s) * 64;
                _mm_prefetch((const char*)(plane + kPrefetchChunks * 64), _MM_HINT_T0);
                V xb[MA];
                WFRT_UNROLL for (int m = 0; m < MA; ++m) xb[m] = T::bcast(X + (size_t)m * ldx + g * 16 + s * 4);
                WFRT_UNROLL for (int h = 0; h < H; ++h) {
                    V y = T::load(plane, v0 + h);
                    WFRT_UNROLL for (int i = 0; i < kBase3Tiles; ++i) {
                        const V u = T::digit(y);
                        WFRT_UNROLL for (int m = 0; m < MA; ++m) blk[m][i][h] = T::dot(blk[m][i][h], u, xb[m]);
                    }
                }
            }
        WFRT_UNROLL for (int m = 0; m < MA; ++m)
            WFRT_UNROLL for (int i = 0; i < kBase3Tiles; ++i)
                WFRT_UNROLL for (int h = 0; h < H; ++h) {
                    if constexpr (T::kWidens) {
                        int32_t* o = out + m * kBase3Rows + i * kTernaryRowTile + (v0 + h) * T::kLanes;
                        T::store(o, T::add32(T::load32(o), T::widen(blk[m][i][h])));
                    } else {
                        tot[m][i][h] = blk[m][i][h];
                    }
                }
    }
    if constexpr (!T::kWidens)
        WFRT_UNROLL for (int m = 0; m < MA; ++m)
            WFRT_UNROLL for (int i = 0; i < kBase3Tiles; ++i)
                WFRT_UNROLL for (int h = 0; h < H; ++h)
                    T::store(out + m * kBase3Rows + i * kTernaryRowTile + (v0 + h) * T::kLanes, tot[m][i][h]);
}

// `ma` (1..MA) activation rows: one row takes every vector of a tile in one pass (one sweep of
// the weight stream); more rows take one vector per pass, so their accumulators fit the registers.
template <class T, int MA>
inline void base3_micro_rows(int ma, const uint8_t* Wg, int Kp, const int8_t* X, int ldx, int32_t* out) {
    if constexpr (MA > 1) {
        if (ma < MA) return base3_micro_rows<T, MA - 1>(ma, Wg, Kp, X, ldx, out);
        WFRT_UNROLL for (int v = 0; v < T::kVecsPerTile; ++v) base3_micro<T, MA, 1>(Wg, Kp, X, ldx, v, out);
    } else {
        base3_micro<T, 1, T::kVecsPerTile>(Wg, Kp, X, ldx, 0, out);
    }
}

// Groups in memory order, each for every activation row (a group's weights, 16 bytes per k,
// stay in L2 while the rows pass over them).
template <class T, int MA>
void base3_gemm_tiled(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M, int32_t* Y, int ldy,
                      int n0, int n1) {
    (void)N;
    if (n0 >= n1 || M <= 0) return;
    const int Kp = ternary_padded_k(K);
    const size_t group_bytes = (size_t)Kp * 16;
    alignas(64) int32_t out[MA * kBase3Rows];
    for (int G = n0 / kBase3Rows; G * kBase3Rows < n1; ++G)
        for (int m0 = 0; m0 < M; m0 += MA) {
            const int ma = tiles_min(MA, M - m0);
            base3_micro_rows<T, MA>(ma, W + (size_t)G * group_bytes, Kp, X + (size_t)m0 * ldx, ldx, out);
            ternary_store(out, ma, kBase3Rows, G * kBase3Rows, n0, n1, Y, ldy, m0);
        }
}
