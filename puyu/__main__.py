"""``python -m puyu`` (also what ``torchrun -m puyu`` runs)."""

import sys

from puyu.cli import main

sys.exit(main())
