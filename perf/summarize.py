#!/usr/bin/env python3
"""Summarizes one perf run: the per-round JSON reports of `shardgate load` (augmented by lib.sh
with relay CPU and mock counters) for each target, medians over rounds, the added latency and CPU
of nginx and shardgate over direct (and of nginx-b, the A/A second nginx, when it ran), their
ratios to nginx, pool reuse, attempts per request, error share, idle RSS, and shardgate's own
counters (attempts per request, retry-exhausted share, retries by reason).

    summarize.py OUT_DIR ROUNDS SCENARIO

Reads OUT_DIR/<target>-<round>.json and OUT_DIR/idle-<target>.json; writes OUT_DIR/summary.json.
"""
import json
import os
import statistics as st
import sys

out, rounds, scenario = sys.argv[1], int(sys.argv[2]), sys.argv[3]
names = [n for n in ("direct", "nginx", "nginx-b", "shardgate") if os.path.exists(f"{out}/{n}-1.json")]
runs = {n: [json.load(open(f"{out}/{n}-{i}.json")) for i in range(1, rounds + 1)] for n in names}


def med(n, f):
    return st.median(f(r) for r in runs[n])


def med_us(n, f):
    """Median over rounds of a µs figure, rounded to whole µs."""
    return round(med(n, f))


def requests(r):
    """Client requests that reached the server: turns and warm-ups, minus failed connects."""
    refused = sum(v for k, v in r["errors"].items() if k.startswith(("connect_", "handshake")))
    return max(r["turns_ok"] + r["warmups_ok"] + r["turns_failed"] - refused, 0)


def reuse(r):
    m = r.get("mock", {})
    turns = m.get("upstream_turns", 0)
    return 1 - m.get("upstream_conns", 0) / turns if turns else float("nan")


def attempts(r):
    req = requests(r)
    return r.get("mock", {}).get("upstream_turns", 0) / req if req else float("nan")


def error_share(r):
    total = r["turns_ok"] + r["turns_failed"]
    return r["turns_failed"] / total if total else float("nan")


first = runs[names[0]][0]
print(
    f"{scenario} ({out.rsplit('/', 1)[-1]}): {first['transport']}, {first['connections']} connections, "
    f"{rounds} alternating rounds of {first.get('duration_secs') or '?'} s, payload {first['payload_bytes']} B, "
    f"rate cap {first['rate_cap'] or 'none'} (medians over rounds)"
)
unavailable = {}
for n in names:
    errs = {}
    for r in runs[n]:
        for k, v in r["errors"].items():
            errs[k] = errs.get(k, 0) + v
    ok = sum(r["turns_ok"] for r in runs[n])
    if ok == 0:
        unavailable[n] = errs
for n, errs in unavailable.items():
    refused = sorted(k for k in errs if k in ("http_404", "http_405", "handshake_http_404", "handshake_http_405"))
    if refused:
        print(
            f"!! {n} answered {', '.join(refused)}: it does not serve this endpoint "
            f"(for shardgate: POST /v1/responses is not in this build yet); its figures are left out."
        )
    else:
        print(f"!! no turn through {n} succeeded (errors {errs}); its figures are left out.")
names = [n for n in names if n not in unavailable]

