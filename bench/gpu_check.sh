#!/usr/bin/env bash
# GPU check (CUDA machines only; `make gpu-check`, never part of `make test`): build the CUDA
# greedy matcher, run the GPU tests, time the ops on the GPU, and write ONE JSON report,
# ${OUT:-bench/results}/gpu_check.json, even when a stage fails or runs out of time. The stages'
# raw outputs (env/build JSON, junit XML, pytest-benchmark JSON, logs) go to $OUT/gpu_check/.
#
# Stages (each under `timeout`, clamped to what is left of GPU_CHECK_BUDGET, default 450 s):
#   probe        torch.cuda.is_available() or exit 2; device, capability, versions -> env.json   (60 s)
#   deps         offline install of what is missing: scikit-build-core, nanobind, cmake, ninja,
#                pytest, hypothesis, pytest-benchmark, from ${GPU_WHEELS:-.gpu_wheels}
#                (bench/fetch_gpu_wheels.sh fills it)                                            (90 s)
#   build        nvcc found: OPGRPO_CUDA=ON, CMAKE_CUDA_ARCHITECTURES=<device's sm>, pip install
#                --no-build-isolation --no-deps -e .; no nvcc (or the build failed): the
#                prebuilt wheel's _C from .gpu_wheels/prebuilt (same Python only), else a CPU-only
#                build, so the Triton checks still run. Verifies _C.has_cuda -> build.json        (240 s)
#   tests_cuda   pytest -m cuda on the test files that use the marker (Triton native on CUDA
#                tensors, fp32/bf16/fp16; CUDA matcher vs the references incl. ties, big blocks)  (180 s)
#   bench        op benchmarks (similarity, advantages, greedy): the CUDA members plus the fast CPU
#                ones (vectorised / public op / C++) for comparison, short rounds, GB/s            (90 s)
#   tests_kernels_cpu  the CPU side of the kernel test files in this environment
#                (TRITON_INTERPRET unset: the interpreted-Triton tests must skip, the rest pass) (90 s)
#   tests_rest   the rest of the suite, -m "not cuda" (whatever time is left)                    (120 s)
#   report       bench/gpu_report.py -> gpu_check.json (standard library only)
#
# Env: OUT (report folder), PYTHON (interpreter with torch), GPU_WHEELS, GPU_CHECK_BUDGET (s),
#      CUDA_ARCH (override, e.g. 90), GPU_CHECK_REST=0 (skip tests_rest).
# Exit: 0 all stages ok and has_cuda; 1 something failed (see the report); 2 no CUDA device.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
STARTED=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-450}
DEADLINE=$((STARTED + BUDGET))
RESERVE=15  # seconds kept for the report
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REPORT=$OUT/gpu_check.json
AUX=$OUT/gpu_check  # raw stage outputs; the report is built from them
rm -rf "$AUX" "$REPORT"
mkdir -p "$AUX/logs"
WHEELS=${GPU_WHEELS:-$REPO/.gpu_wheels}

unset TRITON_INTERPRET OPGRPO_BACKEND
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PIP_NO_INDEX=1 PIP_FIND_LINKS=$WHEELS PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
       PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore

log() { printf '[gpu_check %4ss] %s\n' "$(($(date +%s) - STARTED))" "$*"; }

report() {
  "$PY" bench/gpu_report.py "$AUX" "$REPORT" --started "$STARTED" ||
    python3 bench/gpu_report.py "$AUX" "$REPORT" --started "$STARTED"
}

