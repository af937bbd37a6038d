"""Silence C libraries that print on file descriptor 2 (libpng, libjpeg, the TFLite delegate log):
edgeba reports every problem itself, in one line."""

from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def quiet_stderr():
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
