// Fused multi-segment AdamW, CPU (OpenMP across tiles, SIMD inside a tile).
//
// The contract (dtypes, tile list, segment tables, the math) is the docstring of
// mlr_kernels/backends/__init__.py; the Python launcher mlr_kernels/backends/cpu.py checks the
// tables and buffers before anything here runs. No torch headers: plain pointers and sizes.
#pragma once

#include <cstdint>

#include "cpu_vectorize.h"
#include "segment_table.h"

namespace mlr {

// The segment tables of one step (mlr_kernels/segments.py): `hyper` is [num_segments,
// kNumHyperColumns] float64, `pointers` [num_segments, kNumPointerColumns] int64, `steps`
// [num_segments] float64 (each segment's step count, this step included). Every segment's
// parameter and gradient hold `dtype`.
struct SegmentTableView {
  const double* hyper;
  const int64_t* pointers;
  const double* steps;
  int64_t num_segments;
  ParamDtype dtype;
};

// The flat state buffers, all `numel` long. The moments (`exp_avg`, `exp_avg_sq`,
// `max_exp_avg_sq`) hold `state_dtype`: float32, or bfloat16 written back with stochastic rounding.
// A bfloat16/float16 parameter has either a float32 `master` or a `compensation` in its own dtype
// (Kahan summation, no master); a float32 one has neither. `max_exp_avg_sq` may be null when no
// segment uses amsgrad.
struct AdamWState {
  float* master;
  void* compensation;
  void* exp_avg;
  void* exp_avg_sq;
  void* max_exp_avg_sq;
  StateDtype state_dtype;
  int64_t numel;
};

// One AdamW step over every tile (rows of `(segment, start, end)` in state coordinates) whose
// segment is active. `grad_mult` (null = 1) scales every gradient; a nonzero `*found_inf` (null = 0)
// skips the step. Throws std::invalid_argument, before writing anything, if a tile lies outside the
// state buffers or outside its segment, names a missing segment, or belongs to an active segment
// without a gradient, or an amsgrad segment has no `max_exp_avg_sq`, or the master/compensation
// buffers do not fit the param dtype, or a dtype code or `level` is not supported
// (simd_level_supported). Every supported level writes the same bits.
void adamw_step(const SegmentTableView& table, const AdamWState& state, const int64_t* tiles,
                int64_t num_tiles, const float* grad_mult, const float* found_inf, int num_threads,
                SimdLevel level);

// Reads a, b, c, d and writes a, b, c (a += d, b += d, c += d): fp32 AdamW's memory traffic,
// 28 bytes per element, with no math. Timing it gives the bandwidth ceiling for adamw_step.
void stream_4r3w(float* a, float* b, float* c, const float* d, int64_t n, int num_threads,
                 SimdLevel level);

}  // namespace mlr
