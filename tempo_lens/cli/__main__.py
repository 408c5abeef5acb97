"""`python -m tempo_lens.cli`: the `tempo-lens` command."""

import sys

from tempo_lens.cli import main

sys.exit(main())
