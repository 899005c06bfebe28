#!/usr/bin/env python3
"""Turn one comparison run (results.tsv and meta.txt in RESULTS_DIR) into
docs/BENCHMARKS.md on stdout: medians over rounds, ratios Cairn / peer, and
the targets of the comparison, checked.

    python3 benches/compare/report.py RESULTS_DIR [NOTES.md] > docs/BENCHMARKS.md

NOTES.md, when given, is appended verbatim (observations written by hand).
"""

import csv
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

TOOLS = ["cairn", "restic", "rustic", "borg"]
PEERS = TOOLS[1:]
KERNEL_STEPS = ["first", "incremental", "unchanged", "restore"]
# Ceiling of chunking + fingerprinting on this machine: the criterion group
# `ceiling` (cargo bench -p cairn-benches --bench pipeline -- ceiling), run on
# the same machine as the comparison and given in CAIRN_BENCH_CEILING_GBPS
# (GB/s); 3.8 was measured on 2026-12-02.
CEILING_GBPS = float(os.environ.get("CAIRN_BENCH_CEILING_GBPS", "3.8"))
BIG_BYTES = 2 * 1024**3


def median(xs):
    return statistics.median(xs) if xs else None


def fmt_s(x):
    return "–" if x is None else f"{x:.2f} s"


def fmt_mb(b):
    return "–" if b is None else f"{b / 1e6:,.1f} MB"


def fmt_rss(kb):
    return "–" if kb is None else f"{kb / 1024:,.0f} MiB"


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}"


