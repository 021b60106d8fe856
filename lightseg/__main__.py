"""`python -m lightseg` (also `torchrun -m lightseg train ...`)."""
import sys

from .cli import main

sys.exit(main())
