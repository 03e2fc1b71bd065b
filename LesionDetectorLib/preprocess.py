"""Lung mask, 1 mm isotropic resampling, crop to the lungs, HU window -> [0, 1].

Used identically by training and detection (contract in ``docs/architecture.md``).

Lung mask (:func:`lung_mask`), SimpleITK only, computed on a ~2 mm working grid (bin-averaged)
so a 512 x 512 x 300 scan takes a few seconds on one core:

1. air-like voxels: HU < :data:`AIR_THRESHOLD_HU` (-320 HU, between lung parenchyma
   around -850 and soft tissue around 40);
2. 3-D face-connected components; components touching the in-plane (x/y) border of the
   scan are the air around the patient and are dropped. The z border is *not* used,
   because the lungs themselves often touch the first or last slice;
3. the largest remaining component is kept, and the second largest too when it is at least
   :data:`SECOND_LUNG_MIN_FRACTION` of the first (two lungs not joined through the
   trachea); smaller pockets (bowel gas, oesophagus) are dropped;
4. closing with a ball of ``closing_mm`` (10 mm, exact Euclidean, through distance maps) to
   take in vessels and juxta-pleural nodules (a closing fills a dent the ball cannot enter:
   nodules up to ~2 x 10 mm wide; larger ones still lie within the ``pad_outside_mm`` band
   that :func:`preprocess` keeps unpadded), then 3-D hole filling (solid nodules inside
   the lung). 3-D rather than slice-wise filling: a slice-wise fill would swallow the
   mediastinum whenever the closing bridges the lungs in front of and behind the heart;
   then, slice by slice, each lung section's 2-D convex hull is filled
   (:func:`fill_pleural_hulls`), so a juxta-pleural nodule or mass wider than the closing
   ball keeps its centre inside the mask (the LUNA16 lung masks include such nodules too);
5. lungs smaller than :data:`MIN_LUNG_VOLUME_ML` (300 mL; adult lungs hold ~2-3 L each at
   CT inspiration, and a scan that covers even part of both lungs has more) raise
   :class:`NoLungsFoundError`.

Supplied masks: a bool array in the volume's grid, or a label :class:`Volume` with its own
geometry. LUNA16's ``seg-lungs-LUNA16`` masks label the two lungs 3 and 4 and the trachea /
main bronchi 5 (which lung carries which label is not relied upon; the synthetic generator
writes 3 = right, 4 = left); when labels 3 or 4 occur, only they count as lung, else every
non-zero voxel does.

Intensities: HU clipped to ``hu_window`` (-1200, 600) and scaled to [0, 1]. Voxels farther
than ``pad_outside_mm`` (10 mm, measured on a ~2 mm grid, so the band edge is good to ~2 mm)
from the lung mask get :data:`PAD_HU` = 0 HU, i.e.
1200 / 1800 = 170 / 255 in [0, 1]: the padding value of the DSB-2017 / DeepLung lineage the
paper builds on, which hides ribs, spine and table while keeping a lung-wall context.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .coordinates import (Geometry, index_to_world, isotropic_geometry, resample_to_grid, sub_grid, to_sitk,
                          world_to_index)
from .errors import NoLungsFoundError, VolumeError
from .volume import Volume

AIR_THRESHOLD_HU = -320.0
MIN_LUNG_VOLUME_ML = 300.0
SECOND_LUNG_MIN_FRACTION = 0.2
PAD_HU = 0.0
DEFAULT_HU_WINDOW = (-1200.0, 600.0)
LUNA16_LUNG_LABELS = (3, 4)


def normalize_hu(hu: np.ndarray, hu_window: Tuple[float, float] = DEFAULT_HU_WINDOW) -> np.ndarray:
    """HU -> float32 in [0, 1]: clip to ``hu_window`` then scale linearly."""
    lo, hi = float(hu_window[0]), float(hu_window[1])
    if not hi > lo:
        raise ValueError(f"hu_window must be (low, high) with low < high, got {hu_window}")
    out = np.clip(np.asarray(hu, dtype=np.float32), lo, hi)
    out -= lo
    out *= 1.0 / (hi - lo)
    return out


def _distance_mm(mask: sitk.Image) -> sitk.Image:
    """Euclidean distance in mm from each voxel to the nearest voxel of ``mask`` (0 inside)."""
    d = sitk.SignedMaurerDistanceMap(mask, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return sitk.Maximum(d, 0.0)


def _binary_closing(mask: sitk.Image, radius_mm: float) -> sitk.Image:
    """Exact Euclidean closing (dilate then erode by a ball of ``radius_mm``); the image edge does not erode."""
    dilated = sitk.Cast(_distance_mm(mask) <= radius_mm, sitk.sitkUInt8)
    outside = sitk.Cast(dilated == 0, sitk.sitkUInt8)
    if sitk.GetArrayViewFromImage(outside).max() == 0:
        return dilated
    return sitk.Cast(_distance_mm(outside) > radius_mm, sitk.sitkUInt8)


def _shrink_factors(spacing: np.ndarray, working_spacing_mm: float):
    return [max(1, int(round(working_spacing_mm / s))) for s in spacing]


def _near_mask(mask_volume: Volume, distance_mm: float, working_spacing_mm: float = 2.0) -> Volume:
    """float32 0/1 volume of the points within ``distance_mm`` of the mask, on a ~2 mm grid.

    Distance maps cost ~0.3 us per voxel, so they run on the coarse grid; the band edge is
    then accurate to about one coarse voxel, which is all a context margin needs.
    """
    image = to_sitk(Volume(np.asarray(mask_volume.array, dtype=np.float32), mask_volume.spacing,
                           mask_volume.origin, mask_volume.direction))
    factors = _shrink_factors(mask_volume.spacing, working_spacing_mm)
    coarse = sitk.BinShrink(image, factors) if max(factors) > 1 else image
    near = sitk.Cast(_distance_mm(sitk.Cast(coarse > 0, sitk.sitkUInt8)) <= distance_mm, sitk.sitkFloat32)
    return Volume(sitk.GetArrayFromImage(near), coarse.GetSpacing(), coarse.GetOrigin(), coarse.GetDirection())


def fill_pleural_hulls(mask: np.ndarray, min_pixels: int = 20) -> np.ndarray:
    """Fill, in every slice ``mask[k]``, the 2-D convex hull of each lung section.

    A lesion on the pleura pushes the lung surface in; a closing fills such a dent only while
    it is narrower than the ball (2 x 10 mm), so the centre of a larger juxta-pleural nodule or
    mass fell outside the mask and, deeper than ``pad_outside_mm`` into the wall, was padded
    away (issue: juxta-pleural recall). The lung is convex towards the ribs, so the hull of a
    section adds exactly those dents there (and, medially, some mediastinum: it is shown, not
    padded, which costs nothing but context). Sections are 2-D connected components with at
    least ``min_pixels`` pixels (smaller specks are left as they are).
    """
    from scipy import ndimage
    from scipy.spatial import ConvexHull, Delaunay, QhullError

    out = mask.astype(bool).copy()
    for k in range(out.shape[0]):
        labels, n = ndimage.label(out[k])
        if not n:
            continue
        for sl, lab in zip(ndimage.find_objects(labels), range(1, n + 1)):
            section = labels[sl] == lab
            if section.sum() < min_pixels:
                continue
            pts = np.argwhere(section).astype(np.float64)
            # pixel corners, so the hull covers whole pixels and thin sections do not degenerate
            corners = (pts[:, None, :] + np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])).reshape(-1, 2)
            try:
                hull = Delaunay(corners[ConvexHull(corners).vertices])
            except QhullError:
                continue
            grid = np.argwhere(np.ones(section.shape, dtype=bool)).astype(np.float64)
            inside = (hull.find_simplex(grid) >= 0).reshape(section.shape)
            out[k][sl] |= inside
    return out.astype(mask.dtype)


def lung_mask_coarse(volume: Volume, closing_mm: float = 10.0, working_spacing_mm: float = 2.0,
                     pleural_hull: bool = True) -> Volume:
    """The lung mask on a coarse (~``working_spacing_mm``) grid, as a uint8 :class:`Volume` with exact geometry.

    Resample it onto any grid through world coordinates (:func:`resample_to_grid`);
    :func:`lung_mask` does that onto the volume's own grid. Raises :class:`NoLungsFoundError`.
    """
    image = to_sitk(Volume(np.asarray(volume.array, dtype=np.float32), volume.spacing, volume.origin,
                           volume.direction))
    factors = _shrink_factors(volume.spacing, working_spacing_mm)
    coarse = sitk.BinShrink(image, factors) if max(factors) > 1 else image
    air = sitk.Cast(coarse < AIR_THRESHOLD_HU, sitk.sitkUInt8)
    labels_img = sitk.ConnectedComponent(air, False)
    labels = sitk.GetArrayViewFromImage(labels_img)
    counts = np.bincount(labels.ravel())
    border = np.unique(np.concatenate([labels[:, 0, :].ravel(), labels[:, -1, :].ravel(),
                                       labels[:, :, 0].ravel(), labels[:, :, -1].ravel()]))
    counts[border] = 0
    counts[0] = 0
    order = np.argsort(counts)[::-1]
    keep = [order[0]] if counts[order[0]] > 0 else []
    if len(order) > 1 and counts[order[1]] > 0 and counts[order[1]] >= SECOND_LUNG_MIN_FRACTION * counts[order[0]]:
        keep.append(order[1])
    mask = sitk.GetImageFromArray(np.isin(labels, keep).astype(np.uint8))
    mask.CopyInformation(coarse)
    if keep:
        mask = sitk.BinaryFillhole(_binary_closing(mask, closing_mm), fullyConnected=False, foregroundValue=1)
    mask_array = sitk.GetArrayFromImage(mask)
    # the lungs' own volume, before the hulls add the pleural dents and some mediastinum
    volume_ml = float(mask_array.sum()) * float(np.prod(coarse.GetSpacing())) / 1000.0
    if keep and pleural_hull:
        mask_array = fill_pleural_hulls(mask_array)
    if volume_ml < MIN_LUNG_VOLUME_ML:
        raise NoLungsFoundError(
            f"No lungs found: the air-filled region inside the body measures {volume_ml:.0f} mL, less than the "
            f"{MIN_LUNG_VOLUME_ML:.0f} mL expected of lungs. Is this a chest CT in Hounsfield units covering the lungs?")
    return Volume(mask_array, coarse.GetSpacing(), coarse.GetOrigin(), coarse.GetDirection(),
                  {"lung_volume_ml": volume_ml})


def lung_mask(volume: Volume, closing_mm: float = 10.0) -> np.ndarray:
    """Bool lung mask ``[z, y, x]`` in the volume's own grid (see module docstring for the method)."""
    coarse = lung_mask_coarse(volume, closing_mm)
    return resample_to_grid(coarse, volume, "nearest", 0).array.astype(bool)


