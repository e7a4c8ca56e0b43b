"""Writing secrets to disk: private to our user, and never visible half-written.

A reader (our own TLS reload, run every few seconds) must see the old file or the new one, never
an empty or truncated key: so the text goes to a temporary file in the same directory, created
0600 (the mode is set at creation, so there is no moment it is readable by others), flushed to
disk, then renamed over the target, which POSIX makes atomic. The directory is synced too, so a
crash does not leave the rename unrecorded.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp creates it 0600
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
