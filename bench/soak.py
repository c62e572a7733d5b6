"""Soak: sustained load at half the measured maximum, on the production configuration.

Starts a private Redis and a private PostgreSQL (bench/cluster.py), `risk serve --workers 2`
on them with API keys, then:

1. measures the maximum with a short closed-loop burst (16 client threads, as fast as the
   answers come; `--rate` skips it and sets the soak rate directly);
2. sends unique payment events at half that rate for `--seconds` (default 300), over
   20,000 accounts, from a separate client process (16 threads, keep-alive connections,
   each event due at a fixed time: latency is also given from that planned time, so a
   stall is not hidden by the client waiting for it);
3. samples the RSS of every gunicorn worker and the Redis memory (INFO used_memory of the
   run's own Redis) throughout; the "start" sample is taken after a warm-up of a tenth of
   the run (at most 30 s: imports, caches and allocator arenas settle), the growth goal is
   from there to the end;
4. waits until everything settled and checks that every 200 answer is in the decision log
   (PostgreSQL) with the decision the client got, and that the logged decisions of the run
   equal its acknowledged events; a final payment on 100 of the accounts must count their
   earlier events exactly.

Usage: python bench/soak.py [--seconds 300] [--rate R] [--quick]
(--quick: 30 s, a 5 s burst). Prints a summary, rewrites the "soak" section of
docs/reliability.md (unless --no-doc) and exits non-zero if a goal fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cluster

RSS_GROWTH_LIMIT = 0.10
SOAK_ACCOUNTS = 20_000
PROBED_ACCOUNTS = 100


def measure_max(service: cluster.Service, work: Path, seconds: float) -> dict[str, Any]:
    spec = cluster.LoadSpec(
        url=service.url, run=cluster.new_run_id("max"), accounts=SOAK_ACCOUNTS, seconds=seconds
    )
    started = time.time()
    attempts = cluster.LoadProcess(spec, work).wait(timeout=seconds + 120)
    elapsed = max(a.t1 for a in attempts) - started if attempts else seconds
    ok = sum(a.status == 200 for a in attempts)
    return {"rps": ok / elapsed, "attempts": len(attempts), "ok": ok, "run": spec.run}


def sample(service: cluster.Service, stores: cluster.PrivateStores) -> dict[str, Any]:
    return {"t": time.time(), "rss": service.rss_kb(), "redis": stores.redis_memory()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="soak duration")
    parser.add_argument("--rate", type=float, default=0.0, help="soak rate (default: max / 2)")
    parser.add_argument("--burst", type=float, default=10.0, help="seconds of the max burst")
    parser.add_argument("--threads", type=int, default=16, help="client threads")
    parser.add_argument("--quick", action="store_true", help="30 s soak, 5 s burst")
    parser.add_argument("--no-doc", action="store_true", help="do not touch docs/reliability.md")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.burst = min(args.seconds, 30.0), 5.0
    command = cluster.script_command("bench/soak.py")
    cluster.exit_on_signals()
    started_at = datetime.now(UTC)
    before = cluster.other_load()
    t_start = time.time()
    warmup = min(30.0, args.seconds / 10)

    with (
        cluster.tmpdir("risk-soak-") as work,
        cluster.PrivateStores() as stores,
        cluster.Service(
            work / "service",
            cluster.production_env(state_url=stores.state_url, pg_url=stores.pg.url),
        ) as service,
    ):
        boot = sample(service, stores)
        if args.rate:
            burst: dict[str, Any] = {"rps": 2 * args.rate, "given": True}
        else:
            burst = measure_max(service, work, args.burst)
            print(f"maximum: {burst['rps']:.0f} req/s ({burst['ok']} answers in {args.burst} s)")
        rate = args.rate or burst["rps"] / 2
        spec = cluster.LoadSpec(
            url=service.url,
            run=cluster.new_run_id("soak"),
            accounts=SOAK_ACCOUNTS,
            threads=args.threads,
            rate=rate,
            seconds=args.seconds,
            timeouts=(10.0,),
            max_attempts=5,
        )
        print(f"soak: {rate:.0f} req/s for {args.seconds:.0f} s ({spec.run})")
        load = cluster.LoadProcess(spec, work)
        meter = cluster.CpuMeter([service.master, load.proc.pid, *stores.pids()])
        meter.start()
        load_started = time.time()
        samples = []
        start_sample = None
        next_sample = load_started + warmup
        while load.proc.poll() is None:
            time.sleep(0.5)
            if time.time() >= next_sample:
                samples.append(sample(service, stores))
                start_sample = start_sample or samples[-1]
                next_sample += 15.0
        attempts = load.wait()
        cpu = meter.stop()
        end_sample = sample(service, stores)
        assert start_sample is not None
        events = cluster.by_event(attempts)
        db = cluster.DecisionLogDb(stores.pg.url)
        try:
            settled = cluster.settle(service, db, [e for e, o in events.items() if o.acked])
            print("settled:", {k: v for k, v in settled.items() if k != "missing"}, flush=True)
            logged = cluster.check_logged(db, events)
            run_rows = db.count(spec.run + "-%")
            probe_events = {
                e: o
                for e, o in events.items()
                if int(o.account.rsplit("-", 1)[1]) < PROBED_ACCOUNTS
            }
            velocity = cluster.probe_velocity(service, db, probe_events, spec.run)
            conflicts = db.conflicts()
        finally:
            db.close()
        restarted = set(boot["rss"]) != set(end_sample["rss"])

    result = analyse(
        args, burst, rate, spec, attempts, events, boot, start_sample, end_sample, samples
    )
    result.update(
        settled=settled,
        logged=logged,
        run_rows=run_rows,
        velocity=velocity,
        conflicts=conflicts,
        restarted=restarted,
        warmup=warmup,
        cpu=cpu,
    )
    goals = {
        "no errors (every attempt answered 200)": result["errors"] == 0,
        "zero 5xx": result["counts"]["5xx"] == 0,
        "RSS growth of every worker at most 10%": result["rss_ok"] and not restarted,
        "every 200 answer in the decision log": not logged["missing"]
        and not logged["answer_differs_from_log"],
        "decisions logged = acknowledged events": run_rows == logged["acked"],
        "velocities exact": not velocity["wrong"],
    }
    text = render(result, goals, command, started_at, time.time() - t_start, before)
    print(text)
    if not args.no_doc:
        cluster.write_section("soak", text)
    return 0 if all(goals.values()) else 1


def analyse(
    args: argparse.Namespace,
    burst: dict[str, Any],
    rate: float,
    spec: cluster.LoadSpec,
    attempts: list[cluster.Attempt],
    events: dict[str, cluster.EventOutcome],
    boot: dict[str, Any],
    start: dict[str, Any],
    end: dict[str, Any],
    samples: list[dict[str, Any]],
) -> dict[str, Any]:
    counts = cluster.window_counts(attempts, 0, float("inf"))
    errors = counts["attempts"] - counts["200"] - counts["degraded"]
    first = [a for a in attempts if a.kind == "new" and a.n == 0]
    sent = cluster.percentiles([1000 * (a.t1 - a.t0) for a in attempts])
    planned = cluster.percentiles([1000 * (a.t1 - a.sched) for a in first])
    duration = max(a.t1 for a in attempts) - min(a.t0 for a in attempts)
    rss = []
    ok = True
    for pid, kb in sorted(end["rss"].items()):
        at_start = start["rss"].get(pid)
        growth = (kb - at_start) / at_start if at_start else float("nan")
        ok = ok and at_start is not None and growth <= RSS_GROWTH_LIMIT
        peak = max(s["rss"].get(pid, 0) for s in [*samples, end])
        rss.append((pid, boot["rss"].get(pid), at_start, kb, peak, growth))
    return {
        "burst": burst,
        "rate": rate,
        "achieved": len(first) / duration if duration else 0.0,
        "duration": duration,
        "counts": counts,
        "errors": errors,
        "events": len(events),
        "sent_ms": sent,
        "planned_ms": planned,
        "late_starts": sum(a.t0 - a.sched > 0.010 for a in first),
        "rss": rss,
        "rss_ok": ok,
        "redis": (start["redis"], end["redis"]),
        "threads": spec.threads,
    }


def render(
    r: dict[str, Any],
    goals: dict[str, bool],
    command: list[str],
    started: datetime,
    seconds: float,
    before: str,
) -> str:
    c = r["counts"]
    burst = r["burst"]
    if burst.get("given"):
        max_line = ("maximum", "not measured (`--rate` given)", "")
    else:
        max_line = (
            "maximum (closed loop, 16 threads)",
            f"{burst['rps']:.0f} req/s ({burst['ok']:,} answers in the burst)",
            "",
        )
    s, p = r["sent_ms"], r["planned_ms"]
    rows = [
        max_line,
        (
            "soak rate (half), achieved",
            f"{r['rate']:.0f} req/s planned, {r['achieved']:.0f} achieved, "
            f"{r['duration']:.0f} s, {r['events']:,} events",
            "",
        ),
        (
            "attempts: 200 / degraded / 4xx / 5xx / timeout / connection",
            f"{c['200']:,} / {c['degraded']} / {c['4xx']} / {c['5xx']} / {c['timeout']}"
            f" / {c['conn']}",
            "",
        ),
        ("errors (every attempt not answered 200)", r["errors"], "0"),
        (
            "latency from send, p50 / p99 / p99.9 / max",
            f"{s['p50']:.1f} / {s['p99']:.1f} / {s['p99.9']:.1f} / {s['max']:.0f} ms",
            "",
        ),
        (
            "latency from the planned send time, p50 / p99 / p99.9 / max",
            f"{p['p50']:.1f} / {p['p99']:.1f} / {p['p99.9']:.1f} / {p['max']:.0f} ms"
            f" ({r['late_starts']} sends started > 10 ms late)",
            "",
        ),
    ]
    cpu = r["cpu"]
    rows.append(
        (
            "cores busy during the soak: the machine, this run, other processes",
            f"{cpu['machine']:.2f}, {cpu['run']:.2f}, {cpu['others']:.2f} (of {os.cpu_count()})",
            "others near 0",
        )
    )
    for pid, boot, start, end, peak, growth in r["rss"]:
        rows.append(
            (
                f"RSS of worker {pid}: boot, start (after {r['warmup']:.0f} s), end; peak",
                f"{_mb(boot)}, {_mb(start)}, {_mb(end)} MB ({growth:+.1%}); {_mb(peak)} MB",
                "growth ≤ 10%",
            )
        )
    if r["restarted"]:
        rows.append(("worker restarted during the run", "yes", "no"))
    rs, re_ = r["redis"]
    per_event = (re_["used_memory"] - rs["used_memory"]) / max(1, r["events"])
    rows += [
        (
            "Redis used_memory, start → end (keys)",
            f"{rs['used_memory'] / 2**20:.1f} → {re_['used_memory'] / 2**20:.1f} MiB "
            f"({rs['keys']:,} → {re_['keys']:,} keys; {per_event:,.0f} bytes per event)",
            "",
        ),
        (
            "decisions logged in PostgreSQL / acknowledged events",
            f"{r['run_rows']:,} / {r['logged']['acked']:,} "
            f"(missing {len(r['logged']['missing'])}, answer not in the log "
            f"{len(r['logged']['answer_differs_from_log'])}, answered twice "
            f"{len(r['logged']['answered_twice'])}, conflicts {r['conflicts']}; "
            f"settled in {r['settled']['seconds']} s)",
            "equal, none missing",
        ),
        (
            f"velocity: final payment on {r['velocity']['accounts']} accounts",
            f"{r['velocity']['exact']} exact, {len(r['velocity']['wrong'])} wrong",
            "all exact",
        ),
    ]
    lines = [
        "## Soak",
        "",
        cluster.header(command, started, seconds, before),
        cluster.table(["measure", "value", "goal"], rows),
        "",
        "Goals: " + "; ".join(f"{name}: {cluster.verdict(ok)}" for name, ok in goals.items()),
        "",
        "Redis grows by the idempotency record of every event (kept 7 days,"
        " `IDEMPOTENCY_TTL_SECONDS`) and the state of every new account, device and"
        " merchant: growth with traffic, bounded by the TTLs, not a leak. Latency is the"
        " client's, on the same two cores as the server, Redis and PostgreSQL; other"
        " processes' share of the cores (above) slows it down and is not this service's.",
    ]
    return "\n".join(lines)


def _mb(kb: int | None) -> str:
    return "?" if kb is None else f"{kb / 1024:.0f}"


if __name__ == "__main__":
    sys.exit(main())
