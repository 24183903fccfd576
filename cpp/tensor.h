// Tensors handed to the core: borrowed views with a dtype, by canonical name.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace wfrt {

// wrinklefree_rt._core.TensorDType mirrors these values.
enum class TensorDType : int {
    F32 = 0,            // float32
    TernaryCodes = 1,   // int8 ternary codes {-1, 0, 1}
    TernaryPacked = 2,  // uint8 ternary already packed in the kernels' layout
    I8 = 3,             // int8 (the LM head's rows, lm_head_i8)
};

// A tensor handed to the engine. f32 embed_tokens and lm_head are used in place (the caller keeps
// them alive as long as the engine: the Cython layer holds the numpy arrays); everything else
// (TernaryPacked weights, lm_head_i8 (I8, (V,H)) with lm_head_i8.scales (f32 (V,)), ...) is
// copied or packed at load.
struct TensorView {
    const void* data = nullptr;
    TensorDType dtype = TensorDType::F32;
    std::vector<int64_t> shape;
    float scale = 1.0f;             // ternary: the per-tensor weight scale s (y = dot * s / a)
};

// Canonical tensor names (what every checkpoint format yields):
//   embed_tokens (V,H) f32;  norm (H) f32;  lm_head (V,H) f32, absent when tied
//   layers.{i}.input_layernorm (H), layers.{i}.post_attention_layernorm (H),
//   layers.{i}.attn_sub_norm (H), layers.{i}.ffn_sub_norm (I)          all f32
//   layers.{i}.{q,k,v,o,gate,up,down}_proj  ternary (out,in) with scale
struct NamedTensor { std::string name; TensorView view; };

}  // namespace wfrt
