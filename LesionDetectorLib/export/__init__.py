"""Exporters of :class:`~LesionDetectorLib.inference.Findings`; every file is written atomically.

============================  ==================================================
``write_markups_json``        Slicer point list ``.mrk.json`` (LPS)
``write_luna16_csv``          LUNA16 submission CSV
``write_findings_json``       findings JSON, schema v1.0 (``docs/findings.schema.json``)
``write_dicom_sr``            DICOM SR TID 1500 (needs highdicom; DICOM input only)
``write_dicom_seg``           DICOM SEG of the nodule masks (``.dicom_seg``; needs highdicom; DICOM input only)
``write_segmentation_nrrd``   the nodule masks as a Slicer ``.seg.nrrd`` (``.segmentation_nrrd``; any input)
============================  ==================================================
"""
from .findings_json import read_findings_json, validate_findings_dict, write_findings_json
from .luna16_csv import write_luna16_csv
from .markups import markups_document, write_markups_json


def write_dicom_sr(findings, path, source_files):
    """See :func:`LesionDetectorLib.export.dicom_sr.write_dicom_sr` (imported lazily: highdicom is optional)."""
    from .dicom_sr import write_dicom_sr as _write

    return _write(findings, path, source_files)


__all__ = ["markups_document", "read_findings_json",
           "validate_findings_dict", "write_dicom_sr", "write_findings_json", "write_luna16_csv",
           "write_markups_json"]
