#include "model.h"

#include "kernels/base3.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <unordered_map>

namespace wfrt {

namespace {

// Name -> tensor, and whether the model took it (a tensor nobody takes means the checkpoint and
// the config disagree, e.g. more layers than num_hidden_layers).
struct TensorEntry {
    const TensorView* view;
    bool used;
};
using TensorMap = std::unordered_map<std::string, TensorEntry>;

std::string shape_str(const std::vector<int64_t>& shape) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + (shape.size() == 1 ? ",)" : ")");
}

const char* dtype_name(TensorDType dtype) {
    switch (dtype) {
        case TensorDType::F32: return "float32";
        case TensorDType::TernaryCodes: return "int8 ternary codes";
        case TensorDType::TernaryPacked: return "uint8 packed ternary";
        case TensorDType::I8: return "int8";
    }
    return "unknown dtype";
}

const TensorView* find(TensorMap& m, const std::string& name, bool required) {
    auto it = m.find(name);
    if (it != m.end()) {
        it->second.used = true;
        return it->second.view;
    }
    if (required) throw BadTensor(name, "missing");
    return nullptr;
}

void expect(const std::string& name, const TensorView& t, TensorDType dtype, std::vector<int64_t> shape) {
    if (t.dtype != dtype)
        throw BadTensor(name, std::string("expected ") + dtype_name(dtype) + ", got " + dtype_name(t.dtype));
    if (t.shape != shape) throw BadTensor(name, "expected shape " + shape_str(shape) + ", got " + shape_str(t.shape));
    if (t.data == nullptr) throw BadTensor(name, "no data");
}

std::vector<float> copy_f32(TensorMap& m, const std::string& name, int n) {
    const TensorView& t = *find(m, name, true);
    expect(name, t, TensorDType::F32, {n});
    const float* p = static_cast<const float*>(t.data);
    for (int i = 0; i < n; ++i)
        if (!std::isfinite(p[i])) throw BadTensor(name, "non-finite value at index " + std::to_string(i));
    return std::vector<float>(p, p + n);
}

// Where a ternary tensor comes from (int8 codes to pack or packed bytes to copy), resolved before
// the parallel work.
struct PackJob {
    std::string name;
    const TensorView* view;
    TernaryMatrix* dst;
};

// Room for the int8 head: its V x H rows in `head.arena`, its V scales in `head.owned_scale`.
int8_t* int8_head(int V, int H, LmHead& head) {
    head.arena = HugePageArena(static_cast<size_t>(V) * H);
    head.owned_scale.resize(V);
    int8_t* q = reinterpret_cast<int8_t*>(head.arena.take(static_cast<size_t>(V) * H));
    head.i8 = q;
    head.row_scale = head.owned_scale.data();
    return q;
}

void quantize_head_i8(const float* w, int V, int H, ThreadPool& pool, LmHead& head) {
    int8_t* q = int8_head(V, H, head);
    RowSplit split(V, pool.size());
    pool.parallel_for(split.tasks, [&](int t, int) {
        quantize_rows_i8_per_row(w, H, split.begin(t), split.end(t), q, head.owned_scale.data());
    });
}

void copy_head_i8(const int8_t* rows, const float* scales, int V, int H, ThreadPool& pool, LmHead& head) {
    int8_t* q = int8_head(V, H, head);
    RowSplit split(V, pool.size());
    pool.parallel_for(split.tasks, [&](int t, int) {
        const size_t a = static_cast<size_t>(split.begin(t)) * H, b = static_cast<size_t>(split.end(t)) * H;
        std::memcpy(q + a, rows + a, b - a);
    });
    std::copy(scales, scales + V, head.owned_scale.begin());
}

// Gives every ternary matrix a layout in one new arena: bytes(W) each, written by
// fill(W, out) (on the pool, a matrix per task); returns the arena.
template <class Bytes, class Fill>
HugePageArena build_layout(std::vector<LayerWeights>& layers, ThreadPool& pool, const uint8_t* TernaryMatrix::*field,
                         Bytes bytes, Fill fill) {
    std::vector<TernaryMatrix*> mats;
    for (LayerWeights& L : layers)
        for (TernaryMatrix* W : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) mats.push_back(W);
    size_t total = 0;
    for (TernaryMatrix* W : mats) total += HugePageArena::piece(bytes(*W));
    HugePageArena arena(total);
    for (TernaryMatrix* W : mats) W->*field = arena.take(bytes(*W));
    pool.parallel_for(static_cast<int>(mats.size()), [&](int j, int) {
        TernaryMatrix& W = *mats[j];
        fill(W, const_cast<uint8_t*>(W.*field));
    });
    return arena;
}

// Runs fn(task) for every task on the pool. Exceptions must not leave a worker thread, so each
// task's message is kept and the first failed task's is thrown here as BadTensor(name_of(task)).
template <class Fn, class NameOf>
void parallel_for_tensors(ThreadPool& pool, int tasks, Fn&& fn, NameOf&& name_of) {
    std::vector<std::string> errors(tasks);
    pool.parallel_for(tasks, [&](int t, int) {
        try {
            fn(t);
        } catch (const std::exception& e) {
            errors[t] = e.what();
        }
    });
    for (int t = 0; t < tasks; ++t)
        if (!errors[t].empty()) throw BadTensor(name_of(t), errors[t]);
}

// Fails with BadTensor(name) on a non-finite weight (the group scale would be meaningless).
void quantize_head_q4(const float* w, int V, int H, const char* name, ThreadPool& pool, LmHead& head) {
    head.arena = HugePageArena(q4_code_bytes(V, H));  // zero-filled, as q4_pack_rows needs
    uint8_t* codes = head.arena.take(q4_code_bytes(V, H));
    head.q4_codes = codes;
    head.q4_scales.assign(q4_scale_count(V, H), 0.0f);
    RowSplit split(V, pool.size());
    parallel_for_tensors(
        pool, split.tasks,
        [&](int t) { q4_pack_rows(w, V, H, split.begin(t), split.end(t), codes, head.q4_scales.data()); },
        [&](int) { return std::string(name); });
}

}  // namespace

