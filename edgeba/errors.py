"""The exception types edgeba raises on purpose.

Every message is one line that a clinician can act on; the CLI prints it and exits non-zero.
"""


class EdgebaError(Exception):
    """Base class: anything edgeba reports as a clear, expected failure."""


class InputError(EdgebaError):
    """The input file is missing, unreadable, corrupt, empty, absurdly large or not a radiograph."""


class SegmentationError(EdgebaError):
    """No plausible hand was found in the image."""


class ModelError(EdgebaError):
    """A model file is missing, corrupt (sha256 mismatch) or its backend is not installed."""
