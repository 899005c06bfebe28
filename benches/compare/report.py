#!/usr/bin/env python3
"""Turn one comparison run (results.tsv and meta.txt in RESULTS_DIR) into
docs/BENCHMARKS.md on stdout: medians over rounds, ratios Cairn / peer and
tool / physical reference, and the targets of the comparison, checked. The
same tables are written to RESULTS_DIR/table.csv.

    python3 benches/compare/report.py RESULTS_DIR [NOTES.md] > docs/BENCHMARKS.md

NOTES.md, when given, is appended verbatim (observations written by hand).
"""

import csv
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

TOOLS = ["cairn", "bupstash", "restic", "rustic", "borg", "borg14"]
PEERS = TOOLS[1:]
# What each step costs without a backup tool (benches/compare/tools.sh,
# reference_cmd), measured in the same round.
REFERENCE = "reference"
REFERENCE_OF = {
    "first": "`tar -c | zstd -{level} -T0`",
    "incremental": "`tar -c | wc -c`",
    "unchanged": "stat walk (`find -printf` size, mtime, ctime, inode)",
    "restore": "`tar -x` of an uncompressed tar from page cache",
    "backup": "`zstd -{level} -T0` of the file",
}
TOOL_NAMES = {
    "cairn": "Cairn",
    "bupstash": "bupstash",
    "restic": "restic",
    "rustic": "rustic",
    "borg": "Borg 1.2",
    "borg14": "Borg 1.4",
}
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


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(a, b):
    r = ratio(a, b)
    return "–" if r is None else f"{r:.2f}"


