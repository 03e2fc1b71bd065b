"""DICOM Structured Report (TID 1500 Measurement Report, Comprehensive 3D SR) via highdicom.

Each candidate becomes a TID 1410 group whose region is a SCOORD3D POINT at the
candidate's centre (LPS mm = the DICOM patient coordinate system) in the source series'
Frame of Reference, with the finding type "Nodule", the diameter (mm), the detection
scores and the review state; the patient flag is a TID 1501 group. The model name,
version, SHA-256, operating point and threshold are the Algorithm Identification of every
group (once per group: per-measurement copies would multiply the content items, and
highdicom's build time with them). The report's evidence lists every instance of the source series.

A characterized candidate (:mod:`LesionDetectorLib.characterization`) adds SCT Volume (mm3),
Long axis, Short axis, Diameter (derivation Mean), DCM Attenuation Coefficient (Mean, HU),
and its type, calcification and Lung-RADS v2022 category; the exam's category joins the
patient-flag group. Concepts without a standard code use the private coding scheme ``99LESDET``.
highdicom is an optional dependency (``pip install lesion-detector[dicom]``).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from ..findings import Findings
from ..version import __version__
from ..atomic import PathLike, atomic_path

SCHEME = "99LESDET"
_FLAG_CODES = {"positive": "LD-FLAG-POS", "likely negative": "LD-FLAG-NEG", "unavailable": "LD-FLAG-NA"}
_REVIEW_CODES = {"unreviewed": "LD-REV-U", "accepted": "LD-REV-A", "rejected": "LD-REV-R"}


def _require_highdicom():
    try:
        import highdicom  # noqa: F401
        import pydicom  # noqa: F401
    except ImportError as exc:
        raise ImportError("the DICOM SR export needs highdicom and pydicom: pip install 'highdicom>=0.22' "
                          "(or lesion-detector[dicom]); the other exports do not need them") from exc


def read_source_headers(files: Sequence[PathLike]):
    """pydicom datasets (headers only) of the source series' files."""
    _require_highdicom()
    import pydicom

    if not files:
        raise ValueError("the DICOM SR export needs the source DICOM series (the input was not DICOM)")
    return [pydicom.dcmread(str(f), stop_before_pixels=True) for f in files]


# Type 2 patient / study attributes the SR copies from its evidence: the standard lets them be
# empty, and many anonymised or research series lack them, so absent ones are written empty.
_TYPE2_FROM_EVIDENCE = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                        "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


def _with_type2_attributes(datasets: Sequence) -> List:
    """The evidence headers with every missing Type 2 attribute present and empty (copies are not needed:
    these are headers read for the SR, not written back)."""
    for ds in datasets:
        for keyword in _TYPE2_FROM_EVIDENCE:
            if keyword not in ds or ds.get(keyword) is None:
                setattr(ds, keyword, "")
        if not getattr(ds, "StudyInstanceUID", None):
            raise ValueError("the source series has no StudyInstanceUID (a required DICOM attribute), so a DICOM "
                             "SR cannot reference its study")
    return list(datasets)


def _code(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value, SCHEME, meaning)