RowSplit::RowSplit(int n, int threads, int per_thread, int align) : N(n) {
    // About four tasks per thread balance uneven progress without making tasks tiny.
    int want = std::max(1, threads * per_thread);
    int c = (n + want - 1) / want;
    chunk = std::max(align, (c + align - 1) / align * align);
    tasks = (n + chunk - 1) / chunk;
}

Model::Model(const ModelSpec& config, LmHeadPrecision precision, const std::vector<NamedTensor>& tensors,
             ThreadPool& pool)
    : cfg(config) {
    TensorMap m;
    for (const auto& t : tensors) {
        if (!m.emplace(t.name, TensorEntry{&t.view, false}).second) throw BadTensor(t.name, "given twice");
    }
    const int V = cfg.vocab_size, H = cfg.hidden_size, I = cfg.intermediate_size;
    const int QD = cfg.num_heads * cfg.head_dim, KD = cfg.num_kv_heads * cfg.head_dim;

    const TensorView& emb = *find(m, "embed_tokens", true);
    expect("embed_tokens", emb, TensorDType::F32, {V, H});
    embed = static_cast<const float*>(emb.data);
    final_norm = copy_f32(m, "norm", H);

    std::vector<PackJob> jobs;
    layers.resize(cfg.num_layers);
    for (int i = 0; i < cfg.num_layers; ++i) {
        std::string p = "layers." + std::to_string(i) + ".";
        LayerWeights& L = layers[i];
        L.input_norm = copy_f32(m, p + "input_layernorm", H);
        L.post_attn_norm = copy_f32(m, p + "post_attention_layernorm", H);
        L.attn_sub_norm = copy_f32(m, p + "attn_sub_norm", H);
        L.ffn_sub_norm = copy_f32(m, p + "ffn_sub_norm", I);
        struct { const char* name; TernaryMatrix* dst; int N, K; } mats[] = {
            {"q_proj", &L.q, QD, H}, {"k_proj", &L.k, KD, H}, {"v_proj", &L.v, KD, H}, {"o_proj", &L.o, H, QD},
            {"gate_proj", &L.gate, I, H}, {"up_proj", &L.up, I, H}, {"down_proj", &L.down, H, I},
        };
        for (auto& mat : mats) {
            std::string name = p + mat.name;
            const TensorView& t = *find(m, name, true);
            mat.dst->N = mat.N;
            mat.dst->K = mat.K;
            if (!std::isfinite(t.scale) || !(t.scale > 0.0f))
                throw BadTensor(name, "scale must be a positive finite number, got " + std::to_string(t.scale));
            mat.dst->scale = t.scale;
            if (t.dtype == TensorDType::TernaryCodes) {
                expect(name, t, TensorDType::TernaryCodes, {mat.N, mat.K});
                jobs.push_back({name, &t, mat.dst});
            } else if (t.dtype == TensorDType::TernaryPacked) {
                int64_t bytes = 1;
                for (int64_t d : t.shape) bytes *= d;
                if (t.data == nullptr || bytes != static_cast<int64_t>(ternary_packed_bytes(mat.N, mat.K)))
                    throw BadTensor(name, "packed ternary of shape " + shape_str(t.shape) + " is not the " +
                                              std::to_string(ternary_packed_bytes(mat.N, mat.K)) + " bytes that (" +
                                              std::to_string(mat.N) + ", " + std::to_string(mat.K) + ") packs to");
                jobs.push_back({name, &t, mat.dst});
            } else {
                throw BadTensor(name, std::string("expected int8 ternary codes or uint8 packed ternary, got ") +
                                          dtype_name(t.dtype));
            }
        }
    }

    // The head, validated before any heavy work. Tied: embed_tokens, as transformers ties it.
    const TensorView* head_f32 = find(m, "lm_head", false);
    if (cfg.tie_word_embeddings) {
        head_f32 = &emb;
    } else if (head_f32) {
        expect("lm_head", *head_f32, TensorDType::F32, {V, H});
    }
    const TensorView* head_i8 = find(m, "lm_head_i8", false);
    const TensorView* head_i8_scales = find(m, "lm_head_i8.scales", false);
    if ((head_i8 == nullptr) != (head_i8_scales == nullptr))
        throw BadTensor(head_i8 ? "lm_head_i8.scales" : "lm_head_i8", "missing (lm_head_i8 and its scales come together)");
    if (head_i8) {
        expect("lm_head_i8", *head_i8, TensorDType::I8, {V, H});
        expect("lm_head_i8.scales", *head_i8_scales, TensorDType::F32, {V});
        const float* sc = static_cast<const float*>(head_i8_scales->data);
        for (int n = 0; n < V; ++n)
            if (!std::isfinite(sc[n]) || !(sc[n] > 0.0f))
                throw BadTensor("lm_head_i8.scales", "row " + std::to_string(n) + " scale is not a positive finite number");
    }
    for (const auto& [name, entry] : m)
        if (!entry.used)
            throw BadTensor(name, "is not a tensor of this model (config: " + std::to_string(cfg.num_layers) + " layers)");

    if (head_f32 == nullptr && (precision != LmHeadPrecision::I8 || head_i8 == nullptr))
        throw BadTensor("lm_head", std::string("missing (tie_word_embeddings is false") +
                                       (head_i8 ? std::string("; the ") + (precision == LmHeadPrecision::F32 ? "fp32" : "q4") +
                                                      " head needs the float weights, only lm_head_i8 was given)"
                                                : ")"));

    head.precision = precision;
    if (precision == LmHeadPrecision::F32) {
        head.f32 = static_cast<const float*>(head_f32->data);
    } else if (precision == LmHeadPrecision::Q4) {
        quantize_head_q4(static_cast<const float*>(head_f32->data), V, H,
                         cfg.tie_word_embeddings ? "embed_tokens" : "lm_head", pool, head);
    } else if (head_i8) {
        copy_head_i8(static_cast<const int8_t*>(head_i8->data), static_cast<const float*>(head_i8_scales->data), V, H,
                     pool, head);
    } else {
        quantize_head_i8(static_cast<const float*>(head_f32->data), V, H, pool, head);
    }

    // The tiles: int8 codes packed, packed bytes copied, one matrix per task.
    size_t tile_bytes = 0;
    for (const PackJob& job : jobs) tile_bytes += HugePageArena::piece(ternary_packed_bytes(job.dst->N, job.dst->K));
    tiles_arena = HugePageArena(tile_bytes);
    for (const PackJob& job : jobs) job.dst->tiles = tiles_arena.take(ternary_packed_bytes(job.dst->N, job.dst->K));
    parallel_for_tensors(
        pool, static_cast<int>(jobs.size()),
        [&](int j) {
            TernaryMatrix& dst = *jobs[j].dst;
            const TensorView& src = *jobs[j].view;
            uint8_t* out = const_cast<uint8_t*>(dst.tiles);
            if (src.dtype == TensorDType::TernaryCodes) ternary_pack(static_cast<const int8_t*>(src.data), dst.N, dst.K, out);
            else std::memcpy(out, src.data, ternary_packed_bytes(dst.N, dst.K));
        },
        [&](int j) { return jobs[j].name; });

    // transformers: inv_freq = 1 / theta ** (arange(0, d, 2).float() / d), all in fp32.
    inv_freq.resize(cfg.head_dim / 2);
    for (int i = 0; i < cfg.head_dim / 2; ++i) {
        float e = static_cast<float>(2 * i) / static_cast<float>(cfg.head_dim);
        float p = static_cast<float>(std::pow(static_cast<double>(cfg.rope_theta), static_cast<double>(e)));
        inv_freq[i] = 1.0f / p;
    }
}