def main():
    out = Path(sys.argv[1])
    notes = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    meta = {}
    for line in (out / "meta.txt").read_text().splitlines():
        k, _, v = line.partition(": ")
        meta[k] = v
    rows = list(csv.DictReader((out / "results.tsv").open(), delimiter="\t"))
    for r in rows:
        r["wall_s"] = float(r["wall_s"])
        r["cpu_s"] = float(r["user_s"]) + float(r["sys_s"])
        r["maxrss_kb"] = int(r["maxrss_kb"])
        r["repo_bytes"] = int(r["repo_bytes"])
    tools = [t for t in TOOLS if any(r["tool"] == t for r in rows)]

    # by[(workload, step, tool)] -> list of rows, one per round
    by = defaultdict(list)
    for r in rows:
        by[(r["workload"], r["step"], r["tool"])].append(r)

    def med(workload, step, tool, key):
        return median([r[key] for r in by[(workload, step, tool)]])

    p = print
    p("# Benchmarks: Cairn against restic, rustic and Borg")
    p()
    p("The fleet path (an index cluster against the embedded index, added latency, a "
      "repository on Garage) is measured by `benches/fleet/run.sh`: "
      "[BENCHMARKS-fleet.md](BENCHMARKS-fleet.md). Reading through `cairn mount` against "
      "`cairn dump` and `cairn ls` is measured by `benches/mount/run.sh`: "
      "[BENCHMARKS-mount.md](BENCHMARKS-mount.md).")
    p()
    p("Produced by `benches/compare/` (see its README). Exact command:")
    p()
    p("```sh")
    env = meta.get("env", "")
    cairn_bin = next((w for w in env.split() if w.startswith("CAIRN_BIN=")), "")
    p(f"{cairn_bin} {meta.get('command', '')}".strip())
    p("```")
    p()
    p(f"- Run: {meta.get('started', '?')} to {meta.get('finished', '(unfinished)')}, "
      f"{meta.get('runs', '?')} round(s) requested; workloads `{meta.get('workloads', '?')}`; "
      "medians over the rounds that completed (the `n` column).")
    p(f"- Machine: {meta.get('machine', '?')}; repositories, sources and restores on "
      f"{meta.get('disk', '?')} (the same disk for every tool).")
    p(f"- Load average before / after: {meta.get('load_before', '?')} / {meta.get('load_after', '?')} "
      "(a shared machine: other builds and tests ran at the same time, so single numbers are noisy).")
    p(f"- Page caches dropped before every measured kernel and TypeScript step: "
      f"{meta.get('caches_dropped', '?')}. The 2 GiB file is read from a warm page cache.")
    p(f"- Cairn binary: {meta.get('cairn_profile', '?')}; source commit {meta.get('cairn_commit', '?')}.")
    p(f"- Kernel corpus: Debian {meta.get('kernel', '?')} ({meta.get('kernel_tree', '?')}).")
    if "typescript" in meta:
        p(f"- TypeScript corpus: {meta['typescript']} from npm.")
    p()
    p("| tool | version | settings |")
    p("|---|---|---|")
    for t in tools:
        p(f"| {t} | {meta.get('version_' + t, '?')} | {meta.get('settings_' + t, '?')} |")
    p()
    p("Every tool encrypts, compresses, and uses its own default key derivation "
      "(the password is derived on every command, so each time includes it). "
      "Wall time is the command alone (no `sync` afterwards); CPU is user + "
      "system time and RSS the peak resident set, both from `/usr/bin/time -v`. "
      "Repository size is `du -B1` of the repository directory (Cairn's keeps its "
      "local index inside; the peers' client caches live outside the repository "
      "and are not counted).")
    p()

    missing = []
    if any(r["workload"] == "kernel" for r in rows):
        p(f"## Linux source tree ({meta.get('kernel_tree', '?')})")
        p()
        p("`first`: first backup of linux " + meta.get("kernel", "").split()[-3]
          + " into an empty repository; `incremental`: the same directory updated in "
          "place to the next version (only files whose contents differ are rewritten); "
          "`unchanged`: the same again with nothing changed; `restore`: full restore "
          "of the latest snapshot, then compared with the source by `diff -r` "
          "(the harness stops if they differ).")
        p()
        p("| step | tool | n | wall | CPU | peak RSS | repo after | Cairn / tool (wall) |")
        p("|---|---|---|---|---|---|---|---|")
        for step in KERNEL_STEPS:
            cw = med("kernel", step, "cairn", "wall_s")
            for t in tools:
                n = len(by[("kernel", step, t)])
                if n == 0:
                    missing.append(f"kernel/{step} for {t}")
                    continue
                w = med("kernel", step, t, "wall_s")
                p(f"| {step} | {t} | {n} | {fmt_s(w)} | {fmt_s(med('kernel', step, t, 'cpu_s'))} "
                  f"| {fmt_rss(med('kernel', step, t, 'maxrss_kb'))} "
                  f"| {fmt_mb(med('kernel', step, t, 'repo_bytes'))} "
                  f"| {'—' if t == 'cairn' else fmt_ratio(cw, w)} |")
        p()
        # Incremental growth per round, then the median.
        p("Repository growth of the incremental backup (median of size after "
          "`incremental` − size after `first`, per round):")
        p()
        p("| tool | growth | first backup size |")
        p("|---|---|---|")
        growth = {}
        for t in tools:
            g = []
            firsts = {r["round"]: r["repo_bytes"] for r in by[("kernel", "first", t)]}
            for r in by[("kernel", "incremental", t)]:
                if r["round"] in firsts:
                    g.append(r["repo_bytes"] - firsts[r["round"]])
            growth[t] = median(g)
            p(f"| {t} | {fmt_mb(growth[t])} | {fmt_mb(med('kernel', 'first', t, 'repo_bytes'))} |")
        p()
    else:
        missing.append("kernel (all steps)")

    big = any(r["workload"] == "bigfile" for r in rows)
    if big:
        p("## One 2 GiB file (random bytes, warm page cache)")
        p()
        p("| tool | n | wall | throughput | CPU | peak RSS | Cairn / tool (wall) |")
        p("|---|---|---|---|---|---|---|")
        cw = med("bigfile", "backup", "cairn", "wall_s")
        for t in tools:
            n = len(by[("bigfile", "backup", t)])
            if n == 0:
                missing.append(f"bigfile for {t}")
                continue
            w = med("bigfile", "backup", t, "wall_s")
            p(f"| {t} | {n} | {fmt_s(w)} | {BIG_BYTES / w / 1e9:.2f} GB/s "
              f"| {fmt_s(med('bigfile', 'backup', t, 'cpu_s'))} "
              f"| {fmt_rss(med('bigfile', 'backup', t, 'maxrss_kb'))} "
              f"| {'—' if t == 'cairn' else fmt_ratio(cw, w)} |")
        p()
    else:
        missing.append("bigfile")

    ts_rows = [r for r in rows if r["workload"] == "ts"]
    if ts_rows:
        days = max(int(r["step"]) for r in ts_rows)
        p(f"## TypeScript nightlies as {days} daily backups")
        p()
        p("Per round: the sum of the daily backup times, the final repository size, "
          "and the peak RSS of the first and of the last backup; medians over rounds.")
        p()
        p("| tool | n | total wall | total CPU | final repo | RSS day 1 | RSS last day | Cairn / tool (wall) |")
        p("|---|---|---|---|---|---|---|---|")
        per = {}
        for t in tools:
            rounds = defaultdict(list)
            for r in ts_rows:
                if r["tool"] == t:
                    rounds[r["round"]].append(r)
            full = [rs for rs in rounds.values() if len(rs) == days]
            if not full:
                missing.append(f"ts for {t}")
                continue
            per[t] = {
                "n": len(full),
                "wall": median([sum(x["wall_s"] for x in rs) for rs in full]),
                "cpu": median([sum(x["cpu_s"] for x in rs) for rs in full]),
                "repo": median([max(rs, key=lambda x: int(x["step"]))["repo_bytes"] for rs in full]),
                "rss1": median([x["maxrss_kb"] for rs in full for x in rs if x["step"] == "1"]),
                "rssN": median([x["maxrss_kb"] for rs in full for x in rs if x["step"] == str(days)]),
            }
        for t, v in per.items():
            cw = per.get("cairn", {}).get("wall")
            p(f"| {t} | {v['n']} | {fmt_s(v['wall'])} | {fmt_s(v['cpu'])} | {fmt_mb(v['repo'])} "
              f"| {fmt_rss(v['rss1'])} | {fmt_rss(v['rssN'])} "
              f"| {'—' if t == 'cairn' else fmt_ratio(cw, v['wall'])} |")
        p()
    else:
        missing.append("ts (TypeScript nightlies)")

    # Targets.
    if "cairn" in tools:
        p("## Targets")
        p()
        p("| target | measured | met |")
        p("|---|---|---|")
        for step in KERNEL_STEPS:
            cw = med("kernel", step, "cairn", "wall_s")
            peers = {t: med("kernel", step, t, "wall_s") for t in PEERS if by[("kernel", step, t)]}
            if cw is None or not peers:
                continue
            best = min(peers, key=peers.get)
            speedup = peers[best] / cw
            p(f"| kernel {step}: ≥2× faster than the fastest peer | {speedup:.2f}× vs {best} "
              f"({fmt_s(cw)} vs {fmt_s(peers[best])}) | {'yes' if speedup >= 2 else 'no'} |")
        if "kernel" in {r["workload"] for r in rows} and growth.get("cairn") is not None:
            others = {t: g for t, g in growth.items() if t != "cairn" and g is not None}
            if others:
                ok = all(growth["cairn"] <= g for g in others.values())
                p(f"| incremental growth ≤ every peer's | Cairn {fmt_mb(growth['cairn'])}; "
                  + ", ".join(f"{t} {fmt_mb(g)}" for t, g in others.items())
                  + f" | {'yes' if ok else 'no'} |")
        if big and by[("bigfile", "backup", "cairn")]:
            gbps = BIG_BYTES / med("bigfile", "backup", "cairn", "wall_s") / 1e9
            p(f"| 2 GiB file ≥ 60% of {CEILING_GBPS} GB/s ({0.6 * CEILING_GBPS:.2f} GB/s) "
              f"| {gbps:.2f} GB/s ({gbps / CEILING_GBPS:.0%}) | {'yes' if gbps >= 0.6 * CEILING_GBPS else 'no'} |")
        cairn_rss = [r["maxrss_kb"] for r in rows if r["tool"] == "cairn"]
        if cairn_rss:
            peak = max(cairn_rss)
            p(f"| client peak RSS ≤ 300 MB in every workload | max {peak * 1024 / 1e6:,.0f} MB "
              f"| {'yes' if peak * 1024 <= 300e6 else 'no'} |")
        if ts_rows and "cairn" in per:
            v = per["cairn"]
            p(f"| RSS not growing with snapshot count (day 1 vs day {days}) "
              f"| {fmt_rss(v['rss1'])} → {fmt_rss(v['rssN'])} "
              f"| {'yes' if v['rssN'] <= v['rss1'] * 1.10 else 'no'} |")
        p()

    if missing:
        p("## Not measured in this run")
        p()
        for m in missing:
            p(f"- {m}")
        p()
    if notes and notes.exists():
        p(notes.read_text().rstrip())
        p()


if __name__ == "__main__":
    main()
