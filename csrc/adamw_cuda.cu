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

#include "random_bits.h"
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

// Where a step starts from and where it lands: a float32 parameter itself; a bfloat16/float16
// parameter through its float32 master; or, without a master, the parameter plus a compensation in
// its own dtype that keeps what its rounding dropped (Kahan summation).
enum class WeightMode { kPlain, kMaster, kCompensated };

// A moment written back: float32 as it is; bfloat16 rounded stochastically with 16 of `bits`
// (random_bits.h). `stored` is the value that lands, as a float.
template <typename U>
__device__ __forceinline__ float stored_state(float x, uint32_t bits) {
  if constexpr (std::is_same_v<U, float>) {
    return x;
  } else {
    return __uint_as_float(uint32_t{float_to_bf16_stochastic(x, bits)} << 16);
  }
}

template <typename U>
__device__ __forceinline__ void store_state8(U* dst, const float (&src)[kVec], const uint32_t (&bits)[kVec],
                                             int shift) {
  if constexpr (std::is_same_v<U, float>) {
    store8(dst, src);
  } else {
    uint4 raw;
    auto* halves = reinterpret_cast<uint16_t*>(&raw);
#pragma unroll
    for (int k = 0; k < kVec; ++k) halves[k] = float_to_bf16_stochastic(src[k], bits[k] >> shift);
    *reinterpret_cast<uint4*>(dst) = raw;
  }
}

template <typename U>
__device__ __forceinline__ U store_state1(float x, uint32_t bits) {
  if constexpr (std::is_same_v<U, float>) {
    return x;
  } else {
    return __ushort_as_bfloat16(float_to_bf16_stochastic(x, bits));
  }
}

