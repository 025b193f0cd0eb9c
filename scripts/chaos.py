#!/usr/bin/env python3
"""Chaos soak of outbox-relay: nothing lost, nothing doubled, order kept.

Run it through scripts/chaos, which starts a private instance of the local services first and
runs this file with the project's venv. What one run does:

 1. Builds the binaries (unless --no-build), creates a fresh database `chaos` and migrates it,
    empties Redis and the stand-in collection `chaos`.
 2. Starts two `outbox-relay` processes and one `outbox-reconciler` daemon on a generated config
    (relay.batch_bytes 16 MiB, so that the relays' memory has a small bound to be held to).
 3. Writers commit continuously over --keys keys (default 2,000). Each transaction inserts an
    extraction row with text, enqueues a `qdrant.upsert` with `source` for it, and for one key (or,
    in half of them, two to four keys in random order) one `redis.xadd` (sometimes three)
    carrying the key and a per-key sequence number; the same transaction
    records (key, seq, row) in the table chaos_ledger, so the ledger holds exactly what committed.
    Beside them a large-payload writer commits --large-rate transactions a second (default 3), each
    a `redis.set` (sometimes two) of a 1–4 MiB value to one of --large-keys keys of its own; the
    value is a header naming key and seq, then filler, all derived from the seed, and the same
    transaction records (key, seq, length, sha256) in chaos_large_ledger.
 4. Meanwhile faults hit at seeded random moments: `kill -9` of a relay (restarted), Postgres
    restart (fast shutdown), Redis restart (append-only file), stand-in 503 / 429 + Retry-After /
    slow / dropped-connection windows, and a relay frozen with SIGSTOP for longer than every
    timeout (claim_idle_timeout, client timeouts), then resumed. Every kind occurs at least once.
 5. Then: faults off, writers stop, wait for the backlog to drain, and check — every committed
    event's effect present exactly once (stream entries unique by outbox_id, points = rows,
    embedding ids set), per-key order in the stream, nothing pending, no dead letter without a
    reason, `outbox-reconciler reconcile` exits 0, the daemons exit 0 on SIGTERM, and no secret
    appears in any daemon log; every large key holds the value of its last committed `set` (length
    and sha256), none of them was dead-lettered, and the relays' peak RSS (VmHWM, read before each
    stop and restart) stayed under --max-rss-mib. Prints a summary and exits 0 only if every check
    holds.

The seed fixes the fault schedule, the keys and the texts; the interleaving with real time is
not reproducible, which is the point.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FAULT_KINDS = ("relay_kill", "postgres_restart", "postgres_terminate", "redis_restart", "qdrant_503",
               "qdrant_429", "qdrant_slow", "qdrant_drop", "relay_pause")
# --cluster: the Redis destination is a Redis Cluster (3 masters + 3 replicas), and its faults
# replace the single Redis's restart.
CLUSTER_FAULT_KINDS = ("cluster_failover", "cluster_kill_master", "cluster_reshard", "cluster_node_restart")
CLUSTER_MODE_FAULT_KINDS = tuple(k for k in FAULT_KINDS if k != "redis_restart") + CLUSTER_FAULT_KINDS
ALL_FAULT_KINDS = FAULT_KINDS + CLUSTER_FAULT_KINDS
STREAM = "chaos:events"
CLUSTER_STREAMS = 16       # --cluster: a key's entries go to one of this many streams, spread over slots
CLUSTER_SLOTS = 16384
CLUSTER_NODES = 6
CLUSTER_WAIT_REPLICAS = 1  # --cluster: redis.wait_replicas of the daemons
COLLECTION = "chaos"
DIMENSIONS = 64
WORDS = ("invoice contract tensor vector postgres redis qdrant outbox relay ledger shard "
         "extraction pipeline model token embedding cosine replica commit stream order").split()

# Timeouts of the generated config; the SIGSTOP fault freezes a relay for longer than all of them.
CLAIM_IDLE_TIMEOUT_S = 6
CLIENT_TIMEOUT_S = 3

# The large-payload writer: Redis keys LARGE_PREFIX + ordering key, ordering keys "L00", "L01", ...
LARGE_PREFIX = "chaos:large:"
LARGE_BLOCK = 256          # the filler repeats a block this long, so TOAST compresses it (< 4 kB)
LARGE_ALPHABET = b"abcdefghijklmnopqrstuvwxyz0123456789"
MIB = 1 << 20


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/chaos",
        description=__doc__.split("\n\n")[0] + " Runs writers, two relays and the reconciler "
        "under injected faults, then proves every committed effect landed exactly once, in order.",
        epilog="Exit status: 0 all checks hold, 1 a check failed (see the summary), 2 setup error. "
        "Logs of the daemons: .local/chaos/logs/chaos-*.log.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--short", action="store_true",
                      help="CI size: 100 s of writes and faults, about 3 minutes in all (the default)")
    mode.add_argument("--long", action="store_true",
                      help="soak size: 30 minutes of writes and faults, release build")
    p.add_argument("--duration", type=float, help="seconds of writes and faults (overrides the mode)")
    p.add_argument("--seed", type=int, help="seed of the fault schedule and the data (default: random, printed)")
    p.add_argument("--rate", type=float, default=150.0, help="writer transactions per second, all writers together (default: 150)")
    p.add_argument("--writers", type=int, default=4, help="writer connections (default: 4)")
    p.add_argument("--keys", type=int, default=2000, help="ordering keys of the redis.xadd events (default: 2000)")
    p.add_argument("--large-rate", type=float, default=3.0,
                   help="large-payload transactions per second, each a redis.set (sometimes two) of a large value "
                   "to a key of its own (default: 3; 0: none)")
    p.add_argument("--large-keys", type=int, default=20, help="keys of the large-payload writer (default: 20)")
    p.add_argument("--large-bytes", type=int, nargs=2, metavar=("MIN", "MAX"), default=(1 * MIB, 4 * MIB),
                   help=f"size of each large value, uniform in [MIN, MAX] bytes (default: {MIB} {4 * MIB})")
    p.add_argument("--batch-bytes", type=int, default=16 * MIB,
                   help=f"relay.batch_bytes of the relays (default: {16 * MIB}, 16 MiB; the relay's own default is 64 MiB)")
    p.add_argument("--max-rss-mib", type=float, default=256.0,
                   help="fail when a relay's peak RSS (VmHWM) exceeds this many MiB (default: 256)")
    p.add_argument("--fault-interval", type=float, nargs=2, metavar=("MIN", "MAX"),
                   help="seconds between fault starts (default: 5 9 short, 12 24 long)")
    p.add_argument("--faults", metavar="KIND,...", type=lambda v: tuple(k.strip() for k in v.split(",") if k.strip()),
                   help="only these fault kinds, comma-separated (default: all of "
                   + ", ".join(FAULT_KINDS) + "; with --cluster, redis_restart is replaced by "
                   + ", ".join(CLUSTER_FAULT_KINDS) + ")")
    p.add_argument("--cluster", action="store_true",
                   help="the Redis destination is a Redis Cluster of the chaos instance (3 masters + 3 replicas; "
                   "relays with redis.cluster and redis.wait_replicas 1), the xadds go to "
                   f"{CLUSTER_STREAMS} streams spread over its slots, and the Redis faults are a replica's "
                   "CLUSTER FAILOVER, kill -9 of a master, a reshard and a node restart (default short run: "
                   "120 s, faults every 4-7 s)")
    p.add_argument("--drain-timeout", type=float,
                   help="seconds allowed to drain after the faults (default: 120; 240 with --cluster, where every "
                   "round trip also waits for a replica, and a master's new replica resyncs after each fault)")
    p.add_argument("--release", action="store_true", help="build and run the release binaries (implied by --long)")
    p.add_argument("--no-build", action="store_true", help="use the binaries already built")
    p.add_argument("--json", metavar="PATH", help="also write the summary as JSON to PATH")
    p.add_argument("--keep-services", action="store_true",
                   help="leave the private services running afterwards (to inspect them); by default they are stopped")
    args = p.parse_args()
    if args.long:
        args.release = True
    # A cluster run has 12 fault kinds instead of 9, and its Redis faults take longer (a promotion,
    # a node's resync): the short run is longer and its faults come faster, so that every kind
    # still occurs in the first ~80 s.
    if args.duration is None:
        args.duration = 1800.0 if args.long else 120.0 if args.cluster else 100.0
    if args.fault_interval is None:
        args.fault_interval = (12.0, 24.0) if args.long else (4.0, 7.0) if args.cluster else (5.0, 9.0)
    mode_kinds = CLUSTER_MODE_FAULT_KINDS if args.cluster else FAULT_KINDS
    if args.faults is None:
        args.faults = mode_kinds
    if args.drain_timeout is None:
        args.drain_timeout = 240.0 if args.cluster else 120.0
    args.streams = CLUSTER_STREAMS if args.cluster else 1
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 2**31)
    for name in ("duration", "rate", "drain_timeout"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.writers < 1 or args.keys < args.writers:
        p.error("--writers must be >= 1 and --keys >= --writers")
    unknown = [k for k in args.faults if k not in mode_kinds]
    if unknown or not args.faults:
        p.error(f"--faults: unknown kind {', '.join(unknown) or '(none given)'}"
                f"{' with' if args.cluster else ' without'} --cluster; choose from {', '.join(mode_kinds)}")
    lo, hi = args.fault_interval
    if not 0 < lo <= hi:
        p.error("--fault-interval needs 0 < MIN <= MAX")
    if args.large_rate < 0 or args.large_keys < 1:
        p.error("--large-rate must be >= 0 and --large-keys >= 1")
    if not 128 <= args.large_bytes[0] <= args.large_bytes[1]:
        p.error("--large-bytes needs 128 <= MIN <= MAX")
    if not MIB <= args.batch_bytes <= 1 << 40:
        p.error("--batch-bytes must be between 1 MiB and 1 TiB (relay.batch_bytes' range)")
    if args.max_rss_mib <= 0:
        p.error("--max-rss-mib must be positive")
    return args


T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"chaos [{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


class SetupError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# The private services instance (exported by scripts/chaos)

@dataclass
class Services:
    state: Path
    pg_port: int
    redis_port: int
    qdrant_port: int
    pg_password: str
    redis_password: str
    api_key: str
    cluster_port: int | None = None   # --cluster: the chaos instance's Redis Cluster, nodes on port .. port+5

    @staticmethod
    def from_env(cluster: bool = False) -> "Services":
        try:
            state = Path(os.environ["OUTBOX_STATE_DIR"])
            secrets = state / "secrets"
            return Services(state, int(os.environ["OUTBOX_PG_PORT"]), int(os.environ["OUTBOX_REDIS_PORT"]),
                            int(os.environ["OUTBOX_QDRANT_PORT"]),
                            (secrets / "postgres-password").read_text().strip(),
                            (secrets / "redis-password").read_text().strip(),
                            (secrets / "qdrant-api-key").read_text().strip(),
                            int(os.environ["OUTBOX_REDIS_CLUSTER_PORT"]) if cluster else None)
        except (KeyError, OSError) as e:
            raise SetupError(f"run this through scripts/chaos (missing {e})") from None

    @property
    def cluster_ports(self) -> list[int]:
        return [] if self.cluster_port is None else [self.cluster_port + i for i in range(CLUSTER_NODES)]

    def redis(self):
        """A client of the soak's Redis destination: the single Redis, or the cluster (routed by slot)."""
        if self.cluster_port is not None:
            return ClusterRedis(self.cluster_ports, self.redis_password)
        return Redis(self.redis_port, self.redis_password)

    def dsn(self, database: str) -> str:
        return (f"host=127.0.0.1 port={self.pg_port} user=outbox dbname={database} "
                f"password={self.pg_password} connect_timeout=3")

    def restart(self, service: str) -> None:
        self.services("restart", service)

    def services(self, *arguments: str) -> None:
        """scripts/services on the chaos instance (scripts/chaos exported its OUTBOX_STATE_DIR and ports)."""
        out = subprocess.run([str(REPO / "scripts/services"), *arguments],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"scripts/services {' '.join(arguments)} failed: {out.stdout.strip()[-1500:]}")

    def secrets(self) -> list[str]:
        return [self.pg_password, self.redis_password, self.api_key]


