#!/usr/bin/env python3
"""hookd's speed benchmark: one command that builds hookd (release), starts
what it needs on loopback (a redis-server and a PostgreSQL of its own, in a
temporary directory), runs every case with the load tool
(examples/load.rs) and the plugin benchmark (benches/plugin.rs), and prints
one table with the machine's description and the date.

    python3 bench/run.py            # every case; about 30 minutes
    python3 bench/run.py --quick    # shorter soak and retry backlog
    python3 bench/run.py --cases fair,plugins   # some of the cases only

Needs redis-server and PostgreSQL's binaries (Debian: redis-server,
postgresql), like the test suite; under root PostgreSQL runs as `postgres`
(or `nobody`). Every process is stopped at the end. Numbers come from here,
never from timed test assertions.
"""

import argparse
import datetime
import glob
import json
import os
import platform
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs of each end-to-end and drain case; the median is reported.
RUNS = 3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not start on port {port}")


class Redis:
    def __init__(self, tmp):
        self.port = free_port()
        self.dir = os.path.join(tmp, "redis")
        os.makedirs(self.dir)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--logfile", "redis.log", "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, "redis-server")
        self.url = f"redis://127.0.0.1:{self.port}"

    def flush(self):
        subprocess.run(["redis-cli", "-p", str(self.port), "FLUSHALL"], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["redis-cli", "-p", str(self.port), "CONFIG", "RESETSTAT"], check=True,
                       stdout=subprocess.DEVNULL)

    def version(self):
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
        m = re.search(r"v=(\S+)", out)
        return m.group(1) if m else "?"

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


class Postgres:
    """A PostgreSQL of the benchmark's own, as the test harness starts one."""

    def __init__(self, tmp):
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        self.bin = os.path.dirname(bins[-1]) if bins else os.path.dirname(shutil.which("initdb") or "")
        if not self.bin:
            sys.exit("PostgreSQL's initdb not found: apt-get install postgresql")
        self.dir = os.path.join(tmp, "postgres")
        os.makedirs(self.dir)
        self.user = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    self.user = pwd.getpwnam(name)
                    break
                except KeyError:
                    pass
            os.chown(tmp, self.user.pw_uid, self.user.pw_gid)
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.port = free_port()
        data = os.path.join(self.dir, "data")
        self.run(["initdb", "--no-sync", "--auth=trust", "--encoding=UTF8", "--locale=C",
                  "--username", "hookd", "--pgdata", data], stdout=subprocess.DEVNULL)
        # PostgreSQL's defaults (fsync on), but for the socket and port.
        self.proc = subprocess.Popen(
            self.argv(["postgres", "-D", data, "-c", "listen_addresses=127.0.0.1", "-p", str(self.port),
                       "-c", "unix_socket_directories=", "-c", "max_connections=200"]),
            preexec_fn=self.demote, stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.dir, "log"), "w"))
        wait_port(self.port, "postgres")
        time.sleep(0.5)
        self.databases = 0

    def demote(self):
        if self.user:
            os.setgid(self.user.pw_gid)
            os.setuid(self.user.pw_uid)

    def argv(self, args):
        return [os.path.join(self.bin, args[0])] + args[1:]

    def run(self, args, **kw):
        subprocess.run(self.argv(args), check=True, preexec_fn=self.demote, cwd=self.dir, **kw)

    def fresh_database(self):
        self.databases += 1
        name = f"bench{self.databases}"
        self.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "hookd", "-d", "postgres",
                  "-q", "-c", f"CREATE DATABASE {name}"])
        return f"postgres://hookd@127.0.0.1:{self.port}/{name}"

    def version(self):
        out = subprocess.run(self.argv(["postgres", "--version"]), capture_output=True, text=True).stdout
        m = re.search(r"\) (\d+(\.\d+)*)", out)
        return m.group(1) if m else "?"

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait()


def target_dir():
    out = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["target_directory"]


def load(binary, args, label):
    print(f"\n== {label}\n   load {' '.join(args)}", flush=True)
    proc = subprocess.run([binary, "--json"] + args, cwd=ROOT, capture_output=True, text=True)
    for line in proc.stdout.splitlines()[:-1]:
        print("   " + line)
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr)
        sys.exit(f"{label}: the load tool failed")
    result = json.loads(proc.stdout.splitlines()[-1])
    return result


