"""`python -m embetter_plug.cli`: the same as the `embetter-plug` command."""

import sys

from . import main

sys.exit(main())
