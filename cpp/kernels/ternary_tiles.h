// The ternary GEMM loop nest, written once over a SIMD "traits" type (one per ISA file).
//
// Include only from an ISA file, after its `#pragma GCC target`, and inside an anonymous
// namespace, so every instantiation is compiled for (and private to) that ISA.
//
// Traits T provide: V (vector type); kAccRegs (vector registers free for accumulators);
// kVecsPerTile (vectors per 16-row tile: 2 for 256-bit, 1 for 512-bit); kLanes (int32 lanes
// per vector); kWidens (true when dot() accumulates in int16 and must be widened once per K
// block, then also add16(a, b)); load(chunk, v); codes(raw, s) -> u in {0,1,2} for shift
// group s; bcast(x) (4 activation bytes to every lane); zero(); dot(acc, w, x);
// widen(acc) -> int32 lanes; add32(a, b); load32(const int32_t*); store(int32_t*, V).

// Each activation row's K block is 32 dot steps: |u * x| pair sums are <= 2 * 2 * 128 = 512,
// so an int16 accumulator over one block stays within 32 * 512 = 16384.
static_assert(kTernaryKBlock / 4 * 512 <= 32767, "int16 block accumulators would overflow");

// Software prefetch distance along each tile's stream, in 64-byte chunks (8 KiB). Measured on
// Zen5 for GEMV from DRAM: this beat 0.5, 2 and 16 KiB and no prefetch.
constexpr int kPrefetchChunks = 128;

template <int RT>
inline void prefetch_tiles(const uint8_t* W, size_t tile_bytes, int g) {
    WFRT_UNROLL for (int r = 0; r < RT; ++r)
        _mm_prefetch((const char*)(W + r * tile_bytes + (size_t)(g + kPrefetchChunks) * 64), _MM_HINT_T0);
}

// Independent accumulator sets over the four shift groups. A dpbusd accumulator is a latency
// chain taking one dot per shift group per chunk: when a few activation rows stream weights from
// DRAM (RT = 1), four dots in a row per chunk cap the rate at a third of DRAM speed, so each
// accumulator is split over the shift groups as far as registers allow (T::kAccRegs). maddubs
// accumulates through a 1-cycle add and needs no split, except in the GEMV, where it measured
// faster too. Register tiles (RT > 1) already have 16+ chains.
template <class T, int RT, int MA>
constexpr int ternary_splits() {
    constexpr int chains = MA * RT * T::kVecsPerTile;
    if (RT > 1) return 1;
    if (MA == 1) return 4;
    if (T::kWidens) return 1;
    return 4 * chains <= T::kAccRegs ? 4 : (2 * chains <= T::kAccRegs ? 2 : 1);
}

// Y tile for MA activation rows x RT row tiles of 16 rows, over all of K.
// W points at the first tile's first chunk; tiles are `tile_bytes` apart.
// Widening types keep the int32 totals in `out` between K blocks rather than in registers: with
// 16 ymm registers, live totals made GCC spill the block accumulators inside the hot loop.
template <class T, int RT, int MA>
inline void ternary_micro(const uint8_t* W, size_t tile_bytes, int Kp, const int8_t* X, int ldx,
                          int32_t* out /* [MA][RT * 16] */) {
    using V = typename T::V;
    constexpr int NV = RT * T::kVecsPerTile;
    constexpr int S = ternary_splits<T, RT, MA>();
    V tot[T::kWidens ? 1 : MA][NV];
    WFRT_UNROLL for (int m = 0; m < MA; ++m)
        WFRT_UNROLL for (int v = 0; v < NV; ++v) {
            if constexpr (T::kWidens) T::store(out + m * RT * 16 + v * T::kLanes, T::zero());
            else tot[m][v] = T::zero();
        }
    for (int kb = 0; kb < Kp; kb += kTernaryKBlock) {
        // Without widening, partial set 0 continues tot itself (no second register set).
        V blk[S][MA][NV];
        WFRT_UNROLL for (int j = 0; j < S; ++j)
            WFRT_UNROLL for (int m = 0; m < MA; ++m)
                WFRT_UNROLL for (int v = 0; v < NV; ++v) {
                    if constexpr (T::kWidens) blk[j][m][v] = T::zero();
                    else blk[j][m][v] = j > 0 ? T::zero() : tot[m][v];
                }
        for (int g = kb / 16; g < (kb + kTernaryKBlock) / 16; ++g) {
            prefetch_tiles<RT>(W, tile_bytes, g);
            V raw[NV];
            WFRT_UNROLL for (int v = 0; v < NV; ++v)
                raw[v] = T::load(W + (v / T::kVecsPerTile) * tile_bytes + (size_t)g * 64, v % T::kVecsPerTile);
            WFRT_UNROLL for (int s = 0; s < 4; ++s) {
                V w[NV];
                WFRT_UNROLL for (int v = 0; v < NV; ++v) w[v] = T::codes(raw[v], s);
                WFRT_UNROLL for (int m = 0; m < MA; ++m) {
                    const V xb = T::bcast(X + (size_t)m * ldx + g * 16 + s * 4);
                    WFRT_UNROLL for (int v = 0; v < NV; ++v) blk[s % S][m][v] = T::dot(blk[s % S][m][v], w[v], xb);
                }
            }
        }
        WFRT_UNROLL for (int m = 0; m < MA; ++m)
            WFRT_UNROLL for (int v = 0; v < NV; ++v) {
                if constexpr (T::kWidens) {
                    // Partial int16 sums of one block together stay within the bound above.
                    WFRT_UNROLL for (int j = 1; j < S; ++j) blk[0][m][v] = T::add16(blk[0][m][v], blk[j][m][v]);
                    int32_t* o = out + m * RT * 16 + v * T::kLanes;
                    T::store(o, T::add32(T::load32(o), T::widen(blk[0][m][v])));
                } else {
                    WFRT_UNROLL for (int j = 1; j < S; ++j) blk[0][m][v] = T::add32(blk[0][m][v], blk[j][m][v]);
                    tot[m][v] = blk[0][m][v];
                }
            }
    }
    if constexpr (!T::kWidens)
        WFRT_UNROLL for (int m = 0; m < MA; ++m)
            WFRT_UNROLL for (int v = 0; v < NV; ++v) T::store(out + m * RT * 16 + v * T::kLanes, tot[m][v]);
}

