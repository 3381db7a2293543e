"""Spot traces: parsing, the validation errors (each cell of the rule table), derived views."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from spotlight.actors.spot.trace import (
    SpotTrace,
    TraceError,
    load_trace,
    parse_trace,
    synthesize_notices,
)

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
# a comment line
t_s,event,node
0,add,a
0,add,b
10,notice,a   # inline comment
20,remove,a
30,remove,b
40,add,a
"""


def test_parse_views() -> None:
    tr = parse_trace(GOOD, source="good.csv")
    assert [(e.t_s, e.event, e.node) for e in tr.events][:3] == [
        (0.0, "add", "a"),
        (0.0, "add", "b"),
        (10.0, "notice", "a"),
    ]
    assert tr.nodes == ("a", "b")
    assert tr.end_s == 40.0
    lts = tr.lifetimes()
    assert [(lt.node, lt.start_s, lt.end_s, lt.notice_s, lt.silent) for lt in lts] == [
        ("a", 0.0, 20.0, 10.0, False),
        ("b", 0.0, 30.0, None, True),
        ("a", 40.0, None, None, False),
    ]
    assert lts[2].duration_s(100.0) == 60.0
    assert tr.capacity_steps() == [(0.0, 2), (10.0, 2), (20.0, 1), (30.0, 0), (40.0, 1)]
    assert [tr.capacity_at(t) for t in (-1, 0, 15, 20, 35, 99)] == [0, 2, 2, 1, 0, 1]
    assert tr.removal_time(2) == 20.0


def test_scaled_and_csv_round_trip() -> None:
    tr = parse_trace(GOOD)
    fast = tr.scaled(10)
    assert [e.t_s for e in fast.events] == [e.t_s / 10 for e in tr.events]
    again = parse_trace(tr.to_csv())
    assert [(e.t_s, e.event, e.node) for e in again.events] == [
        (e.t_s, e.event, e.node) for e in tr.events
    ]
    with pytest.raises(ValueError, match="time_scale"):
        tr.scaled(0)


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("t_s,event,node\n0,add,a\n5,explode,a\n", 3, "unknown event 'explode'"),
        ("t_s,event,node\n10,add,a\n5,add,b\n", 3, "time goes backwards"),
        ("t_s,event,node\n0,remove,a\n", 2, "never added"),
        ("t_s,event,node\n0,add,a\n1,add,a\n", 3, "re-add of 'a' while it is alive"),
        ("t_s,event,node\n0,add,a\n1,remove,a\n2,notice,a\n", 4, "after its removal"),
        ("t_s,event,node\n-1,add,a\n", 2, "negative time"),
        ("0,add,a\n", 1, "missing header"),
        ("t_s,event,node\nabc,add,a\n", 2, "not a number"),
        ("t_s,event,node\n0,add,a b\n", 2, "must match"),
        ("t_s,event,node\n0,add\n", 2, "expected 3 columns"),
        ("t_s,event,node\n0,add,a\n1,notice,a\n2,notice,a\n", 4, "second notice"),
        ("t_s,event,node\n0,add,a\n1,remove,a\n2,remove,a\n", 4, "already removed"),
    ],
)
def test_errors_name_file_line_and_fix(text: str, line: int, fragment: str) -> None:
    with pytest.raises(TraceError, match=fragment) as info:
        parse_trace(text, source="bad.csv")
    assert info.value.line == line
    assert str(info.value).startswith(f"bad.csv:{line}: ")


@pytest.mark.parametrize("text", ["", "# only a comment\n\n", "t_s,event,node\n"])
def test_empty_files(text: str) -> None:
    with pytest.raises(TraceError, match="empty trace"):
        parse_trace(text, source="e.csv")


def test_notice_without_remove_is_refused() -> None:
    with pytest.raises(TraceError, match="notice without a following remove"):
        parse_trace("t_s,event,node\n0,add,a\n1,notice,a\n")


def test_load_trace_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("t_s,event,node\n0,add,a\n1,add,a\n")
    with pytest.raises(TraceError, match=rf"{p}:3: re-add"):
        load_trace(p)
    with pytest.raises(TraceError, match="cannot read"):
        load_trace(tmp_path / "missing.csv")


