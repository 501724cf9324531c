"""Build of the one C extension, the relay's fast path (everything else is in pyproject.toml).

``pip install -e .`` (``make venv``) compiles it; it needs a C compiler and Python's headers
(Debian: gcc, and python3-dev for Debian's own Python).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sipdialer.rtp._fastrelay",
            sources=["sipdialer/rtp/_fastrelay.c"],
            extra_compile_args=["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
