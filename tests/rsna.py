"""Real RSNA radiographs for tests (read from ../shared/data/rsna or $EDGEBA_DATA; never copied here).

Missing data is an error, not a skip: these tests exist to check real images.
"""

import numpy as np

from edgeba import dataset
from edgeba.io import load_image


def rsna_image(case_id: str) -> np.ndarray:
    return load_image(dataset.rsna_root() / "train" / f"{case_id}.jpg").pixels
