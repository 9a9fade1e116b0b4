"""Where a benchmark run's figures go: bench/results/<name>-<timestamp>.json (git-ignored), plus --json if given."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_results(name: str, results: dict[str, Any], extra: Path | None = None) -> list[Path]:
    paths = [RESULTS_DIR / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"] + ([extra] if extra is not None else [])
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {', '.join(str(p) for p in paths)}", flush=True)
    return paths