header = (
    f"{'target':<10} {'turns/s':>8} {'ttft p50':>9} {'p95':>7} {'p99':>7} {'p99.9':>7} {'evt p50':>8} "
    f"{'evt p99':>8} {'evt p99.9':>9} {'err %':>6} {'cpu s/1k':>9} {'reuse':>6} {'att/req':>7}"
)
print(header)
summary = {"scenario": scenario, "rounds": rounds, "targets": {}}
for n in names:
    s = {
        "turns_per_sec": med(n, lambda r: r["turns_per_sec"]),
        "ttft_p50": med_us(n, lambda r: r["ttft_us"]["p50"]),
        "ttft_p90": med_us(n, lambda r: r["ttft_us"]["p90"]),
        "ttft_p95": med_us(n, lambda r: r["ttft_us"].get("p95", r["ttft_us"]["p90"])),
        "ttft_p99": med_us(n, lambda r: r["ttft_us"]["p99"]),
        "ttft_p999": med_us(n, lambda r: r["ttft_us"]["p999"]),
        "evt_p50": med_us(n, lambda r: r["event_latency_us"]["p50"]),
        "evt_p95": med_us(n, lambda r: r["event_latency_us"].get("p95", r["event_latency_us"]["p90"])),
        "evt_p99": med_us(n, lambda r: r["event_latency_us"]["p99"]),
        "evt_p999": med_us(n, lambda r: r["event_latency_us"]["p999"]),
        "error_share": med(n, error_share),
        "errors": {},
        "cpu_per_1k": med(n, lambda r: 1000 * r.get("relay_cpu_secs", 0) / max(r["turns_ok"], 1)),
        "reuse": med(n, reuse),
        "attempts_per_request": med(n, attempts),
        "connects_per_sec": med(n, lambda r: r["connects"] / r["elapsed_secs"]),
        "first_turn_p50": med_us(n, lambda r: r["first_turn_us"]["p50"]),
        "first_turn_p99": med_us(n, lambda r: r["first_turn_us"]["p99"]),
        "connect_p50": med_us(n, lambda r: r["connect_us"]["p50"]),
        "connect_p99": med_us(n, lambda r: r["connect_us"]["p99"]),
        "upstream_conns": [r.get("mock", {}).get("upstream_conns", 0) for r in runs[n]],
        "turns_failed": sum(r["turns_failed"] for r in runs[n]),
        "peak_rss_kib": max(r.get("relay_peak_rss_kib", 0) for r in runs[n]),
    }
    for r in runs[n]:
        for k, v in r["errors"].items():
            s["errors"][k] = s["errors"].get(k, 0) + v
    summary["targets"][n] = s
    print(
        f"{n:<10} {s['turns_per_sec']:>8.0f} {s['ttft_p50']:>9} {s['ttft_p95']:>7} {s['ttft_p99']:>7} "
        f"{s['ttft_p999']:>7} {s['evt_p50']:>8} {s['evt_p99']:>8} {s['evt_p999']:>9} "
        f"{100 * s['error_share']:>6.2f} {s['cpu_per_1k']:>9.3f} {s['reuse']:>6.3f} {s['attempts_per_request']:>7.3f}"
    )

print("\nconnections: connects/s, connect p50/p99, connect+first turn p50/p99 (µs), upstream connections opened per round")
for n in names:
    s = summary["targets"][n]
    print(
        f"  {n:<10} {s['connects_per_sec']:>8.0f}/s  connect {s['connect_p50']:>6}/{s['connect_p99']:<6} "
        f"first turn {s['first_turn_p50']:>6}/{s['first_turn_p99']:<6} upstream conns {s['upstream_conns']}"
    )
for n in names:
    if summary["targets"][n]["errors"]:
        print(f"  errors {n}: {summary['targets'][n]['errors']}")


def gateway_view(rs):
    """Shardgate's own counters over each round (its /metrics, after − before, summed over
    shards; lib.sh stores them as `gateway`): requests by kind, upstream attempts, requests that
    used up their retry budget, retries by reason, terminal outcomes, fallbacks."""
    per = []
    for r in rs:
        g = r["gateway"]
        req = g.get("requests_ws", 0) + g.get("requests_stream", 0) + g.get("requests_sync", 0)
        per.append({"requests": req, "attempts": g.get("attempts", 0), "retries_exhausted": g.get("retries_exhausted", 0),
                    "failed_after_retry": g.get("failed_after_retry", 0)})

    def total(family):
        t = {}
        for r in rs:
            for k, v in r["gateway"].get(family, {}).items():
                t[k] = t.get(k, 0) + v
        return t

    ratio = lambda a, b: a / b if b else float("nan")
    return {
        "attempts_per_request": st.median(ratio(p["attempts"], p["requests"]) for p in per),
        "retry_exhausted_share": st.median(ratio(p["retries_exhausted"], p["requests"]) for p in per),
        # Requests that ended in an error although they were retried (budget left or not).
        "failed_after_retry_share": st.median(ratio(p["failed_after_retry"], p["requests"]) for p in per),
        "requests": [p["requests"] for p in per],
        "attempts": [p["attempts"] for p in per],
        "retries_exhausted": [p["retries_exhausted"] for p in per],
        "retries": total("retries"),
        "stale_retries": sum(r["gateway"].get("stale_retries", 0) for r in rs),
        # How the turns ended, by the gateway's count: an upstream error passed to the client
        # (including a retry's `previous_response_not_found` it could not recover), a failure
        # (drop after events reached the client, close, exhausted retries), the client leaving.
        "turns": {k: sum(r["gateway"].get(f"turns_{k}", 0) for r in rs)
                  for k in ("completed", "upstream_error", "failed", "client_gone")},
        "terminal": total("terminal"),
        "fallbacks": total("fallbacks"),
        "recovery": total("recovery"),
    }


