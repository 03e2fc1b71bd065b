"""Per-finding 3-D nodule segmentation on a local isotropic sub-millimetre grid.

Method (computed, not learned), for one candidate ``(center_lps, diameter_mm)``:

1. **Local grid.** A cube around the centre (half side ``0.8 d + 4`` mm, 8..36 mm) is
   resampled (linear) to ``spacing_mm`` (0.5 mm; ``d / 30`` up to 1 mm above 15 mm) isotropic voxels with the *scan's own
   direction*, so its z slices are the acquired axial slices that Lung-RADS measures on.
   All geometry goes through :mod:`LesionDetectorLib.coordinates`.
2. **Lung side of the pleura.** Soft tissue (HU > -500) opened with a ball 1.5 x the
   nodule's diameter (6..20 mm) is the chest wall / mediastinum / diaphragm: the ball fits in
   the wall, which runs on past the cube's faces, but not in the nodule or the vessels, so a
   juxta-pleural nodule is cut close to the pleural line (the ball sinks ~a^2/2R into it,
   a = half-width of the contact). A supplied lung mask (e.g.
   :func:`LesionDetectorLib.preprocess.lung_mask`), dilated by 2 mm, bounds the region.
3. **Adaptive threshold** (an isodata-style iteration, starting at -700 HU): the region above
   ``T`` on the lung side is opened, the component that covers the candidate's centre kept,
   and ``T`` moved to the midpoint between the *lowest plateau* of the nodule (25th
   percentile of the region 1 mm inside its border) and the parenchyma (median lung HU of the
   cube). The midpoint is the half-maximum edge of a blurred step, which makes volumes
   unbiased; the low percentile makes a part-solid nodule's boundary its ground-glass halo
   (threshold near -700 HU) and a solid nodule's its solid edge (near -400 HU). A halo is taken
   when the shell just outside the core stays well above the parenchyma; its boundary level is
   then read from the rim that a first halo threshold finds (the shell alone holds the rim's
   blurred fall-off, which put the threshold too low). On scans
   coarser than 1 mm in-plane the layer (and the halo shell below) lies one in-plane voxel deep
   instead of 1 mm: closer in, it is the blurred edge, and the threshold runs down into the blur.
4. **Vessels.** A morphological opening with a ball of ``0.15 d`` (0.6..1.5 mm) cuts thin
   vessels from the nodule; the opened mask is then regrown by half that radius inside
   the thresholded region, which gives back the border the opening shaved without
   re-attaching the vessels. A region that still runs on beyond ``0.5 d + 2`` mm (a thick
   vessel, the hilum) is cut at its narrowest neck by a marker watershed on its distance map.
5. A mask touching the cube's border is redone once in a cube 1.6 x larger.

**Nodules the scan does not resolve** (fewer than :data:`RESOLVED_VOXELS` in-plane scan voxels
across, e.g. a 10 mm nodule on 2 mm voxels) whose centre is denser than :data:`SOLID_PEAK_HU`
but not calcium (:data:`DENSE_HU`): the steps above would take the
boundary level from a layer 1-2 mm inside the border, which on such a scan lies in the blur,
so the threshold runs down towards the parenchyma and the mask (and the volume) grows with
the blur: the same nodule measured 12 and 15 mm on a scan and its resampled copy. Instead,
the nodule's level is taken as solid tissue (:data:`SOLID_LEVEL_HU`), and the volume is the
blur-invariant partial-volume sum ``sum(clip((HU - parenchyma) / (level - parenchyma)))``
over a zone (the mask at half that level grown by two scan voxels, and at least the ball the
detector's diameter spans, on the lung side; clearly seen vessels and the voxels nearer to them
left out), the parenchyma level being the mean of the same kind of voxels just outside it: blur
and linear resampling move HU around but keep that sum. The mask
is then the isosurface (of the image smoothed by half a scan voxel) that encloses exactly that
volume, so the diameters measured on it
agree with the volume and, like it, hardly depend on the voxel grid.

The local cube is resampled from a crop of the scan around it (SimpleITK would otherwise
copy the whole scan for each finding).

The result is a :class:`NoduleSegmentation` (boolean mask, local geometry, HU samples) that
:mod:`.measurements` and :mod:`.nodule_type` read.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from ..coordinates import Geometry, index_to_world, resample_to_grid, sub_grid, world_to_index
from ..volume import Volume

DEFAULT_SPACING_MM = 0.5
LUNG_AIR_HU = -500.0          # parenchyma (about -850) and most ground glass lie below; soft tissue above
START_THRESHOLD_HU = -700.0
MIN_CONTRAST_HU = 120.0      # a centre this close to the parenchyma holds no nodule
GGO_MIN_HU = -750.0
HALO_CONTRAST = 0.22
#: The halo's boundary level comes from this percentile of its rim: a thin rim is mostly blurred
#: fall-off, its brighter part the plateau.
RIM_LEVEL_PERCENTILE = 75.0
MAX_HALO_GROWTH = 25.0
REGROW = 0.5                # regrowth after the vessel opening, as a fraction of its radius
MAX_HALF_SIDE_MM = 36.0
#: A nodule narrower than this many in-plane scan voxels (the axial plane it is measured in) is not resolved by the
#: scan: its blurred profile has no plateau to take a boundary level from.
RESOLVED_VOXELS = 8.0
#: Attenuation of solid nodule tissue on non-contrast CT (about 0-50 HU; the synthetic generator
#: draws -10..60): the level of an unresolved solid nodule, whose own peak the blur lowers.
SOLID_LEVEL_HU = 20.0
#: An unresolved nodule whose centre (smoothed by half a scan voxel) is at least this dense is
#: taken as blurred solid tissue: on 2 mm voxels the blur lowers a 6-10 mm solid nodule's peak to
#: -250..-480 HU, below nodule_type.SOLID_HU (-300). Unresolved ground glass denser than this is
#: measured (and typed) as solid: a limit of coarse scans.
SOLID_PEAK_HU = -520.0
#: ... and one denser than this holds calcium (nodule_type.CALCIUM_HU).
DENSE_HU = 200.0
#: Partial-volume fractions below zero (noise, darker lung) count down to this, so noise in the
#: zone around the nodule averages out instead of adding up.
PV_FLOOR = -0.5
#: How far (in scan voxels) beyond the half-level surface the partial-volume sum reaches.
PV_MARGIN_VOXELS = 2.0
#: Local-grid samples below this hold no image: outside the scan's field of view (the resampling's
#: fill value, :data:`NO_DATA_HU`) or a reconstruction's padding (-2048, -3024 HU). Air is about -1000 HU.
NO_DATA_BELOW_HU = -1500.0
NO_DATA_HU = -4096.0


@dataclass
class NoduleSegmentation:
    """One finding's mask on its local grid.

    ``mask`` bool ``[z, y, x]`` and ``hu`` float32 (same shape) sample ``geometry`` (isotropic
    ``spacing_mm``, the scan's direction); ``lung`` is the lung side of the pleura used for the
    cut; ``threshold_hu`` the final boundary threshold; ``background_hu`` the parenchyma level.
    ``mask`` is empty when nothing nodule-like was found at the candidate.
    """

    candidate_id: str
    mask: np.ndarray
    hu: np.ndarray
    lung: np.ndarray
    geometry: Geometry
    threshold_hu: float
    background_hu: float
    #: the partial-volume volume (mL) when the segmentation measured it (unresolved nodules); None:
    #: :func:`.measurements.partial_volume_ml` over the mask gives it
    volume_ml: Optional[float] = None

    @property
    def spacing_mm(self) -> float:
        return float(self.geometry.spacing[0])

    @property
    def edge_level_hu(self) -> float:
        """The HU level just inside the boundary that the half-maximum threshold was taken from."""
        return 2.0 * self.threshold_hu - self.background_hu

    @property
    def empty(self) -> bool:
        return not bool(self.mask.any())


def _local_geometry(volume: Volume, center_lps: Sequence[float], half_side_mm: float, spacing_mm: float) -> Geometry:
    n = int(np.ceil(2 * half_side_mm / spacing_mm)) + 1
    half = (n - 1) / 2.0
    direction = np.asarray(volume.direction, dtype=np.float64)
    origin = np.asarray(center_lps, dtype=np.float64) - direction @ (np.full(3, half * spacing_mm))
    return Geometry((n, n, n), np.full(3, spacing_mm), origin, direction)


def _ball_distance_outside(mask: np.ndarray, spacing: float) -> np.ndarray:
    """Euclidean distance (mm) from each voxel to the nearest voxel of ``mask`` (0 inside)."""
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndimage.distance_transform_edt(~mask, sampling=spacing)


def _erode(mask: np.ndarray, radius_mm: float, spacing: float) -> np.ndarray:
    # Padding keeps the cube's border from eroding: a region cut by the border is not thinner there.
    padded = np.pad(mask, 1, mode="edge")
    inside = ndimage.distance_transform_edt(padded, sampling=spacing)[1:-1, 1:-1, 1:-1]
    return inside > radius_mm


def _dilate(mask: np.ndarray, radius_mm: float, spacing: float) -> np.ndarray:
    return _ball_distance_outside(mask, spacing) <= radius_mm


def opening(mask: np.ndarray, radius_mm: float, spacing: float) -> np.ndarray:
    """Exact Euclidean opening by a ball of ``radius_mm``: removes parts thinner than the ball."""
    return _dilate(_erode(mask, radius_mm, spacing), radius_mm, spacing) & mask


def closing(mask: np.ndarray, radius_mm: float, spacing: float) -> np.ndarray:
    """Exact Euclidean closing by a ball of ``radius_mm``: fills dents narrower than the ball."""
    return _erode(_dilate(mask, radius_mm, spacing), radius_mm, spacing) | mask


def _center_ball(shape, spacing: float, radius_mm: float) -> np.ndarray:
    c = (np.asarray(shape) - 1) / 2.0
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return ((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) * spacing ** 2 <= radius_mm ** 2


def _component_at_center(mask: np.ndarray, center_ball: np.ndarray) -> np.ndarray:
    """The connected component (26-neighbourhood) with the most voxels in ``center_ball``."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return np.zeros_like(mask)
    overlap = np.bincount(labels[center_ball], minlength=n + 1)
    overlap[0] = 0
    if overlap.max() == 0:
        return np.zeros_like(mask)
    return labels == int(np.argmax(overlap))


def _lung_side(hu: np.ndarray, spacing: float, diameter_mm: float, lung: Optional[np.ndarray],
               no_data: Optional[np.ndarray] = None) -> np.ndarray:
    """Everything but the chest wall / mediastinum: soft tissue too thick for a ball wider than the nodule.
    ``no_data``: samples without image (outside the field of view); never on the lung side."""
    tissue = hu > LUNG_AIR_HU
    # The opening keeps structures a ball of radius R fits in (the wall) and drops narrower ones
    # (the nodule, vessels). Where the nodule meets the wall the ball sinks a cap of about
    # a^2 / 2R into it (a: half-width of the contact), so R is generous: 1.5 x the diameter.
    radius = float(np.clip(1.5 * diameter_mm, 6.0, 20.0))
    # A wall seen only a few mm deep inside the cube is still a wall: outside the cube counts as
    # tissue (padding R wide), so the ball can sit beyond the faces. Big balls work on a coarser
    # grid (distance maps cost per voxel); the cut is then good to that grid's spacing.
    k = max(1, int(np.ceil(radius / (32.0 * spacing))))
    coarse = tissue[::k, ::k, ::k]
    pad = int(np.ceil(radius / (k * spacing))) + 1
    wall = opening(np.pad(coarse, pad, constant_values=True), radius, k * spacing)[pad:-pad, pad:-pad, pad:-pad]
    if k > 1:
        for axis in range(3):
            wall = np.repeat(wall, k, axis=axis)
        wall = wall[:hu.shape[0], :hu.shape[1], :hu.shape[2]]
    side = ~(wall & tissue)
    if no_data is not None:
        side &= ~no_data
    if lung is not None and lung.any():
        # A supplied lung mask keeps the region from leaking far into the mediastinum.
        side &= _dilate(lung, 2.0, spacing)
    return side


def _region(hu, lung_side, threshold, open_r, spacing, ball, limit):
    """Voxels above ``threshold`` on the lung side, vessels opened off, the piece at the centre."""
    raw = (hu > threshold) & lung_side & limit
    opened = _component_at_center(opening(raw, open_r, spacing), ball)
    if not opened.any():
        # Thinner than the opening ball (a tiny nodule): fall back to the raw component.
        return _component_at_center(raw, ball)
    return _component_at_center(_dilate(opened, REGROW * open_r, spacing) & raw, ball)


def _plateau(hu, region, spacing, depth_mm: float = 1.0) -> float:
    """The level just inside the region's border (median of the layer 1..2 mm deep; the brighter
    half of the region when it is thinner): the contrast the edge's half maximum is taken from.
    The outer layer, not the whole core, so a calcified centre does not raise the edge threshold."""
    core = _erode(region, depth_mm, spacing)
    layer = core & ~_erode(region, 2.0 * depth_mm, spacing)
    if layer.sum() >= 8:
        values = hu[layer]
    elif core.sum() >= 8:
        values = hu[core]
    else:
        values = np.sort(hu[region])[region.sum() // 2:]
    return float(np.median(values))


def _smoothed(hu: np.ndarray, spacing: float, scan_spacing_mm: float, voxels: float = 0.5) -> np.ndarray:
    """``hu`` smoothed by a Gaussian of ``voxels`` scan voxels (sigma): a scan and its resampled
    copy (whose linear interpolation already smoothed it) then look alike."""
    return ndimage.gaussian_filter(hu, voxels * scan_spacing_mm / spacing, mode="nearest")


def _half_level(level: float, background: float) -> float:
    """The threshold half-way between a boundary level and the parenchyma, kept at least 60 HU above
    the parenchyma and at most 0 HU."""
    return float(np.clip(0.5 * (level + background), background + 60.0, 0.0))


def _parenchyma_hu(hu, lung_side) -> float:
    """Median HU of the lung (below -500 HU on the lung side) in the cube."""
    parenchyma = lung_side & (hu < LUNG_AIR_HU)
    return float(np.median(hu[parenchyma])) if parenchyma.any() else float(np.percentile(hu, 20))


def _center_peak(hu, lung_side, spacing, diameter_mm, default=-np.inf) -> float:
    """90th percentile HU at the candidate's centre (ball of a quarter of its diameter) on the lung side."""
    centre = _center_ball(hu.shape, spacing, max(1.5, 0.25 * diameter_mm)) & lung_side
    return float(np.percentile(hu[centre], 90)) if centre.any() else float(default)


def _segment_once(hu: np.ndarray, lung_side: np.ndarray, spacing: float, diameter_mm: float,
                  depth_mm: float = 1.0):
    """The threshold path (module docstring, steps 3-4). ``depth_mm``: how deep inside the border the
    level is read (and how far out the halo): 1 mm, or one in-plane scan voxel when that is coarser
    (on 2 mm voxels the layer 1-2 mm deep lies in the blurred edge, and the threshold would run down
    into it)."""
    background = _parenchyma_hu(hu, lung_side)
    open_r = float(np.clip(0.15 * diameter_mm, 0.6, 1.5))
    ball = _center_ball(hu.shape, spacing, max(1.5, 0.35 * diameter_mm))
    # Leaks along vessels end at a sphere well beyond the expected nodule.
    limit = _center_ball(hu.shape, spacing, 0.5 * (hu.shape[0] - 1) * spacing)
    empty = np.zeros(hu.shape, bool)
    peak = _center_peak(hu, lung_side, spacing, diameter_mm, background)
    if peak < background + MIN_CONTRAST_HU:
        return empty, background + MIN_CONTRAST_HU, background
    # Top-down: from the densest part at the centre, then each boundary at its half maximum.
    threshold = _half_level(peak, background)
    region = empty
    for _ in range(6):
        region = _region(hu, lung_side, threshold, open_r, spacing, ball, limit)
        if not region.any():
            return empty, threshold, background
        # The level comes from the nodule, not from what hangs on it: a faint nodule's region at a
        # low threshold takes in vessels and walls, whose HU would set the next threshold above
        # the nodule itself.
        new = _half_level(_plateau(hu, _split_off_attachments(region, spacing, diameter_mm), spacing, depth_mm),
                          background)
        if abs(new - threshold) < 5.0:
            break
        threshold = new
    # A ground-glass halo around a solid core: the shell just outside the core boundary stays
    # far above the parenchyma (a blurred solid edge falls to about a tenth of its contrast by then).
    level = _plateau(hu, region, spacing, depth_mm)
    dist = _ball_distance_outside(region, spacing)
    shell = (dist > 0.5 * depth_mm) & (dist <= 1.5 * depth_mm) & lung_side
    if shell.any():
        halo = float(np.median(hu[shell]))
        if halo > GGO_MIN_HU and halo - background >= HALO_CONTRAST * (level - background):
            halo_threshold = _half_level(halo, background)
            wider = _region(hu, lung_side, halo_threshold, open_r, spacing, ball, limit)
            # The shell's median also holds the halo's blurred outer fall-off (a thin rim is mostly
            # fall-off), which puts the threshold too low and the mask into the blur (a 31 mm solid
            # mass measured 8.5 mL for 4.8): take the level from the rim the halo threshold found.
            rim = wider & (dist > 0.5 * depth_mm)
            if rim.sum() >= 8:
                refined = _half_level(float(np.percentile(hu[rim], RIM_LEVEL_PERCENTILE)), background)
                if refined > halo_threshold:
                    tighter = _region(hu, lung_side, refined, open_r, spacing, ball, limit)
                    if tighter.sum() > region.sum():
                        wider, halo_threshold = tighter, refined
            # A ground-glass halo holds up to ~20 x its core's volume; more is a leak into the lung.
            if region.sum() < wider.sum() <= MAX_HALO_GROWTH * region.sum():
                region, threshold = wider, halo_threshold
    return _split_off_attachments(region, spacing, diameter_mm), threshold, background


def _segment_unresolved(hu: np.ndarray, lung_side: np.ndarray, spacing: float, diameter_mm: float,
                        background: float, scan_spacing_mm: float):
    """Mask and partial-volume volume (mL) of a solid nodule the scan does not resolve (module docstring)."""
    level = SOLID_LEVEL_HU
    threshold = 0.5 * (level + background)
    open_r = float(np.clip(0.15 * diameter_mm, 0.6, 1.5))
    ball = _center_ball(hu.shape, spacing, max(1.5, 0.35 * diameter_mm))
    limit = _center_ball(hu.shape, spacing, 0.5 * (hu.shape[0] - 1) * spacing)
    region = _region(hu, lung_side, threshold, open_r, spacing, ball, limit)
    if not region.any():
        return region, threshold, None
    # The blur spreads the nodule's HU about a scan voxel beyond its half-level surface. A lobe of
    # the nodule a blurred voxel further out than expected is no attachment: the cut starts that
    # much further out.
    margin = max(1.0, PV_MARGIN_VOXELS * scan_spacing_mm)
    region = _split_off_attachments(region, spacing, diameter_mm, 2.0 + margin)
    # The zone is geometric (a ball the detector's diameter spans, and the region grown by the
    # margin) on the lung side: every intensity-defined cut (a faint nodule's few voxels above
    # half level) moves with the blur, and the zone must not.
    near = _ball_distance_outside(region, spacing)
    reach = (near <= margin) | _center_ball(hu.shape, spacing, 0.5 * diameter_mm + margin)
    # Vessels seen clearly (well above the half level, away from the nodule: a faint one comes and
    # goes with the blur) take their blurred halo with them: what is nearer to them than to the
    # nodule and within the margin of them (a Voronoi split).
    others = (hu > threshold + 0.25 * (level - background)) & lung_side & (near > margin)
    theirs = others.copy()
    if others.any():
        to_others = _ball_distance_outside(others, spacing)
        theirs |= (to_others <= margin) & (to_others < near)
    usable = lung_side & limit & ~theirs
    zone = (reach & usable) | region
    # The background is the mean, not the median, of the same kind of voxels (lung, vessels' halos
    # left out alike) just outside the zone: lung texture makes the parenchyma brighter on average
    # than its median, and each zone voxel would add that excess to the sum.
    shell = _dilate(reach, 1.5 * scan_spacing_mm, spacing) & ~reach & usable
    local = float(np.mean(hu[shell])) if shell.sum() >= 20 else background
    local = min(local, threshold)
    values = hu[zone]
    frac = np.clip((values - local) / (level - local), PV_FLOOR, 1.0)
    # The voxels above half the level bound a blurred nodule's volume from below (the blur draws
    # a small object's half-level surface inwards); a sum under it is background error.
    voxels = max(float(frac.sum()), float(region.sum()))
    n = int(np.clip(np.round(voxels), 1, values.size))
    # The isosurface of the image smoothed by half a scan voxel: the noise's and the grid's detail
    # would otherwise shape the outline (and its diameters) of a nodule a few voxels wide.
    smooth = _smoothed(hu, spacing, scan_spacing_mm)
    iso = float(np.sort(smooth[zone])[::-1][n - 1])
    mask = _component_at_center((smooth >= iso) & zone, ball)
    if not mask.any():
        mask = region
    return mask, threshold, voxels * spacing ** 3 / 1000.0


def _crop_for(volume: Volume, geometry: Geometry, margin: int = 2) -> Volume:
    """The part of ``volume`` under ``geometry`` (plus ``margin`` voxels): resampling reads only that."""
    g = geometry
    corners = np.array([[a, b, c] for a in (0, g.shape_zyx[0] - 1) for b in (0, g.shape_zyx[1] - 1)
                        for c in (0, g.shape_zyx[2] - 1)], dtype=np.float64)
    idx = world_to_index(volume, index_to_world(g, corners))
    shape = np.asarray(volume.array.shape)
    lo = np.clip(np.floor(idx.min(0)).astype(int) - margin, 0, shape)
    hi = np.clip(np.ceil(idx.max(0)).astype(int) + margin + 1, 0, shape)
    if np.any(hi - lo < 2):
        return volume            # (almost) outside the scan: the resampling's default value fills it
    box = sub_grid(volume, lo, hi - lo)
    return Volume(np.ascontiguousarray(volume.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]), box.spacing,
                  box.origin, box.direction)


def _split_off_attachments(region: np.ndarray, spacing: float, diameter_mm: float,
                           slack_mm: float = 2.0) -> np.ndarray:
    """Cut a region that runs on far beyond the expected nodule at its narrowest neck.

    A vessel or mediastinal structure thicker than the opening ball stays attached. When the
    region reaches beyond ``0.5 d + 2`` mm from the centre, a marker watershed on its distance
    map (markers: the centre, and everything beyond that radius) splits it where it is
    thinnest, and the centre's basin is kept. A compact nodule never reaches that far, so it
    is left whole.
    """
    if not region.any():
        return region
    n = np.asarray(region.shape)
    z, y, x = np.ogrid[:n[0], :n[1], :n[2]]
    c = (n - 1) / 2.0
    r_mm = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) * spacing
    far = region & (r_mm > 0.5 * diameter_mm + slack_mm)
    if not far.any():
        return region
    import SimpleITK as sitk

    inside = ndimage.distance_transform_edt(region, sampling=spacing).astype(np.float32)
    markers = np.zeros(region.shape, np.uint8)
    seed = region & (r_mm <= max(1.0, 0.2 * diameter_mm))
    if not seed.any():
        return region
    markers[far] = 2
    markers[seed] = 1
    relief = sitk.GetImageFromArray(-inside)
    basins = sitk.GetArrayFromImage(sitk.MorphologicalWatershedFromMarkers(
        relief, sitk.GetImageFromArray(markers), markWatershedLine=False, fullyConnected=True))
    return region & (basins == 1)


