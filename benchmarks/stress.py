"""`python benchmarks/stress.py ARGS` from a source checkout: the same as `edgeba stress ARGS` (edgeba/stress.py)."""

import sys

from edgeba.stress import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