def build_sr(findings: Findings, source_datasets: Sequence, series_number: int = 990,
             sop_instance_uid: Optional[str] = None, series_instance_uid: Optional[str] = None):
    """The ``highdicom.sr.Comprehensive3DSR`` dataset of ``findings`` (not yet written)."""
    _require_highdicom()
    import highdicom as hd
    from highdicom.sr import (AlgorithmIdentification, Comprehensive3DSR, DeviceObserverIdentifyingAttributes,
                              GraphicTypeValues3D, ImageRegion3D, Measurement, MeasurementReport,
                              MeasurementsAndQualitativeEvaluations, ObservationContext, ObserverContext,
                              PlanarROIMeasurementsAndQualitativeEvaluations, QualitativeEvaluation,
                              TrackingIdentifier)
    from pydicom.sr.codedict import codes

    if not source_datasets:
        raise ValueError("the DICOM SR export needs the source DICOM series")
    source_datasets = _with_type2_attributes(source_datasets)
    first = source_datasets[0]
    frame_uid = getattr(first, "FrameOfReferenceUID", None) or findings.volume.get("frame_of_reference_uid")
    if not frame_uid:
        raise ValueError("the source series has no FrameOfReferenceUID; a DICOM SR with 3-D points needs one")
    op = findings.operating_point
    thr = op.get("threshold")
    algorithm = AlgorithmIdentification(
        name=f"LesionDetector {findings.model['name']}",
        version=str(findings.model["version"]),
        parameters=[f"model_sha256={findings.model['sha256']}", f"operating_point={op.get('name')}",
                    f"threshold={'none' if thr is None else format(thr, '.6g')}",
                    f"library_version={findings.provenance.get('library_version')}",
                    f"device={findings.provenance.get('device')}"])
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="LesionDetector", manufacturer_name="LesionDetector",
            model_name=str(findings.model["name"])[:64]))
    groups: List = []
    for c in findings.candidates:
        region = ImageRegion3D(graphic_type=GraphicTypeValues3D.POINT,
                               graphic_data=np.asarray([c.center_lps], dtype=np.float64),
                               frame_of_reference_uid=frame_uid)
        measurements = [
            Measurement(name=codes.SCT.Diameter, value=float(c.diameter_mm), unit=codes.UCUM.Millimeter),
            Measurement(name=_code("LD-SCORE", "Detection score"), value=float(c.score), unit=codes.UCUM.NoUnits),
            Measurement(name=_code("LD-SCORE-RPN", "Region proposal score"), value=float(c.score_rpn),
                        unit=codes.UCUM.NoUnits),
            Measurement(name=_code("LD-SCORE-FPRN", "False positive reduction score"), value=float(c.score_fprn),
                        unit=codes.UCUM.NoUnits),
        ]
        review = QualitativeEvaluation(name=_code("LD-REVIEW", "Review state"),
                                       value=_code(_REVIEW_CODES[c.review], c.review))
        measurements += _characterization_measurements(c.characterization, Measurement, codes)
        groups.append(PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=f"{c.id} rank {c.rank}"),
            referenced_region=region, finding_type=codes.SCT.Nodule, algorithm_id=algorithm,
            measurements=measurements,
            qualitative_evaluations=[review] + _characterization_evaluations(c.characterization, QualitativeEvaluation)))
    flag = findings.patient_flag
    flag_measurements = []
    if flag.get("max_score") is not None:
        flag_measurements.append(Measurement(name=_code("LD-MAX-SCORE", "Maximum candidate score"),
                                             value=float(flag["max_score"]), unit=codes.UCUM.NoUnits))
    if flag.get("threshold") is not None:
        flag_measurements.append(Measurement(name=_code("LD-THRESHOLD", "Operating point threshold"),
                                             value=float(flag["threshold"]), unit=codes.UCUM.NoUnits))
    groups.append(MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier="patient flag"),
        algorithm_id=algorithm, measurements=flag_measurements or None,
        qualitative_evaluations=[QualitativeEvaluation(
            name=_code("LD-FLAG", "Patient-level flag"),
            value=_code(_FLAG_CODES[flag["status"]], flag["status"]))]
        + ([_lung_rads_evaluation(findings.lung_rads["category"], QualitativeEvaluation, "Exam Lung-RADS v2022 category")]
           if findings.lung_rads else [])))
    report = MeasurementReport(observation_context=ObservationContext(observer_device_context=observer),
                               procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
                               imaging_measurements=groups)
    sr = Comprehensive3DSR(
        evidence=list(source_datasets), content=report,
        series_instance_uid=series_instance_uid or hd.UID(), series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(), instance_number=1,
        manufacturer="LesionDetector", is_complete=True, is_final=False, is_verified=False)
    sr.SeriesDescription = f"LesionDetector findings ({findings.model['name']})"[:64]
    sr.SoftwareVersions = f"lesion-detector {__version__}"
    return sr


def _characterization_measurements(ch, Measurement, codes) -> List:
    """TID 1419 measurements of a characterized nodule: SCT volume (mm3), long / short axis, mean
    diameter (Diameter with derivation Mean), mean attenuation (HU); the solid component's mean
    diameter has no standard concept and uses the private scheme."""
    if not ch or ch.get("type") is None:
        return []
    out = [Measurement(name=codes.SCT.Volume, value=round(float(ch["volume_ml"]) * 1000.0, 1),
                       unit=codes.UCUM.CubicMillimeter),
           Measurement(name=codes.SCT.LongAxis, value=float(ch["long_axis_mm"]), unit=codes.UCUM.Millimeter),
           Measurement(name=codes.SCT.ShortAxis, value=float(ch["short_axis_mm"]), unit=codes.UCUM.Millimeter),
           Measurement(name=codes.SCT.Diameter, value=float(ch["mean_diameter_mm"]), unit=codes.UCUM.Millimeter,
                       derivation=codes.SCT.Mean),
           Measurement(name=codes.DCM.AttenuationCoefficient, value=float(ch["mean_hu"]),
                       unit=codes.UCUM.HounsfieldUnit, derivation=codes.SCT.Mean)]
    if ch.get("solid_component_mm") is not None:
        out.append(Measurement(name=_code("LD-SOLID-DIAM", "Solid component mean diameter"),
                               value=float(ch["solid_component_mm"]), unit=codes.UCUM.Millimeter))
    return out


def _lung_rads_evaluation(category: str, QualitativeEvaluation, meaning: str = "Lung-RADS v2022 category"):
    return QualitativeEvaluation(name=_code("LD-LUNGRADS", meaning[:64]),
                                 value=_code(f"LD-LR-{category}", f"Lung-RADS {category}"))


def _characterization_evaluations(ch, QualitativeEvaluation) -> List:
    """Nodule type, calcification and Lung-RADS category (private codes: no coded value set
    for these is in pydicom's dictionary)."""
    if not ch or ch.get("type") is None:
        return []
    out = [QualitativeEvaluation(name=_code("LD-TYPE", "Nodule type"),
                                 value=_code(f"LD-TYPE-{ch['type']}", ch["type"])),
           QualitativeEvaluation(name=_code("LD-CALC", "Benign calcification"),
                                 value=_code("LD-YES" if ch["calcified"] else "LD-NO",
                                             "yes" if ch["calcified"] else "no"))]
    if ch.get("lung_rads"):
        out.append(_lung_rads_evaluation(ch["lung_rads"], QualitativeEvaluation))
    return out


def write_dicom_sr(findings: Findings, path: PathLike, source_files: Sequence[PathLike]) -> Path:
    """Write the SR of ``findings`` for the DICOM series ``source_files`` (atomically)."""
    sr = build_sr(findings, read_source_headers(source_files))
    with atomic_path(path) as tmp:
        sr.save_as(str(tmp), enforce_file_format=True)
    return Path(path)
