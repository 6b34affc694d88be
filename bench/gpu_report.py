"""Assemble bench/gpu_check.sh's one JSON report from what its stages left in its raw-output folder.

Inputs, in AUX_DIR (all optional: a stage that failed or was skipped simply leaves its file out)
    env.json           device / version probe (written by gpu_check.sh's first stage)
    stages.jsonl       one line per stage: {"name", "rc", "seconds", "budget_s", "status"}
    build.json         {"mode", "has_cuda", "cuda_device_count", ...} after the build stage
    <stage>.xml        pytest junit XML of each pytest stage (tests_cuda, bench, tests_kernels_cpu, tests_rest)
    bench.json         pytest-benchmark JSON (``extra_info["bytes"]`` gives GB/s)
    logs/<stage>.log   each stage's output (the last lines go into the report for failed stages)

Output: REPORT (gpu_check.json) and a short summary on stdout. ``ok``: every stage ok, no failed
test, and the CUDA matcher built and started; ``gpu_ok``: the same restricted to the GPU stages
(probe, deps, build, tests_cuda, bench), i.e. ignoring the CPU-side test stages.

Usage: python bench/gpu_report.py AUX_DIR REPORT [--started EPOCH_SECONDS]
Standard library only: it must run even when the build or the test tools failed to install.
"""
from __future__ import annotations

import argparse
import json
import time
import xml.etree.ElementTree as ET
from pathlib import Path

# Peak DRAM bandwidth (GB/s, vendor figures) by device-name substring, first match wins
# (more specific names first). Unknown cards fall back to the value derived from the memory clock
# and bus width that torch reports, when it does.
PEAK_GBS = [
    ("GH200", 4000), ("H200", 4800), ("H100 NVL", 3900), ("H100 PCIe", 2000), ("H100", 3350), ("H800", 3350),
    ("B200", 8000), ("B100", 8000), ("A100-SXM4-80GB", 2039), ("A100 80GB PCIe", 1935), ("A100", 1555),
    ("A800", 2039), ("L40S", 864), ("L40", 864), ("L4", 300), ("A10G", 600), ("A10", 600), ("A40", 696),
    ("RTX 6000 Ada", 960), ("RTX 4090", 1008), ("RTX 3090", 936), ("V100", 900), ("T4", 320),
]
TAIL_LINES = 40


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tail(path: Path, n: int = TAIL_LINES) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-n:]
    except OSError:
        return []


def peak_bandwidth(env: dict | None) -> tuple[float | None, str]:
    if not env or not env.get("device_name"):
        return None, "no device"
    name = env["device_name"]
    for key, gbs in PEAK_GBS:
        if key.lower() in name.lower():
            return float(gbs), f"table ({key})"
    derived = env.get("derived_peak_gbs")
    if derived:
        return float(derived), "memory clock x bus width (torch.cuda.get_device_properties)"
    return None, "unknown card"