void Model::add_lut_layouts(ThreadPool& pool) {
    lut_arena = build_layout(
        layers, pool, &TernaryMatrix::lut, [](const TernaryMatrix& W) { return lut_packed_bytes(W.N, W.K); },
        [](const TernaryMatrix& W, uint8_t* out) { lut_pack_from_tiles(W.tiles, W.N, W.K, out); });
}

void Model::add_base3_layouts(ThreadPool& pool) {
    base3_arena = build_layout(
        layers, pool, &TernaryMatrix::base3, [](const TernaryMatrix& W) { return base3_packed_bytes(W.N, W.K); },
        [](const TernaryMatrix& W, uint8_t* out) {
            base3_pack_from_tiles(W.tiles, W.N, W.K, 0, base3_groups(W.N), out);
        });
}

void Model::drop_tiles() {
    for (LayerWeights& L : layers)
        for (TernaryMatrix* W : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) W->tiles = nullptr;
    tiles_arena = HugePageArena();
}

size_t Model::arena_bytes() const {
    return tiles_arena.size() + lut_arena.size() + base3_arena.size() + head.arena.size();
}

void quantize_rows_i8_per_row(const float* w, int K, int n0, int n1, int8_t* q, float* scale) {
    for (int n = n0; n < n1; ++n) {
        const float* row = w + static_cast<size_t>(n) * K;
        float amax = 0.0f;
        for (int k = 0; k < K; ++k) amax = std::max(amax, std::fabs(row[k]));
        const float s = amax > 0.0f ? amax / 127.0f : 1.0f;
        const float inv = 1.0f / s;
        int8_t* qr = q + static_cast<size_t>(n) * K;
        for (int k = 0; k < K; ++k) qr[k] = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, std::rint(row[k] * inv))));
        scale[n] = s;
    }
}

