"""Rejected candidates (world LPS) become hard-negative crop regions that survive ABS rounds."""
import numpy as np

from LesionDetectorLib.coordinates import direction_from_angles
from LesionDetectorLib.luna16_format import Annotation
from LesionDetectorLib.training.cache import CachedScan
from LesionDetectorLib.training.sampler import CropDataset, hard_regions_from_world


def _scan(uid="1.2.3"):
    # oblique, flipped frame: LPS = A[:, :3] @ zyx + A[:, 3]
    direction = direction_from_angles((10.0, -20.0, 30.0), flip=(1.0, -1.0, 1.0))
    cols_ijk = direction * 1.0
    affine = np.concatenate([cols_ijk[:, ::-1], np.array([[-40.0], [25.0], [-300.0]])], axis=1)
    image = np.zeros((48, 40, 36), dtype=np.float32)
    return CachedScan(uid=uid, image=image, boxes=np.zeros((0, 4)), excluded=np.zeros((0, 4)), affine=affine)


def test_world_points_map_to_crop_voxels_of_their_scan():
    scan = _scan()
    centre = np.array([30.0, 12.0, 20.0])
    x, y, z = scan.to_world(centre)[0]
    other = Annotation("9.9.9", x, y, z, 6.0)          # another scan: skipped
    outside = Annotation("1.2.3", x + 500.0, y, z, 6.0)  # beyond the crop: skipped
    regions = hard_regions_from_world([scan], [Annotation("1.2.3", x, y, z, 6.0), other, outside])
    assert len(regions) == 1 and regions[0][0] == 0
    np.testing.assert_allclose(regions[0][1], centre, atol=1e-9)


def test_crops_are_drawn_around_reviewed_regions_and_survive_mining():
    scan = _scan()
    centre = np.array([30.0, 12.0, 20.0])
    ds = CropDataset([scan], (16, 16, 16), 8, pos_fraction=0.0, augment=False, hard_fraction=1.0,
                     reviewed_regions=[(0, centre)])
    assert ds.hard_fraction == 1.0 and len(ds.hard_regions) == 1
    ds.hard_regions = [(0, np.array([5.0, 5.0, 5.0]))]      # what an ABS round assigns
    assert len(ds.hard_regions) == 2 and any(np.allclose(c, centre) for _, c in ds.hard_regions)
    ds.hard_regions = []
    # every crop now centres on the reviewed region (within the 8-voxel margin)
    scan.image[tuple(centre.astype(int))] = 1.0
    for i in range(len(ds)):
        image, _ = ds[i]
        assert float(image.max()) == 1.0
