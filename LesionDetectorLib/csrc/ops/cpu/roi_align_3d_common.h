// CPU helpers of roi_align_3d: the per-RoI sampling geometry, factored per axis.
//
// Sample positions form a tensor-product grid and torchvision's boundary rule
// (a sample outside [-1, size] contributes zero, otherwise it is clamped to the edge)
// is a product of per-axis conditions, so each trilinear weight is the product of three
// 1-D weights. Tabulating the 1-D taps once per RoI keeps the per-channel loops to
// loads and multiply-adds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace lesion_detector {
namespace ops {
namespace detail {

// Linear interpolation taps of one sample along one axis: value = w_lo * v[lo] + w_hi * v[hi].
// A sample outside the volume has valid == false and zero weights.
template <typename acc_t>
struct AxisTap {
  int64_t lo;
  int64_t hi;
  acc_t w_lo;
  acc_t w_hi;
  bool valid;
};

template <typename acc_t>
inline AxisTap<acc_t> axis_tap(acc_t pos, int64_t size) {
  if (pos < acc_t(-1) || pos > static_cast<acc_t>(size)) {
    return {0, 0, acc_t(0), acc_t(0), false};
  }
  if (pos <= acc_t(0)) {
    pos = acc_t(0);
  }
  int64_t lo = static_cast<int64_t>(pos);
  int64_t hi;
  if (lo >= size - 1) {
    lo = hi = size - 1;
    pos = static_cast<acc_t>(lo);
  } else {
    hi = lo + 1;
  }
  const acc_t l = pos - static_cast<acc_t>(lo);
  return {lo, hi, acc_t(1) - l, l, true};
}

// The taps of one axis merged per bin: bin p puts weight w[offset[p] + j] on voxel
// first[p] + j, 0 <= j < length[p] (length 0: no sample of the bin is inside the volume).
// [lo, hi) is the union window of all bins' supports. Summing the samples' weights per voxel
// turns the O(samples * 8) trilinear gather into three 1-D contractions over the window.
template <typename acc_t>
struct AxisWeights {
  std::vector<int64_t> first, length, offset;
  std::vector<acc_t> w;
  int64_t lo = 0, hi = 0;

  void build(const AxisTap<acc_t>* taps, int64_t pooled, int64_t grid) {
    first.assign(static_cast<size_t>(pooled), 0);
    length.assign(static_cast<size_t>(pooled), 0);
    offset.assign(static_cast<size_t>(pooled), 0);
    w.clear();
    lo = std::numeric_limits<int64_t>::max();
    hi = 0;
    for (int64_t p = 0; p < pooled; ++p) {
      int64_t v0 = std::numeric_limits<int64_t>::max(), v1 = -1;
      for (int64_t i = 0; i < grid; ++i) {
        const AxisTap<acc_t>& t = taps[p * grid + i];
        if (!t.valid) continue;
        v0 = std::min(v0, t.lo);
        v1 = std::max(v1, t.hi);
      }
      offset[p] = static_cast<int64_t>(w.size());
      if (v1 < 0) continue;
      first[p] = v0;
      length[p] = v1 - v0 + 1;
      w.resize(w.size() + static_cast<size_t>(length[p]), acc_t(0));
      acc_t* wp = w.data() + offset[p];
      for (int64_t i = 0; i < grid; ++i) {
        const AxisTap<acc_t>& t = taps[p * grid + i];
        if (!t.valid) continue;
        wp[t.lo - v0] += t.w_lo;
        wp[t.hi - v0] += t.w_hi;
      }
      lo = std::min(lo, v0);
      hi = std::max(hi, v1 + 1);
    }
    if (hi == 0) lo = 0;  // no bin has a sample inside: empty window
  }

  bool empty() const { return hi <= lo; }
};

// Sampling geometry of one RoI: per axis (0 = z, 1 = y, 2 = x) the taps of its
// `pooled * grid` samples, stored bin-major: taps[axis][p * grid[axis] + i].
template <typename acc_t>
struct RoiSampling3d {
  int64_t batch = -1;
  int64_t grid[3] = {0, 0, 0};
  acc_t inv_count = acc_t(1);
  std::vector<AxisTap<acc_t>> taps[3];
  AxisWeights<acc_t> weights[3];