void rms_norm_rows(const KernelTable& k, const float* x, const float* w, int M, int n, float eps, float* out) {
    for (int m = 0; m < M; ++m) {
        const float* xr = x + static_cast<size_t>(m) * n;
        float* o = out + static_cast<size_t>(m) * n;
        const float r = 1.0f / std::sqrt(static_cast<float>(k.sum_squares(xr, n) / n) + eps);
        for (int e = 0; e < n; ++e) o[e] = w[e] * (xr[e] * r);
    }
}

void norm_quantize_rows(const Compute& c, float* x, const float* up, const float* w, int M, int K, float eps,
                        float* normed, int8_t* xq, float* a, int32_t* xsum) {
    const int Kp = ternary_padded_k(K);
    c.pool->parallel_for(M, [&](int m, int) {
        float* xr = x + static_cast<size_t>(m) * K;
        // A kernel entry: compiled as plain C++ this loop branches on each activation's sign
        // (mispredicted half the time), a tenth of a batched step.
        if (up) c.k->relu2_mul(xr, up + static_cast<size_t>(m) * K, K);
        float* nr = normed + static_cast<size_t>(m) * K;
        rms_norm_rows(*c.k, xr, w, 1, K, eps, nr);
        c.k->quantize_row_i8(nr, K, Kp, xq + static_cast<size_t>(m) * Kp, a + m, xsum + m);
    });
}

