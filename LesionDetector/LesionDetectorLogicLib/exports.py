"""Exports of a reviewed run through the library's own exporters.

The reviewer's accept / reject decisions are read back from the markups node
(:func:`findings_scene.findings_with_review`) and every file carries them. The nodule masks
(``segmentation``: Slicer ``.seg.nrrd``; ``dicom_seg``: DICOM SEG) hold the *accepted*
findings' segments only, as they are in the scene (with the reader's Segment Editor edits).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .findings_scene import findings_with_review

# format key -> (file suffix, human name)
FORMATS: Dict[str, tuple] = {
    "markups": (".mrk.json", "Slicer markups (.mrk.json)"),
    "luna16": (".csv", "LUNA16 submission CSV"),
    "json": (".findings.json", "findings JSON"),
    "dicom_sr": (".sr.dcm", "DICOM SR (TID 1500)"),
    "segmentation": (".seg.nrrd", "nodule masks of the accepted findings (Slicer .seg.nrrd)"),
    "dicom_seg": (".seg.dcm", "DICOM SEG of the accepted findings' nodule masks"),
    "labels": ("_training_labels", "training labels (LUNA16 annotations + hard negatives)"),
}


def safe_stem(name: str) -> str:
    """A file name stem from a node name (no path separators or shell-hostile characters)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return stem or "lesion_candidates"


def export_run(markups, folder, formats: Sequence[str], stem: Optional[str] = None,
               series_uid: Optional[str] = None, dicom_files: Optional[Sequence[str]] = None) -> List[Path]:
    """Write the chosen ``formats`` (keys of :data:`FORMATS`) for one run into ``folder``.

    ``dicom_files`` are the source CT's DICOM files, needed only by ``dicom_sr`` and
    ``dicom_seg`` (they reference the images). Returns the written paths. Raises
    ``ValueError`` naming the problem (unknown format, DICOM SR for a volume not loaded from
    DICOM, masks of a run with no accepted segmented finding...).
    """
    from LesionDetectorLib import export as lib_export
    from LesionDetectorLib.findings import Findings

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; choose from {list(FORMATS)}")
    if not formats:
        raise ValueError("choose at least one export format")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    findings = Findings.from_dict(findings_with_review(markups))
    stem = safe_stem(stem or markups.GetName())
    if "dicom_seg" in formats and not dicom_files:
        raise ValueError("DICOM SEG export needs a CT loaded from DICOM (the SEG references its images); "
                         "choose the .seg.nrrd nodule masks instead")
    labels = accepted_masks(markups, findings) if {"segmentation", "dicom_seg"} & set(formats) else None
    written: List[Path] = []
    for fmt in formats:
        path = folder / (stem + FORMATS[fmt][0])
        if fmt == "markups":
            written.append(Path(lib_export.write_markups_json(findings, path)))
        elif fmt == "json":
            written.append(Path(lib_export.write_findings_json(findings, path)))
        elif fmt == "luna16":
            uid = series_uid or findings.series_uid or stem
            written.append(Path(lib_export.write_luna16_csv([findings], path, [uid])))
        elif fmt == "dicom_sr":
            if not dicom_files:
                raise ValueError("DICOM SR export needs a CT loaded from DICOM (the SR references its images); "
                                 "load the series through the DICOM module or choose another format")
            written.append(Path(lib_export.write_dicom_sr(findings, path, list(dicom_files))))
        elif fmt == "segmentation":
            from LesionDetectorLib.export.segmentation_nrrd import write_segmentation_nrrd

            written.append(Path(write_segmentation_nrrd(findings, labels, path)))
        elif fmt == "dicom_seg":
            from LesionDetectorLib.export.dicom_seg import write_dicom_seg

            written.append(Path(write_dicom_seg(findings, labels, path, list(dicom_files))))
        elif fmt == "labels":
            from LesionDetectorLib.export.review_labels import write_review_labels

            if series_uid:
                findings.volume["series_uid"] = series_uid
            result = write_review_labels([findings], path)
            written += [Path(result[key]) for key in ("annotations", "hard_negatives", "seriesuids")]
    return written


def accepted_masks(markups, findings):
    """The label volume of the accepted findings' segments (rank order), for the SEG writers."""
    from . import findings_scene, segmentation_scene

    seg = markups.GetNodeReference(findings_scene.REF_SEGMENTATION)
    volume = markups.GetNodeReference(findings_scene.REF_VOLUME)
    if seg is None or volume is None:
        raise ValueError(f"'{markups.GetName()}' has no nodule masks (the run was not characterized)")
    accepted = [c.id for c in sorted(findings.candidates, key=lambda c: c.rank) if c.review == "accepted"]
    if not accepted:
        raise ValueError("no finding is accepted: the nodule masks keep accepted findings only")
    return segmentation_scene.labels_for_export(seg, volume, accepted)


def dicom_files_of(volume_node) -> List[str]:
    """The DICOM files a volume was loaded from (Slicer's DICOM database), [] otherwise."""
    import slicer

    uids = (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split() if volume_node is not None else []
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return []
    files = [database.fileForInstance(uid) for uid in uids]
    return [f for f in files if f]
