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
// kNumel elements; the gradient is 0 when the segment has none) and its run of the state buffers.
enum PointerColumn : int {
  kParamPtr = 0,
  kGradPtr,
  kOffset,
  kNumel,
  kNumPointerColumns,
};

enum class ParamDtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

}  // namespace mlr
