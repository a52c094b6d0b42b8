"""Refuse to start `make setup` on a disk that cannot hold the virtualenv, in one clear line.

torch from PyPI brings its CUDA libraries (~6.6 GB installed, ~3 GB of wheels
downloaded first); pip's own "No space left on device" comes minutes later,
mid-install, and leaves a half-built .venv behind.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

NEEDED_GIB = 8.0


def main() -> int:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    free_gib = shutil.disk_usage(target).free / 2**30
    if free_gib < NEEDED_GIB:
        print(
            f"rankstream: error: only {free_gib:.1f} GiB free on the disk of {target}; installing .venv "
            f"(torch with its CUDA libraries) needs about {NEEDED_GIB:.0f} GiB: free some space and rerun",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
