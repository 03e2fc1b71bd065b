// Schemas of the roi_align_3d operator and thin dispatcher wrappers for C++ callers.
// Kernels live in cpu/ and cuda/ (TORCH_LIBRARY_IMPL); autograd and the fake (meta)
// kernels are registered from Python (LesionDetectorLib/ops/roi_align_3d.py).
#include "ops/roi_align_3d.h"

#include <Python.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

// Importing `LesionDetectorLib._C` only has to load this shared object: the static
// TORCH_LIBRARY initialisers below register the operators with the dispatcher.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C", // name
      "LesionDetectorLib compiled operators (see torch.ops.lesion_detector)", // doc
      -1, // no per-module state
      nullptr, // methods: everything is reached through torch.ops
  };
  return PyModule_Create(&module_def);
}
}

namespace lesion_detector {
namespace ops {

at::Tensor roi_align_3d(
    const at::Tensor& input,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t pooled_depth,
    int64_t pooled_height,
    int64_t pooled_width,
    int64_t sampling_ratio,
    bool aligned) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lesion_detector::roi_align_3d", "")
                       .typed<decltype(roi_align_3d)>();
  return op.call(
      input, rois, spatial_scale, pooled_depth, pooled_height, pooled_width,
      sampling_ratio, aligned);
}

namespace detail {

at::Tensor _roi_align_3d_backward(
    const at::Tensor& grad,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t pooled_depth,
    int64_t pooled_height,
    int64_t pooled_width,
    int64_t batch_size,
    int64_t channels,
    int64_t depth,
    int64_t height,
    int64_t width,
    int64_t sampling_ratio,
    bool aligned) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("lesion_detector::_roi_align_3d_backward", "")
          .typed<decltype(_roi_align_3d_backward)>();
  return op.call(
      grad, rois, spatial_scale, pooled_depth, pooled_height, pooled_width,
      batch_size, channels, depth, height, width, sampling_ratio, aligned);
}

} // namespace detail

TORCH_LIBRARY(lesion_detector, m) {
  // SymInt sizes let torch.compile trace with dynamic shapes (the backward op receives
  // the input's symbolic sizes); kernels take them as int64_t.
  m.def(
      "roi_align_3d(Tensor input, Tensor rois, float spatial_scale, "
      "SymInt pooled_depth, SymInt pooled_height, SymInt pooled_width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_roi_align_3d_backward(Tensor grad, Tensor rois, float spatial_scale, "
      "SymInt pooled_depth, SymInt pooled_height, SymInt pooled_width, "
      "SymInt batch_size, SymInt channels, SymInt depth, SymInt height, SymInt width, "
      "int sampling_ratio, bool aligned) -> Tensor");
}

} // namespace ops
} // namespace lesion_detector
