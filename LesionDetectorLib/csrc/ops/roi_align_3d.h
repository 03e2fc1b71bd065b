// 3-D RoI Align: C++ entry points of the `lesion_detector::roi_align_3d` operator.
//
// Conventions (shared by every kernel and by LesionDetectorLib/ops/reference.py):
//   input  [N, C, D, H, W]  floating point, indexed [z, y, x]
//   rois   [K, 7]           (batch_index, z1, y1, x1, z2, y2, x2) in input-image voxels,
//                           same dtype and device as `input`
//   output [K, C, d, h, w]  d, h, w = pooled_depth, pooled_height, pooled_width
// Each output bin averages `gz * gy * gx` trilinearly interpolated samples placed on a
// regular grid inside the bin (torchvision's 2-D RoI Align extended to 3-D).
#pragma once

#include <ATen/core/Tensor.h>

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
    bool aligned);

namespace detail {

// Gradient of roi_align_3d with respect to `input` ([batch_size, channels, depth, height,
// width]); `grad` is the gradient of the output, [K, C, d, h, w], any strides.
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
    bool aligned);

} // namespace detail
} // namespace ops
} // namespace lesion_detector
