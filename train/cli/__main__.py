"""``python -m train.cli`` (and ``torchrun -m train.cli``): the same as the ``instructcraft`` script."""

import sys

from train.cli import main

sys.exit(main())
