#!/usr/bin/env python3
"""Instructions per turn from perf/instructions.sh's callgrind dumps.

    callgrind_per_turn.py OUT_DIR TOP TARGET...

Reads OUT_DIR/<target>.<pid>.cg.1 (the dump taken right after the measured load) and
OUT_DIR/<target>.turns, and prints instructions per turn per target, the shardgate/nginx ratio,
and shardgate's top functions by their own (exclusive) instructions per turn. When the dump was
taken with the cache simulation on, each target's line also gives its first-level
instruction-cache misses per turn, and shardgate's functions are listed by those misses too.
"""
import collections
import glob
import re
import sys

NAME_REF = re.compile(r"\((\d+)\)(?: (.*))?")


def self_costs(path):
    """Exclusive count of every recorded event (`Ir`, instructions; with the cache simulation
    also `I1mr` and the others) per function of one callgrind file, in one pass: event name ->
    Counter by function. Name compression aware; a cost line may leave its trailing zero
    columns out."""
    names = {}
    events = []
    costs = {}
    current = None
    call_line_next = False

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
                events = line.split()[1:]
                costs = {e: collections.Counter() for e in events}
            elif line.startswith("fn="):
                current = name(line[3:])
            elif line.startswith("cfn="):
                name(line[4:])
            elif line.startswith("calls="):
                call_line_next = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if call_line_next:
                    # The line after `calls=` is the callee's inclusive cost, not ours.
                    call_line_next = False
                    continue
                for event, value in zip(events, line.split()[1:]):
                    costs[event][current] += int(value)
    return costs


def print_top(title, costs, turns, top, digits):
    """shardgate's top functions by one event's own count per turn."""
    total = sum(costs.values())
    print(f"\nshardgate: top {top} functions by {title} per turn")
    for fn, c in costs.most_common(top):
        print(f"  {c / max(turns, 1):9,.{digits}f}  {100 * c / max(total, 1):5.1f}%  {fn[:120]}")


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
        total = sum(costs["Ir"].values())
        per_turn[target] = total / max(turns, 1)
        profiles[target] = (costs, turns)
        line = f"{target:10} turns {turns:6}  instructions {total:>13,}  per turn {per_turn[target]:>10,.0f}"
        if "I1mr" in costs:
            line += f"  I1 misses per turn {sum(costs['I1mr'].values()) / max(turns, 1):>8,.0f}"
        print(line)
    if "nginx" in per_turn and "shardgate" in per_turn and per_turn["nginx"]:
        print(f"ratio shardgate/nginx (instructions per turn): {per_turn['shardgate'] / per_turn['nginx']:.2f}")
    if "shardgate" in profiles:
        costs, turns = profiles["shardgate"]
        print_top("own instructions", costs["Ir"], turns, top, 0)
        if "I1mr" in costs:
            print_top("first-level instruction-cache misses", costs["I1mr"], turns, top, 1)


if __name__ == "__main__":
    main()
