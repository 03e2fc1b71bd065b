"""Parse NIH DeepLesion's ``DL_info.csv``: one row per annotated lesion on a key slice.

The file is the one published with the data set (``DL_info.csv``, 32,735 rows). Its columns,
as documented in the DeepLesion readme::

    File_name                  "000001_01_01_109.png": <patient>_<study>_<series>_<key slice>.png;
                               the image lives in Images_png/000001_01_01/109.png
    Patient_index, Study_index, Series_ID
    Key_slice_index            slice number of the annotated slice (same number as its PNG name)
    Measurement_coordinates    "x1, y1, x2, y2, x3, y3, x4, y4": RECIST end points in pixels,
                               long axis (x1,y1)-(x2,y2), then short axis (x3,y3)-(x4,y4)
    Bounding_boxes             "x1, y1, x2, y2" in pixels (0-based column, row), the RECIST
                               extent padded by 5 pixels on each side
    Lesion_diameters_Pixel_    "long, short" in pixels
    Normalized_lesion_location "x, y, z" in [0, 1] (position in the body, self-supervised)
    Coarse_lesion_type         1 bone, 2 abdomen, 3 mediastinum, 4 liver, 5 lung, 6 kidney,
                               7 soft tissue, 8 pelvis; -1 not labelled (the training split)
    Possibly_noisy             1 when the annotation may be wrong
    Slice_range                "first, last": slice numbers (inclusive) present in Images_png
    Spacing_mm_px_             "sx, sy, sz": in-plane pixel spacing and slice interval, mm
    Image_size                 "512, 512"
    DICOM_windows              "low, high" HU window the radiologist used
    Patient_gender, Patient_age
    Train_Val_Test             1 train, 2 validation, 3 test (the official patient-level split)

List-valued fields are quoted, comma-and-space separated, e.g. ``"233.537, 95.0204, 234.057, 106.977"``.
Every malformed value raises :class:`~LesionDetectorLib.errors.EvaluationInputError` naming the
file, the line and the column, so a corrupt row is never silently turned into a wrong lesion.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from ..errors import EvaluationInputError

COLUMNS = (
    "File_name", "Patient_index", "Study_index", "Series_ID", "Key_slice_index",
    "Measurement_coordinates", "Bounding_boxes", "Lesion_diameters_Pixel_",
    "Normalized_lesion_location", "Coarse_lesion_type", "Possibly_noisy", "Slice_range",
    "Spacing_mm_px_", "Image_size", "DICOM_windows", "Patient_gender", "Patient_age",
    "Train_Val_Test",
)

LESION_TYPES: Dict[int, str] = {
    -1: "unlabelled", 1: "bone", 2: "abdomen", 3: "mediastinum", 4: "liver",
    5: "lung", 6: "kidney", 7: "soft tissue", 8: "pelvis",
}

SPLITS: Dict[int, str] = {1: "train", 2: "val", 3: "test"}


@dataclass(frozen=True)
class DLInfoRow:
    """One parsed row of ``DL_info.csv`` (pixel units exactly as in the file).

    ``line`` is the 1-based line number in the CSV (the header is line 1), used in every
    message that refers back to the row.
    """

    line: int
    file_name: str
    series_dir: str                                  # folder under Images_png, from File_name
    patient_index: int
    study_index: int
    series_id: int
    key_slice_index: int
    measurement_coordinates: Tuple[float, ...]      # 8 values, pixels (x, y) pairs
    bounding_box: Tuple[float, float, float, float]  # (x1, y1, x2, y2) pixels
    lesion_diameters_px: Tuple[float, float]         # (long, short)
    normalized_location: Tuple[float, float, float]
    lesion_type: int
    possibly_noisy: bool
    slice_range: Tuple[int, int]                     # inclusive slice numbers
    spacing: Tuple[float, float, float]              # (sx, sy, slice interval) mm
    image_size: Tuple[int, int]
    dicom_window: Tuple[float, float]
    gender: str
    age: Optional[float]
    split: str                                       # "train" | "val" | "test"

    @property
    def lesion_type_name(self) -> str:
        return LESION_TYPES[self.lesion_type]

    @property
    def long_axis_mm(self) -> float:
        """Length of the RECIST long axis in mm, from its end points and the pixel spacing."""
        x1, y1, x2, y2 = self.measurement_coordinates[:4]
        return math.hypot((x2 - x1) * self.spacing[0], (y2 - y1) * self.spacing[1])

    @property
    def box_long_side_mm(self) -> float:
        """Longer side of the (padded) bounding box in mm."""
        x1, y1, x2, y2 = self.bounding_box
        return max((x2 - x1) * self.spacing[0], (y2 - y1) * self.spacing[1])


class _RowParser:
    """Turns one ``csv.DictReader`` row into a :class:`DLInfoRow`, naming file/line/column on error."""

    def __init__(self, path: Path, line: int, row: Dict[str, str]):
        self.path, self.line, self.row = path, line, row

    def fail(self, column: str, why: str) -> EvaluationInputError:
        name = self.row.get("File_name", "?")
        return EvaluationInputError(
            f"{self.path}, line {self.line} ({name}): column {column!r} {why} "
            f"(value {self.row.get(column)!r})")

    def text(self, column: str) -> str:
        value = self.row.get(column)
        if value is None:
            raise self.fail(column, "is missing")
        return value.strip()

    def floats(self, column: str, count: int) -> Tuple[float, ...]:
        parts = [p.strip() for p in self.text(column).split(",")]
        if len(parts) != count:
            raise self.fail(column, f"must hold {count} comma-separated numbers, found {len(parts)}")
        try:
            values = tuple(float(p) for p in parts)
        except ValueError:
            raise self.fail(column, "holds a value that is not a number") from None
        if not all(math.isfinite(v) for v in values):
            raise self.fail(column, "holds a non-finite number")
        return values

    def integer(self, column: str) -> int:
        text = self.text(column)
        try:
            value = float(text)
        except ValueError:
            raise self.fail(column, "is not an integer") from None
        if not math.isfinite(value) or value != int(value):
            raise self.fail(column, "is not an integer")
        return int(value)

    def integers(self, column: str, count: int) -> Tuple[int, ...]:
        values = self.floats(column, count)
        if any(v != int(v) for v in values):
            raise self.fail(column, "must hold whole numbers")
        return tuple(int(v) for v in values)

    def parse(self) -> DLInfoRow:
        file_name = self.text("File_name")
        patient, study, series, key = (self.integer(c) for c in
                                       ("Patient_index", "Study_index", "Series_ID", "Key_slice_index"))
        box = self.floats("Bounding_boxes", 4)
        if not (box[2] > box[0] and box[3] > box[1]):
            raise self.fail("Bounding_boxes", "must satisfy x2 > x1 and y2 > y1")
        spacing = self.floats("Spacing_mm_px_", 3)
        if min(spacing) <= 0:
            raise self.fail("Spacing_mm_px_", "must be positive")
        first, last = self.integers("Slice_range", 2)
        if not first <= key <= last:
            raise self.fail("Slice_range", f"must contain the key slice {key}")
        lesion_type = self.integer("Coarse_lesion_type")
        if lesion_type not in LESION_TYPES:
            raise self.fail("Coarse_lesion_type", f"must be one of {sorted(LESION_TYPES)}")
        noisy = self.integer("Possibly_noisy")
        if noisy not in (0, 1):
            raise self.fail("Possibly_noisy", "must be 0 or 1")
        split = self.integer("Train_Val_Test")
        if split not in SPLITS:
            raise self.fail("Train_Val_Test", "must be 1 (train), 2 (val) or 3 (test)")
        age_text = self.text("Patient_age")
        try:
            age = float(age_text) if age_text and age_text.lower() != "nan" else None
        except ValueError:
            raise self.fail("Patient_age", "is not a number") from None
        series_dir = self.check_file_name(file_name, (patient, study, series, key))
        return DLInfoRow(
            line=self.line, file_name=file_name, series_dir=series_dir, patient_index=patient,
            study_index=study, series_id=series, key_slice_index=key,
            measurement_coordinates=self.floats("Measurement_coordinates", 8),
            bounding_box=box, lesion_diameters_px=self.floats("Lesion_diameters_Pixel_", 2),
            normalized_location=self.floats("Normalized_lesion_location", 3),
            lesion_type=lesion_type, possibly_noisy=bool(noisy), slice_range=(first, last),
            spacing=spacing, image_size=self.integers("Image_size", 2),
            dicom_window=self.floats("DICOM_windows", 2), gender=self.text("Patient_gender"),
            age=age, split=SPLITS[split])

    def check_file_name(self, file_name: str, indices: Tuple[int, int, int, int]) -> str:
        """Return the series folder of ``<patient>_<study>_<series>_<slice>.png`` after checking
        that its numbers are the row's indices: the name is the only link between a row and
        its PNG, so a disagreement would attach the lesion to another scan."""
        stem = file_name[:-4] if file_name.lower().endswith(".png") else None
        parts = stem.split("_") if stem else []
        try:
            numbers = tuple(int(p) for p in parts)
        except ValueError:
            numbers = ()
        if len(numbers) != 4:
            raise self.fail("File_name", "is not <patient>_<study>_<series>_<slice>.png")
        if numbers != indices:
            raise self.fail("File_name", f"disagrees with Patient_index/Study_index/Series_ID/"
                                         f"Key_slice_index {indices}")
        return stem.rsplit("_", 1)[0]


def read_dl_info(path: Union[str, Path]) -> List[DLInfoRow]:
    """Read and validate every row of a DeepLesion ``DL_info.csv``.

    Raises :class:`EvaluationInputError` (naming file, line and column) when the file is
    missing, a required column is absent, or any value is malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationInputError(f"DeepLesion annotation file not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise EvaluationInputError(f"{path}: missing DL_info.csv column(s) {missing}")
        rows = []
        for record in reader:
            if not any((v or "").strip() for v in record.values() if isinstance(v, str)):
                continue  # trailing blank line
            if None in record:
                raise EvaluationInputError(
                    f"{path}, line {reader.line_num}: more fields than the header "
                    f"(an unquoted list value?)")
            rows.append(_RowParser(path, reader.line_num, record).parse())
    return rows
