// Device helpers of the portable kernels (compute capability 8.0 and newer): asynchronous copies,
// ldmatrix, mma.sync m16n8k16 with fp32 accumulation, fragment packing and quad reductions. Plain
// PTX of sm_80; nothing here needs the arch-specific Hopper target.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "cuda/fragment_math.cuh"

namespace psa::cuda::portable {

constexpr float kNegInf = -__builtin_huge_valf();
constexpr float kNaN = __builtin_nanf("");
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, bypassing L1; `bytes` 0 writes zeros without reading `src`.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most kPending of this thread's most recent cp.async groups are in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// Four 8x8 16-bit matrices; lanes 8i .. 8i + 7 give the row addresses of matrix i, and each lane
// receives row lane / 4, elements 2 (lane % 4) and 2 (lane % 4) + 1 of every matrix.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}
// The same, each matrix transposed: lane receives column lane / 4, rows 2 (lane % 4) and + 1.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// c += a b for a 16x16 A (row-major fragment a0..a3) and a 16x8 B (column fragment b0, b1):
// c0, c1 are row lane / 4, columns 2 (lane % 4) + {0, 1}; c2, c3 the same on row lane / 4 + 8.
template <typename Element>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  static_assert(std::is_same_v<Element, __half> || std::is_same_v<Element, __nv_bfloat16>,
                "fp16 or bf16 operands");
  if constexpr (std::is_same_v<Element, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

using fragment::fast_exp2;
using fragment::pack_pair;
using fragment::quad_max;
using fragment::quad_sum;

// Byte offset of 16-byte chunk `chunk` of row `row` in a row-major tile of kRowBytes per row
// (kRowBytes a multiple of 128): the chunk index is XORed with row % 8 inside each 128-byte
// group, so the 8 rows an ldmatrix reads at one logical chunk fall in 8 distinct bank groups.
template <int kRowBytes>
__device__ __forceinline__ uint32_t swizzled(int row, int chunk) {
  static_assert(kRowBytes % 128 == 0, "rows are whole 128-byte groups");
  return static_cast<uint32_t>(row * kRowBytes + ((chunk ^ (row & 7)) << 4));
}

// swizzled(row, chunk + 2 step) from offset = swizzled(row, chunk) with chunk 0 or 1: adding an
// even number to the chunk flips bits of the XORed part and carries whole 128-byte groups, so
// with a compile-time step this is a XOR with one of four constants and an immediate. An
// ldmatrix loop then keeps four offsets per operand live instead of one per step.
__device__ __forceinline__ uint32_t swizzled_step(uint32_t offset, int step) {
  return (offset ^ static_cast<uint32_t>(((2 * step) & 7) << 4)) +
         static_cast<uint32_t>(((2 * step) & ~7) << 4);
}

}  // namespace psa::cuda::portable
