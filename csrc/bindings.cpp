// Python binding of the CPU kernels (module mlr_kernels._cpu). Tensors arrive as data_ptr()
// addresses (0 for None) that mlr_kernels/backends/cpu.py has already checked.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "adamw_cpu.h"

namespace py = pybind11;

namespace {

template <class T>
T* as_pointer(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "Fused multi-segment AdamW for CPU tensors (OpenMP + SIMD); raw-pointer interface.";

  m.def(
      "adamw_step",
      [](std::uintptr_t hyper, std::uintptr_t pointers, std::uintptr_t steps, int64_t num_segments,
         int dtype, std::uintptr_t master, std::uintptr_t compensation, std::uintptr_t exp_avg,
         std::uintptr_t exp_avg_sq, std::uintptr_t max_exp_avg_sq, int state_dtype, int64_t numel,
         std::uintptr_t tiles, int64_t num_tiles, std::uintptr_t grad_mult, std::uintptr_t found_inf, int num_threads, int simd_level) {
        const mlr::SegmentTableView table{as_pointer<const double>(hyper),
                                          as_pointer<const int64_t>(pointers),
                                          as_pointer<const double>(steps), num_segments,
                                          static_cast<mlr::ParamDtype>(dtype)};
        const mlr::AdamWState state{as_pointer<float>(master), as_pointer<void>(compensation),
                                    as_pointer<void>(exp_avg), as_pointer<void>(exp_avg_sq),
                                    as_pointer<void>(max_exp_avg_sq),
                                    static_cast<mlr::StateDtype>(state_dtype), numel};
        mlr::adamw_step(table, state, as_pointer<const int64_t>(tiles), num_tiles,
                        as_pointer<const float>(grad_mult), as_pointer<const float>(found_inf),
                        num_threads, static_cast<mlr::SimdLevel>(simd_level));
      },
      py::arg("hyper"), py::arg("pointers"), py::arg("steps"), py::arg("num_segments"),
      py::arg("dtype"), py::arg("master"), py::arg("compensation"), py::arg("exp_avg"),
      py::arg("exp_avg_sq"), py::arg("max_exp_avg_sq"), py::arg("state_dtype"), py::arg("numel"),
      py::arg("tiles"), py::arg("num_tiles"), py::arg("grad_mult"), py::arg("found_inf"),
      py::arg("num_threads"), py::arg("simd_level"),
      py::call_guard<py::gil_scoped_release>(),
      "One AdamW step; dtype codes: 0 float32, 1 bfloat16, 2 float16; state dtype codes: 0 "
      "float32, 1 bfloat16; SIMD level codes: 0 baseline, 1 AVX2, 2 AVX-512. See adamw_cpu.h.");

  m.def(
      "stream_4r3w",
      [](std::uintptr_t a, std::uintptr_t b, std::uintptr_t c, std::uintptr_t d, int64_t n,
         int num_threads, int simd_level) {
        mlr::stream_4r3w(as_pointer<float>(a), as_pointer<float>(b), as_pointer<float>(c),
                         as_pointer<const float>(d), n, num_threads,
                         static_cast<mlr::SimdLevel>(simd_level));
      },
      py::arg("a"), py::arg("b"), py::arg("c"), py::arg("d"), py::arg("n"),
      py::arg("num_threads"), py::arg("simd_level"), py::call_guard<py::gil_scoped_release>(),
      "a += d; b += d; c += d over n float32s: fp32 AdamW's memory traffic with no math.");

  m.def(
      "simd_level_supported",
      [](int level) { return mlr::simd_level_supported(static_cast<mlr::SimdLevel>(level)); },
      py::arg("level"), "Whether this build has code for the SIMD level and this CPU runs it.");
}