def test_synthesize_notices() -> None:
    tr = parse_trace(GOOD)
    out = synthesize_notices(tr, 25)
    rows = [(e.t_s, e.event, e.node, e.synthetic) for e in out.events]
    # b was added at 0 and removed at 30 silently: notice at 5; a's own notice is kept
    assert (5.0, "notice", "b", True) in rows
    assert [r for r in rows if r[1] == "notice"] == [
        (5.0, "notice", "b", True),
        (10.0, "notice", "a", False),
    ]
    assert not any(lt.silent for lt in out.lifetimes())
    assert synthesize_notices(tr, 0) is tr
    with pytest.raises(ValueError, match="notice lead"):
        synthesize_notices(tr, -1)


def test_synthesized_notice_is_clamped_to_the_add_and_ordered() -> None:
    tr = parse_trace("t_s,event,node\n0,add,x\n100,add,a\n130,remove,a\n130,add,c\n")
    out = synthesize_notices(tr, 120)
    assert [(e.t_s, e.event, e.node) for e in out.events] == [
        (0.0, "add", "x"),
        (100.0, "add", "a"),
        (100.0, "notice", "a"),  # clamped: a was added only 30 s before its removal
        (130.0, "remove", "a"),
        (130.0, "add", "c"),
    ]
    # zero-length life: notice, add and remove all at one time stay in a valid order
    z = synthesize_notices(parse_trace("t_s,event,node\n5,add,a\n5,remove,a\n"), 10)
    assert [e.event for e in z.events] == ["add", "notice", "remove"]


def test_from_events_validates() -> None:
    with pytest.raises(TraceError, match="never added"):
        SpotTrace.from_events([(0, "notice", "a")])
    with pytest.raises(TraceError, match="unknown event"):
        SpotTrace.from_events([(0, "boot", "a")])


@pytest.mark.parametrize("name", ["steady_1h.csv", "bursty_1h.csv", "diurnal_2h.csv"])
def test_shipped_traces_load(name: str) -> None:
    tr = load_trace(REPO / "traces" / name)
    assert 4 <= max(c for _, c in tr.capacity_steps()) <= 8
    lts = tr.lifetimes()
    assert any(lt.silent for lt in lts) and any(lt.notice_s is not None for lt in lts)


def test_generator_is_deterministic_and_matches_shipped(tmp_path: Path) -> None:
    script = REPO / "scripts" / "make_traces.py"
    out = tmp_path / "s.csv"
    args = [sys.executable, str(script), "steady", "--seed", "1", "--out", str(out)]
    subprocess.run(args, check=True, timeout=60)
    shipped = (REPO / "traces" / "steady_1h.csv").read_text().splitlines()
    generated = out.read_text().splitlines()
    # line 2 records the command, --out included; everything else (metadata, events) is equal
    assert generated[:1] + generated[2:] == shipped[:1] + shipped[2:]
    assert load_trace(out).to_csv() == load_trace(REPO / "traces" / "steady_1h.csv").to_csv()


def test_capped_keeps_whole_real_lifetimes_within_the_cap_and_window() -> None:
    trace = SpotTrace.from_events(
        [
            (0, "add", "a"), (0, "add", "b"), (5, "add", "c"),  # c: a third at once, dropped
            (10, "notice", "a"), (12, "remove", "a"),
            (12, "add", "d"),  # takes a's slot the moment it frees
            (20, "remove", "b"), (30, "remove", "c"),
            (40, "add", "e"), (50, "remove", "d"),
        ]
    )  # fmt: skip
    capped = trace.capped(2)
    assert max(n for _, n in capped.capacity_steps()) == 2
    lives = {lt.node.split(".")[0]: lt for lt in capped.lifetimes()}
    assert sorted(lives) == ["a", "b", "d", "e"]
    assert (lives["a"].start_s, lives["a"].notice_s, lives["a"].end_s) == (0, 10, 12)
    assert (lives["d"].start_s, lives["d"].end_s) == (12, 50) and lives["e"].end_s is None
    # ending_only drops the lifetime that outlives the window; a window shifts times to 0.
    assert "e" not in {
        lt.node.split(".")[0] for lt in trace.capped(2, ending_only=True).lifetimes()
    }
    window = {lt.node.split(".")[0]: lt for lt in trace.capped(2, start_s=11, end_s=45).lifetimes()}
    assert (window["a"].start_s, window["a"].end_s) == (0, 1)
    assert window["d"].end_s is None  # alive at the window's end: no removal invented
    with pytest.raises(ValueError, match="max_live"):
        trace.capped(0)
