# The package's metadata is in pyproject.toml; this only declares the JSON
# writer's compiled helper (setuptools before 74 reads ext_modules only here).
from setuptools import Extension, setup

setup(ext_modules=[Extension("dbslower._jsonlines", ["src/dbslower/_jsonlines.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"])])
