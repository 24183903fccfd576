// The base-3 ternary layout: 5 codes per byte (3^5 = 243 <= 256), 1.6 bits per weight instead of
// layout v1's 2, for the memory-bound case (a GEMV that reads weights at the DRAM ceiling).
//
// It is layout v1 (ternary.h) with five 16-row tiles folded into one byte stream: rows come in
// groups of kBase3Rows = 5 tiles, and where v1 has one 64-byte plane (16 rows x 4 k, bits 2s..2s+1
// of a chunk) per tile, base 3 has one 64-byte plane per group whose byte r*4 + j holds the codes
// u_0..u_4 (u = q + 1) of row 16i + r of tile i, k = 16g + 4s + j, as the number
// v = sum_i u_i * 3^(4 - i). So one load gives all five tiles' codes for the same four k, each
// multiplied with the same broadcast activation bytes as in v1.
//
// A byte stores b = ceil(v * 256 / 243) + 128 (mod 256): read as the fraction b' = b - 128 of
// 256, digit i is floor(3 * b' / 256) after multiplying by 3 (mod 256) i times (the idea of GGUF
// TQ1_0), which SIMD code gets with two byte compares and two byte adds, and the 128 bias lets
// those compares be the signed ones every ISA has (3 * 128 = 128 mod 256, so the bias survives).
//
// Offsets: group G, chunk g (16 k), plane s at ((G * Kp/16 + g) * 4 + s) * 64, Kp =
// ternary_padded_k(K). N is padded to whole groups with u = 0 rows and K with u = 0 codes (the
// activations there are zero), as in v1.
#pragma once
#include <cstddef>
#include <cstdint>

#include "ternary.h"

namespace wfrt {

constexpr int kBase3Tiles = 5;
constexpr int kBase3Rows = kBase3Tiles * kTernaryRowTile;

size_t base3_packed_bytes(int N, int K);
// q: N x K row-major int8 in {-1, 0, 1} (std::invalid_argument naming the first other code).
void base3_pack(const int8_t* q, int N, int K, uint8_t* out);
// The same bytes from layout v1 (ternary_pack's), for groups [G0, G1) of kBase3Rows rows; the
// groups' bytes are disjoint, so threads may convert disjoint ranges at once.
void base3_pack_from_tiles(const uint8_t* tiles, int N, int K, int G0, int G1, uint8_t* out);
inline int base3_groups(int N) { return (N + kBase3Rows - 1) / kBase3Rows; }
// Byte offset of the plane holding codes (n, k) and the digit there: where base3_digit reads them.
inline size_t base3_byte(int n, int k, int Kp) {
    const int g = k / 16, s = k % 16 / 4, r = n % kTernaryRowTile;
    return (((size_t)(n / kBase3Rows) * (Kp / 16) + g) * 4 + s) * 64 + r * 4 + k % 4;
}
inline int base3_tile(int n) { return n % kBase3Rows / kTernaryRowTile; }
// Inverse of base3_pack.
void base3_unpack(const uint8_t* packed, int N, int K, int8_t* q);

// Digit i (0..4) of a stored byte: the code u of tile i.
inline int base3_digit(uint8_t stored, int i) {
    int f = (stored + 128) & 255;
    for (int t = 0; t < i; ++t) f = (3 * f) & 255;
    return (3 * f) >> 8;
}

}  // namespace wfrt
