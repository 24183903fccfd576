// The per-ISA kernel tables dispatch.cpp chooses from (internal to cpp/kernels/).
#pragma once
#include "ternary.h"

namespace wfrt {

extern const KernelTable kGenericKernels;
// Compiled with per-function target attributes; only valid where dispatch.cpp says the CPU runs them.
extern const KernelTable kAvx2Kernels;
extern const KernelTable kAvxVnniKernels;
extern const KernelTable kAvx512VnniKernels;

// Byte offset of the chunk holding (tile, k-group g) for a matrix of padded width Kp.
inline size_t ternary_chunk_offset(int tile, int g, int Kp) { return (size_t)tile * Kp * 4 + (size_t)g * 64; }

}  // namespace wfrt
