#!/usr/bin/env python3
"""Reads a `perf script` of the tracepoints perf/wakeups.sh records (sendto entries, recvfrom
exits, scheduler switches and wakeups, every CPU) and follows each turn through its chain:

  load sends the request -> relay has read it -> relay sends it on -> mock has read it ->
  mock sends the answer -> relay has read it -> relay sends it on -> load has read it

printing each hop's latency (p25/p50/p75/mean, microseconds), the whole chain, and for each hop how often its two ends
ran on the same CPU or on different ones (a cross-CPU wake: on a VM whose idle vCPU halts, an
inter-processor interrupt the host must deliver), with the hop's p50 for each.

  perf/wake_chain.py SCRIPT_TEXT MIN_REQUEST_BYTES
"""
import re
import sys

LINE = re.compile(r"^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
HOPS = ["relay read", "relay sent", "mock read", "mock sent", "relay read 2", "relay sent 2", "load read"]


def role(comm):
    if comm.startswith("shard") or comm == "nginx":
        return "relay"
    if comm.startswith("mock"):
        return "mock"
    if comm.startswith("load"):
        return "load"
    return None


def quantiles(xs):
    if not xs:
        return "none"
    xs = sorted(xs)
    n = len(xs)
    return "p25 %6.1f  p50 %6.1f  p75 %6.1f  mean %6.1f" % (
        xs[n // 4], xs[n // 2], xs[3 * n // 4], sum(xs) / n)


def p50(xs):
    return "%6.1f" % sorted(xs)[len(xs) // 2] if xs else "     -"


def events(path):
    out = []
    for line in open(path, errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        comm, _tid, cpu, ts, ev, rest = m.groups()
        r = role(comm)
        if r is None:
            continue
        if ev == "syscalls:sys_exit_recvfrom":
            ret = int(rest, 16) if rest.startswith("0x") else int(rest)
            if ret <= 0 or ret >= 1 << 62:
                continue
            out.append((float(ts) * 1e6, r, int(cpu), "read", ret))
        elif ev == "syscalls:sys_enter_sendto":
            ln = re.search(r"len: (0x[0-9a-f]+)", rest)
            out.append((float(ts) * 1e6, r, int(cpu), "sent", int(ln.group(1), 16) if ln else 0))
    return out


def main():
    path, min_request = sys.argv[1], int(sys.argv[2])
    evs = events(path)
    want = [("relay", "read"), ("relay", "sent"), ("mock", "read"), ("mock", "sent"),
            ("relay", "read"), ("relay", "sent"), ("load", "read")]
    hops = {h: [] for h in HOPS}
    split = {h: ([], []) for h in HOPS}
    chains = []
    for i, (t, r, cpu, what, n) in enumerate(evs):
        if not (r == "load" and what == "sent" and n >= min_request):
            continue
        seq = [(t, cpu)]
        k = i + 1
        while len(seq) <= len(want) and k < len(evs) and evs[k][0] - t < 5000:
            tk, rk, cpuk, wk, _ = evs[k]
            if (rk, wk) == want[len(seq) - 1]:
                seq.append((tk, cpuk))
            k += 1
        if len(seq) != len(want) + 1:
            continue
        for h, (a, b) in zip(HOPS, zip(seq, seq[1:])):
            hops[h].append(b[0] - a[0])
            split[h][a[1] != b[1]].append(b[0] - a[0])
        chains.append(seq[-1][0] - seq[0][0])
    print("  turns followed: %d" % len(chains))
    print("  %-14s %s" % ("whole chain", quantiles(chains)))
    for h in HOPS:
        print("  -> %-12s %s" % (h, quantiles(hops[h])))
    print("  each hop on the same CPU / across CPUs: turns, p50")
    for h in HOPS:
        same, cross = split[h]
        print("  -> %-12s same %4d  %s | cross %4d  %s" % (
            h, len(same), p50(same), len(cross), p50(cross)))


if __name__ == "__main__":
    main()