class Redis:
    """A minimal RESP2 client (the venv has no redis package; this is all the checks need)."""

    def __init__(self, port: int, password: str, host: str = "127.0.0.1", timeout: float = 30):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.reader = self.sock.makefile("rb")
        self.call("AUTH", "default", password)

    def call(self, *args):
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(parts))
        return self._reply()

    def _reply(self):
        line = self.reader.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(f"redis: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.reader.read(n + 2)[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError(f"redis: unexpected reply {line!r}")

    def close(self) -> None:
        self.sock.close()


# --------------------------------------------------------------------------------------------
# Redis Cluster (--cluster): slots, the slot map, a client that routes each key to its master

def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), Redis Cluster's key hash."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def key_slot(key: str | bytes) -> int:
    """The cluster slot of a key: CRC16 of the key, or of its hash tag (the text between the first
    `{` and the next `}`, when not empty), modulo 16384."""
    k = key.encode() if isinstance(key, str) else key
    start = k.find(b"{")
    if start >= 0:
        end = k.find(b"}", start + 1)
        if end > start + 1:
            k = k[start + 1:end]
    return crc16(k) % CLUSTER_SLOTS


def slot_table(reply: list, asked: tuple[str, int]) -> list[tuple[str, int] | None]:
    """The master (host, port) of each slot from a CLUSTER SLOTS reply; a node announced with an
    empty host is the node asked. None for a slot no master serves."""
    table: list[tuple[str, int] | None] = [None] * CLUSTER_SLOTS
    for entry in reply:
        start, end, master = int(entry[0]), int(entry[1]), entry[2]
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        address = (host or asked[0], int(master[1]))
        for slot in range(start, end + 1):
            table[slot] = address
    return table


@dataclass
class ClusterNode:
    id: str
    host: str
    port: int
    master: bool
    master_id: str | None
    slots: int
    failed: bool
    connected: bool


def parse_cluster_nodes(text: str | bytes) -> list[ClusterNode]:
    """CLUSTER NODES: one line per node — id, ip:port@bus, flags, master id, ..., link state, slot
    ranges (open-slot markers `[slot->-id]` left out)."""
    if isinstance(text, bytes):
        text = text.decode()
    nodes = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 8:
            continue
        address = f[1].split("@")[0]
        host, _, port = address.rpartition(":")
        flags = f[2].split(",")
        slots = 0
        for r in f[8:]:
            if r.startswith("["):
                continue
            lo, _, hi = r.partition("-")
            slots += int(hi or lo) - int(lo) + 1
        nodes.append(ClusterNode(id=f[0], host=host, port=int(port) if port.isdigit() else 0, master="master" in flags,
                                 master_id=None if f[3] == "-" else f[3], slots=slots,
                                 failed="fail" in flags or "fail?" in flags, connected=f[7] == "connected"))
    return nodes


class ClusterRedis:
    """Just enough of a cluster client for the checks and the setup: a command on one key goes to the
    master of the key's slot (CLUSTER SLOTS, read again after a MOVED or ASK); `masters()` gives a
    client of every master, for what is per node (FLUSHALL, SCAN)."""

    def __init__(self, ports: list[int], password: str, host: str = "127.0.0.1"):
        self.seeds = [(host, p) for p in ports]
        self.password = password
        self.conns: dict[tuple[str, int], Redis] = {}
        self.table: list[tuple[str, int] | None] = []
        self.refresh()

    def node(self, address: tuple[str, int]) -> Redis:
        if address not in self.conns:
            self.conns[address] = Redis(address[1], self.password, host=address[0])
        return self.conns[address]

    def refresh(self) -> None:
        errors = []
        for address in list(self.conns) + [s for s in self.seeds if s not in self.conns]:
            try:
                self.table = slot_table(self.node(address).call("CLUSTER", "SLOTS"), address)
                return
            except (OSError, RuntimeError, ConnectionError) as e:
                errors.append(f"{address[0]}:{address[1]}: {e}")
                dropped = self.conns.pop(address, None)
                if dropped is not None:
                    dropped.close()
        raise RuntimeError("no cluster node answers CLUSTER SLOTS: " + "; ".join(errors))

    def call(self, command: str, key, *args):
        for _ in range(6):
            address = self.table[key_slot(key)]
            if address is None:
                self.refresh()
                time.sleep(0.2)
                continue
            try:
                return self.node(address).call(command, key, *args)
            except RuntimeError as e:
                if not str(e).startswith(("redis: MOVED", "redis: ASK", "redis: TRYAGAIN", "redis: CLUSTERDOWN")):
                    raise
                self.refresh()
                time.sleep(0.2)
        raise RuntimeError(f"redis cluster: {command} {key!r} still redirected after 6 tries")

    def masters(self) -> list[Redis]:
        return [self.node(a) for a in sorted({a for a in self.table if a is not None})]

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