  // roi: (batch_index, z1, y1, x1, z2, y2, x2); pooled / extent: (d, h, w) / (D, H, W).
  template <typename T>
  void compute(
      const T* roi,
      acc_t spatial_scale,
      const int64_t pooled[3],
      const int64_t extent[3],
      int64_t sampling_ratio,
      bool aligned) {
    batch = static_cast<int64_t>(roi[0]);
    // aligned: pixel centres at integer coordinates, so shift the box by half a voxel.
    const acc_t offset = aligned ? acc_t(0.5) : acc_t(0);
    int64_t count = 1;
    for (int axis = 0; axis < 3; ++axis) {
      const acc_t start = static_cast<acc_t>(roi[1 + axis]) * spatial_scale - offset;
      const acc_t end = static_cast<acc_t>(roi[4 + axis]) * spatial_scale - offset;
      acc_t size = end - start;
      if (!aligned) {
        // Legacy behaviour: force malformed boxes to be 1 voxel wide.
        size = std::max(size, acc_t(1));
      }
      const acc_t bin = size / static_cast<acc_t>(pooled[axis]);
      const int64_t g = sampling_ratio > 0
          ? sampling_ratio
          : std::max<int64_t>(static_cast<int64_t>(std::ceil(size / static_cast<acc_t>(pooled[axis]))), 0);
      grid[axis] = g;
      count *= g;
      std::vector<AxisTap<acc_t>>& t = taps[axis];
      t.resize(static_cast<size_t>(pooled[axis] * g));
      for (int64_t p = 0; p < pooled[axis]; ++p) {
        for (int64_t i = 0; i < g; ++i) {
          const acc_t pos = start + static_cast<acc_t>(p) * bin +
              static_cast<acc_t>(i + 0.5) * bin / static_cast<acc_t>(g);
          t[static_cast<size_t>(p * g + i)] = axis_tap<acc_t>(pos, extent[axis]);
        }
      }
      weights[axis].build(t.data(), pooled[axis], g);
    }
    inv_count = acc_t(1) / static_cast<acc_t>(std::max<int64_t>(count, 1));
  }
};

// Number of trilinear samples (8 loads each) all RoIs take per channel; used to size the
// parallel grain so that small problems stay on one thread (a parallel region costs
// microseconds, far more on a loaded machine) and large ones split evenly.
template <typename T>
inline double total_samples(
    const T* rois,
    int64_t n_rois,
    double spatial_scale,
    const int64_t pooled[3],
    int64_t sampling_ratio,
    bool aligned) {
  double total = 0;
  for (int64_t k = 0; k < n_rois; ++k) {
    double samples = 1;
    for (int axis = 0; axis < 3; ++axis) {
      // The aligned half-voxel offset shifts both corners, so it does not change the size.
      double size = (static_cast<double>(rois[k * 7 + 4 + axis]) - static_cast<double>(rois[k * 7 + 1 + axis])) *
          spatial_scale;
      if (!aligned) size = std::max(size, 1.0);
      const double grid = sampling_ratio > 0 ? static_cast<double>(sampling_ratio)
                                             : std::max(std::ceil(size / static_cast<double>(pooled[axis])), 0.0);
      samples *= grid * static_cast<double>(pooled[axis]);
    }
    total += samples;
  }
  return total;
}

// Grain (items per task) for `n_items` items sharing `work` units, aiming at ~256k units a task.
inline int64_t grain_for(int64_t n_items, double work) {
  // ~0.1-0.3 ms of work per task: a parallel region costs ~10 us on an idle machine and
  // milliseconds on an oversubscribed one, so small problems must not pay for it.
  constexpr double kWorkPerTask = 1 << 18;
  if (n_items <= 0 || work <= 0) return 1;
  const double per_item = work / static_cast<double>(n_items);
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(kWorkPerTask / std::max(per_item, 1.0))));
}

// Throws a clear error (before any parallel work starts) when a RoI's batch index does
// not name an image of the input.
template <typename T>
inline void check_batch_indices(const T* rois, int64_t n_rois, int64_t batch_size) {
  for (int64_t k = 0; k < n_rois; ++k) {
    const double b = static_cast<double>(rois[k * 7]);
    TORCH_CHECK(
        b >= 0 && b < static_cast<double>(batch_size),
        "roi_align_3d: rois[", k, ", 0] = ", b, " is not a batch index of an input with ",
        batch_size, " images");
  }
}

} // namespace detail
} // namespace ops
} // namespace lesion_detector
