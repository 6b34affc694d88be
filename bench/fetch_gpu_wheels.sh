#!/usr/bin/env bash
# Download, on a machine WITH network, the wheels bench/gpu_check.sh installs offline on a GPU
# machine without network: the build backend (scikit-build-core, nanobind and their pure-Python
# deps), cmake + ninja (in case the image has no cmake >= 3.24) and the test tools (pytest,
# hypothesis, pytest-benchmark). Everything goes to one gitignored folder (default .gpu_wheels/)
# that the GPU run carries along (~36 MB; cmake is 30 MB of it).
#
# The GPU image's Python version is unknown, so the download is resolved for CPython 3.10-3.13:
# the build backend is py3-none-any, cmake/ninja are py3-none-manylinux, only hypothesis has
# per-version wheels.
#
# Optional: --prebuilt also builds, with this machine's nvcc, an opgrpo_fast wheel with the CUDA
# matcher for sm_90 (+ PTX) for this machine's Python (cp311 here) into .gpu_wheels/prebuilt/.
# gpu_check.sh uses it only when the GPU machine has no nvcc and its Python matches. Built with
# nvcc 13 it needs an R580+ driver there (cudart is linked statically).
#
# Usage: bash bench/fetch_gpu_wheels.sh [--prebuilt] [DEST]      (run from anywhere)
set -euo pipefail
cd "$(dirname "$0")/.."

PREBUILT=0
if [[ "${1:-}" == "--prebuilt" ]]; then PREBUILT=1; shift; fi
DEST=${1:-.gpu_wheels}
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=$(command -v python3); fi
fi
mkdir -p "$DEST"

# The pins follow pyproject.toml's [build-system] and [project.optional-dependencies].test.
PKGS=("scikit-build-core>=1.1,<2" "nanobind>=2.4,<4" "cmake>=3.24" "ninja"
      "pytest>=8" "hypothesis>=6.100" "pytest-benchmark>=4")
PLATFORMS=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)

for ver in 3.10 3.11 3.12 3.13; do
  abi=cp${ver/./}
  # pip evaluates dependency markers (python_version < "3.11") for the interpreter it runs on, not the
  # target: name the 3.10-only dependencies of pytest / scikit-build-core / hypothesis explicitly.
  extra=()
  [[ $ver == 3.10 ]] && extra=("exceptiongroup>=1" "tomli>=2" "typing-extensions>=4")
  echo "== wheels for CPython $ver -> $DEST"
  "$PY" -m pip download -q --only-binary=:all: --python-version "$ver" --implementation cp --abi "$abi" \
    --abi abi3 --abi none "${PLATFORMS[@]}" -d "$DEST" "${PKGS[@]}" "${extra[@]}"
done

if [[ $PREBUILT == 1 ]]; then
  echo "== prebuilt opgrpo_fast wheel with the CUDA matcher (sm_90 + PTX), $("$PY" -c 'import sys; print(sys.implementation.cache_tag)')"
  command -v nvcc >/dev/null || { echo "no nvcc on PATH: cannot build the prebuilt CUDA wheel" >&2; exit 1; }
  mkdir -p "$DEST/prebuilt"
  rm -f "$DEST"/prebuilt/opgrpo_fast-*.whl
  builddir=$(mktemp -d)
  # Own build dir: the repo's build/ (the local editable install) is left alone.
  OPGRPO_CUDA=ON CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90" \
    "$PY" -m pip wheel -q --no-build-isolation --no-deps -C build-dir="$builddir" -w "$DEST/prebuilt" .
  rm -rf "$builddir"
fi

echo "== $DEST:"
ls -1 "$DEST" "$DEST"/prebuilt 2>/dev/null || true
du -sh "$DEST"
