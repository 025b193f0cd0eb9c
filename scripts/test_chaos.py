"""Tests of scripts/chaos.py's own logic: its checks must be able to fail.

Run by `make test` (pytest); needs no server.
"""

import argparse
import collections
import importlib.util
import random
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("chaos", Path(__file__).with_name("chaos.py"))
chaos = importlib.util.module_from_spec(spec)
sys.modules["chaos"] = chaos  # dataclasses look their module up there
spec.loader.exec_module(chaos)


class FakeRedis:
    """Answers XRANGE from a list of (key, seq, outbox_id) entries, in pages like the real one."""

    def __init__(self, entries):
        self.entries = [(f"{i + 1}-0".encode(), e) for i, e in enumerate(entries)]

    def call(self, command, stream, start, end, count_word, count):
        assert (command, stream, end, count_word) == ("XRANGE", chaos.STREAM, "+", "COUNT")
        first = 0 if start == "-" else int(start[1:].split("-")[0])
        page = self.entries[first:first + count]
        return [(entry_id, [b"key", k.encode(), b"seq", str(s).encode(), b"outbox_id", str(o).encode()])
                for entry_id, (k, s, o) in page]


def ledger(*pairs):
    return {(k, s): "row" for k, s in pairs}


def test_a_clean_stream_passes():
    committed = ledger(("a", 1), ("a", 2), ("b", 1))
    result = chaos.check_stream(FakeRedis([("a", 1, 10), ("b", 1, 11), ("a", 2, 12)]), committed)
    assert (result["lost"], result["duplicated"], result["out_of_order"], result["phantom"]) == (0, 0, 0, 0)
    assert result["entries"] == 3


def test_lost_duplicated_out_of_order_and_uncommitted_entries_are_counted():
    committed = ledger(("a", 1), ("a", 2), ("a", 3), ("b", 1), ("c", 1))
    entries = [("a", 2, 12), ("a", 1, 11),  # out of order
               ("b", 1, 20), ("b", 1, 20),  # the same event twice
               ("z", 9, 99)]                # never committed
    result = chaos.check_stream(FakeRedis(entries), committed)  # ("a", 3) and ("c", 1) are missing
    assert result["lost"] == 2
    assert result["duplicated"] == 1 and result["duplicated_outbox_ids"] == 1
    assert result["out_of_order"] == 1
    assert result["phantom"] == 1


def test_pages_are_read_to_the_end():
    committed = ledger(*[("k", s) for s in range(1, 25_001)])
    result = chaos.check_stream(FakeRedis([("k", s, s) for s in range(1, 25_001)]), committed)
    assert result["entries"] == 25_000 and result["lost"] == 0


def test_every_fault_kind_occurs_and_the_seed_fixes_the_schedule():
    schedule = chaos.fault_schedule(random.Random(7), 100, (5, 9))
    assert {kind for _, kind in schedule} == set(chaos.FAULT_KINDS)
    assert schedule == chaos.fault_schedule(random.Random(7), 100, (5, 9))
    assert all(t < 95 for t, _ in schedule)


def test_a_run_too_short_for_every_fault_kind_is_refused():
    with pytest.raises(chaos.SetupError, match="too short"):
        chaos.fault_schedule(random.Random(1), 30, (5, 9))


def test_faults_limits_the_schedule_to_the_kinds_given():
    schedule = chaos.fault_schedule(random.Random(3), 60, (2, 4), kinds=("postgres_terminate", "relay_kill"))
    assert {kind for _, kind in schedule} == {"postgres_terminate", "relay_kill"}


# --- the large-payload phase

SIZES = (1000, 4000)


class FakeKeyRedis:
    """Answers GET and SCAN (two keys a page, like a cursor that takes several calls) from a dict."""

    def __init__(self, values):
        self.values = dict(values)

    def call(self, command, *args):
        if command == "GET":
            return self.values.get(args[0])
        assert command == "SCAN" and args[1:3] == ("MATCH", chaos.LARGE_PREFIX + "*")
        names = sorted(k for k in self.values if k.startswith(chaos.LARGE_PREFIX))
        at = int(args[0])
        page = names[at:at + 2]
        return [str(at + 2 if at + 2 < len(names) else 0).encode(), [n.encode() for n in page]]


