#!/usr/bin/env python3
"""Instructions per turn from perf/instructions.sh's callgrind dumps.

    callgrind_per_turn.py OUT_DIR TOP TARGET...

Reads OUT_DIR/<target>.<pid>.cg.1 (the dump taken right after the measured load) and
OUT_DIR/<target>.turns, and prints instructions per turn per target, the shardgate/nginx ratio,
and shardgate's top functions by their own (exclusive) instructions per turn. When the dump was
taken with the cache simulation on, each target's line also gives its first-level
instruction-cache misses per turn.
"""
import collections
import glob
import re
import sys

NAME_REF = re.compile(r"\((\d+)\)(?: (.*))?")


def self_costs(path, event="Ir"):
    """Exclusive count of one event (instructions by default) per function of one callgrind
    file (name compression aware; a cost line may leave its trailing zero columns out)."""
    names = {}
    costs = collections.Counter()
    current = None
    call_line_next = False
    column = 1

    def name(field):
        m = NAME_REF.match(field)
        if not m:
            return field
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), m.group(1))

    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("events:"):
                column = 1 + line.split()[1:].index(event)
            elif line.startswith("fn="):
                current = name(line[3:])
            elif line.startswith("cfn="):
                name(line[4:])
            elif line.startswith("calls="):
                call_line_next = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if call_line_next:
                    # The line after `calls=` is the callee's inclusive cost, not ours.
                    call_line_next = False
                    continue
                if len(parts) > column:
                    costs[current] += int(parts[column])
    return costs


def i1_misses(path):
    """First-level instruction-cache misses of one callgrind file, from its `events:` and
    `summary:`/`totals:` lines; None when the cache simulation was off."""
    events, totals = [], []
    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith(("summary:", "totals:")):
                totals = [int(v) for v in line.split()[1:]]
    if "I1mr" not in events or len(totals) != len(events):
        return None
    return totals[events.index("I1mr")]


def main():
    out, top, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    per_turn = {}
    profiles = {}
    for target in targets:
        dumps = sorted(glob.glob(f"{out}/{target}.*.cg.1"))
        if not dumps:
            print(f"{target}: no measured dump in {out}")
            continue
        turns = int(open(f"{out}/{target}.turns").read().strip() or 0)
        costs = self_costs(dumps[0])
        total = sum(costs.values())
        per_turn[target] = total / max(turns, 1)
        misses = i1_misses(dumps[0])
        profiles[target] = (costs, turns, dumps[0], misses)
        line = f"{target:10} turns {turns:6}  instructions {total:>13,}  per turn {per_turn[target]:>10,.0f}"
        if misses is not None:
            line += f"  I1 misses per turn {misses / max(turns, 1):>8,.0f}"
        print(line)
    if "nginx" in per_turn and "shardgate" in per_turn and per_turn["nginx"]:
        print(f"ratio shardgate/nginx (instructions per turn): {per_turn['shardgate'] / per_turn['nginx']:.2f}")
    if "shardgate" in profiles:
        costs, turns, dump, misses = profiles["shardgate"]
        total = sum(costs.values())
        print(f"\nshardgate: top {top} functions by own instructions per turn")
        for fn, c in costs.most_common(top):
            print(f"  {c / max(turns, 1):9,.0f}  {100 * c / total:5.1f}%  {fn[:120]}")
        if misses is not None:
            misses = self_costs(dump, "I1mr")
            total = sum(misses.values())
            print(f"\nshardgate: top {top} functions by first-level instruction-cache misses per turn")
            for fn, c in misses.most_common(top):
                print(f"  {c / max(turns, 1):9,.1f}  {100 * c / max(total, 1):5.1f}%  {fn[:120]}")


if __name__ == "__main__":
    main()