class Qdrant:
    def __init__(self, port: int, api_key: str):
        self.base = f"http://127.0.0.1:{port}"
        self.api_key = api_key

    def request(self, method: str, path: str, body=None, ok=(200,)):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"api-key": self.api_key, "content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, payload = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, payload = e.code, e.read()
        if status not in ok:
            raise RuntimeError(f"stand-in {method} {path}: HTTP {status} {payload[:200]!r}")
        return json.loads(payload) if payload else None

    def inject(self, spec: dict) -> None:
        self.request("POST", "/__standin/faults", spec)

    def clear_faults(self) -> None:
        self.request("DELETE", "/__standin/faults", ok=(200, 204))

    def point_ids(self) -> set[str]:
        ids: set[str] = set()
        offset = None
        while True:
            body = {"limit": 2000, "with_payload": False, "with_vector": False}
            if offset is not None:
                body["offset"] = offset
            result = self.request("POST", f"/collections/{COLLECTION}/points/scroll", body)["result"]
            ids.update(str(p["id"]) for p in result["points"])
            offset = result.get("next_page_offset")
            if offset is None:
                return ids


# --------------------------------------------------------------------------------------------
# Daemons

def write_config(svc: Services, path: Path, batch_bytes: int = 16 * MIB) -> None:
    secrets = svc.state / "secrets"
    if svc.cluster_port is None:
        redis = f"url: redis://127.0.0.1:{svc.redis_port}/0"
    else:
        # Any node is the seed (the others are discovered). A master killed with -9 may have taken
        # writes its replica never saw: with WAIT, an event counts as delivered only once a replica
        # holds it (docs/RELIABILITY.md, "Redis failover").
        redis = (f"url: redis://127.0.0.1:{svc.cluster_port}/0\n  cluster: true\n"
                 f"  wait_replicas: {CLUSTER_WAIT_REPLICAS}\n  wait_timeout: 1s")
    path.write_text(f"""# Generated by scripts/chaos for one run; short timeouts so that faults bite.
postgres:
  url: postgresql://outbox@127.0.0.1:{svc.pg_port}/chaos
  password_file: {secrets / 'postgres-password'}
  connect_timeout: {CLIENT_TIMEOUT_S}s
redis:
  {redis}
  password_file: {secrets / 'redis-password'}
  connect_timeout: {CLIENT_TIMEOUT_S}s
  command_timeout: {CLIENT_TIMEOUT_S}s
qdrant:
  url: http://127.0.0.1:{svc.qdrant_port}
  api_key_file: {secrets / 'qdrant-api-key'}
  timeout: {CLIENT_TIMEOUT_S}s
  collections:
    {COLLECTION}: {{size: {DIMENSIONS}, distance: Cosine}}
relay:
  http: {{host: 127.0.0.1, port: 8570}}
  poll_interval: 1s
  claim_idle_timeout: {CLAIM_IDLE_TIMEOUT_S}s
  max_attempts: 1000000
  max_age: 24h
  backoff_initial: 100ms
  backoff_max: 2s
  shutdown_grace: 5s
  batch_bytes: {batch_bytes}
reconciler:
  http: {{host: 127.0.0.1, port: 8571}}
  interval: 15s
  grace_period: 60s
  stuck_after: 10m
  stuck_attempts: 1000
  repair: true
embedding:
  provider: hashing
  dimensions: {DIMENSIONS}
tables:
  extractions:
    table: public.extractions
    id_column: id
    text_column: content
    embedding_column: embedding_id
    created_at_column: created_at
    collection: {COLLECTION}
schema:
  directory: {REPO / 'schema'}
""")


def daemon_env(**extra: str) -> dict[str, str]:
    # Nothing of the caller's OUTBOX_* (say, the main instance's URLs) may redirect a daemon.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env["OUTBOX_LOG_LEVEL"] = "info"
    # A crash report (Swift's backtracer writes it to stderr, hence the log) without the register
    # and image dumps, which would bury the runtime's message above it.
    env["SWIFT_BACKTRACE"] = "enable=yes,interactive=no,color=no,registers=none,images=none"
    env.update(extra)
    return env


def read_vm_hwm_kib(pid: int, proc_root: Path = Path("/proc")) -> int | None:
    """VmHWM of /proc/<pid>/status in KiB; None when the process is gone (or a zombie, which has
    no memory lines)."""
    try:
        text = (proc_root / str(pid) / "status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


class Daemon:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path):
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.proc: subprocess.Popen | None = None
        self.unexpected_exits: list[int] = []
        self.starts = 0
        self.lock = threading.Lock()   # the fault injector and the watchdog both start/stop it
        self.down_on_purpose = False
        self.peak_rss_kib = 0          # the highest VmHWM read, over every process started

    def start(self) -> None:
        with self.lock:
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
            self.starts += 1
            self.down_on_purpose = False

    def check_alive(self) -> None:
        """Record and restart a daemon that exited without being told to."""
        with self.lock:
            if self.down_on_purpose or self.proc is None or self.proc.poll() is None:
                return
            self.unexpected_exits.append(self.proc.returncode)
            say(f"!! {self.name} exited on its own with status {self.proc.returncode}; restarting it")
            self.show_log_tail()
        self.start()

    def show_log_tail(self) -> None:
        """Prints how the run ended: the log lines before a crash report and the report itself."""
        lines = self.log.read_text(errors="replace").splitlines()
        crash = next((i for i in range(len(lines) - 1, -1, -1)
                      if "Program crashed" in lines[i] or "Fatal error" in lines[i]), None)
        shown = lines[-25:] if crash is None else lines[max(0, crash - 15):crash + 100]
        say(f"!! {self.log.name}:")
        for line in shown:
            print(f"   | {line}", flush=True)

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def sample_rss(self) -> None:
        """Reads the process's VmHWM (its peak RSS so far) into peak_rss_kib. Called every half
        second and right before every kill and SIGTERM: VmHWM only grows while a process lives, so
        the reading before it stops is its peak, whatever happened between two samples."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        kib = read_vm_hwm_kib(proc.pid)
        if kib is not None:
            self.peak_rss_kib = max(self.peak_rss_kib, kib)

    def kill9(self) -> None:
        with self.lock:
            self.down_on_purpose = True
            self.sample_rss()
            self.signal(signal.SIGKILL)
            if self.proc is not None:
                self.proc.wait()

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM; the exit status, or None when it had to be killed."""
        if self.proc is None:
            return None
        self.down_on_purpose = True
        self.sample_rss()
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None


# --------------------------------------------------------------------------------------------
# Writers

@dataclass
class WriterStats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    transactions: int = 0
    errors: int = 0
    error_kinds: collections.Counter = field(default_factory=collections.Counter)
    events: int = 0        # events and large values' bytes committed
    bytes: int = 0


class PacedWriter(threading.Thread):
    """Commits `rate` transactions a second on one connection, paced by absolute time (no burst
    after an outage), reconnecting after an error (a fault hit it). Subclasses make each
    transaction: `prepare` returns its statements as a function of the connection, and the events
    and value bytes it commits."""

    def __init__(self, name: str, dsn: str, rate: float, stop: threading.Event, stats: WriterStats):
        super().__init__(name=name, daemon=True)
        self.dsn, self.interval, self.stop_event, self.stats = dsn, 1.0 / rate, stop, stats

    def prepare(self):
        raise NotImplementedError

    def run(self) -> None:
        import psycopg
        conn = None
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            now = time.monotonic()
            if now < next_at:
                time.sleep(min(next_at - now, 0.05))
                continue
            next_at = max(next_at + self.interval, now - 1.0)
            body, events, nbytes = self.prepare()
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, autocommit=True)
                with conn.transaction():
                    body(conn)
                with self.stats.lock:
                    self.stats.transactions += 1
                    self.stats.events += events
                    self.stats.bytes += nbytes
            except psycopg.Error as e:
                with self.stats.lock:
                    self.stats.errors += 1
                    self.stats.error_kinds[type(e).__name__] += 1
                if conn is not None:
                    try:
                        conn.close()
                    except psycopg.Error:
                        pass
                    conn = None
                time.sleep(0.2)
        if conn is not None:
            conn.close()


