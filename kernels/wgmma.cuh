// Hopper warpgroup MMA (wgmma.mma_async, sm_90a) for bf16 operands with fp32 accumulators, and
// the 128-byte swizzled shared-memory tiles it reads.
//
// Tile layout. A [rows][64] bf16 block (rows a multiple of 8, base 1024-byte aligned) stores row r
// in 128 bytes at r * 128, its 16-byte chunk c at chunk c ^ (r % 8): the hardware's 128-byte
// swizzle. Wider rows (head size 128) are stored as consecutive [rows][64] blocks. The same tile
// serves as
//   - a K-major operand (rows = M or N, the 64 columns = K): 8-row groups 1024 bytes apart (SBO),
//     the k-step of 16 columns is a 32-byte advance of the start address inside the swizzle atom;
//   - an MN-major operand (rows = K, columns = N): 8-row groups of K 1024 bytes apart (SBO), the
//     next 64 columns of N one [rows][64] block further (LBO), a k-step of 16 rows is 2048 bytes.
// Accumulator and register-A fragments: warp w of the warpgroup holds rows 16w..16w+15 in the
// layout of mma.sync m16n8k16 (C as [N / 8][4], A as 4 bf16x2 registers).
#pragma once

#include <cstdint>

#include "common.cuh"

namespace moda::cuda::wgmma {

constexpr int kSwizzleBytes = 128;  // one row of a [rows][64] bf16 block
constexpr int kAtomBytes = 1024;    // 8 rows: the swizzle pattern's period

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Byte offset of element (r, c) of a swizzled [rows][D] tile, c a multiple of 8.
__device__ __forceinline__ uint32_t swizzled_offset(int rows, int r, int c) {
  const int block = c / 64, chunk = (c % 64) / 8;
  return static_cast<uint32_t>(block * rows * kSwizzleBytes + r * kSwizzleBytes +
                               ((chunk ^ (r % 8)) * 16));
}

// Descriptor of a 128-byte-swizzled operand starting at shared address `addr`.
__device__ __forceinline__ uint64_t descriptor(uint32_t addr, uint32_t leading_bytes,
                                               uint32_t stride_bytes) {
  return uint64_t{(addr & 0x3FFFF) >> 4} | (uint64_t{(leading_bytes & 0x3FFFF) >> 4} << 16) |
         (uint64_t{(stride_bytes & 0x3FFFF) >> 4} << 32) | (uint64_t{1} << 62);
}

// The k-steps below add their byte offset to the tile's descriptor instead of encoding a new
// one: the start-address field (bits 0-13, address / 16) of an address inside the 228 KB of
// shared memory cannot carry into the next field, and with ks unrolled the add is a constant.

// K-major operand: k-step ks (16 columns) of a swizzled [rows][D] tile.
__device__ __forceinline__ uint64_t k_major(uint32_t tile, int rows, int ks) {
  const uint32_t offset = (ks / 4) * rows * kSwizzleBytes + (ks % 4) * 32;
  return descriptor(tile, 16, kAtomBytes) + (offset >> 4);
}

// MN-major operand: k-step ks (rows 16 ks..16 ks + 15) of a swizzled [rows][D] tile.
__device__ __forceinline__ uint64_t mn_major(uint32_t tile, int rows, int ks) {
  return descriptor(tile, rows * kSwizzleBytes, kAtomBytes) + ((ks * 2 * kAtomBytes) >> 4);
}

__device__ __forceinline__ void fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins an accumulator's registers here, after the wait that retired its MMAs: the compiler sees
// no dependence between the wait and the registers, and could move their reads above it.
template <int M, int N>
__device__ __forceinline__ void fence_operand(float (&c)[M][N]) {
#pragma unroll
  for (int i = 0; i < M; ++i) {
#pragma unroll
    for (int j = 0; j < N; ++j) asm volatile("" : "+f"(c[i][j])::"memory");
  }
}
// Makes this thread's generic-proxy writes of shared memory (st.shared, cp.async) visible to the
// async proxy that wgmma reads through; a barrier must follow before another thread's wgmma.
__device__ __forceinline__ void fence_shared_for_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Accumulators must stay in registers across the asynchronous MMA: the compiler is told they are
// read and written by each instruction, and `fence` orders other writes to them before it.
#define MODA_WGMMA_ACC8(c, i)                                                    \
  "+f"(c[i][0]), "+f"(c[i][1]), "+f"(c[i][2]), "+f"(c[i][3]), "+f"(c[i + 1][0]), \
      "+f"(c[i + 1][1]), "+f"(c[i + 1][2]), "+f"(c[i + 1][3])

// c (64 x 64) = A B (+ c when accumulate), both operands descriptors: K-major, or M-major (A) /
// N-major (B) when TRANSPOSE_A / TRANSPOSE_B.
template <bool TRANSPOSE_A, bool TRANSPOSE_B>
__device__ __forceinline__ void mma_64x64_ss(float (&c)[8][4], uint64_t a, uint64_t b,
                                             bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p, 1, 1, %35, %36;\n}\n"
      : MODA_WGMMA_ACC8(c, 0), MODA_WGMMA_ACC8(c, 2), MODA_WGMMA_ACC8(c, 4), MODA_WGMMA_ACC8(c, 6)
      : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)), "n"(TRANSPOSE_A ? 1 : 0),
        "n"(TRANSPOSE_B ? 1 : 0));
}

// c (64 x 32) = A B (+ c when accumulate), as mma_64x64_ss. An N-major B may start 64 bytes into
// the swizzled rows of a [rows][64] block (its columns 32..63): the hardware applies the swizzle
// to the absolute address, as for the K-major k-steps.
template <bool TRANSPOSE_A, bool TRANSPOSE_B>
__device__ __forceinline__ void mma_64x32_ss(float (&c)[4][4], uint64_t a, uint64_t b,
                                             bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
      "%16, %17, p, 1, 1, %19, %20;\n}\n"
      : MODA_WGMMA_ACC8(c, 0), MODA_WGMMA_ACC8(c, 2)
      : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)), "n"(TRANSPOSE_A ? 1 : 0),
        "n"(TRANSPOSE_B ? 1 : 0));
}

// c (64 x 64) += A B: A (64 x 16) in registers, B an MN-major descriptor.
__device__ __forceinline__ void mma_64x64_rs(float (&c)[8][4], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : MODA_WGMMA_ACC8(c, 0), MODA_WGMMA_ACC8(c, 2), MODA_WGMMA_ACC8(c, 4), MODA_WGMMA_ACC8(c, 6)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

// c (64 x 128) += A B: A (64 x 16) in registers, B an MN-major descriptor.
__device__ __forceinline__ void mma_64x128_rs(float (&c)[16][4], const uint32_t (&a)[4],
                                              uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : MODA_WGMMA_ACC8(c, 0), MODA_WGMMA_ACC8(c, 2), MODA_WGMMA_ACC8(c, 4), MODA_WGMMA_ACC8(c, 6),
        MODA_WGMMA_ACC8(c, 8), MODA_WGMMA_ACC8(c, 10), MODA_WGMMA_ACC8(c, 12),
        MODA_WGMMA_ACC8(c, 14)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

#undef MODA_WGMMA_ACC8

}  // namespace moda::cuda::wgmma
