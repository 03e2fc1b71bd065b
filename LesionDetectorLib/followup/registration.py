"""Register a prior CT's lungs onto the current CT's (SimpleITK), and say how well it worked.

Method (all on a coarse ~4 mm grid, so a full-size pair takes seconds):

1. lung masks of both scans (:func:`LesionDetectorLib.preprocess.lung_mask_coarse`, ~2 mm);
2. initial alignment of the two masks' centres of mass (``CenteredTransformInitializer``,
   moments), which absorbs any difference of field of view and table position;
3. **rigid** (``Euler3DTransform``) then **affine** registration of the masks' signed distance
   maps (mean squares, clamped to +-30 mm): the lung outline is the same in any scanner,
   slice thickness or reconstruction kernel, while the affine part takes up breath-hold
   differences (the lungs' size along each axis);
4. an **affine** refinement on intensities (Mattes mutual information, HU clipped to
   [-1000, 200], inside the current lungs + 10 mm), which brings in vessels and fissures;
5. optionally a **B-spline** stage (``bspline=True``, ~60 mm control grid) on intensities for
   non-rigid breathing differences.

Each stage is multi-resolution (shrink 4-2-1 or 2-1), its optimizer's steps bounded in mm
(:data:`MAX_STEP_MM`), and it is kept only when it lowers its own metric (evaluated on all voxels)
below that of the transform it started from; otherwise that transform goes on to the next stage
(``quality["rejected_stages"]``). The result maps points both ways; ITK's
transform maps *current* (fixed) points to *prior* (moving) points, so prior -> current uses
its inverse (exact for the linear stages, fixed-point iteration with the B-spline).

Quality (``Registration.quality``, written to ``comparison.json``): distances between the
registered prior lung surface and the current lung surface, both ways, on the ~2 mm mask grid
(``surface_mean_mm``, ``surface_p95_mm``, ``surface_max_mm``), the masks' Dice overlap, the
same numbers before registration (``initial``), and the final transform's parameters. Only the
field of view both scans cover is scored, and the first and last slices of the current scan
are left out (the mask is cut there, not a real surface).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np
import SimpleITK as sitk

from ..coordinates import to_sitk
from ..preprocess import lung_mask_coarse
from ..volume import Volume

log = logging.getLogger(__name__)

GRID_MM = 4.0         # as accurate as 3 mm on the synthetic pairs (benchmarks/bench_followup.py), 4x faster
SDM_CLAMP_MM = 30.0
HU_RANGE = (-1000.0, 200.0)
METRIC_MARGIN_MM = 10.0
#: Largest move of any point in one optimizer step (mm). The regular-step optimizer's own step
#: length is in *parameter* units (the norm of the scaled gradient), so when an affine matrix entry
#: dominated the gradient, one step changed it by up to ~2: a full-size pair went from a z scale of
#: 0.96 to 0.41 in its first affine step (~90 mm at the lung apex) and never came back (71 mm
#: error at its nodules). The learning rate is therefore estimated from the physical shift of the
#: first step of each level.
MAX_STEP_MM = 2.0
#: The optimizer stops when its (relaxed) step falls below this, in the learning rate's units
#: (about 1 % of the estimated first step at the coarsest level; 0.02 stopped too early there).
MIN_STEP = 5e-4


@dataclass
class Registration:
    """``transform`` maps current LPS points to prior LPS points (ITK fixed -> moving convention)."""

    transform: sitk.Transform
    quality: Dict[str, Any] = field(default_factory=dict)
    _inverse: Optional[sitk.Transform] = field(default=None, repr=False)

    def current_to_prior(self, points_lps: np.ndarray) -> np.ndarray:
        pts = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
        return np.array([self.transform.TransformPoint(tuple(float(v) for v in p)) for p in pts]).reshape(-1, 3)

    def prior_to_current(self, points_lps: np.ndarray) -> np.ndarray:
        pts = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
        if self._inverse is None:
            try:
                self._inverse = self.transform.GetInverse()
            except RuntimeError:        # B-spline: no closed-form inverse
                self._inverse = None
        if self._inverse is not None:
            return np.array([self._inverse.TransformPoint(tuple(float(v) for v in p)) for p in pts]).reshape(-1, 3)
        return np.array([self._invert_point(p) for p in pts]).reshape(-1, 3)

    def _invert_point(self, p: np.ndarray, iterations: int = 50, tol_mm: float = 1e-3) -> np.ndarray:
        # x <- x - (T(x) - p): converges for the smooth, near-identity B-spline on top of the affine.
        x = np.array(p, dtype=np.float64)
        for _ in range(iterations):
            err = np.array(self.transform.TransformPoint(tuple(x))) - p
            x -= err
            if np.linalg.norm(err) < tol_mm:
                break
        return x


# ----------------------------------------------------------------------------- images

def _shrink(image: sitk.Image, grid_mm: float) -> sitk.Image:
    """Bin-average to ~``grid_mm`` (averaging, not point sampling, so thin slices do not alias)."""
    factors = [max(1, int(round(grid_mm / s))) for s in image.GetSpacing()]
    return sitk.BinShrink(image, factors) if max(factors) > 1 else image


def _intensity_image(volume: Volume, grid_mm: float) -> sitk.Image:
    img = sitk.Cast(to_sitk(Volume(np.asarray(volume.array, np.float32), volume.spacing, volume.origin,
                                   volume.direction)), sitk.sitkFloat32)
    img = _shrink(img, grid_mm)
    return sitk.Clamp(img, sitk.sitkFloat32, HU_RANGE[0], HU_RANGE[1])


def _mask_image(mask: Volume) -> sitk.Image:
    return sitk.Cast(to_sitk(Volume(np.asarray(mask.array, np.uint8), mask.spacing, mask.origin, mask.direction)),
                     sitk.sitkUInt8)


def _sdm(mask: sitk.Image, grid_mm: float) -> sitk.Image:
    d = sitk.SignedMaurerDistanceMap(mask, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    d = sitk.Clamp(sitk.Cast(d, sitk.sitkFloat32), sitk.sitkFloat32, -SDM_CLAMP_MM, SDM_CLAMP_MM)
    return _shrink(d, grid_mm)


def _within(sdm: sitk.Image, mm: float) -> sitk.Image:
    return sitk.Cast(sdm <= mm, sitk.sitkUInt8)


# ----------------------------------------------------------------------------- stages

def _method(shrink, smooth, iterations: int, seed: int, sampling: float) -> sitk.ImageRegistrationMethod:
    r = sitk.ImageRegistrationMethod()
    r.SetMetricSamplingStrategy(r.RANDOM)
    r.SetMetricSamplingPercentage(sampling, seed)
    r.SetInterpolator(sitk.sitkLinear)
    r.SetShrinkFactorsPerLevel(list(shrink))
    r.SetSmoothingSigmasPerLevel(list(smooth))
    r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    r.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=MIN_STEP, numberOfIterations=iterations,
                                               relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6,
                                               estimateLearningRate=r.Once,
                                               maximumStepSizeInPhysicalUnits=MAX_STEP_MM)
    r.SetOptimizerScalesFromPhysicalShift()
    return r


def _affine_from(t: sitk.Transform) -> sitk.AffineTransform:
    """An affine with the same mapping as a centred Euler or affine transform."""
    if t.GetName() == "AffineTransform":
        return sitk.AffineTransform(t)
    e = sitk.Euler3DTransform(t)
    a = sitk.AffineTransform(3)
    a.SetCenter(e.GetCenter())
    a.SetMatrix(e.GetMatrix())
    a.SetTranslation(e.GetTranslation())
    return a


def _register(fixed, moving, initial, shrink, smooth, iterations, metric: str, fixed_mask=None,
              seed: int = 1) -> sitk.Transform:
    # The distance maps are smooth, so a tenth of the voxels estimates their metric well;
    # mutual information needs more samples to fill its histogram.
    r = _method(shrink, smooth, iterations, seed, 0.25 if metric == "mattes" else 0.1)
    if metric == "mattes":
        r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    else:
        r.SetMetricAsMeanSquares()
    if fixed_mask is not None:
        r.SetMetricFixedMask(fixed_mask)
    r.SetInitialTransform(initial, inPlace=False)
    return r.Execute(fixed, moving)


def _metric_value(fixed, moving, transform, metric: str, fixed_mask=None) -> float:
    """The stage's metric at ``transform`` on every voxel of ``fixed`` (under ``fixed_mask``)."""
    r = sitk.ImageRegistrationMethod()
    if metric == "mattes":
        r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    else:
        r.SetMetricAsMeanSquares()
    r.SetMetricSamplingStrategy(r.NONE)
    r.SetInterpolator(sitk.sitkLinear)
    if fixed_mask is not None:
        r.SetMetricFixedMask(fixed_mask)
    r.SetInitialTransform(transform, inPlace=False)
    try:
        return float(r.MetricEvaluate(fixed, moving))
    except RuntimeError:          # too few voxels map into the moving image
        return float("inf")


