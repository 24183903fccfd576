// Packing to and from the base-3 layout (base3.h).
#include "base3.h"

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace wfrt {

namespace {

// The stored byte of codes u[0..4] (tile 0 the most significant digit).
inline uint8_t base3_store(const int u[kBase3Tiles]) {
    int v = 0;
    for (int i = 0; i < kBase3Tiles; ++i) v = 3 * v + u[i];
    return (uint8_t)(((v * 256 + 242) / 243 + 128) & 255);
}

// Writes groups [G0, G1) from code(n, k) in {0, 1, 2}, called for n < N and k < K only.
template <class Code>
void base3_fill(int N, int K, int G0, int G1, uint8_t* out, Code code) {
    const int Kp = ternary_padded_k(K);
    for (int G = G0; G < G1; ++G)
        for (int r = 0; r < kTernaryRowTile; ++r)
            for (int k = 0; k < Kp; ++k) {
                int u[kBase3Tiles];
                for (int i = 0; i < kBase3Tiles; ++i) {
                    const int n = G * kBase3Rows + i * kTernaryRowTile + r;
                    u[i] = n < N && k < K ? code(n, k) : 0;
                }
                out[base3_byte(G * kBase3Rows + r, k, Kp)] = base3_store(u);
            }
}

}  // namespace

size_t base3_packed_bytes(int N, int K) { return (size_t)base3_groups(N) * ternary_padded_k(K) * 16; }

void base3_pack(const int8_t* q, int N, int K, uint8_t* out) {
    for (size_t i = 0; i < (size_t)N * K; ++i)
        if ((uint8_t)(q[i] + 1) > 2)
            throw std::invalid_argument("base3_pack: code " + std::to_string(q[i]) + " at row " +
                                        std::to_string(i / K) + ", column " + std::to_string(i % K) +
                                        " is not in {-1, 0, 1}");
    base3_fill(N, K, 0, base3_groups(N), out, [&](int n, int k) { return q[(size_t)n * K + k] + 1; });
}

void base3_pack_from_tiles(const uint8_t* tiles, int N, int K, int G0, int G1, uint8_t* out) {
    // A group's rows are five contiguous v1 tiles: unpack them as one small packed matrix.
    const int Kp = ternary_padded_k(K);
    const size_t tile_bytes = (size_t)Kp * 4;
    std::vector<int8_t> q((size_t)kBase3Rows * K);
    for (int G = G0; G < G1; ++G) {
        const int n0 = G * kBase3Rows, rows = N - n0 < kBase3Rows ? N - n0 : kBase3Rows;
        ternary_unpack(tiles + (size_t)(n0 / kTernaryRowTile) * tile_bytes, rows, K, q.data());
        base3_fill(N, K, G, G + 1, out, [&](int n, int k) { return q[(size_t)(n - n0) * K + k] + 1; });
    }
}

void base3_unpack(const uint8_t* packed, int N, int K, int8_t* q) {
    const int Kp = ternary_padded_k(K);
    for (int n = 0; n < N; ++n)
        for (int k = 0; k < K; ++k)
            q[(size_t)n * K + k] = (int8_t)(base3_digit(packed[base3_byte(n, k, Kp)], base3_tile(n)) - 1);
}

}  // namespace wfrt
