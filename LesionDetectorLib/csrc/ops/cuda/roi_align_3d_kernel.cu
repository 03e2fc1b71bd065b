// CUDA kernels of lesion_detector::roi_align_3d and its backward.
//
// Same algorithm and boundary rule as cpu/roi_align_3d_kernel.cpp: one thread per output
// element (forward) or per output-gradient element (backward, scattering with atomics).
// Coordinates and sums are in at::opmath_type<T> (float for Half/BFloat16); the backward
// accumulates into an opmath buffer so reduced-precision grads round once, at the end.
// A RoI whose batch index is out of range yields zeros here (checking it on the host
// would cost a device sync); the Python wrapper rejects such RoIs before launch.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "ops/roi_align_3d_checks.h"

namespace lesion_detector {
namespace ops {

namespace {

constexpr int kThreadsPerBlock = 256;
// Grid-stride loops cover any size; this caps the grid at a size that fills any GPU.
constexpr int64_t kMaxBlocks = 65535;

inline int64_t n_blocks(int64_t n) {
  return std::min<int64_t>((n + kThreadsPerBlock - 1) / kThreadsPerBlock, kMaxBlocks);
}

// Sampling geometry of one RoI along z, y, x (index 0, 1, 2).
template <typename acc_t>
struct RoiGeometry3d {
  int64_t batch;
  acc_t start[3];
  acc_t bin[3];
  int64_t grid[3];
  acc_t inv_count;
};

template <typename T, typename acc_t>
__device__ __forceinline__ RoiGeometry3d<acc_t> roi_geometry(
    const T* roi,
    acc_t spatial_scale,
    const int64_t pooled[3],
    int64_t sampling_ratio,
    bool aligned) {
  RoiGeometry3d<acc_t> g;
  g.batch = static_cast<int64_t>(static_cast<acc_t>(roi[0]));
  const acc_t offset = aligned ? acc_t(0.5) : acc_t(0);
  int64_t count = 1;
#pragma unroll
  for (int axis = 0; axis < 3; ++axis) {
    const acc_t start = static_cast<acc_t>(roi[1 + axis]) * spatial_scale - offset;
    const acc_t end = static_cast<acc_t>(roi[4 + axis]) * spatial_scale - offset;
    acc_t size = end - start;
    if (!aligned) {
      size = size > acc_t(1) ? size : acc_t(1);
    }
    g.start[axis] = start;
    g.bin[axis] = size / static_cast<acc_t>(pooled[axis]);
    int64_t grid = sampling_ratio;
    if (sampling_ratio <= 0) {
      grid = static_cast<int64_t>(ceil(size / static_cast<acc_t>(pooled[axis])));
      grid = grid > 0 ? grid : 0;
    }
    g.grid[axis] = grid;
    count *= grid;
  }
  g.inv_count = acc_t(1) / static_cast<acc_t>(count > 1 ? count : 1);
  return g;
}

// 1-D linear taps of the sample at `pos` on an axis of `size` voxels; false (zero
// contribution) outside [-1, size], clamped to the edge voxel otherwise.
template <typename acc_t>
__device__ __forceinline__ bool axis_tap(
    acc_t pos, int64_t size, int64_t& lo, int64_t& hi, acc_t& w_lo, acc_t& w_hi) {
  if (pos < acc_t(-1) || pos > static_cast<acc_t>(size)) {
    return false;
  }
  if (pos <= acc_t(0)) {
    pos = acc_t(0);
  }
  lo = static_cast<int64_t>(pos);
  if (lo >= size - 1) {
    lo = hi = size - 1;
    pos = static_cast<acc_t>(lo);
  } else {
    hi = lo + 1;
  }
  w_hi = pos - static_cast<acc_t>(lo);
  w_lo = acc_t(1) - w_hi;
  return true;
}

template <typename acc_t>
__device__ __forceinline__ acc_t sample_position(const RoiGeometry3d<acc_t>& g, int axis, int64_t p, int64_t i) {
  return g.start[axis] + static_cast<acc_t>(p) * g.bin[axis] +
      (static_cast<acc_t>(i) + acc_t(0.5)) * g.bin[axis] / static_cast<acc_t>(g.grid[axis]);
}

template <typename T>
__global__ void roi_align_3d_forward_kernel_impl(
    int64_t n_outputs,
    const T* __restrict__ input,
    const T* __restrict__ rois,
    at::opmath_type<T> spatial_scale,
    int64_t batch_size,
    int64_t channels,
    int64_t depth,
    int64_t height,
    int64_t width,
    int64_t pooled_depth,
    int64_t pooled_height,
    int64_t pooled_width,
    int64_t sampling_ratio,
    bool aligned,
    T* __restrict__ output) {
  using acc_t = at::opmath_type<T>;
  const int64_t pooled[3] = {pooled_depth, pooled_height, pooled_width};
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < n_outputs;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t pw = index % pooled_width;
    const int64_t ph = (index / pooled_width) % pooled_height;
    const int64_t pd = (index / (pooled_width * pooled_height)) % pooled_depth;
    const int64_t c = (index / (pooled_width * pooled_height * pooled_depth)) % channels;
    const int64_t k = index / (pooled_width * pooled_height * pooled_depth * channels);

    const RoiGeometry3d<acc_t> g = roi_geometry<T, acc_t>(rois + k * 7, spatial_scale, pooled, sampling_ratio, aligned);
    if (g.batch < 0 || g.batch >= batch_size) {
      output[index] = static_cast<T>(0);
      continue;
    }
    const T* plane = input + (g.batch * channels + c) * depth * height * width;
    acc_t sum = acc_t(0);
    for (int64_t iz = 0; iz < g.grid[0]; ++iz) {
      int64_t z_lo, z_hi;
      acc_t wz_lo, wz_hi;
      if (!axis_tap(sample_position(g, 0, pd, iz), depth, z_lo, z_hi, wz_lo, wz_hi)) continue;
      for (int64_t iy = 0; iy < g.grid[1]; ++iy) {
        int64_t y_lo, y_hi;
        acc_t wy_lo, wy_hi;
        if (!axis_tap(sample_position(g, 1, ph, iy), height, y_lo, y_hi, wy_lo, wy_hi)) continue;
        const T* r00 = plane + (z_lo * height + y_lo) * width;
        const T* r01 = plane + (z_lo * height + y_hi) * width;
        const T* r10 = plane + (z_hi * height + y_lo) * width;
        const T* r11 = plane + (z_hi * height + y_hi) * width;
        const acc_t w00 = wz_lo * wy_lo, w01 = wz_lo * wy_hi;
        const acc_t w10 = wz_hi * wy_lo, w11 = wz_hi * wy_hi;
        for (int64_t ix = 0; ix < g.grid[2]; ++ix) {
          int64_t x_lo, x_hi;
          acc_t wx_lo, wx_hi;
          if (!axis_tap(sample_position(g, 2, pw, ix), width, x_lo, x_hi, wx_lo, wx_hi)) continue;
          sum += wx_lo *
                  (w00 * static_cast<acc_t>(r00[x_lo]) + w01 * static_cast<acc_t>(r01[x_lo]) +
                   w10 * static_cast<acc_t>(r10[x_lo]) + w11 * static_cast<acc_t>(r11[x_lo])) +
              wx_hi *
                  (w00 * static_cast<acc_t>(r00[x_hi]) + w01 * static_cast<acc_t>(r01[x_hi]) +
                   w10 * static_cast<acc_t>(r10[x_hi]) + w11 * static_cast<acc_t>(r11[x_hi]));
        }
      }
    }
    output[index] = static_cast<T>(sum * g.inv_count);
  }
}

template <typename T>
__global__ void roi_align_3d_backward_kernel_impl(
    int64_t n_grads,
    const T* __restrict__ grad,
    int64_t grad_stride_k,
    int64_t grad_stride_c,
    int64_t grad_stride_d,
    int64_t grad_stride_h,
    int64_t grad_stride_w,
    const T* __restrict__ rois,
    at::opmath_type<T> spatial_scale,
    int64_t batch_size,
    int64_t channels,
    int64_t depth,
    int64_t height,
    int64_t width,
    int64_t pooled_depth,
    int64_t pooled_height,
    int64_t pooled_width,
    int64_t sampling_ratio,
    bool aligned,
    at::opmath_type<T>* __restrict__ grad_input) {
  using acc_t = at::opmath_type<T>;
  const int64_t pooled[3] = {pooled_depth, pooled_height, pooled_width};
  for (int64_t index = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; index < n_grads;
       index += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t pw = index % pooled_width;
    const int64_t ph = (index / pooled_width) % pooled_height;
    const int64_t pd = (index / (pooled_width * pooled_height)) % pooled_depth;
    const int64_t c = (index / (pooled_width * pooled_height * pooled_depth)) % channels;
    const int64_t k = index / (pooled_width * pooled_height * pooled_depth * channels);

    const RoiGeometry3d<acc_t> g = roi_geometry<T, acc_t>(rois + k * 7, spatial_scale, pooled, sampling_ratio, aligned);
    if (g.batch < 0 || g.batch >= batch_size) continue;
    const acc_t gval = static_cast<acc_t>(grad[k * grad_stride_k + c * grad_stride_c + pd * grad_stride_d +
                                                ph * grad_stride_h + pw * grad_stride_w]) *
        g.inv_count;
    if (gval == acc_t(0)) continue;
    acc_t* plane = grad_input + (g.batch * channels + c) * depth * height * width;
    for (int64_t iz = 0; iz < g.grid[0]; ++iz) {
      int64_t z_lo, z_hi;
      acc_t wz_lo, wz_hi;
      if (!axis_tap(sample_position(g, 0, pd, iz), depth, z_lo, z_hi, wz_lo, wz_hi)) continue;
      for (int64_t iy = 0; iy < g.grid[1]; ++iy) {
        int64_t y_lo, y_hi;
        acc_t wy_lo, wy_hi;
        if (!axis_tap(sample_position(g, 1, ph, iy), height, y_lo, y_hi, wy_lo, wy_hi)) continue;
        acc_t* r00 = plane + (z_lo * height + y_lo) * width;
        acc_t* r01 = plane + (z_lo * height + y_hi) * width;
        acc_t* r10 = plane + (z_hi * height + y_lo) * width;
        acc_t* r11 = plane + (z_hi * height + y_hi) * width;
        const acc_t g00 = gval * wz_lo * wy_lo, g01 = gval * wz_lo * wy_hi;
        const acc_t g10 = gval * wz_hi * wy_lo, g11 = gval * wz_hi * wy_hi;
        for (int64_t ix = 0; ix < g.grid[2]; ++ix) {
          int64_t x_lo, x_hi;
          acc_t wx_lo, wx_hi;
          if (!axis_tap(sample_position(g, 2, pw, ix), width, x_lo, x_hi, wx_lo, wx_hi)) continue;
          gpuAtomicAdd(r00 + x_lo, g00 * wx_lo);
          gpuAtomicAdd(r00 + x_hi, g00 * wx_hi);
          gpuAtomicAdd(r01 + x_lo, g01 * wx_lo);
          gpuAtomicAdd(r01 + x_hi, g01 * wx_hi);
          gpuAtomicAdd(r10 + x_lo, g10 * wx_lo);
          gpuAtomicAdd(r10 + x_hi, g10 * wx_hi);
          gpuAtomicAdd(r11 + x_lo, g11 * wx_lo);
          gpuAtomicAdd(r11 + x_hi, g11 * wx_hi);
        }
      }
    }
  }
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
  TORCH_CHECK(input.is_cuda(), "roi_align_3d: input must be a CUDA tensor");
  TORCH_CHECK(rois.is_cuda(), "roi_align_3d: rois must be a CUDA tensor");
  detail::check_forward_args(input, rois, pooled_depth, pooled_height, pooled_width);

  c10::cuda::CUDAGuard device_guard(input.device());
  const int64_t n_rois = rois.size(0);
  const int64_t channels = input.size(1);
  at::Tensor output = at::empty(
      {n_rois, channels, pooled_depth, pooled_height, pooled_width}, input.options());
  const int64_t n_outputs = output.numel();
  if (n_outputs == 0) {
    return output;
  }
  const at::Tensor input_c = input.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, input.scalar_type(), "roi_align_3d_forward_cuda", [&] {
        roi_align_3d_forward_kernel_impl<scalar_t><<<n_blocks(n_outputs), kThreadsPerBlock, 0, stream>>>(
            n_outputs, input_c.data_ptr<scalar_t>(), rois_c.data_ptr<scalar_t>(),
            static_cast<at::opmath_type<scalar_t>>(spatial_scale), input.size(0), channels,
            input.size(2), input.size(3), input.size(4), pooled_depth, pooled_height, pooled_width,
            sampling_ratio, aligned, output.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  TORCH_CHECK(grad.is_cuda(), "roi_align_3d backward: grad must be a CUDA tensor");
  TORCH_CHECK(rois.is_cuda(), "roi_align_3d backward: rois must be a CUDA tensor");
  detail::check_backward_args(
      grad, rois, pooled_depth, pooled_height, pooled_width, batch_size, channels);

  c10::cuda::CUDAGuard device_guard(grad.device());
  const at::ScalarType dtype = grad.scalar_type();
  // Float atomics are native and exact enough; Half/BFloat16 grads round once at the end.
  at::Tensor grad_input = at::zeros(
      {batch_size, channels, depth, height, width}, grad.options().dtype(at::toOpMathType(dtype)));
  const int64_t n_grads = grad.numel();
  if (n_grads == 0 || grad_input.numel() == 0) {
    return grad_input.to(dtype);
  }
  const at::Tensor rois_c = rois.contiguous();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, dtype, "roi_align_3d_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        roi_align_3d_backward_kernel_impl<scalar_t><<<n_blocks(n_grads), kThreadsPerBlock, 0, stream>>>(
            n_grads, grad.data_ptr<scalar_t>(), grad.stride(0), grad.stride(1), grad.stride(2),
            grad.stride(3), grad.stride(4), rois_c.data_ptr<scalar_t>(),
            static_cast<acc_t>(spatial_scale), batch_size, channels, depth, height, width,
            pooled_depth, pooled_height, pooled_width, sampling_ratio, aligned,
            grad_input.data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_input.scalar_type() == dtype ? grad_input : grad_input.to(dtype);
}

} // namespace

TORCH_LIBRARY_IMPL(lesion_detector, CUDA, m) {
  m.impl(TORCH_SELECTIVE_NAME("lesion_detector::roi_align_3d"), TORCH_FN(roi_align_3d_forward_kernel));
  m.impl(
      TORCH_SELECTIVE_NAME("lesion_detector::_roi_align_3d_backward"),
      TORCH_FN(roi_align_3d_backward_kernel));
}

} // namespace ops
} // namespace lesion_detector