def segment_nodule(volume: Volume, center_lps: Sequence[float], diameter_mm: float,
                   lung_mask: Optional[Union[np.ndarray, Volume]] = None, candidate_id: str = "",
                   spacing_mm: Optional[float] = None) -> NoduleSegmentation:
    """Segment the nodule at ``center_lps`` (LPS mm) whose detected diameter is ``diameter_mm``.

    ``lung_mask``: optional bool array in the volume's grid or a mask :class:`Volume` with its
    own geometry; ``spacing_mm``: the local grid (default 0.5 mm, coarser for nodules over 15 mm:
    ``d / 30``, at most 1 mm, so a mass costs what a nodule does). Returns a
    :class:`NoduleSegmentation` (``empty`` when nothing was found).
    """
    d = float(max(diameter_mm, 3.0))
    scan_mm = float(np.prod(np.asarray(volume.spacing, dtype=np.float64)) ** (1.0 / 3.0))
    inplane_mm = float(max(volume.spacing[0], volume.spacing[1]))
    if spacing_mm is None:
        # A third of the scan's voxel is as fine as its detail goes.
        spacing_mm = float(np.clip(max(d / 30.0, scan_mm / 3.0), DEFAULT_SPACING_MM, 1.0))
    mask_volume = None
    if lung_mask is not None:
        mask_volume = lung_mask if isinstance(lung_mask, Volume) else Volume(
            np.asarray(lung_mask, dtype=np.uint8), volume.spacing, volume.origin, volume.direction)
    half = float(np.clip(0.8 * d + 4.0, 8.0, MAX_HALF_SIDE_MM))
    for attempt in range(2):
        geometry = _local_geometry(volume, center_lps, half, spacing_mm)
        hu = resample_to_grid(_crop_for(volume, geometry), geometry, "linear", NO_DATA_HU, np.float32).array
        # A nodule at the edge of the field of view: the samples beyond it are no lung (read as
        # -1024 HU parenchyma they drag the boundary threshold down, and the mask grows into the blur).
        no_data = hu < NO_DATA_BELOW_HU
        hu[no_data] = -1024.0
        lung = None
        if mask_volume is not None:
            lung_u8 = Volume(np.asarray(mask_volume.array, np.uint8), mask_volume.spacing, mask_volume.origin,
                             mask_volume.direction)
            lung = resample_to_grid(_crop_for(lung_u8, geometry), geometry, "nearest", 0, np.uint8).array > 0
        side = _lung_side(hu, spacing_mm, d, lung, no_data)
        pv_ml = None
        background = _parenchyma_hu(hu, side)
        peak = _center_peak(_smoothed(hu, spacing_mm, scan_mm), side, spacing_mm, d, background)
        # Calcium (above DENSE_HU) is left to the threshold path: its blurred spill-over would count
        # in full around the nodule while its own excess over the solid level is clipped.
        if d < RESOLVED_VOXELS * inplane_mm and max(SOLID_PEAK_HU, background + MIN_CONTRAST_HU) <= peak <= DENSE_HU:
            mask, threshold, pv_ml = _segment_unresolved(hu, side, spacing_mm, d, background, scan_mm)
        else:
            mask, threshold, background = _segment_once(hu, side, spacing_mm, d, max(1.0, inplane_mm))
        touches = mask.any() and (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
                                  or mask[:, :, 0].any() or mask[:, :, -1].any())
        if not touches or attempt == 1 or half >= MAX_HALF_SIDE_MM:
            break
        # Larger than the detector thought: measure the extent seen so far and retry.
        d = max(d, 1.6 * half)
        half = float(min(1.6 * half, MAX_HALF_SIDE_MM))
    return NoduleSegmentation(candidate_id, mask, hu, side, geometry, float(threshold), float(background), pv_ml)
