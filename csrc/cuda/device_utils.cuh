// Warp/block building blocks of the CUDA kernels: NaN-propagating reductions, a block-wide
// double scan, and an exact block-wide radix select (4 passes of 8-bit digits).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace mentormix::cuda {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// max that propagates NaN as torch.max does (fmaxf / max.f32 would drop it): NaN if either is.
__device__ __forceinline__ float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }

__device__ __forceinline__ float warp_max(float x) {
  for (int o = kWarp / 2; o > 0; o /= 2) x = nan_max(x, __shfl_xor_sync(kFullMask, x, o));
  return x;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A x) {
  for (int o = kWarp / 2; o > 0; o /= 2) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

// Block-wide reductions: every thread gets the result. `scratch` holds >= 32 values.
template <typename A>
__device__ A block_sum(A x, A* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = (blockDim.x + kWarp - 1) / kWarp;
  x = warp_sum(x);
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  A total = 0;
  for (int w = 0; w < warps; ++w) total += scratch[w];
  return total;
}

__device__ inline float block_max(float x, float* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = (blockDim.x + kWarp - 1) / kWarp;
  x = warp_max(x);
  __syncthreads();
  if (lane == 0) scratch[warp] = x;
  __syncthreads();
  float m = scratch[0];
  for (int w = 1; w < warps; ++w) m = nan_max(m, scratch[w]);
  return m;
}

// Inclusive scan of one value per thread over the block; `scratch` holds >= 32 doubles.
__device__ inline double block_inclusive_scan(double x, double* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  for (int o = 1; o < kWarp; o *= 2) {
    const double y = __shfl_up_sync(kFullMask, x, o);
    if (lane >= o) x += y;
  }
  __syncthreads();
  if (lane == kWarp - 1) scratch[warp] = x;
  __syncthreads();
  double before = 0;
  for (int w = 0; w < warp; ++w) before += scratch[w];
  return x + before;
}

// Floats as order-preserving unsigned keys; NaN ranks as +inf (the percentile's policy).
__device__ __forceinline__ uint32_t order_key(float x) {
  if (x != x) x = __int_as_float(0x7f800000);
  const uint32_t b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float key_value(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// The rank-th smallest of values[0..n) (exact, ties included), n < 2^32, for the whole block
// (blockDim.x a multiple of 32); every thread gets the result. `hist` is shared memory of 256
// counters. Each pass histograms one 8-bit digit of the keys that match the digits chosen so
// far: losses share their top bits, so the lanes of a warp that hit the same bin add once for
// all of them (__match_any_sync), not 32 times on one shared-memory word. Warp 0 then finds the
// bin holding the rank with a warp scan (8 bins per lane).
__device__ inline float block_select(const float* values, int64_t n, int64_t rank, unsigned int* hist) {
  __shared__ uint32_t s_digit;
  __shared__ long long s_rank;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  uint32_t prefix = 0, mask = 0;
  long long k = rank;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int64_t base = 0; base < n; base += blockDim.x) {  // uniform trip count: whole warps
      const int64_t i = base + threadIdx.x;
      uint32_t digit = 256u;  // no bin
      if (i < n) {
        const uint32_t key = order_key(values[i]);
        if ((key & mask) == prefix) digit = (key >> shift) & 255u;
      }
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
      const unsigned peers = __match_any_sync(kFullMask, digit);
      if (digit < 256u && lane == __ffs(peers) - 1) atomicAdd(&hist[digit], static_cast<unsigned>(__popc(peers)));
#else
      if (digit < 256u) atomicAdd(&hist[digit], 1u);
#endif
    }
    __syncthreads();
    if (warp == 0) {
      unsigned c[8];
      long long sum = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        c[j] = hist[8 * lane + j];
        sum += c[j];
      }
      long long incl = sum;
      for (int o = 1; o < kWarp; o *= 2) {
        const long long y = __shfl_up_sync(kFullMask, incl, o);
        if (lane >= o) incl += y;
      }
      const unsigned holder = __ballot_sync(kFullMask, incl > k);
      const int src = holder != 0 ? __ffs(holder) - 1 : kWarp - 1;
      if (lane == src) {
        long long below = incl - sum;
        uint32_t d = 8u * lane;
#pragma unroll
        for (int j = 0; j < 7; ++j) {
          if (below + c[j] > k) break;
          below += c[j];
          ++d;
        }
        s_digit = d;
        s_rank = k - below;
      }
    }
    __syncthreads();
    prefix |= s_digit << shift;
    mask |= 255u << shift;
    k = s_rank;
  }
  return key_value(prefix);
}

}  // namespace mentormix::cuda