def parse_junit(path: Path) -> dict:
    """Counts and failing test ids of one pytest junit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        return {"error": f"no junit XML ({type(exc).__name__})"}
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "seconds": 0.0}
    failures = []
    for suite in suites:
        for case in suite.iter("testcase"):
            counts["tests"] += 1
            test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                counts["failed" if bad.tag == "failure" else "errors"] += 1
                text = (bad.get("message") or bad.text or "").strip()
                failures.append({"test": test_id, "kind": bad.tag, "message": text[:600]})
            elif case.find("skipped") is not None:
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
        try:
            counts["seconds"] += float(suite.get("time", 0))
        except ValueError:
            pass
        # collection errors appear as <error> test cases too; a suite-level count beyond them is kept
        counts["errors"] = max(counts["errors"], int(suite.get("errors", 0) or 0))
    counts["seconds"] = round(counts["seconds"], 2)
    counts["failures"] = failures[:50]
    return counts


def parse_bench(path: Path, peak: float | None) -> list[dict]:
    data = _load_json(path)
    if not data:
        return []
    rows, baselines, best_cpu = [], {}, {}
    for b in data.get("benchmarks", []):
        group, info, median = b.get("group"), b.get("extra_info", {}), b["stats"]["median"]
        if info.get("role") == "baseline":
            baselines[group] = median
        if info.get("device", "cpu") == "cpu":
            best_cpu[group] = min(best_cpu.get(group, float("inf")), median)
    for b in data.get("benchmarks", []):
        st, info = b["stats"], dict(b.get("extra_info", {}))
        nbytes = info.pop("bytes", None)
        row = {"group": b.get("group"), "name": b.get("name"), "device": info.get("device", "cpu"),
               "mean_s": st["mean"], "median_s": st["median"], "min_s": st["min"], "stddev_s": st.get("stddev"),
               "rounds": st["rounds"], "bytes": nbytes}
        if nbytes and st["median"] > 0:
            row["gbs"] = round(nbytes / st["median"] / 1e9, 3)
            if peak and row["device"] == "cuda":
                row["pct_of_peak"] = round(100 * row["gbs"] / peak, 2)
        base = baselines.get(b.get("group"))
        if base and info.get("role") != "baseline":
            row["speedup_vs_baseline"] = round(base / st["median"], 2)
        if row["device"] == "cuda" and b.get("group") in best_cpu:
            row["speedup_vs_fastest_cpu"] = round(best_cpu[b.get("group")] / st["median"], 2)
        row["extra_info"] = info
        rows.append(row)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("aux")
    ap.add_argument("report")
    ap.add_argument("--started", type=float, default=None)
    args = ap.parse_args()
    out = Path(args.aux)
    env = _load_json(out / "env.json")
    stages = []
    try:
        for line in (out / "stages.jsonl").read_text().splitlines():
            if line.strip():
                stages.append(json.loads(line))
    except (OSError, ValueError):
        pass
    for st in stages:
        if st.get("status") not in ("ok", "skipped"):
            st["log_tail"] = _tail(out / "logs" / f"{st['name']}.log")
    peak, peak_source = peak_bandwidth(env)
    tests = {p.stem: parse_junit(p) for p in sorted(out.glob("*.xml"))}  # keyed by stage name
    bench = parse_bench(out / "bench.json", peak)
    build = _load_json(out / "build.json") or {}
    build_stage = next((s for s in stages if s["name"] == "build"), None)
    if build_stage:
        build.setdefault("seconds", build_stage.get("seconds"))
    def all_ok(stage_names=None):
        chosen = [s for s in stages if stage_names is None or s["name"] in stage_names]
        names = {s["name"] for s in chosen}
        return (bool(chosen) and all(s.get("status") == "ok" for s in chosen)
                and all(not t.get("failed") and not t.get("errors") and "error" not in t
                        for k, t in tests.items() if k in names)
                and bool(build.get("has_cuda")) and (build.get("cuda_device_count") or 0) > 0)

    gpu_stages = {"probe", "deps", "build", "tests_cuda", "bench"}
    report = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "total_seconds": round(time.time() - args.started, 1) if args.started else None,
        "ok": all_ok() and all(not t.get("failed") and not t.get("errors") and "error" not in t
                               for t in tests.values()),
        "gpu_ok": all_ok(gpu_stages) and {s["name"] for s in stages} >= gpu_stages,
        "device": env,
        "peak_bandwidth_gbs": peak,
        "peak_bandwidth_source": peak_source,
        "build": build,
        "stages": stages,
        "tests": tests,
        "bench": bench,
    }
    if env and env.get("error"):
        report["error"] = env["error"]
    path = Path(args.report)
    path.write_text(json.dumps(report, indent=2, default=str))

    print(f"gpu_check: {'OK' if report['ok'] else 'NOT OK'} (GPU stages: {'OK' if report['gpu_ok'] else 'NOT OK'})"
          f" -> {path}")
    if env:
        print(f"  device: {env.get('device_name')}  torch {env.get('torch')}  triton {env.get('triton')}  "
              f"peak {peak} GB/s ({peak_source})")
    for st in stages:
        print(f"  stage {st['name']:<18} {st.get('status'):<9} rc={st.get('rc')}  {st.get('seconds')} s")
    print(f"  build: mode={build.get('mode')} has_cuda={build.get('has_cuda')}")
    for name, t in tests.items():
        print(f"  tests {name:<18} " + (t["error"] if "error" in t else
              f"{t['passed']} passed, {t['failed']} failed, {t['errors']} errors, {t['skipped']} skipped"))
    for r in bench:
        if r["device"] == "cuda":
            print(f"  bench {r['group']:<36} {r['name']:<45} {r['median_s'] * 1e6:10.1f} us  "
                  f"{r.get('gbs', float('nan')):8.1f} GB/s  {r.get('pct_of_peak', float('nan')):6.2f}% of peak")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
