"""Tests of scripts/chaos.py's own logic: its checks must be able to fail.

Run by `make test` (pytest); needs no server.
"""

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
