#!/usr/bin/env python3
"""Reads a `perf script` of the tracepoints perf/wakeups.sh records (sendto entries, recvfrom
exits, scheduler switches and wakeups, every CPU) and follows each turn through its chain:

  load sends the request -> relay has read it -> relay sends it on -> mock has read it ->
  mock sends the answer -> relay has read it -> relay sends it on -> load has read it

printing each hop's latency (p25/p50/p75/mean, microseconds), the whole chain, and for each
hop how often its two ends ran on the same CPU or on different ones (a cross-CPU wake: on a VM
whose idle vCPU halts, an inter-processor interrupt the host must deliver), with the hop's p50
for each. The four hops that end in a read by another process (relay, mock, relay, load) are
then split at the scheduler's events: the send until the reader's thread is woken (the
kernel's socket and wakeup path: epoll's callback for nginx, io_uring's poll completion for
shardgate and for the mock and load, which run on the same runtime), until it is on a CPU (and
whether it got there by preempting the sender, or otherwise: after the sender slept, or on
another CPU), and until its read returns; with `--kernel-path` recordings, the way to the
wakeup is split again at the receiving socket's packet and at io_uring's task work for it.
Last, how the relay's reads spread over its threads (nginx's workers, shardgate's shards).

  perf/wake_chain.py SCRIPT_TEXT MIN_REQUEST_BYTES
"""
import re
import sys

