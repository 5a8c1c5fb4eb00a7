"""Do large statements stall the other sessions of a running sqlgate?

Driven by bench/parse_stall.sh. Per phase, one session runs `SELECT 1` in a loop through
the gateway for DURATION seconds and records every round trip; meanwhile:

- baseline:    nothing else.
- load:        BIG sessions through the gateway each pipeline (DEPTH in flight) large
               `SELECT n, count(*) FROM t WHERE id IN (...)` statements, each one's text
               unique so no verdict cache can answer it.
- load-direct: the same large statements straight to PostgreSQL, not through the gateway
               (reference: what the CPU PostgreSQL spends on them costs `SELECT 1` anyway).

Each big sender is its own process (no shared GIL with the measuring loop). Prints one
markdown table row per phase; --json writes the numbers.
"""

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from collections import Counter, deque

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pgwire import Conn, PgError  # noqa: E402


def in_list_body(table, target_bytes):
    """`, count(*) FROM table WHERE id IN (1,2,3,...)` of about target_bytes."""
    head = f" AS n, count(*) FROM {table} WHERE id IN ("
    parts, size, i = [], len(head) + 40, 1
    while size < target_bytes:
        s = str(i)
        parts.append(s)
        size += len(s) + 1
        i += 1
    return (head + ",".join(parts) + ")").encode(), i - 1


def big_sender(target, idx, table, target_bytes, depth, ready, stop, results):
    try:
        conn = Conn.connect(**target)
    except PgError as e:
        results.put({"idx": idx, "fatal": f"{e.sqlstate}: {e.message}"})
        ready.set()
        return
    body, _ = in_list_body(table, target_bytes)
    inflight = deque()
    seq, done, errors, busy_s = 0, 0, Counter(), 0.0
    sizes = []
    ready.set()
    t_start = time.perf_counter()

    def send():
        nonlocal seq
        stmt = b"SELECT " + str(idx * 1_000_000_000 + seq).encode() + body
        sizes.append(len(stmt))
        inflight.append(time.perf_counter())
        conn.send_query(stmt)
        seq += 1

    try:
        while not stop.is_set():
            while len(inflight) < depth:
                send()
            inflight.popleft()
            try:
                conn.read_result()
            except PgError as e:
                if e.during != "query":
                    raise
                errors[f"{e.sqlstate}: {e.message[:120]}"] += 1
            done += 1
        while inflight:
            inflight.popleft()
            try:
                conn.read_result()
            except PgError as e:
                if e.during != "query":
                    raise
                errors[f"{e.sqlstate}: {e.message[:120]}"] += 1
            done += 1
    except PgError as e:
        errors[f"session ended: {e.sqlstate}: {e.message[:120]}"] += 1
    elapsed = time.perf_counter() - t_start
    conn.close()
    results.put({"idx": idx, "done": done, "elapsed": elapsed, "errors": dict(errors),
                 "bytes": max(sizes) if sizes else 0})


TICK = os.sysconf("SC_CLK_TCK")


def _ticks(stat_path):
    with open(stat_path) as f:
        text = f.read()
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return comm, int(fields[11]) + int(fields[12])  # utime + stime


def cpu_seconds(pid):
    """(whole gateway, its tokio worker threads) CPU seconds so far; None without a pid."""
    if not pid:
        return None
    _, total = _ticks(f"/proc/{pid}/stat")
    workers = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            comm, t = _ticks(f"/proc/{pid}/task/{tid}/stat")
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        if comm.startswith(("tokio-runtime-w", "tokio-rt-worker")):  # tokio's default names
            workers += t
    return total / TICK, workers / TICK


