// Argument checks shared by the CPU and CUDA host functions of roi_align_3d.
// The Python wrapper checks the same things first with friendlier messages; these
// TORCH_CHECKs guard C++ callers and torch.ops.lesion_detector.* used directly.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace lesion_detector {
namespace ops {
namespace detail {

inline void check_rois(const at::Tensor& rois) {
  TORCH_CHECK(
      rois.dim() == 2 && rois.size(1) == 7,
      "roi_align_3d: rois must have shape [K, 7] = (batch_index, z1, y1, x1, z2, y2, x2), got ",
      rois.sizes());
}

inline void check_pooled_size(int64_t pooled_depth, int64_t pooled_height, int64_t pooled_width) {
  TORCH_CHECK(
      pooled_depth > 0 && pooled_height > 0 && pooled_width > 0,
      "roi_align_3d: output_size must be positive, got (", pooled_depth, ", ",
      pooled_height, ", ", pooled_width, ")");
}

inline void check_forward_args(
    const at::Tensor& input,
    const at::Tensor& rois,
    int64_t pooled_depth,
    int64_t pooled_height,
    int64_t pooled_width) {
  TORCH_CHECK(
      input.dim() == 5, "roi_align_3d: input must have shape [N, C, D, H, W], got ",
      input.sizes());
  check_rois(rois);
  TORCH_CHECK(
      input.scalar_type() == rois.scalar_type(),
      "roi_align_3d: input and rois must have the same dtype, got ", input.scalar_type(),
      " and ", rois.scalar_type());
  TORCH_CHECK(
      input.device() == rois.device(),
      "roi_align_3d: input and rois must be on the same device, got ", input.device(),
      " and ", rois.device());
  check_pooled_size(pooled_depth, pooled_height, pooled_width);
  // An empty spatial axis has no voxel to clamp a sample onto.
  TORCH_CHECK(
      input.size(2) > 0 && input.size(3) > 0 && input.size(4) > 0,
      "roi_align_3d: input spatial size must be positive, got ", input.sizes());
}

inline void check_backward_args(
    const at::Tensor& grad,
    const at::Tensor& rois,
    int64_t pooled_depth,
    int64_t pooled_height,
    int64_t pooled_width,
    int64_t batch_size,
    int64_t channels) {
  check_rois(rois);
  check_pooled_size(pooled_depth, pooled_height, pooled_width);
  TORCH_CHECK(
      grad.dim() == 5 && grad.size(0) == rois.size(0) && grad.size(1) == channels &&
          grad.size(2) == pooled_depth && grad.size(3) == pooled_height &&
          grad.size(4) == pooled_width,
      "roi_align_3d backward: grad must have shape [K, C, d, h, w] = [", rois.size(0),
      ", ", channels, ", ", pooled_depth, ", ", pooled_height, ", ", pooled_width,
      "], got ", grad.sizes());
  TORCH_CHECK(
      grad.scalar_type() == rois.scalar_type(),
      "roi_align_3d backward: grad and rois must have the same dtype, got ",
      grad.scalar_type(), " and ", rois.scalar_type());
  TORCH_CHECK(
      grad.device() == rois.device(),
      "roi_align_3d backward: grad and rois must be on the same device, got ",
      grad.device(), " and ", rois.device());
  TORCH_CHECK(batch_size >= 0 && channels >= 0, "roi_align_3d backward: negative input size");
}

} // namespace detail
} // namespace ops
} // namespace lesion_detector
