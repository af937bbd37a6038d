"""edgeba: bone age from a left-hand radiograph, on clinic hardware.

The pipeline is one module per stage: io (load) -> segment -> crop -> enhance -> regress.
Importing edgeba never imports TensorFlow; training and export code lives in edgeba.training
and edgeba.export and needs the [train] extra.
"""

__version__ = "0.1.0"

from edgeba.errors import EdgebaError, InputError, ModelError, SegmentationError  # noqa: F401