def streams(count: int) -> list[str]:
    """The streams of the xadds: STREAM alone, or (--cluster) `count` streams STREAM:s00, ... whose
    names hash to slots all over the cluster."""
    return [STREAM] if count == 1 else [f"{STREAM}:s{i:02d}" for i in range(count)]


def stream_for(key: str, count: int) -> str:
    """The stream of an ordering key's xadds: always the same one for a key, so that the key's
    entries are in one stream, in order (crc32: unlike hash(), the same in every process)."""
    return STREAM if count == 1 else streams(count)[zlib.crc32(key.encode()) % count]


class Writer(PacedWriter):
    """Each transaction: an extraction row with its qdrant.upsert, and redis.xadds carrying a key
    and its per-key seq (to the key's stream: stream_for), recorded in chaos_ledger in the same
    transaction."""

    def __init__(self, index: int, keys: list[str], dsn: str, rate: float, seed: int,
                 stop: threading.Event, stats: WriterStats, stream_count: int = 1):
        super().__init__(f"writer-{index}", dsn, rate, stop, stats)
        self.keys = keys
        self.stream_count = stream_count
        self.rng = random.Random(seed * 1009 + index)
        self.seq = dict.fromkeys(keys, 0)

    def prepare(self):
        from psycopg.types.json import Jsonb
        # One key, or two to four in random order (writers' slot locks and the relays' claim
        # horizon under load: schema/013); each key's xadds in its seq order.
        keys = self.rng.sample(self.keys, self.rng.choice((1, 1, 1, 2, 3, 4)))
        key = keys[0]  # the row's source
        events = []
        for k in keys:
            for _ in range(3 if self.rng.random() < 0.1 else 1):
                self.seq[k] += 1  # a failed transaction leaves a gap; the ledger says what committed
                events.append((k, self.seq[k]))
        row = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        text = " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(3, 12)))

        def body(conn) -> None:
            conn.execute("INSERT INTO public.extractions (id, source_id, content) VALUES (%s, %s, %s)", (row, key, text))
            conn.execute("SELECT outbox.enqueue('qdrant', 'upsert', %s, %s)", (row, Jsonb({
                "collection": COLLECTION, "id": row, "text": text, "payload": {"key": key},
                "source": {"table": "extractions", "id": row}})))
            for k, s in events:
                conn.execute("SELECT outbox.enqueue('redis', 'xadd', %s, %s)", (k, Jsonb({
                    "stream": stream_for(k, self.stream_count), "fields": {"key": k, "seq": str(s), "row": row}})))
            conn.execute("INSERT INTO chaos_ledger (key, seq, row_id) SELECT k, s, %s FROM unnest(%s::text[], %s::int[]) AS t(k, s)",
                         (row, [k for k, _ in events], [s for _, s in events]))
        return body, len(events) + 1, 0