// Runs the micro kernel for `ma` (1..MA) activation rows: the tail of M uses a smaller instance.
template <class T, int RT, int MA>
inline void ternary_micro_rows(int ma, const uint8_t* W, size_t tile_bytes, int Kp, const int8_t* X, int ldx,
                               int32_t* out) {
    if constexpr (MA > 1) {
        if (ma < MA) return ternary_micro_rows<T, RT, MA - 1>(ma, W, tile_bytes, Kp, X, ldx, out);
    }
    ternary_micro<T, RT, MA>(W, tile_bytes, Kp, X, ldx, out);
}

// Copies the computed rows of a tile group that fall inside [n0, n1).
inline void ternary_store(const int32_t* tile_out, int ma, int rows, int row0, int n0, int n1, int32_t* Y, int ldy,
                          int m0) {
    const int a = row0 < n0 ? n0 : row0;
    const int b = row0 + rows > n1 ? n1 : row0 + rows;
    for (int m = 0; m < ma; ++m)
        for (int n = a; n < b; ++n) Y[(size_t)(m0 + m) * ldy + n] = tile_out[m * rows + (n - row0)];
}

inline int tiles_min(int a, int b) { return a < b ? a : b; }

// Tiles [t, t_end) for activation rows [m0, m0 + ma): RT tiles at a time, then single tiles.
template <class T, int RT, int MA>
inline void ternary_tiles(int t, int t_end, int ma, int m0, const uint8_t* W, size_t tile_bytes, int Kp,
                          const int8_t* X, int ldx, int32_t* Y, int ldy, int n0, int n1) {
    alignas(64) int32_t out[MA * RT * kTernaryRowTile];
    const int8_t* Xm = X + (size_t)m0 * ldx;
    for (; t + RT <= t_end; t += RT) {
        ternary_micro_rows<T, RT, MA>(ma, W + (size_t)t * tile_bytes, tile_bytes, Kp, Xm, ldx, out);
        ternary_store(out, ma, RT * kTernaryRowTile, t * kTernaryRowTile, n0, n1, Y, ldy, m0);
    }
    for (; t < t_end; ++t) {
        ternary_micro_rows<T, 1, MA>(ma, W + (size_t)t * tile_bytes, tile_bytes, Kp, Xm, ldx, out);
        ternary_store(out, ma, kTernaryRowTile, t * kTernaryRowTile, n0, n1, Y, ldy, m0);
    }
}

// Fewer activation rows than one register tile (GEMV and small batches) are memory-bound: they
// run tile by tile in memory order (measured on Zen5: one sequential stream reads faster than
// several tiles in parallel). More rows run RT x MA register tiles over groups of tiles whose
// weights (~256 KiB) stay in L2 while every activation row passes over them.
template <class T, int RT, int MA>
void ternary_gemm_tiled(const uint8_t* W, int N, int K, const int8_t* X, int ldx, int M,
                        int32_t* Y, int ldy, int n0, int n1) {
    (void)N;
    if (n0 >= n1 || M <= 0) return;
    const int Kp = ternary_padded_k(K);
    const size_t tile_bytes = (size_t)Kp * 4;
    const int t0 = n0 / kTernaryRowTile, t1 = (n1 + kTernaryRowTile - 1) / kTernaryRowTile;
    if (M < MA) return ternary_tiles<T, 1, MA>(t0, t1, M, 0, W, tile_bytes, Kp, X, ldx, Y, ldy, n0, n1);
    const int fit = (int)((256 * 1024) / tile_bytes) / RT * RT;
    const int group = fit > RT ? fit : RT;
    for (int tg = t0; tg < t1; tg += group)
        for (int m0 = 0; m0 < M; m0 += MA)
            ternary_tiles<T, RT, MA>(tg, tiles_min(tg + group, t1), tiles_min(MA, M - m0), m0, W, tile_bytes, Kp, X,
                                     ldx, Y, ldy, n0, n1);
}
