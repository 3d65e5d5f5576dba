#!/usr/bin/env python3
"""The way of a turn's events from the mock to the client, per relay, from a `perf script` of
`syscalls:sys_enter_sendto`, `syscalls:sys_enter_writev` and `syscalls:sys_exit_recvfrom` on every
CPU (perf/event_hops.sh). Each send of the mock longer than `--min-bytes` (a turn's events; an
HTTP answer's head and last chunk are shorter) is followed to the relay's next read, the relay's
next send after it, and the load's next read after that. When the mock's send just before the
events is a short one less than 100 µs earlier (an HTTP answer's head), it is followed to the
relay's next read too: the head may start the relay's wake before the events are sent.

    event_hops.py TRACE [--min-bytes N]

The trace is read by perf/wake_chain.py's reader (the relay is nginx or shardgate's shards, by
thread name). Prints p25/p50/p75/mean µs of each hop. Turns are matched by time only, so a hop
now and then belongs to a neighbouring turn; hops longer than 2 ms are left out as unmatched.
"""

import argparse
import bisect

from wake_chain import events, quantiles

LONGEST = 2000.0
HEAD_AHEAD = 100.0


def next_after(times, t):
    """The first of the sorted `times` at or after `t`, or None."""
    i = bisect.bisect_left(times, t)
    return times[i] if i < len(times) else None


def show(name, values):
    print(f"  {name:<34} {quantiles(values)}  ({len(values)})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--min-bytes", type=int, default=1000)
    a = ap.parse_args()
    evs, _ = events(a.trace)
    mock = [(t, size) for t, who, _, what, size in evs if who == "mock" and what == "sent"]
    relay_reads = sorted(t for t, who, _, what, _ in evs if who == "relay" and what == "read")
    relay_sends = sorted(t for t, who, _, what, _ in evs if who == "relay" and what == "sent")
    load_reads = sorted(t for t, who, _, what, _ in evs if who == "load" and what == "read")
    to_relay, own, to_load, heads = [], [], [], []
    for i, (t, size) in enumerate(mock):
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
        if i > 0 and mock[i - 1][1] <= a.min_bytes and t - mock[i - 1][0] < HEAD_AHEAD:
            heads.append(read - mock[i - 1][0])
    print(f"the mock's sends of more than {a.min_bytes} B (a turn's events), µs")
    show("mock sent -> relay has read", to_relay)
    show("relay read -> relay sent", own)
    show("relay sent -> load has read", to_load)
    if heads:
        show("mock sent the head before -> read", heads)


if __name__ == "__main__":
    main()
