"""Run the tempo_lens benchmark: `python benchmarks/run.py [--quick] [--out DIR]`.

The same as `tempo-lens bench`; the implementation lives in `tempo_lens/bench.py`.
"""

import sys

from tempo_lens.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