void bitlinear(const Compute& c, const TernaryMatrix* const* mats, float* const* outs, int n_mats,
               const int8_t* xq, const float* a, const int32_t* xsum, int M, int32_t* y32, bool accumulate) {
    // One parallel loop over every matrix's row chunks: one sync point per call, and the small
    // matrices (K, V) fill the threads beside the big ones instead of ending on an uneven split.
    if (n_mats < 1 || n_mats > kMaxBitlinearMats) throw std::invalid_argument("bitlinear: 1..4 matrices per call");
    int first_task[kMaxBitlinearMats + 1] = {0};
    size_t y_off[kMaxBitlinearMats] = {0};
    // A LUT kernel builds its activation tables once per call, so it gets one task per thread.
    const LutKernel* lut = c.plan ? c.plan->for_rows(M) : nullptr;
    const bool base3 = !lut && c.plan && c.plan->base3;
    const int per_thread = lut ? 1 : 4, align = base3 ? kBase3Rows : kTernaryNAlign;
    for (int i = 0; i < n_mats; ++i) {
        first_task[i + 1] = first_task[i] + RowSplit(mats[i]->N, c.pool->size(), per_thread, align).tasks;
        if (i + 1 < n_mats) y_off[i + 1] = y_off[i] + static_cast<size_t>(M) * mats[i]->N;
    }
    c.pool->parallel_for(first_task[n_mats], [&](int task, int) {
        int i = 0;
        while (task >= first_task[i + 1]) ++i;
        const TernaryMatrix& W = *mats[i];
        const RowSplit split(W.N, c.pool->size(), per_thread, align);
        const int t = task - first_task[i], n0 = split.begin(t), n1 = split.end(t);
        int32_t* yw = y32 + y_off[i];
        float* Y = outs[i];
        if (lut) lut->gemm(W.lut, W.N, W.K, xq, ternary_padded_k(W.K), M, yw, W.N, n0, n1);
        else if (base3) c.k->base3_gemm(W.base3, W.N, W.K, xq, ternary_padded_k(W.K), M, yw, W.N, n0, n1);
        else c.k->ternary_gemm(W.tiles, W.N, W.K, xq, ternary_padded_k(W.K), M, yw, W.N, n0, n1);
        for (int m = 0; m < M; ++m) {
            const float mul = W.scale / a[m];
            const int32_t s = xsum[m];
            const int32_t* yi = yw + static_cast<size_t>(m) * W.N;
            float* yo = Y + static_cast<size_t>(m) * W.N;
            if (accumulate) {
                for (int n = n0; n < n1; ++n) yo[n] += static_cast<float>(yi[n] - s) * mul;
            } else {
                for (int n = n0; n < n1; ++n) yo[n] = static_cast<float>(yi[n] - s) * mul;
            }
        }
    });
}

void rope_angles(const float* inv_freq, int half, int pos, float* cos_sin) {
    for (int i = 0; i < half; ++i) {
        // transformers forms freq = inv_freq * pos in fp32, then cos/sin of that fp32 value.
        const float f = inv_freq[i] * static_cast<float>(pos);
        cos_sin[i] = static_cast<float>(std::cos(static_cast<double>(f)));
        cos_sin[half + i] = static_cast<float>(std::sin(static_cast<double>(f)));
    }
}

void rope_row(float* v, int n_heads, int head_dim, const float* cos_sin) {
    const int half = head_dim / 2;
    for (int i = 0; i < half; ++i) {
        const float cs = cos_sin[i], sn = cos_sin[half + i];
        for (int h = 0; h < n_heads; ++h) {
            float* x = v + static_cast<size_t>(h) * head_dim;
            const float x1 = x[i], x2 = x[i + half];
            x[i] = x1 * cs - x2 * sn;
            x[i + half] = x2 * cs + x1 * sn;
        }
    }
}

void lm_head_rows(const Compute& c, const Model& m, const float* x, int M, float* out, int8_t* xq, float* a,
                  int32_t* y32) {
    const int V = m.cfg.vocab_size, H = m.cfg.hidden_size;
    RowSplit split(V, c.pool->size());
    if (m.head.precision == LmHeadPrecision::F32) {
        c.pool->parallel_for(split.tasks, [&](int t, int) {
            c.k->f32_gemm(m.head.f32, V, H, x, H, M, out, V, split.begin(t), split.end(t));
        });
        return;
    }
    const int Hp = ternary_padded_k(H);
    int32_t unused_sum;
    for (int r = 0; r < M; ++r)
        c.k->quantize_row_i8(x + static_cast<size_t>(r) * H, H, Hp, xq + static_cast<size_t>(r) * Hp, a + r, &unused_sum);
    if (m.head.precision == LmHeadPrecision::Q4) {
        c.pool->parallel_for(split.tasks, [&](int t, int) {
            const int n0 = split.begin(t), n1 = split.end(t);
            c.k->q4_gemm(m.head.q4_codes, m.head.q4_scales.data(), V, H, xq, Hp, M, out, V, n0, n1);
            for (int r = 0; r < M; ++r) {
                const float inv_a = 1.0f / a[r];
                float* yo = out + static_cast<size_t>(r) * V;
                for (int n = n0; n < n1; ++n) yo[n] *= inv_a;
            }
        });
        return;
    }
    c.pool->parallel_for(split.tasks, [&](int t, int) {
        const int n0 = split.begin(t), n1 = split.end(t);
        c.k->i8_gemm(m.head.i8, V, H, xq, Hp, M, y32, V, n0, n1);
        for (int r = 0; r < M; ++r) {
            const float inv_a = 1.0f / a[r];
            const int32_t* yi = y32 + static_cast<size_t>(r) * V;
            float* yo = out + static_cast<size_t>(r) * V;
            for (int n = n0; n < n1; ++n) yo[n] = static_cast<float>(yi[n]) * m.head.row_scale[n] * inv_a;
        }
    });
}

}  // namespace wfrt
