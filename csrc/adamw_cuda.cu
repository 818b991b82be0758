// Fused multi-segment AdamW for CUDA: one launch per step per segment table, however many segments.
//
// One block per tile row (segment, start, end). The block reads its segment's rows of the float64
// hyper table and of the int64 pointer table, and its step count (mlr_kernels/segments.py): the
// step size and bias correction are derived there, so the step count lives on the device (no host
// sync, and a captured CUDA graph replays correctly), and the parameter and gradient are reached wherever user
// code keeps them. Threads then walk the tile 8 elements at a time with 16-byte vector accesses
// (two float4 of float32, one 16-byte word of bfloat16/float16): tiles start on 16-element
// boundaries of the state buffers, which the Python side checks are 16-byte aligned; a tile whose
// parameter or gradient is not 16-byte aligned takes the scalar path throughout, as do the last
// (end - start) % 8 elements of every tile. See mlr_kernels/backends/__init__.py for the math and the contract.
//
// The math rounds where torch does: fused multiply-adds exactly where torch's lerp_/addcmul_ fuse,
// and the _rn intrinsics everywhere else so that neither -fmad nor --use_fast_math can change it.

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "segment_table.h"

namespace mlr {
namespace {

constexpr int kThreads = 256;
// Blocks per SM the register budget must allow: 4 x 256 threads caps ptxas at 64 registers
// (it needs 68 unbounded, 3 blocks) without spilling, for more loads in flight per SM.
constexpr int kMinBlocksPerSm = 4;
constexpr int kVec = 8;  // elements per thread per iteration

// Per-segment scalars, float32 as the element math uses them.
struct SegmentScalars {
  float grad_scale;  // grad_mult, negated when maximizing (negating a product is exact)
  float decay;       // 1 - lr * weight_decay
  float one_minus_beta1;
  float beta2;
  float one_minus_beta2;
  float eps;
  float step_size;              // lr / (1 - beta1^step)
  float bias_correction2_sqrt;  // sqrt(1 - beta2^step)
  bool amsgrad;
};

__device__ SegmentScalars segment_scalars(const double* row, double step, const float* grad_mult,
                                          bool has_max_exp_avg_sq) {
  const double lr = row[kLr];
  const double beta1 = row[kBeta1];
  const double beta2 = row[kBeta2];
  SegmentScalars s;
  s.grad_scale = row[kMaximize] != 0.0 ? -1.0f : 1.0f;
  if (grad_mult != nullptr) s.grad_scale = __fmul_rn(s.grad_scale, *grad_mult);
  s.decay = static_cast<float>(1.0 - __dmul_rn(lr, row[kWeightDecay]));
  s.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  s.beta2 = static_cast<float>(beta2);
  s.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  s.eps = static_cast<float>(row[kEps]);
  s.step_size = static_cast<float>(lr / (1.0 - pow(beta1, step)));
  s.bias_correction2_sqrt = static_cast<float>(sqrt(1.0 - pow(beta2, step)));
  s.amsgrad = row[kAmsgrad] != 0.0 && has_max_exp_avg_sq;
  return s;
}

// torch.maximum semantics: NaN if either side is NaN (fmaxf would drop it).
__device__ __forceinline__ float max_propagate_nan(float a, float b) {
  return (a != a || a > b) ? a : b;
}

// One element of the AdamW update; returns the new weight. `vmax` is read and written only when
// the segment uses AMSGrad.
__device__ __forceinline__ float adamw_update(const SegmentScalars& s, float grad, float p,
                                              float& m, float& v, float& vmax) {
  const float g = __fmul_rn(grad, s.grad_scale);
  p = __fmul_rn(p, s.decay);
  m = __fmaf_rn(s.one_minus_beta1, __fsub_rn(g, m), m);
  v = __fmaf_rn(__fmul_rn(s.one_minus_beta2, g), g, __fmul_rn(s.beta2, v));
  float second_moment = v;
  if (s.amsgrad) {
    vmax = max_propagate_nan(vmax, v);
    second_moment = vmax;
  }
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(second_moment), s.bias_correction2_sqrt), s.eps);
  return __fsub_rn(p, __fdiv_rn(__fmul_rn(s.step_size, m), denom));
}

