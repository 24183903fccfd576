// What the core needs to know about a model: its shape and constants.
#pragma once

namespace wfrt {

// Built by the Cython layer from wrinklefree_rt.config.ModelConfig, whose validate() is the
// one place the fields and their relations are checked (ranges, heads x head_dim = hidden,
// even head_dim, ...); the core trusts them.
struct ModelSpec {
    int vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_layers = 0;
    int num_heads = 0, num_kv_heads = 0, head_dim = 0, max_positions = 0;
    float rms_norm_eps = 1e-5f, rope_theta = 500000.0f;
    bool tie_word_embeddings = false;  // the LM head is embed_tokens (an lm_head tensor is then ignored)
};

enum class LmHeadPrecision { F32 = 0, I8 = 1, Q4 = 2 };

}  // namespace wfrt