def pct(sorted_ms, p):
    if not sorted_ms:
        return float("nan")
    k = min(len(sorted_ms) - 1, max(0, int(round(p / 100.0 * len(sorted_ms) + 0.5)) - 1))
    return sorted_ms[k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--connection", required=True, help="sqlgate connection name (dbname)")
    ap.add_argument("--token", required=True)
    ap.add_argument("--user", default="bench-agent", help="user name sent to the gateway (sqlgate takes the identity from the token)")
    ap.add_argument("--pg-port", type=int, default=5432)
    ap.add_argument("--pg-user", default="postgres")
    ap.add_argument("--pg-db", required=True)
    ap.add_argument("--table", required=True)
    ap.add_argument("--phases", default="baseline,load,load-direct")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--big", type=int, default=2)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--stmt-bytes", type=int, default=900_000)
    ap.add_argument("--label", default="sqlgate")
    ap.add_argument("--pid", type=int, help="gateway pid: report its CPU use per phase")
    ap.add_argument("--json")
    a = ap.parse_args()

    gateway = dict(host=a.host, port=a.port, user=a.user, database=a.connection,
                   password=a.token, params={"application_name": "sqlgate-bench-parse-stall"})
    direct = dict(host=a.host, port=a.pg_port, user=a.pg_user, database=a.pg_db,
                  params={"application_name": "sqlgate-bench-parse-stall"})

    # Sanity: the gateway answers a large statement (not denied), so the load is real.
    body, n_ids = in_list_body(a.table, a.stmt_bytes)
    probe = Conn.connect(**gateway)
    t = time.perf_counter()
    rows = probe.query(b"SELECT 0" + body)
    one_big_ms = (time.perf_counter() - t) * 1000
    probe.close()
    stmt_len = len(b"SELECT 0" + body)

    ctx = mp.get_context("fork")
    out, results = [], {"label": a.label, "stmt_bytes": stmt_len, "in_list": n_ids,
                        "one_big_ms": one_big_ms, "phases": {}}
    for phase in a.phases.split(","):
        senders, stop, q = [], ctx.Event(), ctx.Queue()
        if phase != "baseline":
            target = gateway if phase == "load" else direct
            for i in range(a.big):
                ready = ctx.Event()
                p = ctx.Process(target=big_sender, args=(target, i + 1, a.table, a.stmt_bytes,
                                                         a.depth, ready, stop, q), daemon=True)
                p.start()
                ready.wait(30)
                senders.append(p)
            time.sleep(a.warmup)
        conn = Conn.connect(**gateway)
        conn.query("SELECT 1")
        lat = []
        cpu0, t_cpu0 = cpu_seconds(a.pid), time.perf_counter()
        end = time.perf_counter() + a.duration
        errors = Counter()
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                break
            try:
                conn.query("SELECT 1")
            except PgError as e:
                errors[f"{e.sqlstate}: {e.message[:120]}"] += 1
                if e.during != "query":
                    break
            lat.append((time.perf_counter() - t0) * 1000)
        cpu1, wall = cpu_seconds(a.pid), time.perf_counter() - t_cpu0
        conn.close()
        stop.set()
        big = [q.get(timeout=120) for _ in senders]
        for p in senders:
            p.join(30)
        lat.sort()
        big_done = sum(b.get("done", 0) for b in big)
        big_elapsed = max((b.get("elapsed", 0) for b in big), default=0)
        big_errors = Counter()
        for b in big:
            big_errors.update(b.get("errors", {}))
            if "fatal" in b:
                big_errors["could not connect: " + b["fatal"]] += 1
        r = {
            "n": len(lat), "p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99),
            "p999": pct(lat, 99.9), "max": lat[-1] if lat else float("nan"),
            "over_100ms": sum(1 for x in lat if x > 100), "errors": dict(errors),
            "big_done": big_done, "big_per_s": big_done / big_elapsed if big_elapsed else 0.0,
            "big_errors": dict(big_errors),
            "gw_cpu_pct": 100 * (cpu1[0] - cpu0[0]) / wall if cpu0 else None,
            "workers_cpu_pct": 100 * (cpu1[1] - cpu0[1]) / wall if cpu0 else None,
        }
        results["phases"][phase] = r
        errs = "; ".join(f"{k} ×{v}" for k, v in {**errors, **big_errors}.items()) or "-"
        big_col = "-" if phase == "baseline" else f"{r['big_per_s']:.1f}"
        cpu_col = (f"{r['gw_cpu_pct']:.0f} / {r['workers_cpu_pct']:.0f}"
                   if r["gw_cpu_pct"] is not None else "-")
        out.append(
            f"| {a.label} | {phase} | {r['n']} | {r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | "
            f"{r['p999']:.1f} | {r['max']:.1f} | {r['over_100ms']} | {big_col} | {cpu_col} | {errs} |")
        print(f"[parse_stall] {a.label} {phase}: n={r['n']} p50={r['p50']:.2f} p99={r['p99']:.2f} "
              f"max={r['max']:.1f} big/s={r['big_per_s']:.1f} errors={errs}", file=sys.stderr)
    print("\n".join(out))
    print(f"[parse_stall] {a.label}: statement {stmt_len} bytes, IN list of {n_ids} values, "
          f"one alone through the gateway {one_big_ms:.0f} ms (answer {rows})", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