LINE = re.compile(r"^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
WAKEUP = re.compile(r"comm=(\S+) pid=(\d+)")
SWITCH = re.compile(r"prev_comm=(\S+) prev_pid=(\d+) .*prev_state=(\S+) ==> next_comm=(\S+) next_pid=(\d+)")
# Recorded with `perf/wakeups.sh --kernel-path`: the receiving socket's packet, and io_uring's
# task work queued for the reader (not for nginx, which is woken from epoll's callback).
KERNEL_MARKS = {"net:netif_receive_skb": "skb", "io_uring:io_uring_task_add": "task_add"}
# The hops that end in a process's read: the hop, who sent what is read, who reads it.
READS = (("relay read", "load", "relay"), ("mock read", "relay", "mock"),
         ("relay read 2", "mock", "relay"), ("load read", "relay", "load"))
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
    """The recording's events in order, as (µs, role, cpu, what, detail), and the relay's reads
    counted by thread ("comm pid")."""
    out, relay_reads = [], {}
    for line in open(path, errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        comm, tid, cpu, ts, ev, rest = m.groups()
        t, cpu = float(ts) * 1e6, int(cpu)
        if ev == "sched:sched_wakeup":
            w = WAKEUP.search(rest)
            if w and (woken := role(w.group(1))):
                out.append((t, woken, cpu, "woken", w.group(2)))
            continue
        if ev in KERNEL_MARKS:
            out.append((t, "kernel", cpu, KERNEL_MARKS[ev], None))
            continue
        if ev == "sched:sched_switch":
            sw = SWITCH.search(rest)
            if sw and (next_role := role(sw.group(4))):
                out.append((t, next_role, cpu, "on cpu", (sw.group(5), role(sw.group(1)), sw.group(3))))
            continue
        r = role(comm)
        if r is None:
            continue
        if ev == "syscalls:sys_exit_recvfrom":
            ret = int(rest, 16) if rest.startswith("0x") else int(rest)
            if ret <= 0 or ret >= 1 << 62:
                continue
            out.append((t, r, cpu, "read", ret))
            if r == "relay":
                thread = "%s %s" % (comm, tid)
                relay_reads[thread] = relay_reads.get(thread, 0) + 1
        elif ev in ("syscalls:sys_enter_sendto", "syscalls:sys_enter_writev"):
            # A writev (nginx's HTTP answers; perf/event_hops.sh records it) is a send of
            # unknown length here.
            ln = re.search(r"\blen: (0x[0-9a-f]+)", rest)
            out.append((t, r, cpu, "sent", int(ln.group(1), 16) if ln else 0))
    return out, relay_reads


def main():
    path, min_request = sys.argv[1], int(sys.argv[2])
    evs, relay_reads = events(path)
    want = [("relay", "read"), ("relay", "sent"), ("mock", "read"), ("mock", "sent"),
            ("relay", "read"), ("relay", "sent"), ("load", "read")]
    hops = {h: [] for h in HOPS}
    woke = {h: [] for h, _, _ in READS}
    split = {h: ([], []) for h in HOPS}
    chains = []
    for i, (t, r, cpu, what, n) in enumerate(evs):
        if not (r == "load" and what == "sent" and n >= min_request):
            continue
        seq = [(t, cpu, i)]
        k = i + 1
        while len(seq) <= len(want) and k < len(evs) and evs[k][0] - t < 5000:
            tk, rk, cpuk, wk, _ = evs[k]
            if (rk, wk) == want[len(seq) - 1]:
                seq.append((tk, cpuk, k))
            k += 1
        if len(seq) != len(want) + 1:
            continue
        for h, sender, reader in READS:
            j = HOPS.index(h)
            parts = wake_parts(evs, seq[j], seq[j + 1], sender, reader)
            if parts:
                woke[h].append(parts)
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
    print("  the reads split at the reader's wakeup and its switch onto a CPU: p50 (turns)")
    for h, parts in woke.items():
        if not parts:
            continue
        col = lambda j: [p[j] for p in parts]
        preempted = [p for p in parts if p[3]]
        print("  -> %-12s sent->woken %s  woken->on cpu %s  on cpu->read %s | preempted the "
              "sender in %d of %d (hop p50 %s), otherwise %s" % (
                  h, p50(col(0)), p50(col(1)), p50(col(2)), len(preempted), len(parts),
                  p50([sum(p[:3]) for p in preempted]).strip(),
                  p50([sum(p[:3]) for p in parts if not p[3]]).strip()))
        skb = [p for p in parts if p[4] is not None]
        if skb:
            tw = [p for p in skb if p[5] is not None]
            print("     %-12s sent->packet received %s  packet->woken %s%s" % (
                "", p50([p[4] for p in skb]), p50([p[0] - p[4] for p in skb]),
                "  (packet->io_uring task work %s, task work->woken %s, in %d)" % (
                    p50([p[5] for p in tw]), p50([p[0] - p[4] - p[5] for p in tw]), len(tw))
                if tw else ""))
    total = sum(relay_reads.values())
    if total:
        print("  the relay's reads by thread: " + ", ".join(
            "%s %.0f %%" % (thread, 100 * n / total)
            for thread, n in sorted(relay_reads.items(), key=lambda kv: -kv[1])))


def wake_parts(evs, a, b, sender, reader):
    """The hop from a send (a) to the reader's read (b), split at the first wakeup of a thread of
    the reader after the send and that thread's switch onto a CPU before the read: (sent->woken,
    woken->on cpu, on cpu->read, whether the switch preempted the sender, sent->packet received
    and packet->task work queued when those were recorded, else None)."""
    woken = on = skb = task_add = None
    for k in range(a[2] + 1, b[2]):
        tk, rk, _cpu, wk, x = evs[k]
        if wk == "skb" and skb is None and woken is None:
            skb = tk
        elif wk == "task_add" and skb is not None and task_add is None and woken is None:
            task_add = tk
        elif wk == "woken" and rk == reader and woken is None:
            woken = (tk, x)
        elif wk == "on cpu" and rk == reader and woken is not None and x[0] == woken[1]:
            on = (tk, x)
            break
    if on is None:
        return None
    return (woken[0] - a[0], on[0] - woken[0], b[0] - on[0], on[1][1] == sender and on[1][2] == "R",
            None if skb is None else skb - a[0], None if task_add is None else task_add - skb)


if __name__ == "__main__":
    main()
