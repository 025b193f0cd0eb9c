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
