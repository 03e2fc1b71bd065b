"""Exceptions users see. Messages name the cause in words a radiologist understands."""


class LesionDetectorError(Exception):
    """Base class of every error the library raises on purpose."""


class VolumeError(LesionDetectorError, ValueError):
    """The input scan cannot be used (missing, unreadable, not a CT, bad geometry...)."""


class NoLungsFoundError(LesionDetectorError):
    """Preprocessing found no lung tissue, so detection would be meaningless."""


class ModelError(LesionDetectorError):
    """A model directory, card or weight file is missing, corrupt or does not match its SHA-256."""


class CancelledError(LesionDetectorError):
    """The user cancelled a long-running job; nothing was written."""


class EvaluationInputError(LesionDetectorError, ValueError):
    """An annotation / prediction file for evaluation is malformed; the message names file and line."""


class OutputFolderError(LesionDetectorError):
    """The output folder cannot hold results (a file, read-only, not creatable); checked before any work."""


class ComparisonInputError(LesionDetectorError, ValueError):
    """Two scans or their findings cannot be compared (findings of another scan, dates reversed...)."""