// Scalar conversions between the param dtype and float32 (round to nearest even downwards).
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

// 8 consecutive elements <-> float32 registers, through 16-byte accesses. `src`/`dst` must be
// 16-byte aligned (32 for float32 pairs, which 8-element steps from a 16-element boundary keep).
__device__ __forceinline__ void load8(const float* src, float (&dst)[kVec]) {
  const float4 lo = reinterpret_cast<const float4*>(src)[0];
  const float4 hi = reinterpret_cast<const float4*>(src)[1];
  dst[0] = lo.x;
  dst[1] = lo.y;
  dst[2] = lo.z;
  dst[3] = lo.w;
  dst[4] = hi.x;
  dst[5] = hi.y;
  dst[6] = hi.z;
  dst[7] = hi.w;
}

__device__ __forceinline__ void store8(float* dst, const float (&src)[kVec]) {
  reinterpret_cast<float4*>(dst)[0] = make_float4(src[0], src[1], src[2], src[3]);
  reinterpret_cast<float4*>(dst)[1] = make_float4(src[4], src[5], src[6], src[7]);
}

// 8 bfloat16 or float16 values travel as one uint4 holding 4 packed pairs.
__device__ __forceinline__ float2 pair_to_float2(__nv_bfloat162 pair) { return __bfloat1622float2(pair); }
__device__ __forceinline__ float2 pair_to_float2(__half2 pair) { return __half22float2(pair); }

template <typename Pair>
__device__ __forceinline__ Pair float2_to_pair(float a, float b);
template <>
__device__ __forceinline__ __nv_bfloat162 float2_to_pair(float a, float b) {
  return __floats2bfloat162_rn(a, b);
}
template <>
__device__ __forceinline__ __half2 float2_to_pair(float a, float b) { return __floats2half2_rn(a, b); }

template <typename T>
using PairOf = std::conditional_t<std::is_same_v<T, __half>, __half2, __nv_bfloat162>;

template <typename T>
__device__ __forceinline__ void load8(const T* src, float (&dst)[kVec]) {
  static_assert(!std::is_same_v<T, float>, "float32 takes the float4 overload");
  const uint4 raw = *reinterpret_cast<const uint4*>(src);
  const auto* pairs = reinterpret_cast<const PairOf<T>*>(&raw);
#pragma unroll
  for (int k = 0; k < kVec / 2; ++k) {
    const float2 f = pair_to_float2(pairs[k]);
    dst[2 * k] = f.x;
    dst[2 * k + 1] = f.y;
  }
}

template <typename T>
__device__ __forceinline__ void store8(T* dst, const float (&src)[kVec]) {
  static_assert(!std::is_same_v<T, float>, "float32 takes the float4 overload");
  uint4 raw;
  auto* pairs = reinterpret_cast<PairOf<T>*>(&raw);
#pragma unroll
  for (int k = 0; k < kVec / 2; ++k) pairs[k] = float2_to_pair<PairOf<T>>(src[2 * k], src[2 * k + 1]);
  *reinterpret_cast<uint4*>(dst) = raw;
}

// The weight a low-precision step starts from: the master, unless the param is no longer the
// master rounded, i.e. user code wrote it since the last step (copy_, .data, a collective, another
// optimizer); then what it holds. Compared as floats: a NaN master re-reads a NaN param, harmlessly.
template <typename T>
__device__ __forceinline__ float start_from(float master, float seen) {
  return to_float(from_float<T>(master)) != seen ? seen : master;
}