# run_stage NAME CAP_SECONDS OK_RCS CMD...: run CMD under timeout (SIGINT first, so pytest still
# writes its junit XML / benchmark JSON), log to $AUX/logs/NAME.log, append a line to stages.jsonl.
run_stage() {
  local name=$1 cap=$2 ok_rcs=$3; shift 3
  local left=$((DEADLINE - RESERVE - $(date +%s)))
  local t=$((cap < left ? cap : left))
  if ((t < 10)); then
    log "$name: skipped (${left}s left of the ${BUDGET}s budget)"
    printf '{"name": "%s", "status": "skipped", "rc": null, "seconds": 0, "budget_s": %d}\n' "$name" "$t" \
      >>"$AUX/stages.jsonl"
    return 99
  fi
  log "$name: start (timeout ${t}s)"
  local t0=$(date +%s)
  timeout -s INT -k 15 "$t" "$@" >"$AUX/logs/$name.log" 2>&1
  local rc=$? status=failed
  local dt=$(($(date +%s) - t0))
  if ((rc == 124 || rc == 137)); then status=timeout; elif [[ " $ok_rcs " == *" $rc "* ]]; then status=ok; fi
  printf '{"name": "%s", "status": "%s", "rc": %d, "seconds": %d, "budget_s": %d}\n' "$name" "$status" "$rc" "$dt" "$t" \
    >>"$AUX/stages.jsonl"
  log "$name: $status (rc=$rc, ${dt}s)"
  [[ $status == ok ]]
}

# ---- interpreter: the first with torch ---------------------------------------------------------
PY=""
for cand in ${PYTHON:-} python3 python "$REPO/.venv/bin/python"; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch" >/dev/null 2>&1; then PY=$(command -v "$cand"); break; fi
done
if [[ -z $PY ]]; then
  echo "gpu_check: no Python with torch found (set PYTHON=...)" >&2
  printf '{"error": "no Python with torch"}\n' >"$AUX/env.json"
  python3 bench/gpu_report.py "$AUX" "$REPORT" --started "$STARTED" >/dev/null 2>&1
  exit 2
fi
# scripts installed by pip (cmake, ninja), for a system or a --user install
export PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"

# ---- probe: refuse without CUDA --------------------------------------------------------------
run_stage probe 60 0 "$PY" - "$AUX/env.json" <<'EOF'
import json, os, platform, shutil, subprocess, sys
env = {"python": platform.python_version(), "python_executable": sys.executable}
try:
    import torch
    env.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception as exc:  # noqa: BLE001
        env["triton"] = None
        env["triton_error"] = repr(exc)
    if env["cuda_available"]:
        p = torch.cuda.get_device_properties(0)
        env.update(device_name=p.name, capability=f"{p.major}.{p.minor}", arch=f"{p.major}{p.minor}",
                   device_count=torch.cuda.device_count(), total_memory_gib=round(p.total_memory / 2**30, 1),
                   sm_count=p.multi_processor_count)
        clock, bus = getattr(p, "memory_clock_rate", None), getattr(p, "memory_bus_width", None)  # kHz, bits
        if clock and bus:
            env["derived_peak_gbs"] = round(2 * clock * 1e3 * bus / 8 / 1e9, 1)
    else:
        env["error"] = "torch.cuda.is_available() is False: no CUDA device (gpu_check runs on CUDA machines only)"
except Exception as exc:  # noqa: BLE001
    env["error"] = f"import torch failed: {exc!r}"
for tool, args in (("nvidia-smi", ["--query-gpu=driver_version,name", "--format=csv,noheader"]), ("nvcc", ["--version"])):
    exe = shutil.which(tool)
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if not exe and tool == "nvcc" and home and os.path.exists(f"{home}/bin/nvcc"):
            exe = f"{home}/bin/nvcc"
    if exe:
        try:
            out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=20).stdout.strip()
            env[tool.replace("-", "_")] = out.splitlines()[0] if tool == "nvidia-smi" else out.splitlines()[-1]
        except Exception as exc:  # noqa: BLE001
            env[tool.replace("-", "_")] = repr(exc)
json.dump(env, open(sys.argv[1], "w"), indent=2)
print(json.dumps(env, indent=2))
sys.exit(2 if "error" in env else 0)
EOF
if ! "$PY" -c "import json,sys; sys.exit(0 if json.load(open('$AUX/env.json')).get('cuda_available') else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False): this check runs on CUDA machines only." >&2
  echo "gpu_check: nothing was built or run; see $REPORT" >&2
  report >/dev/null 2>&1
  exit 2
