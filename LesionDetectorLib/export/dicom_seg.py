"""DICOM Segmentation (SEG) of the characterized nodules' masks, via highdicom.

One segment per characterized finding (segment number = its label in
:func:`LesionDetectorLib.characterization.label_volume`), BINARY, referencing the source
CT series (DICOM input only, like the SR): segmented property *Morphologically Abnormal
Structure / Nodule*, algorithm *automatic*, family *Histogram Analysis* + *Morphological
Operations* (the method of :mod:`LesionDetectorLib.characterization.segmentation`; nothing
learned). Each segment's label carries the finding id, type and Lung-RADS category.
Only slices that hold some mask are encoded (highdicom omits empty frames).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..coordinates import world_to_index
from ..findings import Findings
from ..version import __version__
from ..volume import Volume
from ..atomic import PathLike, atomic_path
from .dicom_sr import _require_highdicom


def read_source_images(files: Sequence[PathLike]):
    """pydicom datasets (with pixels: SEG needs them) of the source series' files."""
    _require_highdicom()
    import pydicom

    if not files:
        raise ValueError("the DICOM SEG export needs the source DICOM series (the input was not DICOM)")
    return [pydicom.dcmread(str(f)) for f in files]


def _frames_for_sources(labels: Volume, sources: Sequence) -> np.ndarray:
    """``[n_sources, rows, cols]`` label frames in the order of ``sources``, via each slice's position."""
    frames = np.zeros((len(sources), labels.array.shape[1], labels.array.shape[2]), np.uint8)
    for i, ds in enumerate(sources):
        if (int(ds.Rows), int(ds.Columns)) != labels.array.shape[1:]:
            raise ValueError("the source series' image size does not match the volume the findings were made on")
        z = world_to_index(labels, np.asarray([float(v) for v in ds.ImagePositionPatient]))[0]
        k = int(round(z))
        if abs(z - k) > 0.05 or not 0 <= k < labels.array.shape[0]:
            raise ValueError(f"source slice {ds.SOPInstanceUID} does not lie on the volume's slice grid")
        frames[i] = labels.array[k]
    return frames


def build_seg(findings: Findings, labels: Volume, source_images: Sequence, series_number: int = 991,
              sop_instance_uid: Optional[str] = None, series_instance_uid: Optional[str] = None):
    """The ``highdicom.seg.Segmentation`` of ``labels`` (label ``i`` = the candidate named in
    ``labels.metadata["labels"][i]``), not yet written."""
    _require_highdicom()
    import highdicom as hd
    from pydicom.sr.codedict import codes

    names = {int(k): v for k, v in (labels.metadata.get("labels") or {}).items()}
    present = sorted(int(v) for v in np.unique(labels.array) if v != 0)
    if not present:
        raise ValueError("no nodule mask to export: nothing was characterized")
    frames = _frames_for_sources(labels, source_images)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="LesionDetector characterization", version=__version__,
        family=codes.cid7162.HistogramAnalysis, source="LesionDetector (computed, not learned)")
    descriptions = []
    # Segment numbers must run 1..N: renumber the labels that are present.
    remapped = np.zeros_like(frames)
    for number, label in enumerate(present, start=1):
        remapped[frames == label] = number
        cid = names.get(label, f"label {label}")
        ch = findings.candidate(cid).characterization if cid in {c.id for c in findings.candidates} else None
        text = cid if not ch else f"{cid} {ch.get('type')} Lung-RADS {ch.get('lung_rads')}"
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=text[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            tracking_uid=hd.UID(), tracking_id=cid[:64]))
    seg = hd.seg.Segmentation(
        source_images=list(source_images), pixel_array=remapped,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid or hd.UID(), series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(), instance_number=1, manufacturer="LesionDetector",
        manufacturer_model_name=str(findings.model.get("name", "LesionDetector"))[:64],
        software_versions=f"lesion-detector {__version__}", device_serial_number="0",
        series_description="LesionDetector nodule masks", omit_empty_frames=True)
    return seg


def write_dicom_seg(findings: Findings, labels: Volume, path: PathLike, source_files: Sequence[PathLike]) -> Path:
    """Write the SEG of ``labels`` for the DICOM series ``source_files`` (atomically)."""
    seg = build_seg(findings, labels, read_source_images(source_files))
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp), enforce_file_format=True)
    return Path(path)
