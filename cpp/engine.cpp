#include "engine.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "kv_cache.h"
#include "model.h"
#include "sampling.h"
#include "thread_pool.h"

namespace wfrt {

namespace {

// Default pool when kv_pages = 0: every slot at full length, but at most this many bytes, so a
// large model with many slots does not reserve tens of GiB of address space.
constexpr size_t kDefaultKvBudgetBytes = size_t(4) << 30;

const KernelTable& pick_kernels(const std::string& isa) {
    if (isa.empty()) return kernels();
    const KernelTable* t = kernels_by_name(isa);
    if (t == nullptr) throw std::invalid_argument("isa '" + isa + "' is unknown or not supported by this CPU");
    return *t;
}

bool pick_base3(const std::string& packing) {
    if (packing == "2bit") return false;
    if (packing == "base3") return true;
    throw std::invalid_argument("ternary_packing '" + packing + "' is unknown (choose from: 2bit, base3)");
}

int pick_threads(int n) {
    if (n < 0) throw std::invalid_argument("num_threads must be >= 0, got " + std::to_string(n));
    return n == 0 ? physical_core_count() : n;
}

int pick_pages(const ModelSpec& cfg, const EngineOptions& opt) {
    if (opt.kv_pages < 0) throw std::invalid_argument("kv_pages must be >= 0, got " + std::to_string(opt.kv_pages));
    if (opt.page_size < 1) throw std::invalid_argument("page_size must be >= 1, got " + std::to_string(opt.page_size));
    if (opt.max_slots < 1) throw std::invalid_argument("max_slots must be >= 1, got " + std::to_string(opt.max_slots));
    if (opt.kv_pages > 0) return opt.kv_pages;
    const long per_seq = (cfg.max_positions + opt.page_size - 1) / opt.page_size;
    const size_t page_bytes = size_t(2) * cfg.num_layers * opt.page_size * cfg.num_kv_heads * cfg.head_dim * sizeof(float);
    const long budget = static_cast<long>(std::max<size_t>(1, kDefaultKvBudgetBytes / std::max<size_t>(1, page_bytes)));
    return static_cast<int>(std::min(per_seq * opt.max_slots, std::max(per_seq, budget)));
}

// Rows of one slot whose attention runs as one task (see attention()): 8 rows' scores at 4096
// positions and 4 heads stay within 512 KiB per thread.
constexpr int kAttnRows = 8;

// Grow-only buffers: a step allocates only when it is larger than every step before it.
template <class T>
T* grow(std::vector<T>& v, size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
}

std::string row_str(int i) { return "row " + std::to_string(i); }

}  // namespace

struct BitNetBatchEngine::Impl {
    Impl(const ModelSpec& c, const EngineOptions& o, const std::vector<NamedTensor>& tensors)
        : opt(o),
          kern(&pick_kernels(o.isa)),
          plan(plan_ternary(*kern, o.ternary_kernel, c.hidden_size, pick_base3(o.ternary_packing))),
          pool(pick_threads(o.num_threads)),
          model(c, o.lm_head, tensors, pool),
          kv(c.num_layers, c.num_kv_heads * c.head_dim, o.page_size, pick_pages(c, o), o.max_slots) {
        // Only the layouts the plan's kernels read are kept: the dense kernel reads the tiles, or
        // with base-3 packing the base-3 layout; a LUT kernel forced for every row count, neither.
        if (plan.uses_lut()) model.add_lut_layouts(pool);
        if (plan.base3 && plan.uses_dense()) model.add_base3_layouts(pool);
        if (plan.base3 || !plan.uses_dense()) model.drop_tiles();
    }

    void validate(const StepInput& in);
    void zero_skipped_positions();
    void publish_counts() {
        pages_free.store(kv.pages_free(), std::memory_order_relaxed);
        slots_free.store(kv.slots_free(), std::memory_order_relaxed);
    }
    void forward(const StepInput& in, StepOutput& out);
    void attention(int layer, const StepInput& in);

    EngineOptions opt;
    const KernelTable* kern;
    TernaryPlan plan;
    ThreadPool pool;
    Model model;
    KVCache kv;
    std::mutex mu;                   // one step or sequence operation at a time
    std::atomic<bool> cancelled{false};
    // Counts readable while a step runs (the scheduler polls them without waiting on `mu`).
    std::atomic<int> pages_free{0}, slots_free{0};

