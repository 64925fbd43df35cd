"""Builds mmaplog's optional C record path (mmaplog/_native.c).

The extension is optional: where it cannot be built (no C compiler, no Python
headers), the install goes on and mmaplog runs its pure-Python path, which writes
the same bytes. Everything else about the package is in pyproject.toml.
"""

import sys

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mmaplog._native",
            ["mmaplog/_native.c"],
            optional=True,
            extra_compile_args=["-O2", "-std=c11"],
            libraries=["dl"] if sys.platform.startswith("linux") else [],
        )
    ]
)
