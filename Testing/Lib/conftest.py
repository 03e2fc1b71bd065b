"""Shared fixtures for the library tests: small chest phantoms and DICOM series writers.

Phantoms are defined in world (LPS mm) space, so the same anatomy comes out whatever
grid (oblique, flipped, anisotropic) samples it — which is what the coordinate tests need.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import pytest

from LesionDetectorLib.volume import Volume

LUNG_CENTERS_X = (-55.0, 55.0)


def in_phantom_lung(points_lps, center_lps=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Analytic lung membership of LPS points ``[..., 3]`` for :func:`_chest_phantom` anatomy."""
    p = np.asarray(points_lps, dtype=np.float64) - np.asarray(center_lps)
    return np.any([((p[..., 0] - s) / 40.0) ** 2 + (p[..., 1] / 55.0) ** 2 + (p[..., 2] / 70.0) ** 2 <= 1.0
                   for s in LUNG_CENTERS_X], axis=0)


def _chest_phantom(shape_zyx=(40, 56, 64), spacing=(4.0, 4.0, 4.0), origin=None, direction=None,
                   center_lps=(0.0, 0.0, 0.0), nodules=(), noise_hu=15.0, seed=0,
                   metadata: Optional[dict] = None) -> Volume:
    """Air (-1000) around an elliptic-cylinder body (40 HU) holding two lung ellipsoids (-850 HU).

    Body semi-axes (110, 85) mm in x, y; lungs: centres ``center ± (55, 0, 0)`` mm, semi-axes
    (40, 55, 70) mm, 0.65 L each. The default grid (256 x 224 x 160 mm) holds the body.
    ``nodules``: ``(center_lps, diameter_mm, hu)`` spheres. Default ``origin`` centres the
    grid on ``center_lps``. Returns a Volume (float32) built without validation.
    """
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    spacing = np.asarray(spacing, dtype=np.float64)
    center = np.asarray(center_lps, dtype=np.float64)
    if origin is None:
        half = (np.asarray(shape_zyx[::-1]) - 1) / 2.0 * spacing
        origin = center - direction @ half
    k, j, i = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape_zyx], indexing="ij")
    ijk = np.stack([i, j, k], axis=-1) * spacing
    world = np.asarray(origin) + ijk @ direction.T
    p = world - center
    hu = np.full(shape_zyx, -1000.0)
    hu[(p[..., 0] / 110.0) ** 2 + (p[..., 1] / 85.0) ** 2 <= 1.0] = 40.0
    for side in LUNG_CENTERS_X:
        lung = ((p[..., 0] - side) / 40.0) ** 2 + (p[..., 1] / 55.0) ** 2 + (p[..., 2] / 70.0) ** 2 <= 1.0
        hu[lung] = -850.0
    for c, diameter, value in nodules:
        hu[np.linalg.norm(world - np.asarray(c), axis=-1) <= diameter / 2.0] = value
    hu += np.random.default_rng(seed).normal(0.0, noise_hu, size=shape_zyx)
    return Volume(hu.astype(np.float32), spacing, origin, direction, dict(metadata or {}))


@pytest.fixture
def lung_oracle():
    """``lung_oracle(points_lps[..., 3], center_lps) -> bool``: the phantom's true lungs."""
    return in_phantom_lung


@pytest.fixture
def chest_phantom():
    """Factory: ``chest_phantom(shape_zyx, spacing, origin, direction, center_lps, nodules) -> Volume``."""
    return _chest_phantom


def _write_dicom_series(folder, volume: Volume, modality: str = "CT", series_uid: Optional[str] = None,
                        slope: float = 1.0, intercept: float = -1024.0, reverse_names: bool = True,
                        prefix: str = "IM"):
    """Write ``volume`` as a CT series with pydicom, using the real header of pydicom's CT_small.dcm.

    Stored values are ``(HU - intercept) / slope`` (int16), so reading must apply the rescale.
    File names run opposite to slice position when ``reverse_names`` so sorting is exercised.
    Returns (series_uid, [paths in slice order]).
    """
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid = series_uid or generate_uid()
    os.makedirs(folder, exist_ok=True)
    d = volume.direction
    nz, ny, nx = volume.array.shape
    paths = []
    for z in range(nz):
        ds = template.copy()
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = z + 1
        ds.Rows, ds.Columns = ny, nx
        ds.PixelSpacing = [f"{volume.spacing[1]:.6f}", f"{volume.spacing[0]:.6f}"]  # row spacing (y), column (x)
        ds.SliceThickness = f"{volume.spacing[2]:.6f}"
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*d[:, 0], *d[:, 1])]
        position = volume.origin + d[:, 2] * volume.spacing[2] * z
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        stored = np.round((volume.array[z] - intercept) / slope).astype(np.int16)
        ds.PixelData = stored.tobytes()
        name = f"{prefix}{(nz - z if reverse_names else z + 1):04d}.dcm"
        path = os.path.join(str(folder), name)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return series_uid, paths


@pytest.fixture
def write_dicom_series():
    """Factory: ``write_dicom_series(folder, volume, modality="CT", series_uid=None, prefix="IM") -> (uid, paths)``."""
    return _write_dicom_series


@pytest.fixture
def blob_detector(monkeypatch):
    """``detect`` / ``demo`` load a fake detector (the blob model of test_inference_pipeline, 64^3
    tiles); the fixture's list gets every model built, so an empty list means the model never ran."""
    from LesionDetectorLib.cli import detect as detect_cli
    from LesionDetectorLib.inference import Detector
    from test_inference_pipeline import BlobModel, fake_card

    models = []

    def load(model_name, device="auto", batch_size=None):
        model = BlobModel()
        models.append(model)
        return Detector(model, fake_card(), device="cpu", tile=64, overlap=16)

    monkeypatch.setattr(detect_cli, "load_detector", load)
    return models


@pytest.fixture(scope="session")
def nodule_crop():
    """``crop(size) -> (model, window, nodule centre in the window, nodule)``: a ``size``^3 window
    of a preprocessed full-size synthetic scan (the bundled model's training resolution) around
    its largest nodule, and the bundled model. The scan is the generator's without confusers.
    (Model 1.3.0 finds this nodule on a full-size scan, not on the ~2 mm "small" one 1.2.x's tests
    used.)"""
    from LesionDetectorLib.data.synthetic import generate_scan
    from LesionDetectorLib.model import load_pretrained
    from LesionDetectorLib.preprocess import preprocess
    from LesionDetectorLib.resources import resolve_model_dir

    scan = generate_scan(2, 0, size="full", confusers=False)
    pre = preprocess(scan.to_volume(), lung_mask=scan.lung_labels > 0)
    nodule = max(scan.annotations, key=lambda n: n.diameter_mm)
    c = np.round(pre.from_world(np.asarray([nodule.center_lps]))[0]).astype(int)
    model, _ = load_pretrained(resolve_model_dir("luna16-synthetic"), "cpu")

    def crop(size: int):
        lo = np.clip(c - size // 2, 0, np.asarray(pre.image.shape) - size)
        window = np.ascontiguousarray(pre.image[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size])
        return model, window, c - lo, nodule

    return crop
