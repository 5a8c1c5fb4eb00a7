"""Idle sessions against a running sqlgate: memory per session and the session caps.

Driven by bench/sessions.sh (which starts the issuer and the gateway and mints the
tokens); prints markdown. Phases, on one gateway:

1. unauthenticated: max_unauthenticated + EXTRA raw TCP connections that never send a
   startup packet; the extra ones must get an ErrorResponse at once.
2. one identity: one token opens per-identity cap + EXTRA sessions on connection "a".
3. staircase: idle sessions opened in steps, alternating connections "a" and "b",
   PER_AGENT sessions per identity (under the per-identity cap), until past the
   connection and gateway caps. VmRSS of the gateway after each step.

A monitor polls pg_stat_activity every 50 ms throughout and keeps the most upstream
backends seen per connection (by application_name, which sqlgate passes through).
"""

import argparse
import json
import os
import socket
import sys
import threading
import time
from collections import Counter, OrderedDict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pgwire import Conn, PgError, rss_kib, threads_of  # noqa: E402

APP = "sqlgate-bench-sessions-"


class Monitor(threading.Thread):
    """Upstream backends per connection, straight from PostgreSQL."""

    def __init__(self, host, port, user, database, interval=0.05):
        super().__init__(daemon=True)
        self.conn = Conn.connect(host, port, user, "postgres")
        self.database = database
        self.interval = interval
        self.lock = threading.Lock()
        self.now = Counter()
        self.peak = Counter()
        self.samples = 0
        self.stop = threading.Event()

    def poll(self):
        rows = self.conn.query(
            "select coalesce(application_name, ''), count(*) from pg_stat_activity "
            f"where datname = '{self.database}' and backend_type = 'client backend' "
            "and pid <> pg_backend_pid() group by 1"
        )
        now = Counter()
        for app, n in rows:
            key = app[len(APP):] if app.startswith(APP) else "other"
            now[key] += int(n)
            now["all"] += int(n)
        with self.lock:
            self.now = now
            for k, v in now.items():
                self.peak[k] = max(self.peak[k], v)
            self.samples += 1

    def run(self):
        while not self.stop.is_set():
            self.poll()
            time.sleep(self.interval)

    def current(self):
        self.poll()
        with self.lock:
            return Counter(self.now)

    def wait_for(self, pred, timeout=10.0):
        end = time.time() + timeout
        while time.time() < end:
            if pred(self.current()):
                return True
            time.sleep(0.05)
        return False


