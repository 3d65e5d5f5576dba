#!/usr/bin/env python3
"""The way of a turn's events from the mock to the client, per relay, from a `perf script` of
`syscalls:sys_enter_sendto`, `syscalls:sys_enter_writev` and `syscalls:sys_exit_recvfrom` on every
CPU (perf/event_hops.sh). Each send of the mock longer than `--min-bytes` (a turn's events; an
HTTP answer's head and last chunk are shorter) is followed to the relay's next read, the relay's
next send after it, and the load's next read after that. When the mock's send just before the
events is a short one less than 100 µs earlier (an HTTP answer's head), it is followed to the
relay's next read too: the head may start the relay's wake before the events are sent.

    event_hops.py TRACE RELAY_COMM [--min-bytes N]

Prints p25/p50/p75/mean µs of each hop. Turns are matched by time only, so a hop now and then
belongs to a neighbouring turn; hops longer than 2 ms are left out as unmatched.
"""

import argparse
import bisect
import re
import statistics

LINE = re.compile(r"\s*(\S+)\s+\d+\s+\[\d+\]\s+([\d.]+):\s+syscalls:(\w+):\s*(.*)")
LEN = re.compile(r"\blen: (0x[0-9a-f]+)")
LONGEST = 2000.0
HEAD_AHEAD = 100.0


def parse(path):
    """(µs, comm, event, value): a send's length (0 for writev) or a read's result."""
    out = []
    for line in open(path, errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        comm, ts, event, rest = m.groups()
        if event.startswith("sys_exit"):
            value = int(rest.strip(), 16)
            if value >= 1 << 63:
                value -= 1 << 64
        else:
            length = LEN.search(rest)
            value = int(length.group(1), 16) if length else 0
        out.append((float(ts) * 1e6, comm, event, value))
    return out


def next_after(times, t):
    """The first of the sorted `times` at or after `t`, or None."""
    i = bisect.bisect_left(times, t)
    return times[i] if i < len(times) else None


def show(name, values):
    if not values:
        print(f"  {name:<34} no matches")
        return
    q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    print(f"  {name:<34} p25 {q[0]:6.1f}  p50 {q[1]:6.1f}  p75 {q[2]:6.1f}  mean "
          f"{statistics.mean(values):6.1f}  ({len(values)})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("relay_comm", help="the relay's thread name prefix (nginx, shard-)")
    ap.add_argument("--min-bytes", type=int, default=1000)
    a = ap.parse_args()
    ev = parse(a.trace)
    sends = ("sys_enter_sendto", "sys_enter_writev")
    mock = [e for e in ev if e[1].startswith("mock") and e[2] == "sys_enter_sendto"]
    relay_reads = sorted(e[0] for e in ev
                         if e[1].startswith(a.relay_comm) and e[2] == "sys_exit_recvfrom" and e[3] > 0)
    relay_sends = sorted(e[0] for e in ev if e[1].startswith(a.relay_comm) and e[2] in sends)
    load_reads = sorted(e[0] for e in ev
                        if e[1].startswith("load") and e[2] == "sys_exit_recvfrom" and e[3] > 0)
    to_relay, own, to_load, heads = [], [], [], []
    for i, (t, _, _, size) in enumerate(mock):
        if size <= a.min_bytes:
            continue
        read = next_after(relay_reads, t)
        sent = read is not None and next_after(relay_sends, read)
        got = sent and next_after(load_reads, sent)
        if not got or max(read - t, sent - read, got - sent) > LONGEST:
            continue
        to_relay.append(read - t)
        own.append(sent - read)
        to_load.append(got - sent)
        if i > 0 and mock[i - 1][3] <= a.min_bytes and t - mock[i - 1][0] < HEAD_AHEAD:
            heads.append(read - mock[i - 1][0])
    print(f"{a.relay_comm}: the mock's sends of more than {a.min_bytes} B (a turn's events), µs")
    show("mock sent -> relay has read", to_relay)
    show("relay read -> relay sent", own)
    show("relay sent -> load has read", to_load)
    if heads:
        show("mock sent the head before -> read", heads)


if __name__ == "__main__":
    main()