def median_of(runs, key):
    """The run whose `key` is the median of `runs`, and the range as text."""
    ordered = sorted(runs, key=lambda r: r[key])
    low, high = ordered[0][key], ordered[-1][key]
    return ordered[len(ordered) // 2], f"{low:,.0f}–{high:,.0f}"


def plugin_bench():
    """Criterion's estimates of benches/plugin.rs, in µs."""
    print("\n== plugins: cargo bench --bench plugin", flush=True)
    proc = subprocess.run(["cargo", "bench", "--bench", "plugin", "--", "--noplot"], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout + proc.stderr)
        sys.exit("the plugin benchmark failed")
    out = {}
    units = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}
    name = None
    for line in proc.stdout.splitlines():
        m = re.match(r"^(\S+/\S+)\s*(time:.*)?$", line.strip())
        if m and not line.startswith(" "):
            name = m.group(1)
        t = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
        if t and name:
            out[name] = float(t.group(1)) * units.get(t.group(2), 1.0)
            print(f"   {name}: {out[name]:.2f} µs")
    return out


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Linux {platform.release()}"


# The cases, in the order they run.
CASES = ("e2e", "drain", "paced", "retries", "fanout", "soak", "fair", "plugins")


def fair_case(binary, hookd, fresh, label):
    """Tenant B's p99 ingest-to-delivery latency beside tenant A's 200,000
    due deliveries, against B alone, alternately RUNS times each: the
    median of each and their ratio."""
    b = ["--mode", "fair", "--events", "1000", "--rate", "200", "--connections", "4"]
    alone_runs, beside_runs = [], []
    for n in range(1, RUNS + 1):
        alone_runs.append(load(binary, hookd + fresh() + b + ["--backlog", "0"],
                               f"fairness, {label}: tenant B alone, 200 events/s ({n}/{RUNS})"))
        beside_runs.append(load(binary, hookd + fresh() + b + ["--backlog", "200000"],
                                f"fairness, {label}: tenant B beside tenant A's 200,000 due ({n}/{RUNS})"))
    alone, alone_range = median_of(alone_runs, "p99_ms")
    beside, beside_range = median_of(beside_runs, "p99_ms")
    ratio = beside["p99_ms"] / max(alone["p99_ms"], 1e-9)
    left = min(r["a_left"] for r in beside_runs)
    return (f"Tenant B's p99 beside A's 200,000 due deliveries, {label}",
            f"{beside['p99_ms']:.1f} ms ({beside_range}; ingest's answer {beside['ingest_p99_ms']:.1f}) vs "
            f"{alone['p99_ms']:.1f} ms alone ({alone_range}): {ratio:.2f}x; "
            f"at least {left:,} of A's still due when B's last arrived",
            "within 20% (1.2x)", ratio <= 1.2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="60 s soak and 100,000 retries instead of 10 min and 1,000,000")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated cases to run, of {', '.join(CASES)} (default: all)")
    opts = parser.parse_args()
    cases = set(opts.cases.split(","))
    unknown = cases - set(CASES)
    if unknown:
        sys.exit(f"unknown cases {', '.join(sorted(unknown))}: the cases are {', '.join(CASES)}")
    soak_secs = 60 if opts.quick else 600
    retries = 100_000 if opts.quick else 1_000_000

    if not opts.skip_build:
        print("== building hookd and the load tool (release)", flush=True)
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "hookd", "--example", "load"],
                       cwd=ROOT, check=True)
    tdir = target_dir()
    binary = os.path.join(tdir, "release", "examples", "load")
    hookd = ["--hookd", os.path.join(tdir, "release", "hookd")]

    tmp = tempfile.mkdtemp(prefix="hookd-bench-")
    redis = Redis(tmp)
    pg = Postgres(tmp)
    rows = []
    started = time.time()
    try:
        def redis_pg():
            redis.flush()
            return ["--redis", redis.url, "--postgres", pg.fresh_database()]

        def redis_only():
            redis.flush()
            return ["--redis", redis.url]

        # The machine's speed varies from run to run: the end-to-end cases
        # run three times each, alternately, and report the median run.
        e2e_runs, emb_runs = [], []
        for n in range(1, RUNS + 1 if "e2e" in cases else 1):
            e2e_runs.append(load(binary, hookd + redis_pg() + ["--mode", "e2e", "--events", "60000"],
                                 f"end to end, Redis + PostgreSQL, 32 connections, one event per POST ({n}/{RUNS})"))
            emb_runs.append(load(binary, hookd + ["--mode", "e2e", "--events", "60000"],
                                 f"end to end, embedded, 32 connections ({n}/{RUNS})"))
        if "e2e" in cases:
            e2e_rows(rows, e2e_runs, emb_runs)
        if "drain" in cases:
            drain_rows(rows, binary, hookd, redis_pg)
        if "paced" in cases:
            paced = load(binary, hookd + redis_pg() + ["--mode", "e2e", "--events", "100000", "--rate", "5000"],
                         "5,000 events/s, Redis + PostgreSQL")
            rows.append(("p99 ingest to delivery at 5,000 events/s", f"{paced['p99_ms']:.1f} ms (p50 {paced['p50_ms']:.1f})",
                         "< 25 ms", paced["p99_ms"] < 25))
        if "retries" in cases:
            retries_rows(rows, binary, hookd, redis_pg, retries)
        if "fanout" in cases:
            fanout_rows(rows, binary, hookd, redis_pg)
        if "soak" in cases:
            soak_rows(rows, binary, hookd, redis_pg, soak_secs)
        if "fair" in cases:
            rows.append(fair_case(binary, hookd, lambda: [], "embedded"))
            rows.append(fair_case(binary, hookd, redis_only, "Redis"))
        if "plugins" in cases:
            plugins = plugin_bench()
            for name, target, limit in (("warm/reshape", "≤ 5 µs", 5), ("warm/jq", "≤ 15 µs", 15),
                                        ("fresh/jq", "well under 1.3 ms", 1300), ("fresh/reshape", "—", None)):
                if name in plugins:
                    ok = None if limit is None else plugins[name] <= limit
                    rows.append((f"Plugin call, {name.replace('/', ' ')}", f"{plugins[name]:.2f} µs", target, ok))
    finally:
        redis.stop()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(rows, redis, pg, started)


