"""The image installs only pinned, hashed packages: requirements.lock covers every runtime
dependency of pyproject.toml (and what they need), build-requirements.lock the build system's,
each pin satisfies the declared range and carries hashes, and the Dockerfile installs from them
with --require-hashes."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# the image: CPython 3.11 on Linux (the lock is resolved for it)
IMAGE = {**default_environment(), "python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}


def pins(lock: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes)."""
    found, current = {}, None
    for line in (ROOT / lock).read_text().splitlines():
        pinned = re.match(r"^([A-Za-z0-9_.\-]+)==([^ ;\\]+)", line)
        if pinned:
            current = canonicalize_name(pinned[1])
            found[current] = (pinned[2], 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = found[current]
            found[current] = (version, hashes + 1)
    return found


@pytest.mark.parametrize(
    "lock, declared",
    [
        ("requirements.lock", PYPROJECT["project"]["dependencies"]),
        ("build-requirements.lock", PYPROJECT["build-system"]["requires"]),
    ],
)
def test_the_lock_covers_every_declared_dependency(lock, declared):
    locked = pins(lock)
    assert locked and all(hashes for _, hashes in locked.values()), [n for n, (_, h) in locked.items() if not h]
    for text in declared:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate(IMAGE):
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{lock} does not pin {requirement.name}"
        assert requirement.specifier.contains(locked[name][0], prereleases=True), (text, locked[name][0])


def test_the_image_installs_from_the_locks_only():
    dockerfile = (ROOT / "Dockerfile").read_text()
    installs = [line for line in dockerfile.replace("\\\n", " ").splitlines() if "pip install" in line or "pip wheel" in line]
    for lock in ("requirements.lock", "build-requirements.lock"):
        assert any(f"--require-hashes --no-deps -r {lock}" in line for line in installs), lock
    for line in installs:  # the rest: our own wheel only, nothing fetched
        if "--require-hashes" not in line:
            assert "--no-deps" in line and ("/wheels" in line or "--no-build-isolation" in line), line
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert bases and all(re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", b) for b in bases), bases