// `n` elements of one tile, every pointer already at the tile's first element. T is the
// param/grad dtype, U the moments' (float or bfloat16). State pointers are 32-byte aligned (tiles
// start on 16-element boundaries of 16-byte aligned buffers); `param` and `grad` take the 16-byte
// vector path only when `vector` says they are aligned too. Element i's random bits are
// random_bits(key, first_index + i).
template <typename T, typename U, WeightMode kMode>
__device__ __forceinline__ void adamw_tile(const SegmentScalars& s, int64_t n, bool vector,
                                           uint32_t key, uint32_t first_index,
                                           T* __restrict__ param, const T* __restrict__ grad,
                                           float* __restrict__ master, T* __restrict__ compensation,
                                           U* __restrict__ exp_avg, U* __restrict__ exp_avg_sq,
                                           U* __restrict__ max_exp_avg_sq) {
  constexpr bool kRounded = !std::is_same_v<U, float>;
  const int64_t vector_end = vector ? n / kVec * kVec : 0;
  for (int64_t i = kVec * threadIdx.x; i < vector_end; i += kVec * kThreads) {
    float g[kVec], p[kVec], m[kVec], v[kVec], vmax[kVec] = {}, old_vmax[kVec] = {};
    uint32_t bits[kVec] = {};
    load8(grad + i, g);
    if constexpr (kMode == WeightMode::kMaster) {
      float seen[kVec];
      load8(master + i, p);
      load8(param + i, seen);
#pragma unroll
      for (int k = 0; k < kVec; ++k) p[k] = start_from<T>(p[k], seen[k]);
    } else if constexpr (kMode == WeightMode::kCompensated) {
      float low[kVec];
      load8(param + i, p);
      load8(compensation + i, low);
#pragma unroll
      for (int k = 0; k < kVec; ++k) p[k] = __fadd_rn(p[k], low[k]);
    } else {
      load8(param + i, p);
    }
    load8(exp_avg + i, m);
    load8(exp_avg_sq + i, v);
    if (s.amsgrad) {
      load8(max_exp_avg_sq + i, vmax);
#pragma unroll
      for (int k = 0; k < kVec; ++k) old_vmax[k] = vmax[k];
    }
#pragma unroll
    for (int k = 0; k < kVec; ++k) p[k] = adamw_update(s, g[k], p[k], m[k], v[k], vmax[k]);
    if constexpr (kRounded) {
#pragma unroll
      for (int k = 0; k < kVec; ++k) bits[k] = random_bits(key, first_index + static_cast<uint32_t>(i + k));
    }
    store_state8(exp_avg + i, m, bits, 0);
    store_state8(exp_avg_sq + i, v, bits, 16);
    if (s.amsgrad) {
      if constexpr (kRounded) {  // the running max of the stored exp_avg_sq: nothing rounds
#pragma unroll
        for (int k = 0; k < kVec; ++k) {
          vmax[k] = max_propagate_nan(old_vmax[k], stored_state<U>(v[k], bits[k] >> 16));
        }
      }
      store_state8(max_exp_avg_sq + i, vmax, bits, 0);  // exact: no bits are dropped
    }
    if constexpr (kMode == WeightMode::kMaster) {
      store8(master + i, p);
      store8(param + i, p);
    } else if constexpr (kMode == WeightMode::kCompensated) {
      float low[kVec];
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        low[k] = __fsub_rn(p[k], to_float(from_float<T>(p[k])));  // exact: what the rounding drops
      }
      store8(param + i, p);
      store8(compensation + i, low);
    } else {
      store8(param + i, p);
    }
  }

  for (int64_t i = vector_end + threadIdx.x; i < n; i += kThreads) {
    float vmax = s.amsgrad ? to_float(max_exp_avg_sq[i]) : 0.0f;
    float m = to_float(exp_avg[i]);
    float v = to_float(exp_avg_sq[i]);
    float p;
    if constexpr (kMode == WeightMode::kMaster) {
      p = start_from<T>(master[i], to_float(param[i]));
    } else if constexpr (kMode == WeightMode::kCompensated) {
      p = __fadd_rn(to_float(param[i]), to_float(compensation[i]));
    } else {
      p = to_float(param[i]);
    }
    p = adamw_update(s, to_float(grad[i]), p, m, v, vmax);
    const uint32_t bits = kRounded ? random_bits(key, first_index + static_cast<uint32_t>(i)) : 0u;
    exp_avg[i] = store_state1<U>(m, bits);
    exp_avg_sq[i] = store_state1<U>(v, bits >> 16);
    if (s.amsgrad) {
      max_exp_avg_sq[i] = kRounded ? store_state1<U>(max_propagate_nan(to_float(max_exp_avg_sq[i]),
                                                                       stored_state<U>(v, bits >> 16)), 0u)
                                   : store_state1<U>(vmax, 0u);
    }
    if constexpr (kMode == WeightMode::kMaster) {
      master[i] = p;
      param[i] = from_float<T>(p);
    } else if constexpr (kMode == WeightMode::kCompensated) {
      const T high = from_float<T>(p);
      param[i] = high;
      compensation[i] = from_float<T>(__fsub_rn(p, to_float(high)));
    } else {
      param[i] = from_float<T>(p);
    }
  }
}