def _stage(name: str, fixed, moving, initial, shrink, smooth, iterations, metric: str, fixed_mask, seed: int,
           rejected: list) -> sitk.Transform:
    """One stage, kept only when it lowers its metric (on all voxels) below the transform it started from;
    otherwise that transform goes on (and the stage is listed in ``rejected``)."""
    result = _single(_register(fixed, moving, initial, shrink, smooth, iterations, metric, fixed_mask, seed))
    before = _metric_value(fixed, moving, initial, metric, fixed_mask)
    after = _metric_value(fixed, moving, result, metric, fixed_mask)
    if after <= before:
        return result
    log.warning("lung registration: the %s stage raised its metric (%.4g -> %.4g); its start is kept", name,
                before, after)
    rejected.append({"stage": name, "metric_before": round(before, 5), "metric_after": round(after, 5)})
    return initial


def register_lungs(prior: Volume, current: Volume, *, grid_mm: float = GRID_MM, bspline: bool = False,
                   prior_mask: Optional[Volume] = None, current_mask: Optional[Volume] = None,
                   seed: int = 1) -> Registration:
    """Register ``prior`` onto ``current`` (see module docstring); masks are computed when not given.

    Raises :class:`~LesionDetectorLib.errors.NoLungsFoundError` when either scan has no lungs.
    """
    t0 = time.perf_counter()
    prior_mask = prior_mask if prior_mask is not None else lung_mask_coarse(prior)
    current_mask = current_mask if current_mask is not None else lung_mask_coarse(current)
    fixed_m, moving_m = _mask_image(current_mask), _mask_image(prior_mask)
    fixed_sdm, moving_sdm = _sdm(fixed_m, grid_mm), _sdm(moving_m, grid_mm)
    t_masks = time.perf_counter()

    init = sitk.CenteredTransformInitializer(sitk.Cast(fixed_m, sitk.sitkFloat32), sitk.Cast(moving_m, sitk.sitkFloat32),
                                             sitk.Euler3DTransform(),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    shape_mask = _within(fixed_sdm, SDM_CLAMP_MM - 2.0)
    rejected: list = []
    rigid = _stage("rigid", fixed_sdm, moving_sdm, init, (4, 2, 1), (6.0, 3.0, 0.0), 100, "meansquares", shape_mask,
                   seed, rejected)
    affine = _stage("affine (lung shape)", fixed_sdm, moving_sdm, _affine_from(rigid), (2, 1), (3.0, 0.0), 100,
                    "meansquares", shape_mask, seed, rejected)
    fixed_i, moving_i = _intensity_image(current, grid_mm), _intensity_image(prior, grid_mm)
    lung_near = sitk.Resample(_within(fixed_sdm, METRIC_MARGIN_MM), fixed_i, sitk.Transform(),
                              sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    refined = _stage("affine (intensity)", fixed_i, moving_i, _affine_from(affine), (2, 1), (2.0, 0.0), 100, "mattes",
                     lung_near, seed, rejected)
    transform: sitk.Transform = _affine_from(refined)
    stages = ["rigid", "affine (lung shape)", "affine (intensity)"]
    if bspline:
        mesh = [max(1, int(round(sz * sp / 60.0))) for sz, sp in zip(fixed_i.GetSize(), fixed_i.GetSpacing())]
        bs = sitk.BSplineTransformInitializer(fixed_i, mesh, order=3)
        r = sitk.ImageRegistrationMethod()
        r.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        r.SetMetricSamplingStrategy(r.RANDOM)
        r.SetMetricSamplingPercentage(0.3, seed)
        r.SetMetricFixedMask(lung_near)
        r.SetInterpolator(sitk.sitkLinear)
        r.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=60)
        r.SetShrinkFactorsPerLevel([2, 1])
        r.SetSmoothingSigmasPerLevel([2.0, 0.0])
        r.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        r.SetMovingInitialTransform(transform)
        r.SetInitialTransform(bs, inPlace=True)
        r.Execute(fixed_i, moving_i)
        composite = sitk.CompositeTransform(3)
        composite.AddTransform(transform)
        composite.AddTransform(bs)
        transform = composite
        stages.append("b-spline (intensity)")
    t_reg = time.perf_counter()

    quality = {"method": " -> ".join(stages), "grid_mm": grid_mm, "rejected_stages": rejected,
               "after": surface_residual(fixed_m, moving_m, transform),
               "initial": surface_residual(fixed_m, moving_m, sitk.Transform())}
    quality.update({k: quality["after"][k] for k in ("surface_mean_mm", "surface_p95_mm", "surface_max_mm", "dice")})
    if not bspline:
        a = sitk.AffineTransform(transform)
        m = np.array(a.GetMatrix()).reshape(3, 3)
        quality["transform"] = {"kind": "affine", "matrix": m.round(5).tolist(),
                                "translation_mm": np.round(a.GetTranslation(), 3).tolist(),
                                "center_lps": np.round(a.GetCenter(), 3).tolist(),
                                "scale": np.round(np.linalg.svd(m, compute_uv=False), 4).tolist()}
    else:
        quality["transform"] = {"kind": "affine + b-spline"}
    quality["timings_s"] = {"masks": round(t_masks - t0, 2), "registration": round(t_reg - t_masks, 2),
                            "total": round(time.perf_counter() - t0, 2)}
    log.info("lung registration: surface mean %.2f mm, p95 %.2f mm, Dice %.3f (%.1f s)",
             quality["surface_mean_mm"], quality["surface_p95_mm"], quality["dice"], quality["timings_s"]["total"])
    return Registration(transform, quality)


def _single(t: sitk.Transform) -> sitk.Transform:
    """The registration's output wraps the optimised transform in a composite; unwrap it."""
    if t.GetName() == "CompositeTransform":
        c = sitk.CompositeTransform(t)
        if c.GetNumberOfTransforms() == 1:
            return c.GetNthTransform(0)
    return t


# ----------------------------------------------------------------------------- quality

def _surface(mask: np.ndarray) -> np.ndarray:
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    eroded = sitk.GetArrayFromImage(sitk.BinaryErode(img, [1, 1, 1]))
    return mask.astype(bool) & ~eroded.astype(bool)


def surface_residual(fixed_mask: sitk.Image, moving_mask: sitk.Image, transform: sitk.Transform) -> Dict[str, float]:
    """Symmetric distances (mm) between the current lung surface and the registered prior one."""
    warped = sitk.Resample(moving_mask, fixed_mask, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    ones = sitk.Image(moving_mask.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(moving_mask)
    covered = sitk.GetArrayFromImage(sitk.Resample(ones, fixed_mask, transform, sitk.sitkNearestNeighbor, 0,
                                                   sitk.sitkUInt8)).astype(bool)
    covered = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.GetImageFromArray(covered.astype(np.uint8)),
                                                      [2, 2, 2])).astype(bool)
    covered[[0, -1]] = False
    a = sitk.GetArrayFromImage(fixed_mask).astype(bool)
    b = sitk.GetArrayFromImage(warped).astype(bool)
    if not (a & covered).any() or not (b & covered).any():
        return {"surface_mean_mm": float("nan"), "surface_p95_mm": float("nan"), "surface_max_mm": float("nan"),
                "dice": 0.0, "n_surface_points": 0}

    def dist_to(mask: np.ndarray) -> np.ndarray:
        img = sitk.GetImageFromArray(mask.astype(np.uint8))
        img.CopyInformation(fixed_mask)
        d = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
        return np.abs(sitk.GetArrayFromImage(d))

    sa, sb = _surface(a) & covered, _surface(b) & covered
    d = np.concatenate([dist_to(_surface(b))[sa], dist_to(_surface(a))[sb]])
    inter = (a & b & covered).sum()
    dice = 2.0 * inter / max((a & covered).sum() + (b & covered).sum(), 1)
    return {"surface_mean_mm": round(float(d.mean()), 3), "surface_p95_mm": round(float(np.percentile(d, 95)), 3),
            "surface_max_mm": round(float(d.max()), 3), "dice": round(float(dice), 4), "n_surface_points": int(d.size)}