def large_ledger(seed, *pairs):
    rows = []
    for key, seq in pairs:
        v = chaos.large_value(seed, key, seq, SIZES)
        rows.append((key, seq, len(v), chaos.digest(v)))
    return rows


def redis_holding(seed, *pairs):
    return FakeKeyRedis({chaos.LARGE_PREFIX + k: chaos.large_value(seed, k, s, SIZES) for k, s in pairs})


def test_a_large_value_is_seeded_sized_and_names_its_event():
    v = chaos.large_value(5, "L03", 7, SIZES)
    assert v == chaos.large_value(5, "L03", 7, SIZES)
    assert v != chaos.large_value(6, "L03", 7, SIZES) and v != chaos.large_value(5, "L03", 8, SIZES)
    assert SIZES[0] <= len(v) <= SIZES[1] and v.isascii()
    assert chaos.large_value_seq(v) == 7 and v.startswith(b"chaos large value: key L03 seq 7 ")
    sizes = {len(chaos.large_value(5, "L03", s, SIZES)) for s in range(1, 50)}
    assert len(sizes) > 40 and min(sizes) >= SIZES[0] and max(sizes) <= SIZES[1]


def test_every_large_key_holding_its_last_committed_set_passes():
    committed = large_ledger(1, ("L00", 1), ("L00", 2), ("L00", 4), ("L01", 1))  # seq 3 of L00 failed
    result = chaos.check_large(redis_holding(1, ("L00", 4), ("L01", 1)), committed, 1, SIZES)
    assert (result["intact"], result["keys"], result["committed"]) == (2, 2, 4)
    assert result["missing"] == result["stale"] == result["wrong"] == result["unexpected"] == 0
    assert result["ledger_mismatch"] == 0


def test_missing_stale_wrong_and_uncommitted_large_values_are_counted():
    committed = large_ledger(1, ("L00", 1), ("L00", 2), ("L01", 1), ("L02", 1), ("L03", 1), ("L03", 2))
    redis = redis_holding(1, ("L00", 1),   # stale: an earlier committed set of the key
                          ("L02", 1),      # intact
                          ("L03", 3),      # a set that never committed: wrong
                          ("L09", 1))      # a key no committed set wrote
    # L01 is missing; L02's value is cut short, so it is wrong too
    redis.values[chaos.LARGE_PREFIX + "L02"] = redis.values[chaos.LARGE_PREFIX + "L02"][:-1]
    result = chaos.check_large(redis, committed, 1, SIZES)
    assert result["intact"] == 0
    assert (result["missing"], result["stale"], result["wrong"], result["unexpected"]) == (1, 1, 2, 1)
    assert len(result["bad_sample"]) == 4


def test_a_ledger_that_does_not_match_the_seed_is_counted():
    key, seq, length, sha = large_ledger(1, ("L00", 1))[0]
    result = chaos.check_large(redis_holding(1, ("L00", 1)), [(key, seq, length, "0" * 64)], 1, SIZES)
    assert result["ledger_mismatch"] == 1 and result["intact"] == 0 and result["wrong"] == 1


def test_vm_hwm_is_read_from_proc_status(tmp_path):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "status").write_text("Name:\toutbox-relay\nVmPeak:\t  900000 kB\nVmHWM:\t  123456 kB\n"
                                            "VmRSS:\t  100000 kB\n")
    (tmp_path / "43").mkdir()
    (tmp_path / "43" / "status").write_text("Name:\toutbox-relay\nState:\tZ (zombie)\n")
    assert chaos.read_vm_hwm_kib(42, tmp_path) == 123456
    assert chaos.read_vm_hwm_kib(43, tmp_path) is None
    assert chaos.read_vm_hwm_kib(44, tmp_path) is None