def short(msg, width=160):
    msg = " ".join(msg.split())
    return msg if len(msg) <= width else msg[: width - 1] + "…"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True, help="gateway port")
    ap.add_argument("--pid", type=int, required=True, help="gateway pid (for VmRSS)")
    ap.add_argument("--pg-port", type=int, default=5432)
    ap.add_argument("--pg-user", default="postgres")
    ap.add_argument("--database", required=True, help="upstream database of both connections")
    ap.add_argument("--tokens", required=True, help="JSON {sub: token}")
    ap.add_argument("--solo", default="solo-agent", help="sub for the one-identity phase")
    ap.add_argument("--sslmode", default="disable")
    ap.add_argument("--steps", default="0,10,25,50,75,100")
    ap.add_argument("--per-agent", type=int, default=8)
    ap.add_argument("--extra", type=int, default=3)
    ap.add_argument("--burst", type=int, default=100, help="logins in phase 4 (0: skip)")
    ap.add_argument("--burst-threads", type=int, default=12,
                    help="phase 4 logins at once (below the unauthenticated cap, so the session caps race)")
    ap.add_argument("--settle", type=float, default=0.5)
    ap.add_argument("--cap-gateway", type=int, required=True)
    ap.add_argument("--cap-a", type=int, required=True)
    ap.add_argument("--cap-b", type=int, required=True)
    ap.add_argument("--cap-identity", type=int, required=True)
    ap.add_argument("--cap-unauth", type=int, required=True)
    ap.add_argument("--json", help="also write the numbers here")
    a = ap.parse_args()

    tokens = json.load(open(a.tokens))
    agents = [s for s in tokens if s != a.solo]
    steps = [int(s) for s in a.steps.split(",")]
    pid = a.pid
    mon = Monitor(a.host, a.pg_port, a.pg_user, a.database)
    mon.start()
    out = []
    result = {"sslmode": a.sslmode}

    def connect(conn_name, sub):
        return Conn.connect(
            a.host, a.port, sub, conn_name, password=tokens[sub], sslmode=a.sslmode,
            params={"application_name": APP + conn_name},
        )

    def settle():
        time.sleep(a.settle)

    rss0 = rss_kib(pid)
    threads0 = threads_of(pid)
    result["rss0_kib"] = rss0

    # ------------------------------------------------------------ 1. unauthenticated
    n_unauth = a.cap_unauth + a.extra
    socks = []
    for _ in range(n_unauth):
        s = socket.create_connection((a.host, a.port), timeout=5)
        socks.append(s)
        time.sleep(0.005)  # in order: the gateway counts them as they are accepted
    settle()
    rss_unauth = rss_kib(pid)
    unauth_refused = Counter()
    unauth_open = 0
    for s in socks:
        s.setblocking(False)
        try:
            data = s.recv(65536)
        except BlockingIOError:
            unauth_open += 1
            continue
        if data[:1] == b"E":
            fields = {}
            for part in data[5:].split(b"\0"):
                if part:
                    fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
            unauth_refused[(fields.get("C"), short(fields.get("M", "")))] += 1
        else:
            unauth_refused[("closed", f"{len(data)} bytes")] += 1
    for s in socks:
        s.close()
    result["unauth"] = {"tried": n_unauth, "held": unauth_open, "rss_kib": rss_unauth,
                        "refused": [[c, m, n] for (c, m), n in unauth_refused.items()]}

    # ------------------------------------------------------------ 2. one identity
    time.sleep(0.5)  # the gateway notices the closed sockets
    solo, solo_refused = [], Counter()
    for _ in range(a.cap_identity + a.extra):
        try:
            solo.append(connect("a", a.solo))
        except PgError as e:
            solo_refused[(e.sqlstate, short(e.message))] += 1
    solo_backends = mon.current()["a"]
    for c in solo:
        c.close()
    released = mon.wait_for(lambda now: now["all"] == 0)
    result["solo"] = {"tried": a.cap_identity + a.extra, "open": len(solo),
                      "upstream": solo_backends, "released": released,
                      "refused": [[c, m, n] for (c, m), n in solo_refused.items()]}
    settle()

    # ------------------------------------------------------------ 3. staircase
    rss_before_stairs = rss_kib(pid)
    sessions = {"a": [], "b": []}
    refused = OrderedDict()  # (sqlstate, message) -> count
    first_refused_at = {}
    rows = []
    attempts = 0
    login_ms = []
    for target in steps:
        while attempts < target:
            conn_name = "ab"[attempts % 2]
            sub = agents[(attempts // a.per_agent) % len(agents)]
            t = time.perf_counter()
            try:
                sessions[conn_name].append(connect(conn_name, sub))
                login_ms.append((time.perf_counter() - t) * 1000)
            except PgError as e:
                key = (e.sqlstate, short(e.message))
                refused[key] = refused.get(key, 0) + 1
                first_refused_at.setdefault(key, attempts + 1)
            attempts += 1
        settle()
        now = mon.current()
        rows.append({
            "attempted": attempts,
            "open_a": len(sessions["a"]),
            "open_b": len(sessions["b"]),
            "open": len(sessions["a"]) + len(sessions["b"]),
            "refused": sum(refused.values()),
            "up_a": now["a"], "up_b": now["b"], "up_all": now["all"],
            "rss_kib": rss_kib(pid),
            "threads": threads_of(pid),
        })

    # Every session still answers (they were idle, not dead).
    alive, dead = 0, Counter()
    for conn_name in "ab":
        for c in sessions[conn_name]:
            try:
                c.query("select 1")
                alive += 1
            except PgError as e:
                dead[(e.sqlstate, short(e.message))] += 1
    settle()
    rss_after_query = rss_kib(pid)
    for conn_name in "ab":
        for c in sessions[conn_name]:
            c.close()
    released_all = mon.wait_for(lambda now: now["all"] == 0)
    with mon.lock:
        peak_all = Counter(mon.peak)
    time.sleep(1.0)
    rss_after_close = rss_kib(pid)

    # ------------------------------------------------------------ 4. concurrent burst
    # The same identities and connections, all logins at once: the caps must also hold
    # when the admissions race (and max_unauthenticated meets a real burst).
    burst = {"tried": a.burst}
    if a.burst:
        with mon.lock:
            mon.peak = Counter()
        got, burst_refused, lock = [], Counter(), threading.Lock()
        barrier = threading.Barrier(a.burst_threads)
        todo = list(range(a.burst - 1, -1, -1))

        def worker():
            barrier.wait()
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                conn_name = "ab"[i % 2]
                sub = agents[(i // a.per_agent) % len(agents)]
                try:
                    c = connect(conn_name, sub)
                    with lock:
                        got.append((conn_name, c))
                except PgError as e:
                    with lock:
                        burst_refused[(e.sqlstate, short(e.message))] += 1
                except OSError as e:
                    with lock:
                        burst_refused[("-", short(f"{type(e).__name__}: {e}"))] += 1

        ts = [threading.Thread(target=worker) for _ in range(a.burst_threads)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        burst_s = time.perf_counter() - t0
        settle()
        now = mon.current()
        rss_burst = rss_kib(pid)
        with mon.lock:
            burst_peak = Counter(mon.peak)
        for _, c in got:
            c.close()
        mon.wait_for(lambda now: now["all"] == 0)
        burst.update({
            "open_a": sum(1 for n, _ in got if n == "a"), "open_b": sum(1 for n, _ in got if n == "b"),
            "up_now": dict(now), "peak": dict(burst_peak), "seconds": burst_s, "rss_kib": rss_burst,
            "refused": [[c, m, n] for (c, m), n in burst_refused.most_common()],
        })
        for k, v in burst_peak.items():
            peak_all[k] = max(peak_all[k], v)
    mon.stop.set()

    # RSS per idle session: least squares of VmRSS on open sessions over the steps with
    # sessions open (the first sessions also pay one-time costs: buffers, catalog, audit).
    fit = [r for r in rows if r["open"] > 0]
    if len({r["open"] for r in fit}) < 2:
        fit = rows
    xs = [r["open"] for r in fit]
    ys = [r["rss_kib"] for r in fit]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else float("nan")
    top = max(rows, key=lambda r: r["open"])
    low = min(rows, key=lambda r: r["open"])
    per_session_endpoints = ((top["rss_kib"] - low["rss_kib"]) / (top["open"] - low["open"])
                             if top["open"] > low["open"] else float("nan"))
    peak = peak_all
    result.update({
        "steps": rows, "slope_kib": slope, "endpoints_kib": per_session_endpoints,
        "refused": [[c, m, n, first_refused_at[(c, m)]] for (c, m), n in refused.items()],
        "peak_upstream": dict(peak), "alive": alive, "dead": [[c, m, n] for (c, m), n in dead.items()],
        "rss_after_query_kib": rss_after_query, "rss_after_close_kib": rss_after_close,
        "released_all": released_all, "monitor_samples": mon.samples,
        "login_ms_median": sorted(login_ms)[len(login_ms) // 2] if login_ms else None,
        "burst": burst,
    })

    # ------------------------------------------------------------ report
    caps = (f"caps: gateway `limits.max_sessions = {a.cap_gateway}`, connection a "
            f"`max_sessions = {a.cap_a}`, connection b `max_sessions = {a.cap_b}`, "
            f"`max_sessions_per_identity = {a.cap_identity}`, "
            f"`limits.max_unauthenticated = {a.cap_unauth}`")
    out.append(f"#### sslmode={a.sslmode}")
    out.append("")
    out.append(caps + f"; {a.per_agent} sessions per identity in the staircase, "
               "attempts alternate connections a and b.")
    out.append("")
    out.append("| attempted | open (a + b) | refused so far | upstream backends (a + b) | gateway VmRSS MiB | Δ vs 0 sessions MiB | threads |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|")
    base = rows[0]["rss_kib"]
    for r in rows:
        out.append(
            f"| {r['attempted']} | {r['open']} ({r['open_a']} + {r['open_b']}) | {r['refused']} | "
            f"{r['up_all']} ({r['up_a']} + {r['up_b']}) | {r['rss_kib'] / 1024:.1f} | "
            f"{(r['rss_kib'] - base) / 1024:+.1f} | {r['threads']} |")
    out.append("")
    out.append(f"- **RSS per idle session: {slope:.0f} KiB** (least-squares slope of VmRSS on open "
               f"sessions over the steps from {min(xs)} to {max(xs)} open; {per_session_endpoints:.0f} KiB "
               f"from 0 to {top['open']} open, one-time costs of the first sessions included). "
               f"Gateway at start {rss0 / 1024:.1f} MiB ({threads0} threads).")
    out.append(f"- At the caps ({top['open']} sessions open): VmRSS {top['rss_kib'] / 1024:.1f} MiB; after one "
               f"`select 1` on each: {rss_after_query / 1024:.1f} MiB; 1 s after closing them all: "
               f"{rss_after_close / 1024:.1f} MiB (upstream backends back to 0: {'yes' if released_all else 'NO'}).")
    out.append(f"- Median login (token check + upstream connect) in the staircase: {result['login_ms_median']:.1f} ms."
               if login_ms else "- no logins succeeded")
    out.append(f"- All {alive} open sessions answered `select 1` at the end" +
               ("." if not dead else f"; {sum(dead.values())} did not: {dict(dead)}"))
    out.append(f"- Most upstream backends seen by the 50 ms monitor ({mon.samples} samples): "
               f"a {peak['a']} (cap {a.cap_a}), b {peak['b']} (cap {a.cap_b}), "
               f"all {peak['all']} (gateway cap {a.cap_gateway})"
               + (f", other applications {peak['other']}" if peak["other"] else "")
               + (" — **within the caps**." if peak["a"] <= a.cap_a and peak["b"] <= a.cap_b
                  and peak["a"] + peak["b"] <= a.cap_gateway else " — **A CAP DID NOT HOLD**."))
    if a.burst:
        b = burst
        bp = b["peak"]
        out.append(f"- Concurrent burst: {a.burst} logins by {a.burst_threads} threads at once (alternating a/b, same "
                   f"identities, after the staircase's sessions were closed): {b['open_a'] + b['open_b']} admitted ({b['open_a']} + {b['open_b']}) in "
                   f"{b['seconds']:.2f} s, upstream backends then {b['up_now'].get('all', 0)}, most seen "
                   f"a {bp.get('a', 0)}, b {bp.get('b', 0)}, all {bp.get('all', 0)}; VmRSS {b['rss_kib'] / 1024:.1f} MiB.")
    out.append("")
    out.append("Refusals:")
    out.append("")
    out.append("| phase | tried | admitted | refused | SQLSTATE | message (first refused at attempt) |")
    out.append("|---|---:|---:|---:|---|---|")
    u = result["unauth"]
    for c, m, k in u["refused"] or [["-", "(none refused)", 0]]:
        out.append(f"| unauthenticated (TCP, no startup) | {u['tried']} | {u['held']} held | {k} | {c} | {m} |")
    s = result["solo"]
    for c, m, k in s["refused"] or [["-", "(none refused)", 0]]:
        out.append(f"| one identity, connection a | {s['tried']} | {s['open']} | {k} | {c} | {m} |")
    for c, m, k, first in result["refused"] or [["-", "(none refused)", 0, "-"]]:
        out.append(f"| staircase | {attempts} | {top['open']} | {k} | {c} | {m} (#{first}) |")
    if a.burst:
        for c, m, k in burst["refused"] or [["-", "(none refused)", 0]]:
            out.append(f"| concurrent burst | {a.burst} | {burst['open_a'] + burst['open_b']} | {k} | {c} | {m} |")
    out.append("")
    print("\n".join(out))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    ok = (peak["a"] <= a.cap_a and peak["b"] <= a.cap_b and peak["a"] + peak["b"] <= a.cap_gateway
          and not dead)
    if a.burst:
        ok = ok and burst["open_a"] <= a.cap_a and burst["open_b"] <= a.cap_b \
            and burst["open_a"] + burst["open_b"] <= a.cap_gateway
    sys.exit(0 if ok else 2)


if __name__ == "__main__":
    main()