// `n` elements of one tile, every pointer already at the tile's first element. T is the
// param/grad dtype. For float32 the param is the weight being updated; otherwise the float32
// master is, and the param receives it rounded to nearest even in the same pass. State pointers
// are 32-byte aligned (tiles start on 16-element boundaries of 16-byte aligned buffers); `param`
// and `grad` take the 16-byte vector path only when `vector` says they are aligned too.
template <typename T>
__device__ __forceinline__ void adamw_tile(const SegmentScalars& s, int64_t n, bool vector,
                                           T* __restrict__ param, const T* __restrict__ grad,
                                           float* __restrict__ master, float* __restrict__ exp_avg,
                                           float* __restrict__ exp_avg_sq,
                                           float* __restrict__ max_exp_avg_sq) {
  constexpr bool kHasMaster = !std::is_same_v<T, float>;
  const int64_t vector_end = vector ? n / kVec * kVec : 0;
  for (int64_t i = kVec * threadIdx.x; i < vector_end; i += kVec * kThreads) {
    float g[kVec], p[kVec], m[kVec], v[kVec], vmax[kVec] = {};
    load8(grad + i, g);
    if constexpr (kHasMaster) {
      float seen[kVec];
      load8(master + i, p);
      load8(param + i, seen);
#pragma unroll
      for (int k = 0; k < kVec; ++k) p[k] = start_from<T>(p[k], seen[k]);
    } else {
      load8(param + i, p);
    }
    load8(exp_avg + i, m);
    load8(exp_avg_sq + i, v);
    if (s.amsgrad) load8(max_exp_avg_sq + i, vmax);
#pragma unroll
    for (int k = 0; k < kVec; ++k) p[k] = adamw_update(s, g[k], p[k], m[k], v[k], vmax[k]);
    store8(exp_avg + i, m);
    store8(exp_avg_sq + i, v);
    if (s.amsgrad) store8(max_exp_avg_sq + i, vmax);
    if constexpr (kHasMaster) store8(master + i, p);
    store8(param + i, p);
  }

  for (int64_t i = vector_end + threadIdx.x; i < n; i += kThreads) {
    float vmax = s.amsgrad ? max_exp_avg_sq[i] : 0.0f;
    float m = exp_avg[i];
    float v = exp_avg_sq[i];
    float p;
    if constexpr (kHasMaster) {
      p = start_from<T>(master[i], to_float(param[i]));
    } else {
      p = param[i];
    }
    p = adamw_update(s, to_float(grad[i]), p, m, v, vmax);
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    if (s.amsgrad) max_exp_avg_sq[i] = vmax;
    if constexpr (kHasMaster) master[i] = p;
    param[i] = from_float<T>(p);
  }
}

// One block per tile: find the tile's parameter and gradient through its segment's pointer row
// (state element i is parameter element i - offset) and its state in the flat buffers.
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) adamw_tile_kernel(
    const double* __restrict__ hyper, const int64_t* __restrict__ pointers,
    const double* __restrict__ steps, const int64_t* __restrict__ tiles, float* master, float* exp_avg, float* exp_avg_sq,
    float* max_exp_avg_sq, const float* __restrict__ grad_mult,
    const float* __restrict__ found_inf) {
  if (found_inf != nullptr && *found_inf != 0.0f) return;
  const int64_t* tile = tiles + 3 * static_cast<int64_t>(blockIdx.x);
  const double* row = hyper + kNumHyperColumns * tile[0];
  if (row[kActive] == 0.0) return;
  const int64_t start = tile[1];
  const int64_t* where = pointers + kNumPointerColumns * tile[0];
  const int64_t local = start - where[kOffset];
  T* param = reinterpret_cast<T*>(static_cast<uintptr_t>(where[kParamPtr])) + local;
  const T* grad = reinterpret_cast<const T*>(static_cast<uintptr_t>(where[kGradPtr])) + local;
  const bool vector =
      ((reinterpret_cast<uintptr_t>(param) | reinterpret_cast<uintptr_t>(grad)) % 16) == 0;
  const SegmentScalars s = segment_scalars(row, steps[tile[0]], grad_mult, max_exp_avg_sq != nullptr);
  adamw_tile<T>(s, tile[2] - start, vector, param, grad,
                master != nullptr ? master + start : nullptr, exp_avg + start, exp_avg_sq + start,
                max_exp_avg_sq != nullptr ? max_exp_avg_sq + start : nullptr);
}

