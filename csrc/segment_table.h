// What every AdamW kernel (adamw_cpu.cpp, adamw_cuda.cu) reads besides the flat state buffers: the
// columns of the float64 `hyper` table and of the int64 `pointers` table (both written by the
// host), the float64 `steps` vector (counted on the device), and the param dtype codes. All must
// match mlr_kernels/segments.py (columns and DTYPE_CODES).
#pragma once

namespace mlr {

enum HyperColumn : int {
  kLr = 0,
  kWeightDecay,
  kBeta1,
  kBeta2,
  kEps,
  kActive,
  kMaximize,
  kAmsgrad,
  kNumHyperColumns,
};

// Where segment s is: its parameter and gradient (addresses of their first element, contiguous,
// kNumel elements; the gradient is 0 when the segment has none), its run of the state buffers,
// and the stream of random bits its stochastic rounding draws from (random_bits.h).
enum PointerColumn : int {
  kParamPtr = 0,
  kGradPtr,
  kOffset,
  kNumel,
  kStream,
  kNumPointerColumns,
};

enum class ParamDtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// The dtype of the moment buffers (exp_avg, exp_avg_sq, max_exp_avg_sq).
enum class StateDtype : int { kFloat32 = 0, kBFloat16 = 1 };

}  // namespace mlr
