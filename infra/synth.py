"""`python -m infra.synth --stack NAME --out DIR`: the offline synth's command, kept at the path the design and the
docs name; the tool itself is infra/tools/synth.py."""

from __future__ import annotations

import sys

from infra.tools.synth import ROOT, main

if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
