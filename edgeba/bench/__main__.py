"""`python -m edgeba.bench ARGS` = `edgeba bench ARGS`."""

import sys

from edgeba.bench import main

sys.exit(main())
