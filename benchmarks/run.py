"""`python benchmarks/run.py ARGS` from a source checkout: the same as `edgeba bench ARGS` (see README.md here)."""

import sys

from edgeba.bench import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
