"""Benchmark reporting shared by every bench file.

Convention: within a pytest-benchmark ``group``, the benchmark that sets
``benchmark.extra_info["role"] = "baseline"`` is the denominator; every other member's speed-up
(baseline mean / its mean) is printed at the end of the run and written, with the raw means and
every member's ``extra_info``, to ``bench/results/ratios.json``.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def pytest_sessionfinish(session, exitstatus):
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is None or not bs.benchmarks:
        return
    groups: dict[str, list] = {}
    for b in bs.benchmarks:
        if b.stats is None:  # skipped / errored benchmark
            continue
        groups.setdefault(b.group or b.name, []).append(b)
    report = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "groups": {}}
    lines = []
    def stat(b, name):  # pytest-benchmark 5.3 exposes stats on b.stats; older releases on b.stats.stats
        st = b.stats
        return getattr(st, name) if hasattr(st, name) else getattr(st.stats, name)

    for group, members in groups.items():
        base = next((b for b in members if b.extra_info.get("role") == "baseline"), None)
        entries = {}
        for b in members:
            mean = stat(b, 'mean')
            entry = {"mean_s": mean, "rounds": stat(b, "rounds"), **b.extra_info}
            if base is not None and b is not base:
                entry["speedup_vs_baseline"] = stat(base, 'mean') / mean
                lines.append(f"{group:>40s}  {b.name:<55s} {entry['speedup_vs_baseline']:8.2f}x vs {base.name}")
            entries[b.name] = entry
        report["groups"][group] = entries
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "ratios.json"
    if out.exists():  # keep groups from earlier partial runs (one bench file at a time)
        try:
            report["groups"] = {**json.loads(out.read_text()).get("groups", {}), **report["groups"]}
        except (ValueError, AttributeError):
            pass
    out.write_text(json.dumps(report, indent=2, default=str))
    tr = session.config.pluginmanager.getplugin("terminalreporter")
    if tr is not None and lines:
        tr.write_sep("=", "speed-ups (one run)")
        for line in lines:
            tr.write_line(line)
        tr.write_line(f"written: {RESULTS / 'ratios.json'}")