// One block per tile: find the tile's parameter and gradient through its segment's pointer row
// (state element i is parameter element i - offset) and its state in the flat buffers.
template <typename T, typename U, WeightMode kMode>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) adamw_tile_kernel(
    const double* __restrict__ hyper, const int64_t* __restrict__ pointers,
    const double* __restrict__ steps, const int64_t* __restrict__ tiles, float* master,
    T* compensation, U* exp_avg, U* exp_avg_sq, U* max_exp_avg_sq,
    const float* __restrict__ grad_mult, const float* __restrict__ found_inf) {
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
  const double step = steps[tile[0]];
  const SegmentScalars s = segment_scalars(row, step, grad_mult, max_exp_avg_sq != nullptr);
  const uint32_t key = random_key(static_cast<uint64_t>(where[kStream]), static_cast<uint64_t>(step),
                                  static_cast<uint64_t>(local));
  adamw_tile<T, U, kMode>(s, tile[2] - start, vector, key, static_cast<uint32_t>(local), param, grad,
                          master != nullptr ? master + start : nullptr,
                          compensation != nullptr ? compensation + start : nullptr, exp_avg + start,
                          exp_avg_sq + start,
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

// The launch's arguments, typed by the host wrapper below.
struct StepArgs {
  const double* hyper;
  const int64_t* pointers;
  const double* steps;
  const int64_t* tiles;
  int64_t num_tiles;
  float* master;
  void* compensation;
  void* exp_avg;
  void* exp_avg_sq;
  void* max_exp_avg_sq;
  const float* grad_mult;
  const float* found_inf;
  cudaStream_t stream;
};

template <typename T, typename U, WeightMode kMode>
void launch(const StepArgs& a) {
  adamw_tile_kernel<T, U, kMode><<<static_cast<unsigned>(a.num_tiles), kThreads, 0, a.stream>>>(
      a.hyper, a.pointers, a.steps, a.tiles, a.master, static_cast<T*>(a.compensation),
      static_cast<U*>(a.exp_avg), static_cast<U*>(a.exp_avg_sq), static_cast<U*>(a.max_exp_avg_sq),
      a.grad_mult, a.found_inf);
}

template <typename T, typename U>
void launch_low_precision(const StepArgs& a) {
  if (a.master != nullptr) {
    launch<T, U, WeightMode::kMaster>(a);
  } else {
    launch<T, U, WeightMode::kCompensated>(a);
  }
}

template <typename U>
bool launch_for_state(ParamDtype dtype, const StepArgs& a) {
  switch (dtype) {
    case ParamDtype::kFloat32:
      launch<float, U, WeightMode::kPlain>(a);
      return true;
    case ParamDtype::kBFloat16:
      launch_low_precision<__nv_bfloat16, U>(a);
      return true;
    case ParamDtype::kFloat16:
      launch_low_precision<__half, U>(a);
      return true;
  }
  return false;
}

}  // namespace
}  // namespace mlr

// One AdamW step over `num_tiles` tiles on `stream`. Pointers are device pointers the caller has
// validated (mlr_kernels/backends/cuda.py); the tables are the segment table's `hyper`,
// `pointers` and `steps`; the moments hold `state_dtype` (0 float32, 1 bfloat16); a bfloat16/
// float16 parameter has exactly one of `master` and `compensation`; `max_exp_avg_sq`, `grad_mult`
// and `found_inf` may be null. Returns a cudaError_t: the launch's, or cudaErrorInvalidValue for a
// bad dtype code or more tiles than a grid holds.
extern "C" int mlr_adamw_cuda_step(const double* hyper, const int64_t* pointers,
                                   const double* steps, const int64_t* tiles, int64_t num_tiles,
                                   int dtype, int state_dtype, float* master, void* compensation,
                                   void* exp_avg, void* exp_avg_sq, void* max_exp_avg_sq,
                                   const float* grad_mult, const float* found_inf, void* stream) {
  if (num_tiles < 0 || num_tiles > INT32_MAX) return cudaErrorInvalidValue;
  if (num_tiles == 0) return cudaSuccess;
  const mlr::StepArgs args{hyper, pointers, steps, tiles, num_tiles, master, compensation, exp_avg,
                           exp_avg_sq, max_exp_avg_sq, grad_mult, found_inf,
                           static_cast<cudaStream_t>(stream)};
  const auto param_dtype = static_cast<mlr::ParamDtype>(dtype);
  bool launched = false;
  switch (static_cast<mlr::StateDtype>(state_dtype)) {
    case mlr::StateDtype::kFloat32:
      launched = mlr::launch_for_state<float>(param_dtype, args);
      break;
    case mlr::StateDtype::kBFloat16:
      launched = mlr::launch_for_state<__nv_bfloat16>(param_dtype, args);
      break;
  }
  return launched ? cudaGetLastError() : cudaErrorInvalidValue;
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
