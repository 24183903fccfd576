// 256-bit helpers shared by the AVX2 and AVX-VNNI files. Include after the file's target pragma,
// inside its anonymous namespace (see ternary_tiles.h).

// 16-row tile = two vectors of 8 int32 lanes: chunk bytes 0..31 are rows 0..7, 32..63 rows 8..15.
struct Ymm {
    using V = __m256i;
    static constexpr int kVecsPerTile = 2;
    static constexpr int kLanes = 8;
    static constexpr int kAccRegs = 10;
    static V load(const uint8_t* chunk, int v) { return _mm256_loadu_si256((const __m256i*)(chunk + 32 * v)); }
    static V codes(V raw, int s) { return _mm256_and_si256(_mm256_srli_epi16(raw, 2 * s), _mm256_set1_epi8(3)); }
    static V bcast(const int8_t* x) {
        int32_t v;
        std::memcpy(&v, x, 4);
        return _mm256_set1_epi32(v);
    }
    static V zero() { return _mm256_setzero_si256(); }
    // Base-3 plane (base3.h): u = (y > -43) + (y > 42) as signed bytes, then y *= 3 (mod 256).
    static V digit(V& y) {
        const V u = _mm256_sub_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), _mm256_cmpgt_epi8(y, _mm256_set1_epi8(-43))),
                                    _mm256_cmpgt_epi8(y, _mm256_set1_epi8(42)));
        y = _mm256_add_epi8(_mm256_add_epi8(y, y), y);
        return u;
    }
    static V add16(V a, V b) { return _mm256_add_epi16(a, b); }
    static V add32(V a, V b) { return _mm256_add_epi32(a, b); }
    static V load32(const int32_t* y) { return _mm256_loadu_si256((const __m256i*)y); }
    static void store(int32_t* y, V v) { _mm256_storeu_si256((__m256i*)y, v); }
};

inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

