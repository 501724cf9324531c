"""The one place where a test may be skipped: a missing peer program.

``require_binary(name)`` returns the program's path. When it is not installed the test
fails under CI (env ``CI`` is "true" or "1", as set by ``.ci/run``) and is skipped
otherwise, so a developer without the Debian packages can still run the unit tests.
"""

from __future__ import annotations

import os
import shutil

import pytest

# Debian package that provides each program (see the Makefile's `peers` target)
PACKAGES: dict[str, str] = {
    "redis-server": "redis-server",
    "kamailio": "kamailio",
    "kamcmd": "kamailio",
    "baresip": "baresip-core",
    "sipp": "sip-tester",
    "sox": "sox",
}


def in_ci() -> bool:
    """True when env CI says so ("true"/"1", case-insensitive)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require_binary(name: str) -> str:
    """Return the path of program ``name``; fail (CI) or skip (otherwise) if missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")
    if path:
        return path
    pkg = PACKAGES.get(name, name)
    msg = (
        f"required program {name!r} is not installed (Debian package {pkg!r}); "
        "run `make peers` as root or apt-get install it"
    )
    if in_ci():
        pytest.fail(
            f"{msg} [CI={os.environ.get('CI')}: missing peers fail the build]", pytrace=False
        )
    pytest.skip(msg)
    raise AssertionError("unreachable")  # pytest.skip raises
