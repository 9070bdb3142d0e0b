"""`python -m lory_lightning` is the `lory` console script."""

import sys

from .cli import main

sys.exit(main())
