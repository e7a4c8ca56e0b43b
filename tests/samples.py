from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
SAMPLES = SHARED / "inferno-sample-data"
SAMPLE_DIRS = [SAMPLES / version / size for version in ("849e1e8", "125ab02") for size in ("small", "large")]


def require_samples() -> None:
    if not SAMPLES.is_dir():
        pytest.fail(f"Inferno sample data not found at {SAMPLES}: tests expect ../shared beside the checkout")
