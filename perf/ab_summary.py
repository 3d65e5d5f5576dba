#!/usr/bin/env python3
"""The table of an `ab.sh` run: per scenario and build, the shardgate/nginx ratios of each
iteration (relay CPU per 1000 turns, added TTFT and event latency over direct at p50 and p99,
throughput), and shardgate's own CPU seconds per 1000 turns. A ratio is "n/a" where nginx's added
latency was zero or negative (noise larger than the difference). Runs made with `ab.sh --aa` also
had a second nginx of the same configuration (nginx-b) in every round: its row, the same ratios
for nginx-b/nginx, is the spread that two identical relays show in that run."""
import collections
import json
import os
import sys

COLUMNS = [("cpu", "relay CPU"), ("sg_cpu", "sg CPU s/1k"), ("ttft_p50", "TTFT p50"),
           ("ttft_p99", "TTFT p99"), ("evt_p50", "event p50"), ("evt_p99", "event p99"),
           ("tput", "turns/s")]


def ratio(a, b):
    return a / b if a > 0 and b > 0 else None


def row(summary, relay="shardgate"):
    """The ratios of `relay` to nginx in one run, or None when the run had no such relay."""
    t, added = summary["targets"], summary.get("added_over_direct", {})
    if relay not in t:
        return None
    sg, ng = t[relay], t["nginx"]
    r = {"cpu": ratio(sg["cpu_per_1k"], ng["cpu_per_1k"]), "sg_cpu": sg["cpu_per_1k"],
         "tput": ratio(sg["turns_per_sec"], ng["turns_per_sec"])}
    for k in ("ttft_p50", "ttft_p99", "evt_p50", "evt_p99"):
        r[k] = ratio(added[relay][k], added["nginx"][k]) if added else None
    return r


def main():
    runs = collections.defaultdict(lambda: collections.defaultdict(list))
    for line in open(sys.argv[1]):
        _, scenario, binary, out = line.split()
        path = os.path.join(out, "summary.json")
        summary = json.load(open(path)) if os.path.exists(path) else None
        runs[scenario][os.path.basename(binary)].append(summary and row(summary))
        if summary and "nginx-b" in summary["targets"]:
            runs[scenario][f"A/A nginx-b ({os.path.basename(binary)})"].append(row(summary, "nginx-b"))
    fmt = lambda v, k: "n/a" if v is None else (f"{v:.3f}" if k == "sg_cpu" else f"{v:.2f}")
    for scenario, by_bin in runs.items():
        print(f"\n{scenario} (relay/nginx per iteration; sg CPU s/1k is that relay's own)")
        for label, rows in by_bin.items():
            cells = [f"{name} " + " ".join(fmt((r or {}).get(k), k) for r in rows) for k, name in COLUMNS]
            print(f"  {label:<28} " + " | ".join(cells))


if __name__ == "__main__":
    main()
