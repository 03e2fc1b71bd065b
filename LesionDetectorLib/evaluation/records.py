"""Plain records the evaluation reads: annotated nodules and detector marks.

Coordinates are world LPS millimetres, exactly the ``coordX, coordY, coordZ`` columns of
the LUNA16 CSV files (``x, y, z`` order, not the ``[z, y, x]`` array order).
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Mapping
from typing import Iterable, List, Tuple

from ..errors import EvaluationInputError

#: Diameter the official LUNA16 script (noduleCADEvaluationLUNA16.py, ``evaluateCAD``) gives
#: any annotation whose ``diameter_mm`` is negative; ``annotations_excluded.csv`` marks
#: non-nodules and nodules < 3 mm with ``-1``, so their hit radius is 5 mm.
DEFAULT_DIAMETER_MM = 10.0


@dataclass(frozen=True)
class Annotation:
    """One annotated finding of a scan (``annotations.csv`` / ``annotations_excluded.csv`` row).

    ``diameter_mm < 0`` means "size unknown"; :attr:`hit_radius_mm` then uses
    :data:`DEFAULT_DIAMETER_MM` as the official script does.
    """

    seriesuid: str
    x: float
    y: float
    z: float
    diameter_mm: float

    @property
    def hit_radius_mm(self) -> float:
        """A mark hits this finding when its centre lies strictly closer than this."""
        diameter = self.diameter_mm if self.diameter_mm >= 0.0 else DEFAULT_DIAMETER_MM
        return diameter / 2.0


@dataclass(frozen=True)
class Prediction:
    """One detector mark (a LUNA16 submission row): centre in LPS mm and its probability."""

    seriesuid: str
    x: float
    y: float
    z: float
    probability: float


_ANNOTATION_KEYS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
_PREDICTION_KEYS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")


def _coerce(items: Iterable, cls, keys: Tuple[str, ...], what: str) -> List:
    out = []
    for n, item in enumerate(items):
        if isinstance(item, cls):
            out.append(item)
            continue
        try:
            if isinstance(item, Mapping):
                values = [item[k] for k in keys]
            else:
                values = list(item)
                if len(values) != len(keys):
                    raise ValueError(f"{len(values)} fields")
            out.append(cls(str(values[0]), *(float(v) for v in values[1:])))
        except (KeyError, TypeError, ValueError) as exc:
            raise EvaluationInputError(
                f"{what}: item {n + 1} is not a {cls.__name__} nor a {'/'.join(keys)} row ({exc})") from None
    return out


def as_annotations(items: Iterable, what: str = "annotations") -> List[Annotation]:
    """Accept :class:`Annotation` objects, dicts with the LUNA16 column names or
    ``(seriesuid, x, y, z, diameter_mm)`` tuples, so callers need no files."""
    return _coerce(items, Annotation, _ANNOTATION_KEYS, what)


def as_predictions(items: Iterable, what: str = "predictions") -> List[Prediction]:
    """Accept :class:`Prediction` objects, dicts with the LUNA16 column names or
    ``(seriesuid, x, y, z, probability)`` tuples."""
    return _coerce(items, Prediction, _PREDICTION_KEYS, what)
