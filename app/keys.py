"""`python -m app.keys`: the key-file CLI, kept at this documented name; it lives in app.access.keys."""

import sys

from app.access.keys import main

if __name__ == "__main__":
    sys.exit(main())