def test_the_relays_config_carries_the_batch_bytes(tmp_path):
    (tmp_path / "secrets").mkdir()
    svc = chaos.Services(tmp_path, 1, 2, 3, "p", "r", "a")
    chaos.write_config(svc, tmp_path / "chaos.yaml", 16 * chaos.MIB)
    relay = (tmp_path / "chaos.yaml").read_text().split("\nrelay:\n")[1].split("\nreconciler:")[0]
    assert f"  batch_bytes: {16 * 1024 * 1024}" in relay.splitlines()


def summary_failures(capsys, large=None, peaks=None, max_rss_mib=256.0):
    args = argparse.Namespace(seed=1, duration=100.0, release=False, large_bytes=SIZES, large_rate=3.0,
                              batch_bytes=16 * chaos.MIB, max_rss_mib=max_rss_mib)
    stream = {"committed": 2, "entries": 2, "lost": 0, "duplicated": 0, "duplicated_outbox_ids": 0,
              "missing_outbox_id": 0, "out_of_order": 0, "phantom": 0, "lost_sample": []}
    good_large = {"committed": 3, "bytes": 9000, "keys": 2, "intact": 2, "missing": 0, "stale": 0, "wrong": 0,
                  "unexpected": 0, "ledger_mismatch": 0, "bad_sample": [], "dead_letters": 0}
    result = {"transactions": 1, "redis": stream,
              "qdrant": {"rows": 1, "points": 1, "missing": 0, "extra": 0, "unembedded": 0, "wrong_embedding": 0},
              "pending": 0, "dead_letters": [], "reconcile": {"exit": 0, "report": "", "stderr_tail": ""},
              "large": {**good_large, **(large or {})},
              "relay_peak_rss_kib": peaks or {"relay-a": 100_000, "relay-b": 90_000}}
    daemons = [chaos.Daemon(n, [], {}, Path("/nonexistent")) for n in ("relay-a", "relay-b", "reconciler")]
    failed = chaos.summarize(args, result, collections.Counter(), collections.Counter(), chaos.WriterStats(),
                             daemons, {d.name: 0 for d in daemons}, (True, 0.5), [], [], chaos.WriterStats())
    return failed, capsys.readouterr().out


def test_the_summary_passes_intact_large_values_and_a_peak_under_the_bound(capsys):
    failed, out = summary_failures(capsys)
    assert failed == [] and "RESULT        PASS" in out
    assert "relay-a 97.7 MiB" in out and "bound 256 MiB" in out


def test_the_summary_fails_a_stale_or_dead_lettered_large_value(capsys):
    assert summary_failures(capsys, large={"intact": 1, "stale": 1})[0] == ["large values"]
    assert summary_failures(capsys, large={"dead_letters": 1})[0] == ["large values"]
    assert summary_failures(capsys, large={"committed": 0, "keys": 0, "intact": 0})[0] == ["large values"]


def test_the_summary_fails_a_peak_rss_over_the_bound_or_unread(capsys):
    assert summary_failures(capsys, peaks={"relay-a": 300 * 1024, "relay-b": 1})[0] == ["relay peak RSS"]
    assert summary_failures(capsys, peaks={"relay-a": 100_000, "relay-b": 0})[0] == ["relay peak RSS"]
    assert summary_failures(capsys, peaks={"relay-a": 300 * 1024}, max_rss_mib=400)[0] == []


# --- cluster mode (--cluster)

def test_crc16_and_key_slots_are_redis_clusters():
    assert chaos.crc16(b"123456789") == 0x31C3  # the CRC16-CCITT (XMODEM) check value
    # The examples of the Redis Cluster specification and of CLUSTER KEYSLOT's docs.
    assert chaos.key_slot("foo") == 12182 and chaos.key_slot("bar") == 5061 and chaos.key_slot("somekey") == 11058
    assert chaos.key_slot("{user1000}.following") == chaos.key_slot("{user1000}.followers") == chaos.key_slot("user1000")
    assert chaos.key_slot("foo{}{bar}") == chaos.crc16(b"foo{}{bar}") % 16384   # an empty tag: the whole key
    assert chaos.key_slot("foo{{bar}}zap") == chaos.key_slot("{bar")              # the tag ends at the first }
    assert chaos.key_slot("foo{bar}{zap}") == chaos.key_slot("bar")               # the first tag counts
    assert chaos.key_slot(b"foo") == chaos.key_slot("foo")