def e2e_rows(rows, e2e_runs, emb_runs):
    e2e, e2e_range = median_of(e2e_runs, "deliveries_per_s")
    emb, emb_range = median_of(emb_runs, "deliveries_per_s")
    rows.append(("End to end, Redis + PostgreSQL (32 connections)",
                 f"{e2e['deliveries_per_s']:,.0f} deliveries/s (median of {RUNS}: {e2e_range}), p99 {e2e['p99_ms']:.0f} ms",
                 "≥ 10,000/s", e2e["deliveries_per_s"] >= 10_000))
    rows.append(("Redis commands per delivered event", f"{e2e['redis_commands_per_event']:.1f}", "≤ 8",
                 e2e["redis_commands_per_event"] <= 8))
    rows.append(("Redis CPU per delivered event", f"{e2e['redis_cpu_us_per_event']:.1f} µs", "≤ 40 µs",
                 e2e["redis_cpu_us_per_event"] <= 40))
    rows.append(("Redis RAM per delivered event (backlog empty)", f"{e2e['redis_bytes_per_event']:.0f} bytes",
                 "≤ 200 bytes", e2e["redis_bytes_per_event"] <= 200))
    rows.append(("hookd CPU per delivered event (Redis + PostgreSQL)", f"{e2e['hookd_cpu_us_per_event']:.0f} µs", "—", None))
    rows.append(("End to end, embedded (32 connections)",
                 f"{emb['deliveries_per_s']:,.0f} deliveries/s (median of {RUNS}: {emb_range}), p99 {emb['p99_ms']:.0f} ms",
                 "≥ 12,000/s", emb["deliveries_per_s"] >= 12_000))


def drain_rows(rows, binary, hookd, redis_pg):
    drain_runs, drain_emb_runs = [], []
    for n in range(1, RUNS + 1):
        drain_runs.append(load(binary, hookd + redis_pg() + ["--mode", "backlog", "--events", "100000"],
                               f"backlog drain, Redis + PostgreSQL ({n}/{RUNS})"))
        drain_emb_runs.append(load(binary, hookd + ["--mode", "backlog", "--events", "100000"],
                                   f"backlog drain, embedded ({n}/{RUNS})"))
    drain, drain_range = median_of(drain_runs, "deliveries_per_s")
    drain_emb, drain_emb_range = median_of(drain_emb_runs, "deliveries_per_s")
    rows.append(("Backlog drain, Redis + PostgreSQL",
                 f"{drain['deliveries_per_s']:,.0f} deliveries/s (median of {RUNS}: {drain_range})",
                 "≥ 25,000/s", drain["deliveries_per_s"] >= 25_000))
    rows.append(("Backlog drain, embedded",
                 f"{drain_emb['deliveries_per_s']:,.0f} deliveries/s (median of {RUNS}: {drain_emb_range})",
                 "≥ 25,000/s", drain_emb["deliveries_per_s"] >= 25_000))