    // Step workspace (grow-only).
    std::vector<float> x, a_norm, q, k, v, o, gate, up, scores, xo, logits, qa, rope_cs;
    std::vector<int8_t> xq;
    std::vector<int32_t> y32, xsum;
    std::vector<int> step_hw, row_limit, row_blocks;
    std::vector<std::pair<int, int>> row_keys;
    std::vector<SampleScratch> sample_scratch;
};

void BitNetBatchEngine::Impl::validate(const StepInput& in) {
    const ModelSpec& c = model.cfg;
    if (in.n_rows < 0) throw std::invalid_argument("n_rows must be >= 0, got " + std::to_string(in.n_rows));
    if (in.n_out < 0 || in.n_out > in.n_rows)
        throw std::invalid_argument("n_out must be in [0, n_rows=" + std::to_string(in.n_rows) + "], got " + std::to_string(in.n_out));
    if (in.n_rows > 0 && (!in.slot || !in.position || !in.token))
        throw std::invalid_argument("slot, position and token arrays are required");
    if (in.n_out > 0 && (!in.out_row || !in.out_mode)) throw std::invalid_argument("out_row and out_mode arrays are required");
    for (int i = 0; i < in.n_rows; ++i) {
        const int s = in.slot[i], p = in.position[i], t = in.token[i];
        if (!kv.is_live(s)) throw std::invalid_argument(row_str(i) + ": slot " + std::to_string(s) + " is not allocated");
        if (p < 0 || p >= kv.reserved(s))
            throw std::invalid_argument(row_str(i) + ": position " + std::to_string(p) + " is outside slot " + std::to_string(s) +
                                        "'s reservation of " + std::to_string(kv.reserved(s)) + " positions");
        if (t < 0 || t >= c.vocab_size)
            throw std::invalid_argument(row_str(i) + ": token " + std::to_string(t) + " is outside the vocabulary [0, " +
                                        std::to_string(c.vocab_size) + ")");
    }
    // Two rows writing the same (slot, position) would race for one K/V entry.
    std::vector<std::pair<int, int>>& keys = row_keys;
    keys.resize(in.n_rows);
    for (int i = 0; i < in.n_rows; ++i) keys[i] = {in.slot[i], in.position[i]};
    std::sort(keys.begin(), keys.end());
    auto dup = std::adjacent_find(keys.begin(), keys.end());
    if (dup != keys.end())
        throw std::invalid_argument("two rows write slot " + std::to_string(dup->first) + " position " + std::to_string(dup->second));
    auto bad_output = [](int j, const std::string& what) {
        return std::invalid_argument("output " + std::to_string(j) + ": " + what);
    };
    for (int j = 0; j < in.n_out; ++j) {
        if (in.out_row[j] < 0 || in.out_row[j] >= in.n_rows)
            throw bad_output(j, "out_row " + std::to_string(in.out_row[j]) + " is not a row of this step");
        const OutMode mode = in.out_mode[j];
        if (mode != OutMode::Argmax && mode != OutMode::Sample && mode != OutMode::Logits)
            throw bad_output(j, "out_mode " + std::to_string(static_cast<int>(mode)) + " is not 0, 1 or 2");
        if (in.exclude && (in.exclude[j] < -1 || in.exclude[j] >= c.vocab_size))
            throw bad_output(j, "exclude " + std::to_string(in.exclude[j]) + " is not -1 or a token id");
        if (mode != OutMode::Sample) continue;
        if (in.temperature && !(std::isfinite(in.temperature[j]) && in.temperature[j] >= 0.0f))
            throw bad_output(j, "temperature must be finite and >= 0");
        if (in.top_k && in.top_k[j] < 0) throw bad_output(j, "top_k must be >= 0");
        if (in.top_p && !(in.top_p[j] > 0.0f && in.top_p[j] <= 1.0f)) throw bad_output(j, "top_p must be in (0, 1]");
        if (in.uniform && !(in.uniform[j] >= 0.0f && in.uniform[j] < 1.0f))
            throw bad_output(j, "uniform must be in [0, 1)");
    }
}

void BitNetBatchEngine::Impl::attention(int layer, const StepInput& in) {
    const ModelSpec& c = model.cfg;
    const int hd = c.head_dim, nkv = c.num_kv_heads, G = c.num_heads / c.num_kv_heads;
    const int QD = c.num_heads * hd, KD = nkv * hd, ps = kv.page_size();
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    const int M = in.n_rows;

    // Visible keys form a prefix [0, limit) of the slot: p_k // B <= p_q // B and p_k < high-water.
    int* limit = grow(row_limit, M);
    int max_limit = 1;
    for (int i = 0; i < M; ++i) {
        const int s = in.slot[i], B = kv.attn_block(s);
        limit[i] = std::min(step_hw[s], (in.position[i] / B + 1) * B);
        max_limit = std::max(max_limit, limit[i]);
    }
    // Blocks of up to kAttnRows consecutive rows of one slot: each cached page is read from
    // memory once per block (it stays in L1 while the block's rows use it), not once per row.
    row_blocks.clear();
    for (int i = 0; i < M; ++i)
        if (row_blocks.empty() || i - row_blocks.back() == kAttnRows || in.slot[i] != in.slot[i - 1]) row_blocks.push_back(i);
    const int n_blocks = static_cast<int>(row_blocks.size());
    row_blocks.push_back(M);
    const size_t per_row = static_cast<size_t>(G) * max_limit;
    float* sc_all = grow(scores, per_row * kAttnRows * pool.size());
    float* O = o.data();
    const float* Q = q.data();

    // One task per (row block, KV head): the G query heads sharing a KV head (heads kh*G ..
    // kh*G+G-1) read each cached K and V row together. Positions go in runs of one page, where
    // rows are contiguous.
    pool.parallel_for(n_blocks * nkv, [&](int task, int thread) {
        const int b = task / nkv, kh = task % nkv;
        const int i0 = row_blocks[b], i1 = row_blocks[b + 1], s = in.slot[i0];
        int block_limit = 0;
        for (int i = i0; i < i1; ++i) block_limit = std::max(block_limit, limit[i]);
        float* sc = sc_all + static_cast<size_t>(thread) * kAttnRows * per_row;
        auto head0 = [&](int i) { return static_cast<size_t>(i) * QD + static_cast<size_t>(kh) * G * hd; };
        for (int j = 0; j < block_limit; j += ps - j % ps) {
            const int run_end = std::min(j + ps - j % ps, block_limit);
            const float* kr = kv.k_row(layer, s, j) + kh * hd;
            for (int i = i0; i < i1; ++i)
                if (limit[i] > j)
                    kern->attn_scores(Q + head0(i), G, hd, hd, kr, KD, std::min(run_end, limit[i]) - j, scale,
                                      sc + (i - i0) * per_row + j, max_limit);
        }
        for (int i = i0; i < i1; ++i)
            for (int g = 0; g < G; ++g) kern->softmax(sc + (i - i0) * per_row + static_cast<size_t>(g) * max_limit, limit[i]);
        for (int i = i0; i < i1; ++i) std::fill(O + head0(i), O + head0(i) + static_cast<size_t>(G) * hd, 0.0f);
        for (int j = 0; j < block_limit; j += ps - j % ps) {
            const int run_end = std::min(j + ps - j % ps, block_limit);
            const float* vr = kv.v_row(layer, s, j) + kh * hd;
            for (int i = i0; i < i1; ++i)
                if (limit[i] > j)
                    kern->attn_accumulate(sc + (i - i0) * per_row + j, G, max_limit, hd, vr, KD,
                                          std::min(run_end, limit[i]) - j, O + head0(i), hd);
        }
    });
}

void BitNetBatchEngine::Impl::forward(const StepInput& in, StepOutput& out) {
    const ModelSpec& c = model.cfg;
    const int M = in.n_rows, H = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
    const int QD = c.num_heads * c.head_dim, KD = c.num_kv_heads * c.head_dim;
    const int Kmax = ternary_padded_k(std::max({H, I, QD}));
    const Compute comp{kern, &pool, &plan};
    const float eps = c.rms_norm_eps;

    // High-water marks as they stand once this step's rows are written.
    grow(step_hw, kv.max_slots());
    for (int i = 0; i < M; ++i) step_hw[in.slot[i]] = kv.high_water(in.slot[i]);
    for (int i = 0; i < M; ++i) step_hw[in.slot[i]] = std::max(step_hw[in.slot[i]], in.position[i] + 1);

    float* X = grow(x, static_cast<size_t>(M) * H);
    float* A = grow(a_norm, static_cast<size_t>(M) * std::max(H, I));
    float* Qb = grow(q, static_cast<size_t>(M) * QD);
    float* Kb = grow(k, static_cast<size_t>(M) * KD);
    float* Vb = grow(v, static_cast<size_t>(M) * KD);
    float* Ob = grow(o, static_cast<size_t>(M) * QD);
    float* G = grow(gate, static_cast<size_t>(M) * I);
    float* U = grow(up, static_cast<size_t>(M) * I);
    int8_t* XQ = grow(xq, static_cast<size_t>(std::max(M, 1)) * Kmax);
    float* QA = grow(qa, M);
    int32_t* XS = grow(xsum, M);
    int32_t* Y32 = grow(y32, static_cast<size_t>(M) * std::max({QD + 2 * KD, H, 2 * I}));

    float* RC = grow(rope_cs, static_cast<size_t>(M) * c.head_dim);

    for (int i = 0; i < M; ++i) {
        std::memcpy(X + static_cast<size_t>(i) * H, model.embed + static_cast<size_t>(in.token[i]) * H, H * sizeof(float));
        rope_angles(model.inv_freq.data(), c.head_dim / 2, in.position[i], RC + static_cast<size_t>(i) * c.head_dim);
    }

    for (int l = 0; l < c.num_layers; ++l) {
        if (cancelled.load(std::memory_order_relaxed)) throw StepCancelled("step cancelled before layer " + std::to_string(l));
        const LayerWeights& L = model.layers[l];

        norm_quantize_rows(comp, X, nullptr, L.input_norm.data(), M, H, eps, A, XQ, QA, XS);
        {
            const TernaryMatrix* mats[] = {&L.q, &L.k, &L.v};
            float* outs[] = {Qb, Kb, Vb};
            bitlinear(comp, mats, outs, 3, XQ, QA, XS, M, Y32);
        }
        pool.parallel_for(M, [&](int i, int) {
            const float* cs = RC + static_cast<size_t>(i) * c.head_dim;
            rope_row(Qb + static_cast<size_t>(i) * QD, c.num_heads, c.head_dim, cs);
            float* kr = Kb + static_cast<size_t>(i) * KD;
            rope_row(kr, c.num_kv_heads, c.head_dim, cs);
            std::memcpy(kv.k_row(l, in.slot[i], in.position[i]), kr, KD * sizeof(float));
            std::memcpy(kv.v_row(l, in.slot[i], in.position[i]), Vb + static_cast<size_t>(i) * KD, KD * sizeof(float));
        });
        attention(l, in);

        norm_quantize_rows(comp, Ob, nullptr, L.attn_sub_norm.data(), M, QD, eps, A, XQ, QA, XS);
        {
            const TernaryMatrix* mats[] = {&L.o};
            float* outs[] = {X};
            bitlinear(comp, mats, outs, 1, XQ, QA, XS, M, Y32, /*accumulate=*/true);
        }

        norm_quantize_rows(comp, X, nullptr, L.post_attn_norm.data(), M, H, eps, A, XQ, QA, XS);
        {
            const TernaryMatrix* mats[] = {&L.gate, &L.up};
            float* outs[] = {G, U};
            bitlinear(comp, mats, outs, 2, XQ, QA, XS, M, Y32);
        }
        norm_quantize_rows(comp, G, U, L.ffn_sub_norm.data(), M, I, eps, A, XQ, QA, XS);
        {
            const TernaryMatrix* mats[] = {&L.down};
            float* outs[] = {X};
            bitlinear(comp, mats, outs, 1, XQ, QA, XS, M, Y32, /*accumulate=*/true);
        }
    }

    const int n_out = in.n_out;
    if (n_out > 0) {
        float* XO = grow(xo, static_cast<size_t>(n_out) * H);
        for (int j = 0; j < n_out; ++j)
            rms_norm_rows(*kern, X + static_cast<size_t>(in.out_row[j]) * H, model.final_norm.data(), 1, H, eps,
                          XO + static_cast<size_t>(j) * H);
        float* LG = grow(logits, static_cast<size_t>(n_out) * V);
        int32_t* HY = grow(y32, static_cast<size_t>(n_out) * V);
        int8_t* HQ = grow(xq, static_cast<size_t>(n_out) * ternary_padded_k(H));
        float* HA = grow(qa, n_out);
        lm_head_rows(comp, model, XO, n_out, LG, HQ, HA, HY);

        if (sample_scratch.size() < static_cast<size_t>(pool.size())) sample_scratch.resize(pool.size());
        pool.parallel_for(n_out, [&](int j, int thread) {
            SampleSpec spec;
            spec.sample = in.out_mode[j] == OutMode::Sample;
            spec.exclude = in.exclude ? in.exclude[j] : -1;
            if (in.temperature) spec.temperature = in.temperature[j];
            if (in.top_k) spec.top_k = in.top_k[j];
            if (in.top_p) spec.top_p = in.top_p[j];
            if (in.uniform) spec.uniform = in.uniform[j];
            float p = 0.0f;
            out.token[j] = choose_token(*kern, LG + static_cast<size_t>(j) * V, V, spec, sample_scratch[thread], &p);
            out.prob[j] = p;
        });
        if (out.logits) {
            size_t r = 0;
            for (int j = 0; j < n_out; ++j)
                if (in.out_mode[j] == OutMode::Logits)
                    std::memcpy(out.logits + (r++) * V, LG + static_cast<size_t>(j) * V, static_cast<size_t>(V) * sizeof(float));
        }
    }
    for (int i = 0; i < M; ++i) kv.raise_high_water(in.slot[i], step_hw[in.slot[i]]);
}

// A step's rows see their slot's keys below its new high-water mark, so positions the step skips
// between the old mark and its rows must read as zeros, not as what the page's previous owner left
// there (the raw API may skip positions; the scheduler never does). Walks validate()'s sorted
// (slot, position) keys.
void BitNetBatchEngine::Impl::zero_skipped_positions() {
    int slot = -1, next = 0;  // next: the first position of `slot` not yet written or zeroed
    for (const auto& [s, p] : row_keys) {
        if (s != slot) {
            slot = s;
            next = kv.high_water(s);
        }
        if (p < next) continue;  // a rewrite below the mark
        if (p > next) kv.zero_positions(s, next, p);
        next = p + 1;
    }
}

BitNetBatchEngine::BitNetBatchEngine(const ModelSpec& cfg, const EngineOptions& opt, const std::vector<NamedTensor>& tensors)
    : impl_(std::make_unique<Impl>(cfg, opt, tensors)) {
    impl_->publish_counts();
}

BitNetBatchEngine::~BitNetBatchEngine() = default;

int BitNetBatchEngine::alloc_sequence(int attn_block) {
    std::lock_guard<std::mutex> lock(impl_->mu);
    int slot = impl_->kv.alloc(attn_block);
    impl_->publish_counts();
    return slot;
}

void BitNetBatchEngine::reserve(int slot, int n_positions) {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->kv.is_live(slot) && n_positions > impl_->model.cfg.max_positions)
        throw std::invalid_argument("reserve: " + std::to_string(n_positions) + " positions exceed max_position_embeddings " +
                                    std::to_string(impl_->model.cfg.max_positions));
    impl_->kv.reserve(slot, n_positions);
    impl_->publish_counts();
}