def large_value(seed: int, key: str, seq: int, sizes: tuple[int, int]) -> bytes:
    """The value of the large-payload writer's `set` number `seq` of `key`: its size uniform in
    `sizes`, a header line naming the event, then a block of 256 seeded characters repeated (so the
    value identifies its event, and Postgres compresses it: the soak tests the relay's memory, not
    the disk). ASCII, so the JSON string, the payload and the Redis value are the same bytes."""
    rng = random.Random(f"{seed}/{key}/{seq}")
    size = rng.randint(*sizes)
    header = f"chaos large value: key {key} seq {seq} bytes {size} seed {seed}\n".encode()
    block = bytes(rng.choice(LARGE_ALPHABET) for _ in range(LARGE_BLOCK))
    return (header + block * (size // LARGE_BLOCK + 1))[:size]


def large_value_seq(value: bytes) -> int | None:
    """The seq named by a large value's header, None when it has none (see large_value)."""
    words = value[:200].split(b"\n", 1)[0].split()
    try:
        return int(words[words.index(b"seq") + 1])
    except (ValueError, IndexError):
        return None


def digest(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


class LargeWriter(PacedWriter):
    """Commits `rate` transactions a second, each one `redis.set` (two of the same key 10 % of
    the time) of a large value to a key of its own, and records (key, seq, length, sha256) of each
    in chaos_large_ledger in the same transaction: the ledger holds exactly what committed."""

    def __init__(self, keys: list[str], dsn: str, rate: float, seed: int, sizes: tuple[int, int],
                 stop: threading.Event, stats: WriterStats):
        super().__init__("large-writer", dsn, rate, stop, stats)
        self.keys, self.seed, self.sizes = keys, seed, sizes
        self.rng = random.Random(seed * 1009 + 999)
        self.seq = dict.fromkeys(keys, 0)

    def prepare(self):
        from psycopg.types.json import Jsonb
        key = self.rng.choice(self.keys)
        seqs = [self.seq[key] + i + 1 for i in range(2 if self.rng.random() < 0.1 else 1)]
        self.seq[key] += len(seqs)  # a failed transaction leaves a gap; the ledger says what committed
        values = [large_value(self.seed, key, s, self.sizes) for s in seqs]

        def body(conn) -> None:
            for value in values:
                conn.execute("SELECT outbox.enqueue('redis', 'set', %s, %s)", (key, Jsonb({
                    "key": LARGE_PREFIX + key, "value": value.decode("ascii")})))
            conn.execute("INSERT INTO chaos_large_ledger (key, seq, bytes, sha256) "
                         "SELECT %s, s, b, h FROM unnest(%s::int[], %s::int[], %s::text[]) AS t(s, b, h)",
                         (key, seqs, [len(v) for v in values], [digest(v) for v in values]))
        return body, len(values), sum(len(v) for v in values)


# --------------------------------------------------------------------------------------------
# Faults

def fault_schedule(rng: random.Random, duration: float, interval: tuple[float, float],
                   kinds: tuple[str, ...] = FAULT_KINDS) -> list[tuple[float, str]]:
    """(start offset, kind): every kind once in a shuffled first round, then uniformly random."""
    first = list(kinds)
    rng.shuffle(first)
    schedule, t = [], rng.uniform(*interval) / 2
    while t < duration - 5:
        kind = first.pop(0) if first else rng.choice(kinds)
        schedule.append((t, kind))
        t += rng.uniform(*interval)
    if first:
        raise SetupError(f"--duration {duration:.0f} is too short for one fault of each kind "
                         f"(needs about {len(kinds) * interval[1]:.0f} s)")
    return schedule


# Cluster faults: which node each one hits is chosen from the cluster's shape at that moment (roles
# move with every failover), with the run's seeded rng, nodes taken in port order.

def live(nodes: list[ClusterNode]) -> list[ClusterNode]:
    return sorted((n for n in nodes if not n.failed and n.connected), key=lambda n: n.port)


def pick_failover(nodes: list[ClusterNode], rng: random.Random) -> ClusterNode:
    """A replica to take over from its master with CLUSTER FAILOVER (its master serving slots)."""
    masters = {n.id for n in live(nodes) if n.master and n.slots > 0}
    replicas = [n for n in live(nodes) if not n.master and n.master_id in masters]
    if not replicas:
        raise RuntimeError("no replica of a live master to fail over to")
    return rng.choice(replicas)


def pick_master_to_kill(nodes: list[ClusterNode], rng: random.Random) -> tuple[ClusterNode, ClusterNode]:
    """A master serving slots that has a live replica (which takes over), and that replica."""
    pairs = [(m, r) for m in live(nodes) if m.master and m.slots > 0
             for r in live(nodes) if not r.master and r.master_id == m.id]
    if not pairs:
        raise RuntimeError("no master with a live replica to kill")
    master = rng.choice(sorted({m.port: m for m, _ in pairs}.values(), key=lambda n: n.port))
    return master, next(r for m, r in pairs if m.id == master.id)


def plan_reshard(nodes: list[ClusterNode], rng: random.Random, slots: tuple[int, int] = (100, 800)
                 ) -> tuple[ClusterNode, ClusterNode, int]:
    """Move some slots from the master serving most (so that repeated reshards do not drain one) to
    another master: (from, to, how many), never more than half of what `from` serves."""
    masters = sorted((n for n in live(nodes) if n.master and n.slots > 0), key=lambda n: (-n.slots, n.port))
    if len(masters) < 2:
        raise RuntimeError("fewer than two masters serve slots: nothing to reshard between")
    source = masters[0]
    target = rng.choice(masters[1:])
    return source, target, min(rng.randint(*slots), source.slots // 2)


def pick_node_to_restart(nodes: list[ClusterNode], rng: random.Random) -> ClusterNode:
    """Any node, master or replica."""
    candidates = live(nodes)
    if not candidates:
        raise RuntimeError("no live cluster node")
    return rng.choice(candidates)


def wait_until(what: str, condition, timeout: float = 30.0) -> float:
    """Polls `condition` (exceptions count as not yet) until true; the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if condition():
                return time.monotonic() - start
        except (OSError, RuntimeError, ConnectionError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what}: not within {timeout:.0f} s")


class FaultInjector(threading.Thread):
    def __init__(self, schedule, rng: random.Random, svc: Services, qdrant: Qdrant,
                 relays: list[Daemon], stop: threading.Event, start_time: float):
        super().__init__(name="faults", daemon=True)
        self.schedule, self.rng, self.svc, self.qdrant, self.relays = schedule, rng, svc, qdrant, relays
        self.stop_event, self.start_time = stop, start_time
        self.done = collections.Counter()
        self.failures: list[str] = []

    def run(self) -> None:
        for offset, kind in self.schedule:
            while not self.stop_event.is_set() and time.monotonic() < self.start_time + offset:
                time.sleep(0.1)
            if self.stop_event.is_set():
                return
            try:
                self.inject(kind)
                self.done[kind] += 1
            except Exception as e:  # a fault that could not be injected is a failed run, not a crash
                self.failures.append(f"{kind}: {e}")
                say(f"!! could not inject {kind}: {e}")

    def window(self) -> float:
        return round(self.rng.uniform(2.0, 6.0), 1)

    def inject(self, kind: str) -> None:
        if kind == "relay_kill":
            relay = self.rng.choice(self.relays)
            down = round(self.rng.uniform(0.5, 3.0), 1)
            say(f"fault relay_kill: kill -9 {relay.name}, restart after {down} s")
            relay.kill9()
            time.sleep(down)
            relay.start()
        elif kind == "relay_pause":
            relay = self.rng.choice(self.relays)
            pause = round(self.rng.uniform(CLAIM_IDLE_TIMEOUT_S + 3, CLAIM_IDLE_TIMEOUT_S + 9), 1)
            say(f"fault relay_pause: SIGSTOP {relay.name} for {pause} s")
            relay.signal(signal.SIGSTOP)
            time.sleep(pause)
            relay.signal(signal.SIGCONT)
        elif kind == "postgres_restart":
            say("fault postgres_restart: pg_ctl restart -m fast")
            self.svc.restart("postgres")
        elif kind == "postgres_terminate":
            # Sessions ended under the daemons (an operator, a failover, a pooler): the lanes whose
            # connection breaks mid-batch restart, and their siblings are cancelled mid-statement.
            import psycopg
            with psycopg.connect(self.svc.dsn("chaos"), autocommit=True) as db:
                ended = db.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                   "WHERE application_name LIKE 'outbox-%' AND pid <> pg_backend_pid()").fetchone()[0]
            say(f"fault postgres_terminate: pg_terminate_backend of the daemons' {ended} sessions")
        elif kind == "redis_restart":
            say("fault redis_restart: SIGTERM, then start on the append-only file")
            self.svc.restart("redis")
        elif kind in CLUSTER_FAULT_KINDS:
            self.inject_cluster(kind)
        else:
            seconds = self.window()
            spec = {"qdrant_503": {"status": 503},
                    "qdrant_429": {"status": 429, "retry_after": 1},
                    "qdrant_slow": {"delay_ms": (CLIENT_TIMEOUT_S + 1) * 1000},
                    "qdrant_drop": {"drop": True}}[kind]
            say(f"fault {kind}: {json.dumps(spec)} for {seconds} s")
            self.qdrant.inject({**spec, "duration_s": seconds})


    # --- cluster faults (--cluster). Each ends with `scripts/services up redis-cluster`, which
    # starts any stopped node and waits until every node agrees on roles and slots, all served.

    def node_call(self, node: ClusterNode, *args):
        conn = Redis(node.port, self.svc.redis_password, host=node.host, timeout=10)
        try:
            return conn.call(*args)
        finally:
            conn.close()

    def nodes(self) -> list[ClusterNode]:
        """CLUSTER NODES as the first node that answers sees it."""
        errors = []
        for port in self.svc.cluster_ports:
            try:
                conn = Redis(port, self.svc.redis_password, timeout=5)
                try:
                    return parse_cluster_nodes(conn.call("CLUSTER", "NODES"))
                finally:
                    conn.close()
            except (OSError, RuntimeError, ConnectionError) as e:
                errors.append(f"{port}: {e}")
        raise RuntimeError("no cluster node answers CLUSTER NODES: " + "; ".join(errors))

    def is_master(self, node: ClusterNode) -> bool:
        role = self.node_call(node, "ROLE")
        return role[0] in (b"master", "master")

    def pid_of(self, node: ClusterNode) -> int:
        info = self.node_call(node, "INFO", "server").decode()
        return int(next(line.split(":")[1] for line in info.splitlines() if line.startswith("process_id:")))

    def cluster_healthy(self) -> float:
        start = time.monotonic()
        self.svc.services("up", "redis-cluster")
        return time.monotonic() - start

    def inject_cluster(self, kind: str) -> None:
        nodes = self.nodes()
        if kind == "cluster_failover":
            replica = pick_failover(nodes, self.rng)
            master = next(n for n in nodes if n.id == replica.master_id)
            say(f"fault cluster_failover: CLUSTER FAILOVER on replica :{replica.port} of master :{master.port}")
            self.node_call(replica, "CLUSTER", "FAILOVER")
            took = wait_until(f"replica :{replica.port} to become master", lambda: self.is_master(replica))
            say(f"   :{replica.port} is master after {took:.1f} s; cluster ok after {self.cluster_healthy():.1f} s more")
        elif kind == "cluster_kill_master":
            master, replica = pick_master_to_kill(nodes, self.rng)
            pid = self.pid_of(master)
            down = round(self.rng.uniform(0.0, 3.0), 1)
            say(f"fault cluster_kill_master: kill -9 of master :{master.port} (pid {pid}, {master.slots} slots); "
                f"restart {down} s after replica :{replica.port} took over")
            os.kill(pid, signal.SIGKILL)
            took = wait_until(f"replica :{replica.port} to replace master :{master.port}",
                              lambda: self.is_master(replica), timeout=45)
            time.sleep(down)
            say(f"   :{replica.port} is master after {took:.1f} s; :{master.port} restarted and cluster ok after "
                f"{self.cluster_healthy():.1f} s more")
        elif kind == "cluster_reshard":
            source, target, count = plan_reshard(nodes, self.rng)
            say(f"fault cluster_reshard: {count} slots from :{source.port} ({source.slots}) to :{target.port} "
                f"({target.slots})")
            start = time.monotonic()
            out = subprocess.run(["redis-cli", "--no-auth-warning", "--cluster", "reshard", f"{source.host}:{source.port}",
                                  "--cluster-from", source.id, "--cluster-to", target.id,
                                  "--cluster-slots", str(count), "--cluster-yes"],
                                 env={**os.environ, "REDISCLI_AUTH": self.svc.redis_password, "TERM": "dumb"},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
            if out.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster reshard exited {out.returncode}: {out.stdout.strip()[-1500:]}")
            say(f"   moved in {time.monotonic() - start:.1f} s; cluster ok after {self.cluster_healthy():.1f} s more")
        elif kind == "cluster_node_restart":
            node = pick_node_to_restart(nodes, self.rng)
            pid = self.pid_of(node)
            down = round(self.rng.uniform(0.5, 4.0), 1)
            say(f"fault cluster_node_restart: SIGTERM of {'master' if node.master else 'replica'} :{node.port} "
                f"(pid {pid}), started again {down} s after it exited")
            os.kill(pid, signal.SIGTERM)
            took = wait_until(f"node :{node.port} (pid {pid}) to exit", lambda: not Path(f"/proc/{pid}").exists())
            time.sleep(down)
            say(f"   exited after {took:.1f} s; started and cluster ok after {self.cluster_healthy():.1f} s")


# --------------------------------------------------------------------------------------------
# Checks

def check_stream(redis: Redis, ledger: dict[tuple[str, int], str], stream_names: list[str] | tuple[str, ...] = (STREAM,)
                 ) -> dict:
    """Reads every stream to its end. A key's entries are all in one stream (stream_for), so per-key
    order is the order within it; an entry of a key in another stream than its own is misplaced."""
    seen_outbox: collections.Counter = collections.Counter()
    seen_pair: collections.Counter = collections.Counter()
    last_seq: dict[str, int] = {}
    out_of_order = phantom = entries = misplaced = 0
    per_stream: dict[str, int] = {}
    for stream in stream_names:
        start = "-"
        per_stream[stream] = 0
        while True:
            batch = redis.call("XRANGE", stream, start, "+", "COUNT", 10000)
            if not batch:
                break
            for entry_id, flat in batch:
                fields = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
                entries += 1
                per_stream[stream] += 1
                key, seq = fields.get("key", "?"), int(fields.get("seq", "0"))
                if len(stream_names) > 1 and stream_for(key, len(stream_names)) != stream:
                    misplaced += 1
                seen_outbox[fields.get("outbox_id")] += 1
                seen_pair[(key, seq)] += 1
                if (key, seq) not in ledger:
                    phantom += 1
                if seen_pair[(key, seq)] == 1:  # a duplicate is counted once, as a duplicate
                    if seq <= last_seq.get(key, 0):
                        out_of_order += 1
                    last_seq[key] = max(seq, last_seq.get(key, 0))
            start = "(" + batch[-1][0].decode()
    lost = [pair for pair in ledger if seen_pair[pair] == 0]
    return {
        "committed": len(ledger), "entries": entries, "streams": len(stream_names), "misplaced": misplaced,
        "per_stream": per_stream,
        "lost": len(lost), "duplicated": sum(n - 1 for n in seen_pair.values() if n > 1),
        "duplicated_outbox_ids": sum(n - 1 for n in seen_outbox.values() if n > 1),
        "missing_outbox_id": seen_outbox[None], "out_of_order": out_of_order, "phantom": phantom,
        "lost_sample": [f"{k}#{s}" for k, s in lost[:5]], "lost_pairs": lost,
    }


def check_large(redis: Redis, ledger: list[tuple[str, int, int, str]], seed: int, sizes: tuple[int, int]) -> dict:
    """Every large key must hold the value of its last committed `set` (the ledger's highest seq of
    the key: one writer thread writes a key, so seq follows commit order, and outbox ids follow it).
    Compared by length and sha256; the expected value is also rebuilt from the seed, so the ledger
    is checked against the writer's own function. A value that is not the expected one is `stale`
    when its header names an earlier committed set of the key, else `wrong`; a key under the prefix
    that no committed set wrote is `unexpected`."""
    committed = {(k, s) for k, s, _, _ in ledger}
    last: dict[str, tuple[int, int, str]] = {}
    for key, seq, length, sha in ledger:
        if key not in last or seq > last[key][0]:
            last[key] = (seq, length, sha)
    intact = missing = stale = wrong = ledger_mismatch = 0
    bad_sample: list[str] = []
    for key, (seq, length, sha) in sorted(last.items()):
        rebuilt = large_value(seed, key, seq, sizes)
        if (len(rebuilt), digest(rebuilt)) != (length, sha):
            ledger_mismatch += 1
        value = redis.call("GET", LARGE_PREFIX + key)
        if value is None:
            missing += 1
            bad_sample.append(f"{key}#{seq}: missing")
        elif len(value) == length and digest(value) == sha:
            intact += 1
        else:
            got = large_value_seq(value)
            if got is not None and got < seq and (key, got) in committed:
                stale += 1
            else:
                wrong += 1
            bad_sample.append(f"{key}#{seq}: {len(value)} bytes, seq {got} (want {length} bytes)")
    in_redis: set[str] = set()
    # SCAN is per node: a cluster's keys are on its masters, each scanned to its end.
    for node in (redis.masters() if hasattr(redis, "masters") else [redis]):
        cursor = b"0"
        while True:
            cursor, names = node.call("SCAN", cursor, "MATCH", LARGE_PREFIX + "*", "COUNT", 1000)
            in_redis.update(n.decode()[len(LARGE_PREFIX):] for n in names)
            if cursor in (b"0", "0", 0):
                break
    return {
        "committed": len(ledger), "bytes": sum(n for _, _, n, _ in ledger), "keys": len(last),
        "intact": intact, "missing": missing, "stale": stale, "wrong": wrong,
        "unexpected": len(in_redis - set(last)), "ledger_mismatch": ledger_mismatch,
        "bad_sample": bad_sample[:5],
    }


def run_checks(args, svc: Services, qdrant: Qdrant, config: Path, bin_dir: Path) -> dict:
    import psycopg
    with psycopg.connect(svc.dsn("chaos"), autocommit=True) as db:
        ledger = {(k, s): str(r) for k, s, r in db.execute("SELECT key, seq, row_id FROM chaos_ledger")}
        transactions = db.execute("SELECT count(DISTINCT row_id) FROM chaos_ledger").fetchone()[0]
        rows = {str(r) for (r,) in db.execute("SELECT id FROM public.extractions")}
        unembedded = db.execute("SELECT count(*) FROM public.extractions WHERE embedding_id IS NULL").fetchone()[0]
        wrong_embedding = db.execute(
            "SELECT count(*) FROM public.extractions WHERE embedding_id IS DISTINCT FROM id").fetchone()[0] - unembedded
        pending = db.execute("SELECT count(*) FROM outbox.events").fetchone()[0]
        # After a drain that timed out, a ledger entry missing from the stream may still be waiting.
        pending_xadds = {(k, int(s)) for k, s in db.execute(
            "SELECT payload->'fields'->>'key', payload->'fields'->>'seq' FROM outbox.events "
            "WHERE destination = 'redis' AND operation = 'xadd'")}
        dead = db.execute("SELECT destination || '.' || operation, error, count(*) FROM outbox.dead_letters "
                          "GROUP BY 1, 2 ORDER BY 3 DESC").fetchall()
        large_ledger = db.execute("SELECT key, seq, bytes, sha256 FROM chaos_large_ledger").fetchall()
        large_dead = db.execute("SELECT count(*) FROM outbox.dead_letters WHERE destination = 'redis' "
                                "AND operation = 'set' AND payload->>'key' LIKE %s", (LARGE_PREFIX + "%",)).fetchone()[0]
    redis = svc.redis()
    try:
        stream = check_stream(redis, ledger, streams(args.streams))
        stream["lost_pending"] = len(set(stream.pop("lost_pairs")) & pending_xadds)
        large = {**check_large(redis, large_ledger, args.seed, tuple(args.large_bytes)), "dead_letters": large_dead}
    finally:
        redis.close()
    points = qdrant.point_ids()
    reconcile = subprocess.run([str(bin_dir / "outbox-reconciler"), "reconcile", "--config", str(config), "--json"],
                               env=daemon_env(OUTBOX_LOG_LEVEL="warning"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return {
        "transactions": transactions,
        "events": {"qdrant.upsert": transactions, "redis.xadd": len(ledger), "redis.set": len(large_ledger)},
        "redis": stream,
        "large": large,
        "qdrant": {"rows": len(rows), "points": len(points), "missing": len(rows - points),
                   "extra": len(points - rows), "unembedded": unembedded, "wrong_embedding": wrong_embedding},
        "pending": pending,
        "dead_letters": [{"event": e, "error": err, "count": n} for e, err, n in dead],
        "reconcile": {"exit": reconcile.returncode, "report": reconcile.stdout.strip()[:2000],
                      "stderr_tail": reconcile.stderr.strip()[-500:]},
    }


def wait_drained(svc: Services, timeout: float) -> tuple[bool, float]:
    import psycopg
    start = time.monotonic()
    last_report = 0.0
    while time.monotonic() - start < timeout:
        try:
            with psycopg.connect(svc.dsn("chaos"), autocommit=True) as db:
                pending = db.execute("SELECT count(*) FROM outbox.events").fetchone()[0]
        except psycopg.Error:
            pending = None
        if pending == 0:
            return True, time.monotonic() - start
        if time.monotonic() - last_report >= 10:
            say(f"draining: {pending} events pending")
            last_report = time.monotonic()
        time.sleep(0.5)
    return False, time.monotonic() - start


# --------------------------------------------------------------------------------------------

def build(args) -> Path:
    config = "release" if args.release else "debug"
    if not args.no_build:
        say(f"swift build -c {config}")
        out = subprocess.run(["swift", "build", "-c", config], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if out.returncode != 0:
            raise SetupError("swift build failed:\n" + out.stdout[-3000:])
    bin_dir = REPO / ".build" / config
    for name in ("outbox-relay", "outbox-reconciler"):
        if not (bin_dir / name).exists():
            raise SetupError(f"{bin_dir / name} is missing (drop --no-build)")
    return bin_dir


def cluster_layout(svc: Services) -> str:
    """Which master serves how many of the soak's streams and large keys (they should spread)."""
    redis = svc.redis()
    try:
        names = streams(CLUSTER_STREAMS)
        per_master = collections.Counter(redis.table[key_slot(n)] for n in names)
        large = collections.Counter(redis.table[key_slot(f"{LARGE_PREFIX}L{i:02d}")] for i in range(20))
        return f"{len(names)} streams and 20 large keys over {len(set(per_master) | set(large))} masters (" + ", ".join(
            f":{a[1]} {per_master[a]} streams + {large[a]} large keys" for a in sorted(set(per_master) | set(large))) + ")"
    finally:
        redis.close()


def prepare(svc: Services, qdrant: Qdrant, config: Path, bin_dir: Path) -> None:
    import psycopg
    with psycopg.connect(svc.dsn("outbox"), autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS chaos WITH (FORCE)")
        admin.execute("CREATE DATABASE chaos")
    out = subprocess.run([str(bin_dir / "outbox-relay"), "migrate", "--config", str(config)],
                         env=daemon_env(OUTBOX_LOG_LEVEL="warning"),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if out.returncode != 0:
        raise SetupError(f"outbox-relay migrate failed: {out.stdout.strip()}")
    with psycopg.connect(svc.dsn("chaos"), autocommit=True) as db:
        db.execute("CREATE TABLE chaos_ledger (key text NOT NULL, seq int NOT NULL, row_id uuid NOT NULL, "
                   "PRIMARY KEY (key, seq))")
        db.execute("CREATE TABLE chaos_large_ledger (key text NOT NULL, seq int NOT NULL, bytes int NOT NULL, "
                   "sha256 text NOT NULL, PRIMARY KEY (key, seq))")
    # Empty, dedupe marks included: the new database's event ids start again at 1.
    redis = svc.redis()
    try:
        for node in (redis.masters() if isinstance(redis, ClusterRedis) else [redis]):
            node.call("FLUSHALL")
        if isinstance(redis, ClusterRedis):
            # The slot routing of the checks is this file's own CRC16: the cluster must agree with it.
            for name in streams(CLUSTER_STREAMS) + [LARGE_PREFIX + "L00", "{chaos}:x"]:
                theirs = redis.masters()[0].call("CLUSTER", "KEYSLOT", name)
                if theirs != key_slot(name):
                    raise SetupError(f"key_slot({name!r}) is {key_slot(name)}, the cluster says {theirs}")
    finally:
        redis.close()
    qdrant.clear_faults()
    qdrant.request("DELETE", f"/collections/{COLLECTION}", ok=(200, 404))


def summarize(args, result: dict, faults: collections.Counter, retries: collections.Counter, writer: WriterStats,
              daemons: list[Daemon], exits: dict, drained: tuple[bool, float], leaks: list[str],
              injection_failures: list[str], large_writer: WriterStats | None = None) -> list[str]:
    """Print the summary; return the failed checks."""
    r, q = result["redis"], result["qdrant"]
    failed = []

    def check(ok: bool, what: str) -> str:
        if not ok:
            failed.append(what)
        return "ok" if ok else "FAILED"

    print()
    cluster = getattr(args, "cluster", False)
    print(f"chaos summary (seed {args.seed}, {args.duration:.0f} s of writes, "
          f"{'release' if args.release else 'debug'} build"
          f"{', Redis Cluster 3 masters + 3 replicas, redis.wait_replicas %d' % CLUSTER_WAIT_REPLICAS if cluster else ''})")
    kinds = CLUSTER_MODE_FAULT_KINDS if cluster else FAULT_KINDS
    print(f"  faults        {sum(faults.values())}: " + ", ".join(f"{k} {faults[k]}" for k in kinds))
    missed = [k for k in getattr(args, "faults", kinds) if not faults[k]]
    if missed and sum(faults.values()):
        # Not a failed check (the schedule has each kind in its first round, and slow faults only
        # push the round later), but a run that did not exercise a kind says so.
        print(f"                warning: never injected: {', '.join(missed)} (a longer --duration fits them)")
    print(f"  retries       the relays logged {retries['qdrant']} failed qdrant and {retries['redis']} failed redis "
          "delivery attempts (batches), all retried"
          + (f"; {retries['redis_wait']} of them for want of a replica's acknowledgement (WAIT); "
             f"{retries['slot_maps']} slot maps read" if cluster else ""))
    print(f"  written       {result['transactions']} transactions committed: "
          f"{result['transactions']} qdrant.upsert + {r['committed']} redis.xadd events "
          f"({writer.errors} writer transactions failed during faults: "
          f"{', '.join(f'{k} {n}' for k, n in writer.error_kinds.most_common()) or 'none'})")
    streams_note = f" in {r['streams']} streams" if r.get("streams", 1) > 1 else ""
    misplaced = f", in another key's stream {r['misplaced']}" if r.get("misplaced") else ""
    print(f"  redis stream  {r['entries']} entries{streams_note}; lost {r['lost']}, duplicated {r['duplicated']}, "
          f"out of order {r['out_of_order']}, not committed {r['phantom']}{misplaced}  "
          + check(r["lost"] == r["duplicated"] == r["out_of_order"] == r["phantom"] == r.get("misplaced", 0) == 0
                  and r["duplicated_outbox_ids"] == r["missing_outbox_id"] == 0, "redis stream"))
    if r["lost_sample"]:
        print(f"                lost, e.g.: {' '.join(r['lost_sample'])}"
              + (f"; {r['lost_pending']} of the lost are still pending in outbox.events (not drained)"
                 if r.get("lost_pending") else ""))
    if "large" in result:
        g = result["large"]
        lw = large_writer or WriterStats()
        lo, hi = args.large_bytes
        print(f"  large values  {g['committed']} redis.set events committed ({g['bytes'] / MIB:,.0f} MiB of values, "
              f"{lo / MIB:g}-{hi / MIB:g} MiB each) over {g['keys']} keys "
              f"({lw.transactions} transactions; {lw.errors} failed during faults: "
              f"{', '.join(f'{k} {n}' for k, n in lw.error_kinds.most_common()) or 'none'})")
        print(f"                final values: {g['intact']} of {g['keys']} keys equal their last committed set "
              f"(length, sha256); missing {g['missing']}, stale {g['stale']}, wrong {g['wrong']}, "
              f"not committed {g['unexpected']}, ledger vs seed {g['ledger_mismatch']}; dead-lettered {g['dead_letters']}  "
              + check(g["intact"] == g["keys"] and g["missing"] == g["stale"] == g["wrong"] == g["unexpected"]
                      == g["ledger_mismatch"] == g["dead_letters"] == 0
                      and (g["committed"] > 0 or args.large_rate == 0), "large values"))
        if g["bad_sample"]:
            print(f"                not intact, e.g.: {'; '.join(g['bad_sample'])}")
    if "relay_peak_rss_kib" in result:
        peaks = result["relay_peak_rss_kib"]
        starts = {d.name: d.starts for d in daemons}
        worst = max(peaks.values(), default=0)
        print(f"  relay memory  peak RSS (VmHWM) "
              + ", ".join(f"{name} {kib / 1024:.1f} MiB ({starts.get(name, 0)} starts)" for name, kib in peaks.items())
              + f"; bound {args.max_rss_mib:g} MiB with relay.batch_bytes {args.batch_bytes / MIB:g} MiB  "
              + check(0 < worst <= args.max_rss_mib * 1024 and all(peaks.values()), "relay peak RSS"))
    print(f"  qdrant        {q['rows']} rows, {q['points']} points; missing {q['missing']}, extra {q['extra']}, "
          f"embedding_id unset {q['unembedded']}, wrong {q['wrong_embedding']}  "
          + check(q["missing"] == q["extra"] == q["unembedded"] == q["wrong_embedding"] == 0
                  and q["rows"] == result["transactions"], "qdrant points / embedding ids"))
    print(f"  drained       {'in %.1f s' % drained[1] if drained[0] else 'NOT within %.0f s' % drained[1]}; "
          f"pending {result['pending']}  " + check(drained[0] and result["pending"] == 0, "drain"))
    unexplained = [d for d in result["dead_letters"] if not (d["error"] or "").strip()]
    print(f"  dead letters  {sum(d['count'] for d in result['dead_letters'])}  "
          + check(not unexplained, "dead letters without a reason"))
    for d in result["dead_letters"]:
        print(f"                {d['count']} x {d['event']}: {d['error']}")
    print(f"  reconcile     exit {result['reconcile']['exit']}  "
          + check(result["reconcile"]["exit"] == 0, "reconcile exit 0"))
    if result["reconcile"]["exit"] != 0:
        print("                " + (result["reconcile"]["report"] or result["reconcile"]["stderr_tail"]))
    crashed = {d.name: d.unexpected_exits for d in daemons if d.unexpected_exits}
    print(f"  daemons       starts {', '.join(f'{d.name} {d.starts}' for d in daemons)}; "
          f"exited on their own: {crashed or 'none'}; SIGTERM exit {exits}  "
          + check(not crashed and all(v == 0 for v in exits.values()), "daemons"))
    print(f"  secrets       {'in ' + ', '.join(leaks) if leaks else 'in no daemon log'}  "
          + check(not leaks, "secrets in logs"))
    if injection_failures:
        check(False, "fault injection")
        print(f"  injection     failed: {'; '.join(injection_failures)}")
    print(f"  RESULT        {'PASS' if not failed else 'FAIL: ' + ', '.join(failed)}")
    return failed


def main() -> int:
    args = parse_args()
    try:
        svc = Services.from_env(cluster=args.cluster)
        import psycopg  # noqa: F401  (fail early, in setup, when the venv lacks it)
    except (SetupError, ImportError) as e:
        print(f"chaos: error: {e}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    qdrant = Qdrant(svc.qdrant_port, svc.api_key)
    logs = svc.state / "logs"
    config = svc.state / "run" / "chaos.yaml"
    daemons: list[Daemon] = []
    stop_writers, stop_faults = threading.Event(), threading.Event()
    try:
        schedule = fault_schedule(rng, args.duration, tuple(args.fault_interval), args.faults)
        say(f"seed {args.seed}: {len(schedule)} faults over {args.duration:.0f} s, "
            f"{args.writers} writers at {args.rate:g} transactions/s over {args.keys} keys, "
            f"{args.large_rate:g} large-value transactions/s over {args.large_keys} keys; "
            f"relay.batch_bytes {args.batch_bytes / MIB:g} MiB")
        bin_dir = build(args)
        write_config(svc, config, args.batch_bytes)
        prepare(svc, qdrant, config, bin_dir)
        if args.cluster:
            say(f"redis cluster on 127.0.0.1:{svc.cluster_port}-{svc.cluster_ports[-1]}, redis.wait_replicas "
                f"{CLUSTER_WAIT_REPLICAS}: " + cluster_layout(svc))
        for log in logs.glob("chaos-*.log"):
            log.unlink()
        relay_argv = [str(bin_dir / "outbox-relay"), "--config", str(config)]
        daemons = [Daemon("relay-a", relay_argv, daemon_env(), logs / "chaos-relay-a.log"),
                   Daemon("relay-b", relay_argv, daemon_env(OUTBOX_RELAY_HTTP_PORT="8572"), logs / "chaos-relay-b.log"),
                   Daemon("reconciler", [str(bin_dir / "outbox-reconciler"), "--config", str(config)],
                          daemon_env(), logs / "chaos-reconciler.log")]
        for d in daemons:
            d.start()
    except (SetupError, RuntimeError, OSError) as e:
        print(f"chaos: error: {e}", file=sys.stderr)
        for d in daemons:
            d.kill9()
        return 2

    stats = WriterStats()
    keys = [f"k{i:04d}" for i in range(args.keys)]
    rng.shuffle(keys)
    writers: list[threading.Thread] = [
        Writer(i, keys[i::args.writers], svc.dsn("chaos"), args.rate / args.writers, args.seed, stop_writers, stats,
               args.streams)
        for i in range(args.writers)]
    large_stats = WriterStats()
    if args.large_rate > 0:
        writers.append(LargeWriter([f"L{i:02d}" for i in range(args.large_keys)], svc.dsn("chaos"), args.large_rate,
                                   args.seed, tuple(args.large_bytes), stop_writers, large_stats))
    start = time.monotonic()
    injector = FaultInjector(schedule, rng, svc, qdrant, daemons[:2], stop_faults, start)
    try:
        for w in writers:
            w.start()
        injector.start()
        last_report = start
        while time.monotonic() - start < args.duration:
            time.sleep(0.5)
            for d in daemons:
                d.check_alive()
                d.sample_rss()
            if time.monotonic() - last_report >= 15:
                with stats.lock:
                    say(f"{stats.transactions} transactions committed, {stats.errors} failed; "
                        f"{large_stats.events} large values ({large_stats.bytes / MIB:,.0f} MiB); relay peak RSS "
                        + ", ".join(f"{d.name} {d.peak_rss_kib / 1024:.0f} MiB" for d in daemons[:2]))
                last_report = time.monotonic()
        say("writes and faults stop; draining")
        stop_faults.set()
        stop_writers.set()
        injector.join()
        for w in writers:
            w.join()
        qdrant.clear_faults()
        for d in daemons:
            d.signal(signal.SIGCONT)
            d.check_alive()
        drained = wait_drained(svc, args.drain_timeout)
        say("checking")
        result = run_checks(args, svc, qdrant, config, bin_dir)
        exits = {d.name: d.terminate(30) for d in daemons}
        result["relay_peak_rss_kib"] = {d.name: d.peak_rss_kib for d in daemons[:2]}
        logs_text = {d.name: d.log.read_text(errors="replace") for d in daemons}
        leaks = sorted({name for name, text in logs_text.items() for s in svc.secrets() if s in text})
        retries = collections.Counter(
            destination for text in logs_text.values() for line in text.splitlines() if "will retry" in line
            for destination in ("qdrant", "redis") if f"outbox.destination={destination}" in line)
        # In a cluster, evidence that its faults bit: deliveries retried because no replica
        # acknowledged them in time (WAIT), and slot maps read again (MOVED, lost connections, ...).
        for text in logs_text.values():
            for line in text.splitlines():
                if "will retry" in line and "replicas acknowledged" in line:
                    retries["redis_wait"] += 1
                elif "Redis Cluster slot map read" in line:
                    retries["slot_maps"] += 1
    except KeyboardInterrupt:
        print("chaos: interrupted", file=sys.stderr)
        return 130
    finally:
        stop_faults.set()
        stop_writers.set()
        for d in daemons:
            if d.proc is not None and d.proc.poll() is None:
                d.kill9()
        try:
            qdrant.clear_faults()
        except Exception:
            pass

    failed = summarize(args, result, injector.done, retries, stats, daemons, exits, drained, leaks,
                       injector.failures, large_stats)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "seed": args.seed, "duration_s": args.duration, "rate": args.rate, "writers": args.writers,
            "keys": args.keys, "build": "release" if args.release else "debug", "cluster": args.cluster,
            "streams": args.streams,
            "large_rate": args.large_rate, "large_keys": args.large_keys, "large_bytes": list(args.large_bytes),
            "batch_bytes": args.batch_bytes, "max_rss_mib": args.max_rss_mib,
            "faults": dict(injector.done), "delivery_retries": dict(retries), "writer_errors": stats.errors,
            "large_writer_errors": large_stats.errors, **result,
            "daemon_starts": {d.name: d.starts for d in daemons},
            "unexpected_exits": {d.name: d.unexpected_exits for d in daemons},
            "sigterm_exit": exits, "secret_leaks": leaks, "drained": drained[0], "drain_s": round(drained[1], 1),
            "failed": failed}, indent=2) + "\n")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