fi
ARCH=${CUDA_ARCH:-$("$PY" -c "import json; print(json.load(open('$AUX/env.json'))['arch'])")}
log "device: $("$PY" -c "import json; e=json.load(open('$AUX/env.json')); print(e.get('device_name'), 'sm_' + str(e.get('arch')), 'torch', e.get('torch'), 'triton', e.get('triton'))")"

# ---- deps: offline install of what is missing -------------------------------------------------
deps() {
  local missing=() mod pkg
  for pair in scikit_build_core:scikit-build-core nanobind:nanobind pytest:pytest hypothesis:hypothesis \
              pytest_benchmark:pytest-benchmark; do
    mod=${pair%%:*} pkg=${pair#*:}
    "$PY" -c "import $mod" 2>/dev/null || missing+=("$pkg")
  done
  if ! cmake --version 2>/dev/null | "$PY" -c "import re,sys; v=re.search(r'(\d+)\.(\d+)', sys.stdin.read()); sys.exit(0 if v and (int(v[1]), int(v[2])) >= (3, 24) else 1)"; then
    missing+=("cmake>=3.24")
  fi
  command -v ninja >/dev/null || missing+=(ninja)
  echo "python: $PY; missing: ${missing[*]:-nothing}"
  if ((${#missing[@]})); then
    [[ -d $WHEELS ]] || { echo "no wheel folder $WHEELS (bench/fetch_gpu_wheels.sh makes it; carry it)"; return 1; }
    "$PY" -m pip install --no-index --find-links "$WHEELS" "${missing[@]}" || return 1
  fi
  command -v c++ || command -v g++ || echo "WARNING: no C++ compiler on PATH: the build will fail"
  cmake --version | head -1
}
export PY OUT AUX WHEELS REPO ARCH
export -f deps
run_stage deps 90 0 bash -c deps

# ---- build ------------------------------------------------------------------------------------
NVCC=$(command -v nvcc || true)
for c in "${CUDA_HOME:-}/bin/nvcc" /usr/local/cuda/bin/nvcc; do
  [[ -z $NVCC && -x $c ]] && NVCC=$c
done
BUILD_MODE=none
verify_build() {  # writes build.json; succeeds when _C imports with CUDA and sees a device
  "$PY" - "$AUX/build.json" "$1" "$NVCC" <<'EOF'
import json, sys
info = {"mode": sys.argv[2], "nvcc": sys.argv[3] or None}
try:  # keep earlier attempts (e.g. a CUDA build whose kernel could not start, before the fallback)
    prev = json.load(open(sys.argv[1]))
    info["attempts"] = prev.pop("attempts", []) + [prev]
except (OSError, ValueError):
    pass
try:
    from opgrpo_fast import _C
    info.update(so=_C.__file__, has_cuda=bool(_C.has_cuda))
    if _C.has_cuda:
        info["cuda_device_count"], info["cuda_error"] = _C.cuda_device_count()
except Exception as exc:  # noqa: BLE001
    info.update(has_cuda=False, import_error=repr(exc))
try:
    import opgrpo_fast.kernels.similarity  # noqa: F401
    info["kernels_import"] = True
except Exception as exc:  # noqa: BLE001
    info["kernels_import"] = repr(exc)
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info, indent=2))
sys.exit(0 if info.get("has_cuda") and info.get("cuda_device_count", 0) > 0 else 1)
EOF
}
build_cuda() {
  echo "nvcc: $NVCC ($("$NVCC" --version | tail -1)); CMAKE_CUDA_ARCHITECTURES=$ARCH"
  export PATH="$(dirname "$NVCC"):$PATH" CUDACXX=$NVCC
  OPGRPO_CUDA=ON CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=$ARCH" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$PY" -m pip install -v --no-build-isolation --no-deps -e . || return 1
  verify_build cuda-build
}
# No nvcc: the prebuilt wheel's _C (bench/fetch_gpu_wheels.sh --prebuilt), dropped into the source
# tree with opgrpo_fast/kernels -> ../kernels, so `python -m pytest` from the repo root imports it.
use_prebuilt() {
  local tag whl
  tag=$("$PY" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
  whl=$(ls "$WHEELS"/prebuilt/opgrpo_fast-*-"$tag"-*.whl 2>/dev/null | head -1)
  [[ -n $whl ]] || { echo "no prebuilt wheel for $tag in $WHEELS/prebuilt"; return 1; }
  echo "prebuilt: $whl"
  "$PY" -m pip uninstall -y opgrpo_fast >/dev/null 2>&1
  "$PY" - "$whl" <<'EOF' || return 1
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for name in z.namelist():
        if name.startswith("opgrpo_fast/_C") and name.endswith(".so"):
            z.extract(name, ".")
            print("extracted", name)
EOF
  [[ -e opgrpo_fast/kernels ]] || ln -s ../kernels opgrpo_fast/kernels
  verify_build prebuilt
}
build_cpu_only() {
  rm -f opgrpo_fast/_C*.so && { [[ ! -L opgrpo_fast/kernels ]] || rm opgrpo_fast/kernels; }  # prebuilt leftovers
  OPGRPO_CUDA=OFF "$PY" -m pip install -v --no-build-isolation --no-deps -e . || return 1
  verify_build cpu-only-build
  return 0  # the Triton checks can still run
}
build() {
  if [[ -n $NVCC ]]; then
    build_cuda && return 0
    echo "== CUDA build failed"
  else
    echo "== no nvcc (PATH, \$CUDA_HOME, /usr/local/cuda)"
  fi
  use_prebuilt && return 0
  echo "== no usable prebuilt _C: CPU-only build (the CUDA matcher is NOT checked)"
  build_cpu_only
  return 1
}
export NVCC
export -f verify_build build_cuda use_prebuilt build_cpu_only build
run_stage build 240 0 bash -c build
[[ -f $AUX/build.json ]] || verify_build none >/dev/null 2>&1

# ---- tests and benchmarks -----------------------------------------------------------------------
PYTEST=("$PY" -m pytest -p no:cacheprovider -q -rfE)
KERNEL_TESTS=(tests/test_similarity.py tests/test_advantages.py tests/test_greedy_match.py)
# Only the files that use the marker: an unrelated module that fails to import here is tests_rest's news.
mapfile -t CUDA_TESTS < <(grep -l "pytest.mark.cuda" tests/test_*.py)
run_stage tests_cuda 180 0 "${PYTEST[@]}" "${CUDA_TESTS[@]}" -m cuda --junitxml="$AUX/tests_cuda.xml"
# The Python-loop baselines / references are left out (seconds per call, nothing to learn on a GPU).
run_stage bench 90 0 "${PYTEST[@]}" bench/bench_similarity.py bench/bench_advantages.py bench/bench_greedy_match.py \
  -k "cuda or vectorised or public_op or cpp" --benchmark-only --benchmark-min-rounds=5 \
  --benchmark-max-time=0.25 --benchmark-json="$AUX/bench.json" --junitxml="$AUX/bench.xml"
run_stage tests_kernels_cpu 90 0 "${PYTEST[@]}" "${KERNEL_TESTS[@]}" -m "not cuda" \
  --junitxml="$AUX/tests_kernels_cpu.xml"
if [[ ${GPU_CHECK_REST:-1} != 0 ]]; then
  run_stage tests_rest 120 "0 5" "${PYTEST[@]}" tests -m "not cuda" --continue-on-collection-errors \
    "${KERNEL_TESTS[@]/#/--ignore=}" --junitxml="$AUX/tests_rest.xml"
fi

# ---- report -----------------------------------------------------------------------------------
report | tee "$AUX/logs/report.log"
"$PY" -c "import json,sys; sys.exit(0 if json.load(open('$REPORT'))['ok'] else 1)"
