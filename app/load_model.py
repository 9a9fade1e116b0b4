"""`python -m app.load_model`: the model conversion CLI, kept at this documented name; it lives in app.inference.load_model."""

import sys

from app.inference.load_model import main

if __name__ == "__main__":
    sys.exit(main())
