// Attention loops (kernel table entries attn_scores / attn_accumulate), written once over a
// float SIMD traits type. Include only from an ISA file, after its `#pragma GCC target`, inside
// an anonymous namespace (as ternary_tiles.h).
//
// Traits T provide: F (float vector); kLanes; load(p); load_part(p, n) (first n < kLanes floats,
// zeros after); store(p, v); store_part(p, v, n); set1(x); zero(); fma(a, b, c) = a * b + c;
// sum(v) (horizontal add); sum4(a, b, c, d, out) (four horizontal adds at once, sharing shuffles).

// One key row against GB query heads: the key is loaded once for all heads sharing it.
template <class T, int GB>
inline void attn_scores_heads(const float* Q, int ldq, int d, const float* k, float scale, float* s, int lds) {
    using F = typename T::F;
    F acc[GB];
    WFRT_UNROLL for (int g = 0; g < GB; ++g) acc[g] = T::zero();
    int e = 0;
    for (; e + T::kLanes <= d; e += T::kLanes) {
        const F kv = T::load(k + e);
        WFRT_UNROLL for (int g = 0; g < GB; ++g) acc[g] = T::fma(T::load(Q + (size_t)g * ldq + e), kv, acc[g]);
    }
    if (e < d) {
        const F kv = T::load_part(k + e, d - e);
        WFRT_UNROLL for (int g = 0; g < GB; ++g)
            acc[g] = T::fma(T::load_part(Q + (size_t)g * ldq + e, d - e), kv, acc[g]);
    }
    if constexpr (GB == 4) {
        float sums[4];
        T::sum4(acc[0], acc[1], acc[2], acc[3], sums);
        WFRT_UNROLL for (int g = 0; g < 4; ++g) s[(size_t)g * lds] = sums[g] * scale;
    } else {
        WFRT_UNROLL for (int g = 0; g < GB; ++g) s[(size_t)g * lds] = T::sum(acc[g]) * scale;
    }
}

template <class T>
void attn_scores_simd(const float* Q, int G, int ldq, int d, const float* Kc, int ld, int count, float scale, float* S,
                      int lds) {
    for (int j = 0; j < count; ++j) {
        const float* k = Kc + (size_t)j * ld;
        int g = 0;
        for (; g + 4 <= G; g += 4) attn_scores_heads<T, 4>(Q + (size_t)g * ldq, ldq, d, k, scale, S + (size_t)g * lds + j, lds);
        for (; g < G; ++g) attn_scores_heads<T, 1>(Q + (size_t)g * ldq, ldq, d, k, scale, S + (size_t)g * lds + j, lds);
    }
}

// NV output vectors of one head kept in registers over all positions (8 independent FMA chains).
template <class T, int NV>
inline void attn_accumulate_block(const float* p, const float* Vc, int ld, int count, float* o) {
    using F = typename T::F;
    F acc[NV];
    WFRT_UNROLL for (int v = 0; v < NV; ++v) acc[v] = T::load(o + v * T::kLanes);
    for (int j = 0; j < count; ++j) {
        const F w = T::set1(p[j]);
        const float* vr = Vc + (size_t)j * ld;
        WFRT_UNROLL for (int v = 0; v < NV; ++v) acc[v] = T::fma(w, T::load(vr + v * T::kLanes), acc[v]);
    }
    WFRT_UNROLL for (int v = 0; v < NV; ++v) T::store(o + v * T::kLanes, acc[v]);
}

template <class T>
void attn_accumulate_simd(const float* P, int G, int ldp, int d, const float* Vc, int ld, int count, float* O, int ldo) {
    using F = typename T::F;
    for (int g = 0; g < G; ++g) {
        const float* p = P + (size_t)g * ldp;
        float* o = O + (size_t)g * ldo;
        int e = 0;
        for (; e + 8 * T::kLanes <= d; e += 8 * T::kLanes) attn_accumulate_block<T, 8>(p, Vc + e, ld, count, o + e);
        for (; e + T::kLanes <= d; e += T::kLanes) attn_accumulate_block<T, 1>(p, Vc + e, ld, count, o + e);
        if (e < d) {
            const int n = d - e;
            F acc = T::load_part(o + e, n);
            for (int j = 0; j < count; ++j) acc = T::fma(T::set1(p[j]), T::load_part(Vc + (size_t)j * ld + e, n), acc);
            T::store_part(o + e, acc, n);
        }
    }
}