def lung_labels_to_mask(labels: Volume) -> Volume:
    """A label volume (e.g. LUNA16 seg-lungs .mhd) -> uint8 0/1 lung mask with the same geometry."""
    arr = np.asarray(labels.array)
    luna = any(np.any(arr == v) for v in LUNA16_LUNG_LABELS)
    lung = np.isin(arr, LUNA16_LUNG_LABELS) if luna else arr != 0
    return Volume(lung.astype(np.uint8), labels.spacing, labels.origin, labels.direction, dict(labels.metadata))


@dataclass
class Preprocessed:
    """The network-ready crop and its exact place in the world.

    ``image`` float32 ``[z, y, x]`` in [0, 1] and ``mask`` bool (same shape) sample the
    isotropic grid ``resampled_geometry`` (origin and direction of the source scan,
    ``spacing`` mm voxels) from index ``crop_origin_index`` on, so crop index ``c`` is
    resampled index ``c + crop_origin_index``.
    """

    image: np.ndarray
    mask: np.ndarray
    crop_origin_index: np.ndarray       # int [3] (z, y, x) in the resampled grid
    resampled_geometry: Geometry        # full isotropic grid
    source_geometry: Geometry           # the scan as read
    hu_window: Tuple[float, float]
    lung_volume_ml: float

    @property
    def crop_geometry(self) -> Geometry:
        """Geometry of ``image`` itself (its voxel [0,0,0] at the crop corner)."""
        return sub_grid(self.resampled_geometry, self.crop_origin_index, self.image.shape)

    @property
    def spacing(self) -> float:
        return float(self.resampled_geometry.spacing[0])

    def crop_to_world_affine(self) -> np.ndarray:
        """``[3, 4]`` affine with ``LPS = A[:, :3] @ zyx + A[:, 3]``: exactly :meth:`to_world` (it is
        linear), so the training cache and the calibration map crop voxels without the scan."""
        origin = self.to_world(np.zeros((1, 3)))[0]
        cols = self.to_world(np.eye(3)) - origin
        return np.concatenate([cols.T, origin[:, None]], axis=1)

    def to_world(self, points_zyx: np.ndarray) -> np.ndarray:
        """Crop indices ``[N, 3]`` (z, y, x) -> LPS mm ``[N, 3]``."""
        return index_to_world(self.resampled_geometry, np.asarray(points_zyx, dtype=np.float64) + self.crop_origin_index)

    def from_world(self, points_lps: np.ndarray) -> np.ndarray:
        """LPS mm ``[N, 3]`` -> continuous crop indices ``[N, 3]`` (z, y, x)."""
        return world_to_index(self.resampled_geometry, points_lps) - self.crop_origin_index

    def to_source_index(self, points_zyx: np.ndarray) -> np.ndarray:
        """Crop indices -> continuous ``[z, y, x]`` indices of the scan as read."""
        return world_to_index(self.source_geometry, self.to_world(points_zyx))