void BitNetBatchEngine::free_sequence(int slot) {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->kv.free(slot);
    impl_->publish_counts();
}

bool BitNetBatchEngine::can_reserve(int slot, int n_positions) const {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (n_positions > impl_->model.cfg.max_positions) return false;
    return impl_->kv.can_reserve(slot, n_positions);
}

void BitNetBatchEngine::step(const StepInput& in, StepOutput& out) {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->cancelled.store(false, std::memory_order_relaxed);
    impl_->validate(in);
    if (in.n_out > 0 && (!out.token || !out.prob)) throw std::invalid_argument("output token and prob arrays are required");
    if (in.n_rows == 0) return;
    impl_->zero_skipped_positions();
    impl_->forward(in, out);
}

void BitNetBatchEngine::cancel() { impl_->cancelled.store(true, std::memory_order_relaxed); }

const ModelSpec& BitNetBatchEngine::config() const { return impl_->model.cfg; }
int BitNetBatchEngine::pages_total() const { return impl_->kv.pages_total(); }
int BitNetBatchEngine::pages_free() const { return impl_->pages_free.load(std::memory_order_relaxed); }
int BitNetBatchEngine::page_size() const { return impl_->kv.page_size(); }
int BitNetBatchEngine::slots_free() const { return impl_->slots_free.load(std::memory_order_relaxed); }
int BitNetBatchEngine::num_threads() const { return impl_->pool.size(); }
const char* BitNetBatchEngine::isa() const { return impl_->kern->name; }
std::string BitNetBatchEngine::ternary_plan() const { return impl_->plan.describe(); }
size_t BitNetBatchEngine::weight_bytes() const { return impl_->model.arena_bytes(); }

void release_free_heap() {
#if defined(__GLIBC__)
    malloc_trim(0);
#endif
}

}  // namespace wfrt
