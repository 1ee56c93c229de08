"""`python -m diff_gaussian_rasterization_depth demo|render ...` (see cli.py)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