def test_the_cluster_streams_spread_over_slots_and_each_key_has_one():
    names = chaos.streams(chaos.CLUSTER_STREAMS)
    assert chaos.streams(1) == [chaos.STREAM] and len(set(names)) == chaos.CLUSTER_STREAMS
    slots = [chaos.key_slot(n) for n in names]
    # The default cluster's three masters serve 0-5460, 5461-10922, 10923-16383: every one of them
    # gets streams (several masters, and cross-slot transactions, from the start).
    assert {s * 3 // 16384 for s in slots} == {0, 1, 2}
    keys = [f"k{i:04d}" for i in range(2000)]
    assert all(chaos.stream_for(k, 16) == chaos.stream_for(k, 16) in names for k in keys[:50])
    spread = collections.Counter(chaos.stream_for(k, 16) for k in keys)
    assert len(spread) == 16 and min(spread.values()) > 60
    assert chaos.stream_for("k0001", 1) == chaos.STREAM


def test_the_slot_table_maps_every_slot_to_its_master():
    reply = [[0, 5460, [b"127.0.0.1", 7001, b"id1"], [b"127.0.0.1", 7004, b"id4"]],
             [5461, 10922, [b"", 7002, b"id2"]],         # an empty host: the node asked
             [10923, 16000, [b"127.0.0.1", 7003, b"id3"]]]
    table = chaos.slot_table(reply, ("10.0.0.9", 7002))
    assert table[0] == table[5460] == ("127.0.0.1", 7001)
    assert table[5461] == table[10922] == ("10.0.0.9", 7002)
    assert table[16000] == ("127.0.0.1", 7003) and table[16001] is None and len(table) == 16384


class FakeNode:
    def __init__(self, name, log, answers=None):
        self.name, self.log, self.answers = name, log, answers or {}

    def call(self, *args):
        self.log.append((self.name, args))
        answer = self.answers.get(args[0])
        if isinstance(answer, list) and answer and isinstance(answer[0], Exception):
            raise answer.pop(0)
        return answer if answer is not None else f"{self.name}:{args[1]}"

    def close(self):
        pass


def fake_cluster(monkeypatch, tables, nodes):
    """A ClusterRedis whose CLUSTER SLOTS answers come from `tables` in turn and whose nodes are fakes."""
    answers = iter(tables)
    monkeypatch.setattr(chaos.ClusterRedis, "node", lambda self, address: nodes[address])
    monkeypatch.setattr(chaos.ClusterRedis, "refresh", lambda self: setattr(self, "table", next(answers)))
    return chaos.ClusterRedis([7001], "pw")


def test_the_cluster_client_sends_a_key_to_its_slots_master_and_follows_moved(monkeypatch):
    a, b = ("127.0.0.1", 7001), ("127.0.0.1", 7002)
    log = []
    split = [a] * 8192 + [b] * 8192          # foo (12182) on b, bar (5061) on a
    moved = [a] * 16384                      # after the reshard, all on a
    nodes = {a: FakeNode("a", log), b: FakeNode("b", log, {"GET": [RuntimeError("redis: MOVED 12182 127.0.0.1:7001")]})}
    cluster = fake_cluster(monkeypatch, [split, moved], nodes)
    assert cluster.call("XRANGE", "bar", "-", "+") == "a:bar"
    assert cluster.call("GET", "foo") == "a:foo"            # b said MOVED: the map is read again
    assert [n for n, _ in log] == ["a", "b", "a"]
    assert [m is nodes[a] for m in cluster.masters()] == [True]


def test_the_cluster_client_gives_up_on_endless_redirects_and_passes_other_errors(monkeypatch):
    a = ("127.0.0.1", 7001)
    nodes = {a: FakeNode("a", [], {"GET": [RuntimeError("redis: ASK 12182 127.0.0.1:7001")] * 10,
                                   "XRANGE": [RuntimeError("redis: WRONGTYPE Operation against a key")]})}
    cluster = fake_cluster(monkeypatch, [[a] * 16384] * 10, nodes)
    with pytest.raises(RuntimeError, match="still redirected"):
        cluster.call("GET", "foo")
    with pytest.raises(RuntimeError, match="WRONGTYPE"):
        cluster.call("XRANGE", "foo", "-", "+")


NODES = """\
07c3 127.0.0.1:17104@18104 slave e7d1 0 1700000000000 4 connected
67ed 127.0.0.1:17102@18102 master - 0 1700000000000 2 connected 5501-10922
292f 127.0.0.1:17103@18103 master - 0 1700000000000 3 connected 10923-16383 [42->-e7d1]
6ec2 127.0.0.1:17105@18105 slave 67ed 0 1700000000000 5 connected
e7d1 127.0.0.1:17101@18101 myself,master - 0 1700000000000 1 connected 0-5459 5460-5500
824f 127.0.0.1:17106@18106 slave,fail 292f 1700000000000 1700000000000 6 disconnected
"""


def test_cluster_nodes_are_parsed_with_roles_slots_and_failures():
    nodes = {n.port: n for n in chaos.parse_cluster_nodes(NODES)}
    assert len(nodes) == 6
    assert (nodes[17101].master, nodes[17101].slots, nodes[17101].id) == (True, 5501, "e7d1")
    assert nodes[17103].slots == 5461  # the open-slot marker is no slot
    assert (nodes[17104].master, nodes[17104].master_id) == (False, "e7d1")
    assert nodes[17106].failed and not nodes[17106].connected and not nodes[17105].failed


def test_cluster_faults_pick_live_nodes_and_a_reshard_moves_from_the_fullest_master():
    nodes = chaos.parse_cluster_nodes(NODES)
    for seed in range(30):
        rng = random.Random(seed)
        replica = chaos.pick_failover(nodes, rng)
        assert not replica.master and not replica.failed          # 17104 or 17105, never the failed 17106
        master, its_replica = chaos.pick_master_to_kill(nodes, rng)
        assert master.port in (17101, 17102) and its_replica.master_id == master.id  # 17103's replica failed
        source, target, count = chaos.plan_reshard(nodes, rng)
        assert source.port == 17101 and target.port in (17102, 17103) and 100 <= count <= 800
        assert chaos.pick_node_to_restart(nodes, rng).port != 17106
    small = [chaos.ClusterNode("a", "h", 1, True, None, 300, False, True),
             chaos.ClusterNode("b", "h", 2, True, None, 16084, False, True)]
    source, target, count = chaos.plan_reshard(small, random.Random(1))
    assert (source.id, target.id) == ("b", "a") and count <= 8042
    with pytest.raises(RuntimeError):
        chaos.plan_reshard(small[:1], random.Random(1))
    with pytest.raises(RuntimeError):
        chaos.pick_master_to_kill(small, random.Random(1))   # no replicas


def test_every_cluster_fault_kind_fits_in_the_short_cluster_run():
    for seed in range(300):
        schedule = chaos.fault_schedule(random.Random(seed), 120, (4, 7), chaos.CLUSTER_MODE_FAULT_KINDS)
        kinds = [kind for _, kind in schedule]
        assert set(kinds) == set(chaos.CLUSTER_MODE_FAULT_KINDS) and "redis_restart" not in kinds
        assert set(kinds[:12]) == set(chaos.CLUSTER_MODE_FAULT_KINDS) and schedule[11][0] < 85


def test_the_cluster_mode_options(monkeypatch):
    def parse(*argv):
        monkeypatch.setattr(sys, "argv", ["chaos", *argv])
        return chaos.parse_args()
    args = parse("--short", "--cluster")
    assert (args.duration, args.fault_interval, args.faults, args.streams, args.drain_timeout) == (
        120.0, (4.0, 7.0), chaos.CLUSTER_MODE_FAULT_KINDS, chaos.CLUSTER_STREAMS, 240.0)
    args = parse("--short")
    assert (args.duration, args.faults, args.streams, args.drain_timeout) == (100.0, chaos.FAULT_KINDS, 1, 120.0)
    assert parse("--cluster", "--faults", "cluster_reshard,relay_kill").faults == ("cluster_reshard", "relay_kill")
    with pytest.raises(SystemExit):
        parse("--cluster", "--faults", "redis_restart")
    with pytest.raises(SystemExit):
        parse("--faults", "cluster_failover")


class FakeStreams:
    """XRANGE over several streams, each a list of (key, seq, outbox_id), one entry a page."""

    def __init__(self, streams):
        self.streams = streams

    def call(self, command, stream, start, end, count_word, count):
        entries = self.streams.get(stream, [])
        first = 0 if start == "-" else int(start[1:].split("-")[0])
        return [(f"{first + 1}-0".encode(), [b"key", k.encode(), b"seq", str(s).encode(), b"outbox_id", str(o).encode()])
                for k, s, o in entries[first:first + 1]]


def test_the_stream_check_reads_every_stream_and_finds_a_key_in_another_ones():
    names = chaos.streams(16)
    home = {k: chaos.stream_for(k, 16) for k in ("a", "b")}
    other = next(n for n in names if n != home["b"])
    entries = {home["a"]: [("a", 1, 1), ("a", 2, 2)], home["b"]: [("b", 2, 4)], other: [("b", 1, 3)]}
    result = chaos.check_stream(FakeStreams(entries), ledger(("a", 1), ("a", 2), ("b", 1), ("b", 2)), names)
    assert result["entries"] == 4 and result["lost"] == 0 and result["misplaced"] == 1
    result = chaos.check_stream(FakeStreams({home["a"]: [("a", 2, 2), ("a", 1, 1)]}), ledger(("a", 1), ("a", 2)), names)
    assert result["out_of_order"] == 1 and result["misplaced"] == 0 and result["per_stream"][home["a"]] == 2


class FakeClusterKeys:
    """GET routed to one of several FakeKeyRedis 'masters', SCAN only on them (as in a cluster)."""

    def __init__(self, *parts):
        self.parts = [FakeKeyRedis(p) for p in parts]

    def call(self, command, key, *args):
        assert command == "GET"
        return next((p.values[key] for p in self.parts if key in p.values), None)

    def masters(self):
        return self.parts


def test_the_large_check_scans_every_master_of_a_cluster():
    committed = large_ledger(1, ("L00", 1), ("L01", 1))
    held = redis_holding(1, ("L00", 1), ("L01", 1), ("L07", 1)).values
    names = sorted(held)
    cluster = FakeClusterKeys({names[0]: held[names[0]]}, {n: held[n] for n in names[1:]})
    result = chaos.check_large(cluster, committed, 1, SIZES)
    assert result["intact"] == 2 and result["unexpected"] == 1  # L07, found on the second master only


def test_the_cluster_config_names_a_node_the_cluster_and_wait(tmp_path):
    (tmp_path / "secrets").mkdir()
    svc = chaos.Services(tmp_path, 1, 2, 3, "p", "r", "a", cluster_port=17101)
    chaos.write_config(svc, tmp_path / "chaos.yaml")
    redis = (tmp_path / "chaos.yaml").read_text().split("\nredis:\n")[1].split("\nqdrant:")[0].splitlines()
    assert redis[:4] == ["  url: redis://127.0.0.1:17101/0", "  cluster: true", "  wait_replicas: 1", "  wait_timeout: 1s"]
    assert svc.cluster_ports == list(range(17101, 17107))
    plain = chaos.Services(tmp_path, 1, 2, 3, "p", "r", "a")
    chaos.write_config(plain, tmp_path / "plain.yaml")
    assert "cluster:" not in (tmp_path / "plain.yaml").read_text() and plain.cluster_ports == []
