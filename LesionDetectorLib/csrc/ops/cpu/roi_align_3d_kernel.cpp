// CPU kernels of lesion_detector::roi_align_3d and its backward.
//
// Per (RoI, channel) the bins' samples are merged into per-axis weight vectors
// (cpu/roi_align_3d_common.h) and the output is three small 1-D contractions over the RoI's
// window: about one multiply-add per window voxel and bin column instead of eight loads per
// sample, which matters for large RoIs (the FPRN's magnified 20^3 crops).
//
// Forward: at::parallel_for over (roi, channel) pairs; each pair writes its own output
// block, and the RoI's sampling taps are recomputed only when a chunk moves to a new RoI.
// Backward: RoIs of one image scatter into the same grad planes, so the parallel unit is
// an (image, channel) plane; each plane visits only its own image's RoIs, which makes the
// accumulation race-free without atomics.
// Accumulation is in at::opmath_type<T> (float for Half/BFloat16, else T).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/cpu/roi_align_3d_common.h"
#include "ops/roi_align_3d_checks.h"

namespace lesion_detector {
namespace ops {

namespace {

using detail::AxisWeights;
using detail::RoiSampling3d;

template <typename T>
void roi_align_3d_forward_kernel_impl(
    const T* input,
    const T* rois,
    int64_t n_rois,
    int64_t channels,
    const int64_t extent[3],
    const int64_t pooled[3],
    double spatial_scale,
    int64_t sampling_ratio,
    bool aligned,
    T* output) {
  using acc_t = at::opmath_type<T>;
  const int64_t height = extent[1], width = extent[2];
  const int64_t plane_size = extent[0] * height * width;
  const int64_t PD = pooled[0], PH = pooled[1], PW = pooled[2];
  const int64_t out_block = PD * PH * PW;
  const int64_t grain = detail::grain_for(
      n_rois * channels,
      8.0 * static_cast<double>(channels) *
          detail::total_samples(rois, n_rois, spatial_scale, pooled, sampling_ratio, aligned));

  at::parallel_for(0, n_rois * channels, grain, [&](int64_t begin, int64_t end) {
    RoiSampling3d<acc_t> s;
    std::vector<acc_t> t1, t2;  // x- then y-contracted window, reused across iterations
    int64_t cached_roi = -1;
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t k = idx / channels;
      const int64_t c = idx % channels;
      if (k != cached_roi) {
        s.compute(rois + k * 7, static_cast<acc_t>(spatial_scale), pooled, extent, sampling_ratio, aligned);
        cached_roi = k;
      }
      T* out = output + idx * out_block;
      const AxisWeights<acc_t>& Z = s.weights[0];
      const AxisWeights<acc_t>& Y = s.weights[1];
      const AxisWeights<acc_t>& X = s.weights[2];
      if (Z.empty() || Y.empty() || X.empty()) {
        std::fill(out, out + out_block, static_cast<T>(0));
        continue;
      }
      const T* plane = input + (s.batch * channels + c) * plane_size;
      const int64_t nz = Z.hi - Z.lo, ny = Y.hi - Y.lo;
      t1.resize(static_cast<size_t>(nz * ny * PW));
      t2.resize(static_cast<size_t>(nz * PH * PW));
      // t1[z, y, pw] = sum_x Wx[pw, x] * input[z, y, x]
      for (int64_t zi = 0; zi < nz; ++zi) {
        for (int64_t yi = 0; yi < ny; ++yi) {
          const T* row = plane + ((Z.lo + zi) * height + (Y.lo + yi)) * width;
          acc_t* dst = t1.data() + (zi * ny + yi) * PW;
          for (int64_t pw = 0; pw < PW; ++pw) {
            const acc_t* w = X.w.data() + X.offset[pw];
            const T* src = row + X.first[pw];
            acc_t sum = acc_t(0);
            for (int64_t j = 0; j < X.length[pw]; ++j) sum += w[j] * static_cast<acc_t>(src[j]);
            dst[pw] = sum;
          }
        }
      }
      // t2[z, ph, pw] = sum_y Wy[ph, y] * t1[z, y, pw]
      std::fill(t2.begin(), t2.end(), acc_t(0));
      for (int64_t zi = 0; zi < nz; ++zi) {
        for (int64_t ph = 0; ph < PH; ++ph) {
          acc_t* dst = t2.data() + (zi * PH + ph) * PW;
          const acc_t* w = Y.w.data() + Y.offset[ph];
          for (int64_t j = 0; j < Y.length[ph]; ++j) {
            const acc_t* src = t1.data() + (zi * ny + (Y.first[ph] + j - Y.lo)) * PW;
            for (int64_t pw = 0; pw < PW; ++pw) dst[pw] += w[j] * src[pw];
          }
        }
      }
      // out[pd, ph, pw] = sum_z Wz[pd, z] * t2[z, ph, pw] / count
      for (int64_t pd = 0; pd < PD; ++pd) {
        const acc_t* w = Z.w.data() + Z.offset[pd];
        for (int64_t q = 0; q < PH * PW; ++q) {
          acc_t sum = acc_t(0);
          for (int64_t j = 0; j < Z.length[pd]; ++j) sum += w[j] * t2[(Z.first[pd] + j - Z.lo) * PH * PW + q];
          out[pd * PH * PW + q] = static_cast<T>(sum * s.inv_count);
        }
      }
    }
  });
}

template <typename T, typename acc_t>
void roi_align_3d_backward_kernel_impl(
    const T* grad,
    const int64_t grad_strides[5],
    const T* rois,
    const std::vector<std::vector<int64_t>>& rois_of_image,
    int64_t channels,
    const int64_t extent[3],
    const int64_t pooled[3],
    double spatial_scale,
    int64_t sampling_ratio,
    bool aligned,
    acc_t* grad_input) {
  const int64_t height = extent[1], width = extent[2];
  const int64_t plane_size = extent[0] * height * width;
  const int64_t PD = pooled[0], PH = pooled[1], PW = pooled[2];
  const int64_t n_planes = static_cast<int64_t>(rois_of_image.size()) * channels;
  int64_t n_rois = 0;
  for (const auto& image_rois : rois_of_image) n_rois += static_cast<int64_t>(image_rois.size());
  const int64_t grain = detail::grain_for(
      n_planes,
      8.0 * static_cast<double>(channels) *
          detail::total_samples(rois, n_rois, spatial_scale, pooled, sampling_ratio, aligned));

  at::parallel_for(0, n_planes, grain, [&](int64_t begin, int64_t end) {
    RoiSampling3d<acc_t> s;
    std::vector<acc_t> g, t2, t1;
    g.resize(static_cast<size_t>(PD * PH * PW));
    for (int64_t plane_idx = begin; plane_idx < end; ++plane_idx) {
      const int64_t n = plane_idx / channels;
      const int64_t c = plane_idx % channels;
      acc_t* gplane = grad_input + plane_idx * plane_size;
      for (const int64_t k : rois_of_image[n]) {
        // The weights are rebuilt per channel: O(window + samples), small next to the
        // O(window volume) contractions below.
        s.compute(rois + k * 7, static_cast<acc_t>(spatial_scale), pooled, extent, sampling_ratio, aligned);
        const AxisWeights<acc_t>& Z = s.weights[0];
        const AxisWeights<acc_t>& Y = s.weights[1];
        const AxisWeights<acc_t>& X = s.weights[2];
        if (Z.empty() || Y.empty() || X.empty()) continue;
        const T* g_block = grad + k * grad_strides[0] + c * grad_strides[1];
        for (int64_t pd = 0; pd < PD; ++pd)
          for (int64_t ph = 0; ph < PH; ++ph)
            for (int64_t pw = 0; pw < PW; ++pw)
              g[(pd * PH + ph) * PW + pw] = static_cast<acc_t>(g_block[pd * grad_strides[2] + ph * grad_strides[3] + pw * grad_strides[4]]) * s.inv_count;
        const int64_t nz = Z.hi - Z.lo, ny = Y.hi - Y.lo;
        // Adjoint of the forward's three contractions, in reverse order.
        t2.assign(static_cast<size_t>(nz * PH * PW), acc_t(0));
        for (int64_t pd = 0; pd < PD; ++pd) {
          const acc_t* w = Z.w.data() + Z.offset[pd];
          for (int64_t j = 0; j < Z.length[pd]; ++j) {
            acc_t* dst = t2.data() + (Z.first[pd] + j - Z.lo) * PH * PW;
            const acc_t* src = g.data() + pd * PH * PW;
            for (int64_t q = 0; q < PH * PW; ++q) dst[q] += w[j] * src[q];
          }
        }
        t1.assign(static_cast<size_t>(nz * ny * PW), acc_t(0));
        for (int64_t zi = 0; zi < nz; ++zi) {
          for (int64_t ph = 0; ph < PH; ++ph) {
            const acc_t* w = Y.w.data() + Y.offset[ph];
            const acc_t* src = t2.data() + (zi * PH + ph) * PW;
            for (int64_t j = 0; j < Y.length[ph]; ++j) {
              acc_t* dst = t1.data() + (zi * ny + (Y.first[ph] + j - Y.lo)) * PW;
              for (int64_t pw = 0; pw < PW; ++pw) dst[pw] += w[j] * src[pw];
            }
          }
        }
        for (int64_t zi = 0; zi < nz; ++zi) {
          for (int64_t yi = 0; yi < ny; ++yi) {
            acc_t* row = gplane + ((Z.lo + zi) * height + (Y.lo + yi)) * width;
            const acc_t* src = t1.data() + (zi * ny + yi) * PW;
            for (int64_t pw = 0; pw < PW; ++pw) {
              const acc_t* w = X.w.data() + X.offset[pw];
              acc_t* dst = row + X.first[pw];
              const acc_t gv = src[pw];
              for (int64_t j = 0; j < X.length[pw]; ++j) dst[j] += w[j] * gv;
            }
          }
        }
      }
    }
  });
}

at::Tensor roi_align_3d_forward_kernel(
    const at::Tensor& input,
    const at::Tensor& rois,
    double spatial_scale,
    int64_t pooled_depth,
    int64_t pooled_height,
    int64_t pooled_width,
    int64_t sampling_ratio,
    bool aligned) {
  TORCH_CHECK(input.device().is_cpu(), "roi_align_3d: input must be a CPU tensor");
  TORCH_CHECK(rois.device().is_cpu(), "roi_align_3d: rois must be a CPU tensor");
  detail::check_forward_args(input, rois, pooled_depth, pooled_height, pooled_width);

  const int64_t n_rois = rois.size(0);
  const int64_t channels = input.size(1);
  // Every element is written below, so no zero fill.
  at::Tensor output = at::empty(
      {n_rois, channels, pooled_depth, pooled_height, pooled_width}, input.options());
  if (output.numel() == 0) {
    return output;
  }
  const at::Tensor input_c = input.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  const int64_t extent[3] = {input.size(2), input.size(3), input.size(4)};
  const int64_t pooled[3] = {pooled_depth, pooled_height, pooled_width};

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, input.scalar_type(), "roi_align_3d_forward_cpu", [&] {
        detail::check_batch_indices(rois_c.data_ptr<scalar_t>(), n_rois, input.size(0));
        roi_align_3d_forward_kernel_impl<scalar_t>(
            input_c.data_ptr<scalar_t>(), rois_c.data_ptr<scalar_t>(), n_rois, channels, extent,
            pooled, spatial_scale, sampling_ratio, aligned, output.data_ptr<scalar_t>());
      });
  return output;
}

at::Tensor roi_align_3d_backward_kernel(
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
  TORCH_CHECK(grad.device().is_cpu(), "roi_align_3d backward: grad must be a CPU tensor");
  TORCH_CHECK(rois.device().is_cpu(), "roi_align_3d backward: rois must be a CPU tensor");
  detail::check_backward_args(
      grad, rois, pooled_depth, pooled_height, pooled_width, batch_size, channels);

  const at::ScalarType dtype = grad.scalar_type();
  const at::ScalarType acc_dtype = at::toOpMathType(dtype);
  // Reduced-precision grads accumulate in float, then round once.
  at::Tensor grad_input = at::zeros(
      {batch_size, channels, depth, height, width}, grad.options().dtype(acc_dtype));
  const int64_t n_rois = rois.size(0);
  if (n_rois == 0 || grad_input.numel() == 0) {
    return grad_input.to(dtype);
  }
  const at::Tensor rois_c = rois.contiguous();
  const int64_t extent[3] = {depth, height, width};
  const int64_t pooled[3] = {pooled_depth, pooled_height, pooled_width};
  const int64_t grad_strides[5] = {
      grad.stride(0), grad.stride(1), grad.stride(2), grad.stride(3), grad.stride(4)};

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, dtype, "roi_align_3d_backward_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const scalar_t* rois_ptr = rois_c.data_ptr<scalar_t>();
        detail::check_batch_indices(rois_ptr, n_rois, batch_size);
        std::vector<std::vector<int64_t>> rois_of_image(static_cast<size_t>(batch_size));
        for (int64_t k = 0; k < n_rois; ++k) {
          rois_of_image[static_cast<size_t>(rois_ptr[k * 7])].push_back(k);
        }
        roi_align_3d_backward_kernel_impl<scalar_t, acc_t>(
            grad.data_ptr<scalar_t>(), grad_strides, rois_ptr, rois_of_image, channels, extent,
            pooled, spatial_scale, sampling_ratio, aligned, grad_input.data_ptr<acc_t>());
      });
  return grad_input.scalar_type() == dtype ? grad_input : grad_input.to(dtype);
}

} // namespace

TORCH_LIBRARY_IMPL(lesion_detector, CPU, m) {
  m.impl(TORCH_SELECTIVE_NAME("lesion_detector::roi_align_3d"), TORCH_FN(roi_align_3d_forward_kernel));
  m.impl(
      TORCH_SELECTIVE_NAME("lesion_detector::_roi_align_3d_backward"),
      TORCH_FN(roi_align_3d_backward_kernel));
}

} // namespace ops
} // namespace lesion_detector
