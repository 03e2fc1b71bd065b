"""Volume input/output: ``read_volume`` (DICOM folder, .mhd/.mha, .nrrd, .nii[.gz]),
``write_volume`` (atomic) and ``validate_volume`` (the checks every input passes)."""
from .dicom import SeriesInfo, list_dicom_series
from .reader import SUPPORTED_FORMATS, read_volume
from .validate import MAX_SLICE_SPACING_MM, MAX_VOXELS, validate_volume
from .writer import WRITABLE_FORMATS, write_volume

__all__ = ["read_volume", "write_volume", "validate_volume", "list_dicom_series", "SeriesInfo",
           "SUPPORTED_FORMATS", "WRITABLE_FORMATS", "MAX_VOXELS", "MAX_SLICE_SPACING_MM"]
