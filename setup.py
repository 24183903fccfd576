"""Build the one C++ extension, wrinklefree_rt._core, from the Cython module and cpp/.

Everything else lives in pyproject.toml. ISA-specific kernels select their instruction sets per
function with __attribute__((target(...))) and are chosen at run time, so no -march flag is
passed: the built wheel runs on any x86-64 (and non-x86) CPU.
"""
import glob
import sys

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

sources = ["wrinklefree_rt/_core.pyx"] + sorted(glob.glob("cpp/*.cpp")) + sorted(glob.glob("cpp/kernels/*.cpp"))

if sys.platform == "win32":
    compile_args = ["/std:c++17", "/O2", "/W3"]
    link_args = []
else:
    compile_args = ["-std=c++17", "-O3", "-Wall", "-Wextra", "-pthread", "-fno-math-errno"]
    link_args = ["-pthread"]

ext = Extension(
    "wrinklefree_rt._core",
    sources=sources,
    include_dirs=["cpp", "wrinklefree_rt", np.get_include()],
    language="c++",
    extra_compile_args=compile_args,
    extra_link_args=link_args,
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(
    ext_modules=cythonize(
        [ext],
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "embedsignature": True},
    ),
)