def csv_num(x, digits=3):
    return "" if x is None else f"{x:.{digits}f}"


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
        # Runs from before the warm pass existed (no such column) dropped the cache.
        r["cache"] = r.get("cache") or "cold"
    tools = [t for t in TOOLS if any(r["tool"] == t for r in rows)]
    caches = [c for c in ("cold", "warm") if any(r["cache"] == c for r in rows)]
    level = meta.get("cairn_zstd_level", "3")

    # by[(workload, cache, step, tool)] -> list of rows, one per round
    by = defaultdict(list)
    for r in rows:
        by[(r["workload"], r["cache"], r["step"], r["tool"])].append(r)

    def med(workload, cache, step, tool, key):
        return median([r[key] for r in by[(workload, cache, step, tool)]])

    table = []  # rows of table.csv

    def csv_row(workload, cache, step, tool, n, wall, cpu, rss_kb, repo, ref, cairn_wall):
        table.append({
            "workload": workload, "cache": cache, "step": step, "tool": tool, "n": n,
            "wall_s": csv_num(wall), "cpu_s": csv_num(cpu),
            "peak_rss_mb": csv_num(None if rss_kb is None else rss_kb * 1024 / 1e6, 1),
            "repo_mb": csv_num(None if repo is None else repo / 1e6, 1),
            "reference_s": csv_num(ref),
            "tool_over_reference": csv_num(ratio(wall, ref)),
            "cairn_over_tool": "" if tool == "cairn" else csv_num(ratio(cairn_wall, wall)),
        })

    p = print
    p("# Benchmarks: Cairn against bupstash, restic, rustic and Borg")
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
    p("The same tables, one row per workload, cache, step and tool, are in "
      "[BENCHMARKS.csv](BENCHMARKS.csv).")
    p()
    p(f"- Run: {meta.get('started', '?')} to {meta.get('finished', '(unfinished)')}, "
      f"{meta.get('runs', '?')} round(s) requested; workloads `{meta.get('workloads', '?')}`; "
      "medians over the rounds that completed (the `n` column).")
    p(f"- Machine: {meta.get('machine', '?')}; repositories, sources and restores on "
      f"{meta.get('disk', '?')} (the same disk for every tool).")
    p(f"- Load average before / after: {meta.get('load_before', '?')} / {meta.get('load_after', '?')} "
      "(a shared machine: single numbers are noisy).")
    p(f"- Page cache: `cold` drops it before every measured kernel and TypeScript step "
      f"(dropped: {meta.get('caches_dropped', '?')}); `warm` reads the step's inputs "
      "(source, repository, the tool's caches) just before it. The 2 GiB file is "
      "always read from a warm page cache.")
    p(f"- Cairn binary: {meta.get('cairn_profile', '?')}; source commit {meta.get('cairn_commit', '?')}.")
    p(f"- Kernel corpus: Debian {meta.get('kernel', '?')} ({meta.get('kernel_tree', '?')}).")
    if "typescript" in meta:
        p(f"- TypeScript corpus: {meta['typescript']} from npm.")
    p()
    p("| tool | version | settings |")
    p("|---|---|---|")
    for t in tools:
        p(f"| {TOOL_NAMES[t]} | {meta.get('version_' + t, '?')} | {meta.get('settings_' + t, '?')} |")
    p()
    p("Every tool encrypts and compresses; each uses its own default key derivation "
      "(derived on every command, so each time includes it; bupstash reads a key "
      "file instead). Wall time is the command alone (no `sync` afterwards); CPU is "
      "user + system time and RSS the peak resident set, both from `/usr/bin/time -v`. "
      "Repository size is `du -B1` of the repository directory (Cairn's keeps its "
      "local index inside; the peers' client caches live outside the repository "
      "and are not counted). The physical reference of each step (measured in the "
      "same round, after the tools) is what the step costs without a backup tool:")
    p()
    for step in KERNEL_STEPS + ["backup"]:
        p(f"- `{step}`{' (2 GiB file)' if step == 'backup' else ''}: "
          f"{REFERENCE_OF[step].format(level=level)}")
    p()

    missing = []
    growth = {}
    ts_per = {}
    for cache in caches:
        if any(r["workload"] == "kernel" and r["cache"] == cache for r in rows):
            p(f"## Linux source tree, {cache} page cache ({meta.get('kernel_tree', '?')})")
            p()
            p("`first`: first backup of linux " + meta.get("kernel", "").split()[-3]
              + " into an empty repository; `incremental`: the same directory updated in "
              "place to the next version (only files whose contents differ are rewritten); "
              "`unchanged`: the same again with nothing changed; `restore`: full restore "
              "of the latest snapshot, then compared with the source by `diff -r` "
              "(the harness stops if they differ).")
            p()
            p("| step | tool | n | wall | CPU | peak RSS | repo after | Cairn / tool (wall) "
              "| reference | tool / reference |")
            p("|---|---|---|---|---|---|---|---|---|---|")
            for step in KERNEL_STEPS:
                cw = med("kernel", cache, step, "cairn", "wall_s")
                ref = med("kernel", cache, step, REFERENCE, "wall_s")
                for t in tools:
                    n = len(by[("kernel", cache, step, t)])
                    if n == 0:
                        missing.append(f"kernel/{cache}/{step} for {t}")
                        continue
                    w = med("kernel", cache, step, t, "wall_s")
                    cpu = med("kernel", cache, step, t, "cpu_s")
                    rss = med("kernel", cache, step, t, "maxrss_kb")
                    repo = med("kernel", cache, step, t, "repo_bytes")
                    p(f"| {step} | {TOOL_NAMES[t]} | {n} | {fmt_s(w)} | {fmt_s(cpu)} "
                      f"| {fmt_rss(rss)} | {fmt_mb(repo)} "
                      f"| {'—' if t == 'cairn' else fmt_ratio(cw, w)} "
                      f"| {fmt_s(ref)} | {fmt_ratio(w, ref)} |")
                    csv_row("kernel", cache, step, t, n, w, cpu, rss, repo, ref, cw)
            p()
            p("Repository growth of the incremental backup (median of size after "
              "`incremental` − size after `first`, per round):")
            p()
            p("| tool | growth | first backup size | after incremental |")
            p("|---|---|---|---|")
            growth[cache] = {}
            for t in tools:
                g = []
                firsts = {r["round"]: r["repo_bytes"] for r in by[("kernel", cache, "first", t)]}
                for r in by[("kernel", cache, "incremental", t)]:
                    if r["round"] in firsts:
                        g.append(r["repo_bytes"] - firsts[r["round"]])
                growth[cache][t] = median(g)
                p(f"| {TOOL_NAMES[t]} | {fmt_mb(growth[cache][t])} "
                  f"| {fmt_mb(med('kernel', cache, 'first', t, 'repo_bytes'))} "
                  f"| {fmt_mb(med('kernel', cache, 'incremental', t, 'repo_bytes'))} |")
            p()
        else:
            missing.append(f"kernel, {cache} page cache")

        ts_rows = [r for r in rows if r["workload"] == "ts" and r["cache"] == cache]
        if ts_rows:
            days = max(int(r["step"]) for r in ts_rows)
            p(f"## TypeScript nightlies as {days} daily backups, {cache} page cache")
            p()
            p("Per round: the sum of the daily backup times, the final repository size, "
              "and the peak RSS of the first and of the last backup; medians over rounds. "
              "The reference is `tar -c | zstd` of day 1 plus `tar -c | wc -c` of every "
              "later day.")
            p()
            p("| tool | n | total wall | total CPU | final repo | RSS day 1 | RSS last day "
              "| Cairn / tool (wall) | reference | tool / reference |")
            p("|---|---|---|---|---|---|---|---|---|---|")
            per = {}
            for t in tools + [REFERENCE]:
                rounds = defaultdict(list)
                for r in ts_rows:
                    if r["tool"] == t:
                        rounds[r["round"]].append(r)
                full = [rs for rs in rounds.values() if len(rs) == days]
                if not full:
                    if t != REFERENCE:
                        missing.append(f"ts/{cache} for {t}")
                    continue
                per[t] = {
                    "n": len(full),
                    "wall": median([sum(x["wall_s"] for x in rs) for rs in full]),
                    "cpu": median([sum(x["cpu_s"] for x in rs) for rs in full]),
                    "repo": median([max(rs, key=lambda x: int(x["step"]))["repo_bytes"] for rs in full]),
                    "rss1": median([x["maxrss_kb"] for rs in full for x in rs if x["step"] == "1"]),
                    "rssN": median([x["maxrss_kb"] for rs in full for x in rs if x["step"] == str(days)]),
                }
            ref = per.get(REFERENCE, {}).get("wall")
            cw = per.get("cairn", {}).get("wall")
            for t, v in per.items():
                if t == REFERENCE:
                    continue
                p(f"| {TOOL_NAMES[t]} | {v['n']} | {fmt_s(v['wall'])} | {fmt_s(v['cpu'])} | {fmt_mb(v['repo'])} "
                  f"| {fmt_rss(v['rss1'])} | {fmt_rss(v['rssN'])} "
                  f"| {'—' if t == 'cairn' else fmt_ratio(cw, v['wall'])} "
                  f"| {fmt_s(ref)} | {fmt_ratio(v['wall'], ref)} |")
                csv_row("ts", cache, f"{days} days", t, v["n"], v["wall"], v["cpu"],
                        max(v["rss1"], v["rssN"]), v["repo"], ref, cw)
            p()
            ts_per[cache] = (days, per)
        else:
            missing.append(f"ts (TypeScript nightlies), {cache} page cache")

    big = any(r["workload"] == "bigfile" for r in rows)
    if big:
        p("## One 2 GiB file (random bytes, warm page cache)")
        p()
        p("| tool | n | wall | throughput | CPU | peak RSS | Cairn / tool (wall) | reference | tool / reference |")
        p("|---|---|---|---|---|---|---|---|---|")
        cw = med("bigfile", "warm", "backup", "cairn", "wall_s")
        ref = med("bigfile", "warm", "backup", REFERENCE, "wall_s")
        for t in tools:
            n = len(by[("bigfile", "warm", "backup", t)])
            if n == 0:
                missing.append(f"bigfile for {t}")
                continue
            w = med("bigfile", "warm", "backup", t, "wall_s")
            cpu = med("bigfile", "warm", "backup", t, "cpu_s")
            rss = med("bigfile", "warm", "backup", t, "maxrss_kb")
            p(f"| {TOOL_NAMES[t]} | {n} | {fmt_s(w)} | {BIG_BYTES / w / 1e9:.2f} GB/s "
              f"| {fmt_s(cpu)} | {fmt_rss(rss)} "
              f"| {'—' if t == 'cairn' else fmt_ratio(cw, w)} | {fmt_s(ref)} | {fmt_ratio(w, ref)} |")
            csv_row("bigfile", "warm", "backup", t, n, w, cpu, rss, None, ref, cw)
        p()
    else:
        missing.append("bigfile")

    # Targets (issue "Speed: beat bupstash too"), per page-cache pass.
    if "cairn" in tools:
        p("## Targets")
        p()
        p("| target | cache | measured | met |")
        p("|---|---|---|---|")
        limits = {"first": 1.10, "incremental": 1.25, "unchanged": 1.25}
        for cache in caches:
            for step in KERNEL_STEPS:
                cw = med("kernel", cache, step, "cairn", "wall_s")
                peers = {t: med("kernel", cache, step, t, "wall_s")
                         for t in PEERS if by[("kernel", cache, step, t)]}
                if cw is None or not peers:
                    continue
                best = min(peers, key=peers.get)
                speedup = peers[best] / cw
                p(f"| kernel {step}: ≥ 2× faster than the fastest peer | {cache} "
                  f"| {speedup:.2f}× vs {TOOL_NAMES[best]} ({fmt_s(cw)} vs {fmt_s(peers[best])}) "
                  f"| {'yes' if speedup >= 2 else 'no'} |")
            for step, limit in limits.items():
                cw = med("kernel", cache, step, "cairn", "wall_s")
                ref = med("kernel", cache, step, REFERENCE, "wall_s")
                if cw is None or ref is None:
                    continue
                p(f"| kernel {step} / reference ≤ {limit:.2f} | {cache} | {cw / ref:.2f} "
                  f"({fmt_s(cw)} vs {fmt_s(ref)}) | {'yes' if cw / ref <= limit else 'no'} |")
            kernel_size = {t: med("kernel", cache, "incremental", t, "repo_bytes")
                           for t in tools if by[("kernel", cache, "incremental", t)]}
            if "cairn" in kernel_size and len(kernel_size) > 1:
                others = {t: b for t, b in kernel_size.items() if t != "cairn"}
                ok = all(kernel_size["cairn"] <= b for b in others.values())
                p(f"| kernel repository (after incremental) ≤ every peer's | {cache} "
                  f"| Cairn {fmt_mb(kernel_size['cairn'])}; "
                  + ", ".join(f"{TOOL_NAMES[t]} {fmt_mb(b)}" for t, b in others.items())
                  + f" | {'yes' if ok else 'no'} |")
            if cache in ts_per and "cairn" in ts_per[cache][1]:
                days, per = ts_per[cache]
                others = {t: v["repo"] for t, v in per.items() if t not in ("cairn", REFERENCE)}
                if others:
                    ok = all(per["cairn"]["repo"] <= b for b in others.values())
                    p(f"| TypeScript repository after {days} days ≤ every peer's | {cache} "
                      f"| Cairn {fmt_mb(per['cairn']['repo'])}; "
                      + ", ".join(f"{TOOL_NAMES[t]} {fmt_mb(b)}" for t, b in others.items())
                      + f" | {'yes' if ok else 'no'} |")
                v = per["cairn"]
                p(f"| RSS flat from 1 to {days} snapshots (day 1 vs day {days}, ≤ +10%) | {cache} "
                  f"| {fmt_rss(v['rss1'])} → {fmt_rss(v['rssN'])} "
                  f"| {'yes' if v['rssN'] <= v['rss1'] * 1.10 else 'no'} |")
        cairn_rss = [r["maxrss_kb"] for r in rows if r["tool"] == "cairn" and r["workload"] == "kernel"]
        if cairn_rss:
            peak = max(cairn_rss)
            p(f"| client peak RSS ≤ 100 MB in every kernel step | all | max {peak * 1024 / 1e6:,.0f} MB "
              f"| {'yes' if peak * 1024 <= 100e6 else 'no'} |")
        if big and by[("bigfile", "warm", "backup", "cairn")]:
            gbps = BIG_BYTES / med("bigfile", "warm", "backup", "cairn", "wall_s") / 1e9
            p(f"| 2 GiB file ≥ 60% of {CEILING_GBPS} GB/s ({0.6 * CEILING_GBPS:.2f} GB/s) | warm "
              f"| {gbps:.2f} GB/s ({gbps / CEILING_GBPS:.0%}) | {'yes' if gbps >= 0.6 * CEILING_GBPS else 'no'} |")
        p()

    with (out / "table.csv").open("w", newline="") as f:
        fields = ["workload", "cache", "step", "tool", "n", "wall_s", "cpu_s", "peak_rss_mb",
                  "repo_mb", "reference_s", "tool_over_reference", "cairn_over_tool"]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(table)

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