// a += d; b += d; c += d over n float32s: fp32 AdamW's traffic (4 streams read, 3 written, 28 bytes
// per element) with no math, with the AdamW kernel's 16-byte accesses. Timed beside a step, it is
// the bandwidth ceiling for it. Every pointer is 16-byte aligned (checked in Python).
__global__ void __launch_bounds__(kThreads) stream_4r3w_kernel(float* __restrict__ a,
                                                               float* __restrict__ b,
                                                               float* __restrict__ c,
                                                               const float* __restrict__ d,
                                                               int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads * kVec;
  const int64_t vector_end = n / kVec * kVec;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * kVec;
       i < vector_end; i += stride) {
    float x[kVec], y[kVec], z[kVec], w[kVec];
    load8(a + i, x);
    load8(b + i, y);
    load8(c + i, z);
    load8(d + i, w);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      x[k] += w[k];
      y[k] += w[k];
      z[k] += w[k];
    }
    store8(a + i, x);
    store8(b + i, y);
    store8(c + i, z);
  }
  if (blockIdx.x == 0) {
    for (int64_t i = vector_end + threadIdx.x; i < n; i += kThreads) {
      a[i] += d[i];
      b[i] += d[i];
      c[i] += d[i];
    }
  }
}

template <typename T>
void launch(const double* hyper, const int64_t* pointers, const double* steps, const int64_t* tiles,
            int64_t num_tiles, float* master, float* exp_avg, float* exp_avg_sq, float* max_exp_avg_sq,
            const float* grad_mult, const float* found_inf, cudaStream_t stream) {
  adamw_tile_kernel<T><<<static_cast<unsigned>(num_tiles), kThreads, 0, stream>>>(
      hyper, pointers, steps, tiles, master, exp_avg, exp_avg_sq, max_exp_avg_sq, grad_mult,
      found_inf);
}

}  // namespace
}  // namespace mlr

// One AdamW step over `num_tiles` tiles on `stream`. Pointers are device pointers the caller has
// validated (mlr_kernels/backends/cuda.py); the tables are the segment table's `hyper`,
// `pointers` and `steps`; `master`, `max_exp_avg_sq`, `grad_mult` and `found_inf` may be null. Returns a
// cudaError_t: the launch's, or cudaErrorInvalidValue for a bad dtype code or more tiles than a
// grid holds.
extern "C" int mlr_adamw_cuda_step(const double* hyper, const int64_t* pointers,
                                   const double* steps, const int64_t* tiles, int64_t num_tiles, int dtype,
                                   float* master, float* exp_avg, float* exp_avg_sq,
                                   float* max_exp_avg_sq, const float* grad_mult,
                                   const float* found_inf, void* stream) {
  if (num_tiles < 0 || num_tiles > INT32_MAX) return cudaErrorInvalidValue;
  if (num_tiles == 0) return cudaSuccess;
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  using mlr::ParamDtype;
  switch (static_cast<ParamDtype>(dtype)) {
    case ParamDtype::kFloat32:
      mlr::launch<float>(hyper, pointers, steps, tiles, num_tiles, master, exp_avg, exp_avg_sq,
                         max_exp_avg_sq, grad_mult, found_inf, cuda_stream);
      break;
    case ParamDtype::kBFloat16:
      mlr::launch<__nv_bfloat16>(hyper, pointers, steps, tiles, num_tiles, master, exp_avg,
                                 exp_avg_sq, max_exp_avg_sq, grad_mult, found_inf, cuda_stream);
      break;
    case ParamDtype::kFloat16:
      mlr::launch<__half>(hyper, pointers, steps, tiles, num_tiles, master, exp_avg, exp_avg_sq,
                          max_exp_avg_sq, grad_mult, found_inf, cuda_stream);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

extern "C" const char* mlr_adamw_cuda_error_string(int error) {
  return cudaGetErrorString(static_cast<cudaError_t>(error));
}

// stream_4r3w_kernel over n elements on `stream`; returns the launch's cudaError_t.
extern "C" int mlr_stream_4r3w_cuda(float* a, float* b, float* c, const float* d, int64_t n,
                                    void* stream) {
  if (n <= 0) return n == 0 ? cudaSuccess : cudaErrorInvalidValue;
  constexpr int64_t kPerBlock = int64_t{mlr::kThreads} * mlr::kVec;
  constexpr int64_t kMaxBlocks = int64_t{1} << 20;  // the loop strides over the rest
  const int64_t blocks = (n + kPerBlock - 1) / kPerBlock;
  mlr::stream_4r3w_kernel<<<static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks),
                            mlr::kThreads, 0, static_cast<cudaStream_t>(stream)>>>(a, b, c, d, n);
  return cudaGetLastError();
}
