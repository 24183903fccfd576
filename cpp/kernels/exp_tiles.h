// Float exp and the loops built on it (kernel table entries exp_sum and softmax), written once
// over a float SIMD traits type, as attn_tiles.h. Include only from an ISA file, after its
// `#pragma GCC target`, inside an anonymous namespace.
//
// Besides attn_tiles.h's traits, T provides: add, sub, mul, max, fnma(a, b, c) = c - a * b,
// round(v) (to nearest), hmax(v) (horizontal max), keep_first(v, n) (lanes from n on set to 0);
// exp_clamp(t) and exp_scale(p, n, t) (p * 2^n, for the argument t; see exp_simd); D, double
// accumulators for the lanes of one F split in two halves: dzero(), add_widened(lo, hi, v),
// dsum(lo, hi).

// exp in float to ~1 ulp: e^t = 2^n * e^r with n = round(t / ln 2), r = t - n ln 2 (ln 2 in two
// parts, so r is exact enough), e^r by its Taylor series to r^7 (|r| <= ln 2 / 2: the next term
// is below 2^-27). Applying 2^n is the ISA's: AVX-512's scalef underflows to 0 as exp does; AVX2
// builds 2^n in the exponent field, which needs n normal, so it clamps t to [-87, 88] and flushes
// results below e^-87 (2^-125) to 0.
template <class T>
inline typename T::F exp_simd(typename T::F t) {
    using F = typename T::F;
    const F tc = T::exp_clamp(t);
    const F n = T::round(T::mul(tc, T::set1(1.44269504088896341f)));
    F r = T::fnma(n, T::set1(0.693145751953125f), tc);
    r = T::fnma(n, T::set1(1.428606765330187045e-06f), r);
    F p = T::set1(1.0f / 5040);
    p = T::fma(p, r, T::set1(1.0f / 720));
    p = T::fma(p, r, T::set1(1.0f / 120));
    p = T::fma(p, r, T::set1(1.0f / 24));
    p = T::fma(p, r, T::set1(1.0f / 6));
    p = T::fma(p, r, T::set1(0.5f));
    p = T::fma(p, r, T::set1(1.0f));
    p = T::fma(p, r, T::set1(1.0f));
    return T::exp_scale(p, n, t);
}

// sum_i exp(x[i] * mul - sub) in double.
template <class T>
double exp_sum_simd(const float* x, int n, float mul, float sub) {
    using F = typename T::F;
    const F vm = T::set1(mul), vs = T::set1(sub);
    // Float exps summed in double lanes: a float running sum over 128K terms would lose digits.
    // mul then sub, not fused: the argument rounds as the scalar expression's does.
    typename T::D lo = T::dzero(), hi = T::dzero();
    int i = 0;
    for (; i + T::kLanes <= n; i += T::kLanes) T::add_widened(lo, hi, exp_simd<T>(T::sub(T::mul(T::load(x + i), vm), vs)));
    if (i < n) {
        const F t = T::sub(T::mul(T::load_part(x + i, n - i), vm), vs);
        T::add_widened(lo, hi, T::keep_first(exp_simd<T>(t), n - i));
    }
    return T::dsum(lo, hi);
}

// x = softmax(x) in place, n >= 1.
template <class T>
void softmax_simd(float* x, int n) {
    using F = typename T::F;
    const int full = n / T::kLanes * T::kLanes, rest = n - full;
    F mx = T::set1(-INFINITY);
    for (int i = 0; i < full; i += T::kLanes) mx = T::max(mx, T::load(x + i));
    float m = T::hmax(mx);
    for (int i = full; i < n; ++i) m = x[i] > m ? x[i] : m;
    const F vmx = T::set1(m);
    F sum = T::zero();
    for (int i = 0; i < full; i += T::kLanes) {
        const F e = exp_simd<T>(T::sub(T::load(x + i), vmx));
        T::store(x + i, e);
        sum = T::add(sum, e);
    }
    if (rest) {
        const F e = T::keep_first(exp_simd<T>(T::sub(T::load_part(x + full, rest), vmx)), rest);
        T::store_part(x + full, e, rest);
        sum = T::add(sum, e);
    }
    const F inv = T::set1(1.0f / T::sum(sum));
    for (int i = 0; i < full; i += T::kLanes) T::store(x + i, T::mul(T::load(x + i), inv));
    if (rest) T::store_part(x + full, T::mul(T::load_part(x + full, rest), inv), rest);
}