if "shardgate" in names and all("gateway" in r for r in runs["shardgate"]):
    g = gateway_view(runs["shardgate"])
    summary["targets"]["shardgate"]["gateway"] = g
    print(
        "\nshardgate's own view (its /metrics, deltas per round; requests = ws + stream + sync):\n"
        f"  requests {g['requests']}  attempts {g['attempts']}  retries exhausted {g['retries_exhausted']}\n"
        f"  attempts/request {g['attempts_per_request']:.3f}  retry-exhausted {100 * g['retry_exhausted_share']:.2f} %  failed after a retry {100 * g['failed_after_retry_share']:.2f} %  (medians over rounds)\n"
        f"  retries by reason {g['retries']}  stale-connection retries {g['stale_retries']}\n"
        f"  turns {g['turns']}\n"
        f"  terminal {g['terminal']}  fallbacks {g['fallbacks']}  recovery {g['recovery']}  (sums over rounds)"
    )

if "direct" in summary["targets"] and len(names) > 1:
    d = summary["targets"]["direct"]
    others = [n for n in names if n != "direct"]
    # Each relay's ratio to nginx: shardgate's ("ratio"), and nginx-b's when it ran ("A/A"): a
    # second nginx of the same configuration, so its ratio is the noise floor of the run.
    versus = [n for n in ("shardgate", "nginx-b") if n in others and "nginx" in others]
    tag = {"shardgate": "ratio", "nginx-b": "A/A"}
    heading = ", ".join(f"{tag[n]} {n}/nginx" for n in versus)
    print(f"\nadded over direct (µs){' and ' + heading if heading else ''}:")
    for k, label in [("ttft_p50", "TTFT p50"), ("ttft_p95", "TTFT p95"), ("ttft_p99", "TTFT p99"),
                     ("ttft_p999", "TTFT p99.9"), ("evt_p50", "event p50"), ("evt_p95", "event p95"), ("evt_p99", "event p99"),
                     ("evt_p999", "event p99.9")]:
        added = {n: summary["targets"][n][k] - d[k] for n in others}
        line = "  ".join(f"{n} +{added[n]:>6}" for n in others)
        for n in versus:
            ng, x = added["nginx"], added[n]
            line += f"  {tag[n]} {x / ng:.2f}" if ng > 0 and x > 0 else f"  {tag[n]} n/a"
        print(f"  {label:<11} {line}")
    summary["added_over_direct"] = {n: {k: summary["targets"][n][k] - d[k] for k in ("ttft_p50", "ttft_p99", "evt_p50", "evt_p99")} for n in others}
    if versus:
        cpu = {n: summary["targets"][n]["cpu_per_1k"] for n in others}
        line = "  ".join(f"{n} {cpu[n]:.3f}" for n in others)
        for n in versus:
            line += f"  {tag[n]} {cpu[n] / cpu['nginx']:.2f}" if cpu["nginx"] else f"  {tag[n]} n/a"
        print(f"  relay CPU s per 1000 turns: {line}")

for n in names:
    if n != "direct" and summary["targets"][n]["peak_rss_kib"]:
        print(f"  {n} peak RSS: {summary['targets'][n]['peak_rss_kib'] / 1024:.1f} MiB")
for n in ("nginx", "nginx-b", "shardgate"):
    path = f"{out}/idle-{n}.json"
    if os.path.exists(path):
        idle = json.load(open(path))
        per = (idle["rss_after_kib"] - idle["rss_before_kib"]) / max(idle["idle_open"], 1)
        summary.setdefault("idle", {})[n] = dict(idle, kib_per_session=per)
        print(
            f"  {n} RSS per idle session: {per:.1f} KiB ({idle['idle_open']} sessions held, "
            f"{idle['rss_before_kib'] / 1024:.1f} → {idle['rss_after_kib'] / 1024:.1f} MiB)"
        )
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(f"\nJSON, CSV and plots: {out}")