def retries_rows(rows, binary, hookd, redis_pg, retries):
    deep = load(binary, hookd + redis_pg() + ["--mode", "e2e", "--events", "60000", "--retries", str(retries)],
                f"end to end with {retries:,} retries due later, Redis + PostgreSQL")
    fresh = load(binary, hookd + redis_pg() + ["--mode", "e2e", "--events", "60000"],
                 "end to end again without them, for comparison")
    slow = (1 - deep["deliveries_per_s"] / fresh["deliveries_per_s"]) * 100
    rows.append((f"Fresh deliveries with {retries:,} retries waiting",
                 f"{deep['deliveries_per_s']:,.0f}/s vs {fresh['deliveries_per_s']:,.0f}/s ({slow:+.0f}% slower)",
                 "≤ 10% slower", slow <= 10))


def fanout_rows(rows, binary, hookd, redis_pg):
    # 20 subscriptions per event at 300 events/s: 6,000 deliveries/s
    # asked of a machine that does twice that, all healthy, then with
    # one answering 500 and one hanging until the 2 s timeout.
    fanout = ["--mode", "e2e", "--events", "6000", "--rate", "300", "--subscriptions", "20"]
    healthy = load(binary, hookd + redis_pg() + fanout, "20 healthy subscriptions per event, 300 events/s")
    failing = load(binary, hookd + redis_pg() + fanout + ["--failing", "1", "--hanging", "1"],
                   "18 healthy, 1 answering 500, 1 hanging until the 2 s timeout, 300 events/s")
    kept = failing["delivered"] / (failing["accepted"] * 18)
    rows.append(("Healthy endpoints while 10% fail (20 per event, 300 events/s)",
                 f"p99 {failing['p99_ms']:.1f} ms vs {healthy['p99_ms']:.1f} ms all healthy; "
                 f"{kept:.0%} delivered in the run",
                 "same speed", kept >= 0.99 and failing["p99_ms"] <= max(25, healthy["p99_ms"] * 1.1)))


def soak_rows(rows, binary, hookd, redis_pg, soak_secs):
    # Redis keeps one dedup key per event for ingest.dedup_window (24h
    # by default): at 3,000 events/s its memory grows for a day. The
    # soak uses a 60 s window, so its steady state shows within it.
    soak = load(binary, hookd + redis_pg() + ["--mode", "soak", "--rate", "3000", "--duration", str(soak_secs),
                                              "--sample-secs", "10", "--dedup-window", "60s"],
                f"{soak_secs} s at 3,000 events/s, Redis + PostgreSQL, 60 s dedup window")
    rows.append((f"Memory over {soak_secs // 60} min at 3,000 events/s (from {max(60, soak_secs // 4)} s): hookd",
                 f"{soak['hookd_rss_start_mb']:.0f} → {soak['hookd_rss_end_mb']:.0f} MiB ({soak['hookd_rss_growth_pct']:+.1f}%)",
                 "within 10%", abs(soak["hookd_rss_growth_pct"]) <= 10))
    rows.append((f"Memory over {soak_secs // 60} min at 3,000 events/s (from {max(60, soak_secs // 4)} s, 60 s dedup window): Redis",
                 f"{soak['redis_rss_start_mb']:.0f} → {soak['redis_rss_end_mb']:.0f} MiB ({soak['redis_rss_growth_pct']:+.1f}%)",
                 "within 10%", abs(soak["redis_rss_growth_pct"]) <= 10))


def print_table(rows, redis, pg, started):
    print()
    print(f"hookd benchmark, {datetime.date.today().isoformat()}, {machine()}; "
          f"Redis {redis.version()} (AOF everysec), PostgreSQL {pg.version()}; "
          f"hookd, Redis, PostgreSQL, the poster and the receiver all on this machine; "
          f"{(time.time() - started) / 60:.0f} min")
    print()
    print("| Case | Measured | Target | |")
    print("|---|---|---|---|")
    for case, measured, target, ok in rows:
        mark = "" if ok is None else ("met" if ok else "**short**")
        print(f"| {case} | {measured} | {target} | {mark} |")


if __name__ == "__main__":
    main()
