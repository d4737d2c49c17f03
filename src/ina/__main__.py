"""`python -m ina ...` (also what `torchrun -m ina finetune ...` runs)."""

import sys

from ina.cli import main

sys.exit(main())
