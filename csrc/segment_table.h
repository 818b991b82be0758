// What every AdamW kernel (adamw_cpu.cpp, adamw_cuda.cu) reads besides the flat buffers: the
// columns of the float64 per-segment table and the param dtype codes the Python launchers send.
// Both must match mlr_kernels/segments.py and the launchers' _DTYPE_CODES.
#pragma once

namespace mlr {

enum HyperColumn : int {
  kLr = 0,
  kWeightDecay,
  kBeta1,
  kBeta2,
  kEps,
  kStep,
  kActive,
  kMaximize,
  kAmsgrad,
  kNumHyperColumns,
};

enum class ParamDtype : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

}  // namespace mlr
