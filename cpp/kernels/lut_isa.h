// The per-ISA LUT kernel lists lut_generic.cpp chooses from (internal to cpp/kernels/).
#pragma once
#include "isa_tables.h"
#include "lut.h"

namespace wfrt {

extern const LutKernel kLutGeneric[1];
#if WFRT_X86_KERNELS
// Token blocks of 16, 32 and 64 rows (one, two and four ymm vectors of int16 lanes).
extern const LutKernel kLutAvx2[3];
// The AVX2 16-token kernel, then 32 and 64 tokens in one and two zmm vectors.
extern const LutKernel kLutAvx512[3];
#endif

}  // namespace wfrt
