"""Which installed packages differ from the lock: run in `make test-latest`'s venv, it lists
the packages whose newest release (allowed by pyproject) is not the locked version.

Usage: .venv-latest/bin/python tools/lock_drift.py requirements.lock

Prints one line per package, ``name  locked -> installed``, then a count; packages only in
one of the two are listed too (a new or dropped dependency). Exit status 0 always: drift is
information for whoever refreshes the lock, not a failure.
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import distributions
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def canonical(name: str) -> str:
    """PEP 503 name: ``Typing_Extensions`` -> ``typing-extensions``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, str]:
    """{name: version} of every ``name==version`` line of a pip-compile lock."""
    return {canonical(m[1]): m[2] for line in path.read_text().splitlines()
            if (m := PIN.match(line))}


def installed() -> dict[str, str]:
    """{name: version} of this interpreter's environment, the project and torch left out."""
    found = {canonical(d.metadata["Name"]): d.version for d in distributions()}
    found.pop("productvlm", None)
    found.pop("torch", None)  # the Makefile's TORCH_SPEC step, never in the lock
    return found


def drift(lock: dict[str, str], env: dict[str, str]) -> list[str]:
    """Lines for packages whose versions differ or that only one side has.

    >>> drift({"peft": "0.21.2", "six": "1.0"}, {"peft": "0.22.0", "torch": "2.13.0"})
    ['peft  0.21.2 -> 0.22.0', 'six  1.0 -> (not installed)', 'torch  (not locked) -> 2.13.0']
    """
    lines = []
    for name in sorted(set(lock) | set(env)):
        old, new = lock.get(name, "(not locked)"), env.get(name, "(not installed)")
        if old != new:
            lines.append(f"{name}  {old} -> {new}")
    return lines


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "requirements.lock")
    lines = drift(locked(path), installed())
    print(f"packages whose newest allowed release differs from {path} ({len(lines)}):")
    for line in lines:
        print(f"  {line}")


if __name__ == "__main__":
    main()
