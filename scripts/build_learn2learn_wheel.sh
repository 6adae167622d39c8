#!/usr/bin/env bash
# Builds learn2learn 0.2.0 as a wheel for this Python, once, into a cache folder.
#
# Why: PyPI ships learn2learn 0.2.0 only as an sdist whose pre-generated Cython C files
# include `longintrepr.h`, which Python 3.11 no longer has (learn2learn issue #413).
# Regenerating the C files with Cython < 3 fixes the build. The wheel is built without
# its declared dependencies (gsutil, qpth break resolution and are not needed to import it).
# Usage: build_learn2learn_wheel.sh PYTHON WHEEL_DIR
set -euo pipefail
case $1 in /*) python=$1 ;; *) python=$PWD/$1 ;; esac
case $2 in /*) wheel_dir=$2 ;; *) wheel_dir=$PWD/$2 ;; esac
mkdir -p "$wheel_dir"
if ls "$wheel_dir"/learn2learn-0.2.0-*.whl >/dev/null 2>&1; then
  echo "learn2learn wheel cached in $wheel_dir"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --no-deps --no-binary :all: --no-build-isolation \
  learn2learn==0.2.0 -d "$work"
tar -xzf "$work"/learn2learn-0.2.0.tar.gz -C "$work"
(cd "$work"/learn2learn-0.2.0 && "$python" -m cython -3 learn2learn/data/*.pyx)
"$python" -m pip wheel --no-deps --no-build-isolation -w "$work/dist" "$work"/learn2learn-0.2.0
mv "$work"/dist/learn2learn-0.2.0-*.whl "$wheel_dir"/