def _mask_bounds_in(grid: Geometry, mask: Volume) -> Tuple[np.ndarray, np.ndarray]:
    """Continuous [z, y, x] bounds in ``grid`` of the box around the mask's voxels (voxel extents included)."""
    nonzero = [np.flatnonzero(np.asarray(mask.array).any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    if any(len(n) == 0 for n in nonzero):
        raise NoLungsFoundError("No lungs found: the lung mask is empty.")
    lo = np.array([n[0] for n in nonzero], dtype=np.float64) - 0.5
    hi = np.array([n[-1] for n in nonzero], dtype=np.float64) + 0.5
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    in_grid = world_to_index(grid, index_to_world(mask, corners))
    return in_grid.min(axis=0), in_grid.max(axis=0)


def preprocess(volume: Volume, lung_mask: Optional[Union[np.ndarray, Volume]] = None, spacing: float = 1.0,
               margin_mm: float = 10.0, hu_window: Tuple[float, float] = DEFAULT_HU_WINDOW,
               pad_outside_mm: Optional[float] = 10.0) -> Preprocessed:
    """Resample to ``spacing`` mm isotropic, crop to the lungs + ``margin_mm``, window HU to [0, 1].

    Args:
        volume: the scan (float HU).
        lung_mask: ``None`` (computed with :func:`lung_mask_coarse`), a bool ``[z, y, x]``
            array in the volume's grid, or a label :class:`Volume` (LUNA16 labels understood).
        spacing: output voxel size in mm (the model expects 1).
        margin_mm: added around the lung bounding box (clipped to the scan).
        hu_window: HU mapped to 0 and 1.
        pad_outside_mm: voxels farther than this from the lungs get :data:`PAD_HU`; ``None`` keeps them.

    Raises:
        NoLungsFoundError: no lungs found, or the mask does not overlap the scan.
    """
    if lung_mask is None:
        mask_volume = lung_mask_coarse(volume)
        lung_ml = float(mask_volume.metadata["lung_volume_ml"])
    else:
        if isinstance(lung_mask, Volume):
            mask_volume = lung_labels_to_mask(lung_mask)
        else:
            arr = np.asarray(lung_mask)
            if arr.shape != volume.array.shape:
                raise ValueError(f"lung_mask shape {arr.shape} differs from the volume's {volume.array.shape}")
            mask_volume = Volume(arr.astype(np.uint8), volume.spacing, volume.origin, volume.direction)
        lung_ml = float(np.count_nonzero(mask_volume.array)) * float(np.prod(mask_volume.spacing)) / 1000.0

    grid = isotropic_geometry(volume, spacing)
    lo, hi = _mask_bounds_in(grid, mask_volume)
    margin = margin_mm / spacing
    shape = np.asarray(grid.shape_zyx)
    start = np.clip(np.floor(lo - margin), 0, shape - 1).astype(int)
    stop = np.clip(np.ceil(hi + margin), 0, shape - 1).astype(int)
    if np.any(hi < 0) or np.any(lo > shape - 1):
        raise NoLungsFoundError("No lungs found: the supplied lung mask lies outside the scan.")
    crop = sub_grid(grid, start, stop - start + 1)

    hu = resample_to_grid(volume, crop, "linear", -1024.0, np.float32).array
    # Linear interpolation of the 0/1 mask, thresholded at 0.5, gives a smooth 1 mm boundary
    # from the coarse mask; on an equal grid it is identical to nearest neighbour.
    mask_f = Volume(mask_volume.array.astype(np.float32), mask_volume.spacing, mask_volume.origin,
                    mask_volume.direction)
    mask = resample_to_grid(mask_f, crop, "linear", 0.0).array >= 0.5
    if not mask.any():
        raise NoLungsFoundError("No lungs found: the lung mask does not overlap the scan.")

    image = normalize_hu(hu, hu_window)
    if pad_outside_mm is not None:
        near = resample_to_grid(_near_mask(mask_volume, pad_outside_mm), crop, "linear", 0.0).array >= 0.5
        image[~near] = normalize_hu(np.float32(PAD_HU), hu_window)
    return Preprocessed(image, mask, start, grid, Geometry.of(volume), (float(hu_window[0]), float(hu_window[1])),
                        lung_ml)


#: DeepLesion body threshold: soft tissue, bone and the table are above it; air (-1000 HU)
#: and the outside-field-of-view padding (-3024 HU, the "black borders") below.
BODY_THRESHOLD_HU = -500.0
#: Connected regions above the threshold smaller than this (mL) are noise, not body.
BODY_MIN_COMPONENT_ML = 1.0
#: Context kept around the body's bounding box (mm).
BODY_MARGIN_MM = 5.0


def body_mask(volume, threshold_hu: float = BODY_THRESHOLD_HU,
              min_component_ml: float = BODY_MIN_COMPONENT_ML) -> np.ndarray:
    """Bool ``[z, y, x]`` in the volume's grid: voxels above ``threshold_hu``, without the
    face-connected specks smaller than ``min_component_ml`` (noise, stray bright pixels in
    the air) that would otherwise stretch the bounding box."""
    above = np.asarray(volume.array) > threshold_hu
    if not above.any():
        return above
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    min_voxels = int(np.ceil(min_component_ml / voxel_ml)) if min_component_ml > 0 else 0
    if min_voxels <= 1:
        return above
    labels = sitk.ConnectedComponent(sitk.GetImageFromArray(above.astype(np.uint8)), False)
    labels = sitk.RelabelComponent(labels, minimumObjectSize=min_voxels)
    return sitk.GetArrayViewFromImage(labels) > 0


def preprocess_body(volume, spacing: float = 1.0, margin_mm: float = BODY_MARGIN_MM,
                             threshold_hu: float = BODY_THRESHOLD_HU,
                             hu_window: Optional[Tuple[float, float]] = None):
    """DeepLesion preprocessing (the paper, section V-A): no segmentation, only the black
    borders clipped, ``spacing`` mm isotropic, HU window -> [0, 1].

    The crop is the bounding box of :func:`body_mask` plus ``margin_mm`` (clipped to the
    scan), taken through :func:`preprocess` with that mask in
    place of the lungs and no outside padding (``pad_outside_mm=None``): resampling, HU window
    and the returned :class:`~LesionDetectorLib.preprocess.Preprocessed` (``to_world`` /
    ``from_world``, ``mask`` = the body) are exactly those of the lung path. Every voxel of
    the crop keeps its own intensity.

    Raises :class:`~LesionDetectorLib.errors.VolumeError` when no voxel is above ``threshold_hu``.
    """
    mask = body_mask(volume, threshold_hu)
    if not mask.any():
        raise VolumeError(f"no body in the scan: no voxel above {threshold_hu:g} HU (an empty or air-only "
                          f"image, or values not in Hounsfield units)")
    return preprocess(volume, lung_mask=mask, spacing=spacing, margin_mm=margin_mm,
                      hu_window=hu_window or DEFAULT_HU_WINDOW, pad_outside_mm=None)


@dataclass(frozen=True)
class Preprocessing:
    """How a model's input is made from a scan: the one description that the training cache
    records, the model card stores (``preprocessing``) and the Detector reads back.

    ``crop``: ``"lungs"`` (:func:`preprocess`: lung mask, crop + ``margin_mm``, voxels farther than
    ``pad_outside_mm`` from the lungs padded) or ``"body"`` (:func:`preprocess_body`: voxels above
    ``body_threshold_hu``, crop + ``margin_mm``, nothing padded); ``spacing_mm`` isotropic;
    ``hu_window`` mapped to [0, 1].
    """
    crop: str = "lungs"
    spacing_mm: float = 1.0
    margin_mm: float = 10.0
    hu_window: Tuple[float, float] = DEFAULT_HU_WINDOW
    pad_outside_mm: Optional[float] = 10.0
    body_threshold_hu: float = BODY_THRESHOLD_HU

    def __post_init__(self) -> None:
        if self.crop not in ("lungs", "body"):
            raise ValueError(f"preprocessing crop must be 'lungs' or 'body', got {self.crop!r}")
        if not (np.isfinite(self.spacing_mm) and self.spacing_mm > 0 and np.isfinite(self.margin_mm)
                and self.margin_mm >= 0):
            raise ValueError(f"preprocessing needs spacing_mm > 0 and margin_mm >= 0, got {self}")
        lo, hi = (float(v) for v in self.hu_window)
        if not hi > lo:
            raise ValueError(f"preprocessing hu_window must be (low, high) with low < high, got {self.hu_window}")
        object.__setattr__(self, "hu_window", (lo, hi))

    @classmethod
    def body(cls) -> "Preprocessing":
        return cls(crop="body", margin_mm=BODY_MARGIN_MM, pad_outside_mm=None)

    @classmethod
    def from_card(cls, card) -> "Preprocessing":
        """A card's ``preprocessing`` (cards without one were trained with the defaults)."""
        spec = dict((card or {}).get("preprocessing") or {})
        base = cls.body() if spec.get("crop") == "body" else cls()
        return cls(crop=str(spec.get("crop", base.crop)),
                   spacing_mm=float(spec.get("spacing_mm", base.spacing_mm)),
                   margin_mm=float(spec.get("margin_mm", base.margin_mm)),
                   hu_window=tuple(spec.get("hu_window", base.hu_window)),
                   pad_outside_mm=spec.get("pad_outside_mm", base.pad_outside_mm),
                   body_threshold_hu=float(spec.get("body_threshold_hu", base.body_threshold_hu)))

    def to_card(self) -> dict:
        out = {"crop": self.crop, "spacing_mm": self.spacing_mm, "margin_mm": self.margin_mm,
               "hu_window": list(self.hu_window), "lung_mask": self.crop == "lungs"}
        if self.crop == "lungs":
            out["pad_outside_mm"] = self.pad_outside_mm
        else:
            out["body_threshold_hu"] = self.body_threshold_hu
        return out

    def apply(self, volume: Volume, lung_mask: Optional[Union[np.ndarray, Volume]] = None) -> Preprocessed:
        """The network input of ``volume`` under this description."""
        if self.crop == "body":
            return preprocess_body(volume, spacing=self.spacing_mm, margin_mm=self.margin_mm,
                                   threshold_hu=self.body_threshold_hu, hu_window=self.hu_window)
        return preprocess(volume, lung_mask=lung_mask, spacing=self.spacing_mm, margin_mm=self.margin_mm,
                          hu_window=self.hu_window, pad_outside_mm=self.pad_outside_mm)


@dataclass(frozen=True)
class Prepared:
    """A scan's network input made ahead of time (the batch runner's prefetch thread, while the
    model loads or runs on the previous scan): the description that made it, the result and
    the seconds it took. :class:`~LesionDetectorLib.inference.Detector` uses it only when
    ``preprocessing`` is its own card's."""
    preprocessing: Preprocessing
    result: Preprocessed
    seconds: float
