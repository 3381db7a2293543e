"""`spotlight plot RUN_DIR`: PNGs from a synthetic run dir; clear errors for bad input."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from PIL import Image

from spotlight.actors.monitor.metrics import JsonlWriter, MetricRecord
from spotlight.commands import plot

pytestmark = pytest.mark.timeout(60)


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="spotlight plot")
    plot.add_arguments(parser)
    return plot.run(parser.parse_args(list(argv)))


def _synthetic_run(run_dir: Path, *, with_cost: bool = True) -> Path:
    t0 = 1_800_000_000.0
    with JsonlWriter.for_run_dir(run_dir) as writer:
        for it in range(30):
            t = t0 + 10 * it
            for rank in range(2):  # two trainer sources: one line each
                writer.write(MetricRecord(time=t, source=f"trainer-{rank}", topic="trainer",
                    fields={"iteration": it, "loss": 1 / (it + 1), "reward_mean": 0.4 + it / 100,
                            "reward_std": 0.1}))  # fmt: skip
            if it % 5 == 0:
                writer.write(MetricRecord(time=t, source="eval", topic="validation",
                                          fields={"iteration": it, "score": 0.5 + it / 200}))  # fmt: skip
            node_fields = {"kind": "spot", "status": "alive", "cost_usd": 0.1 * it}
            writer.write(MetricRecord(time=t, source="spot-0", topic="node", fields=node_fields))
            if with_cost:
                writer.write(MetricRecord(time=t, source="meter", topic="cost",
                                          fields={"total_usd": 0.3 * it}))  # fmt: skip
        return writer.path


def test_plot_writes_pngs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _synthetic_run(tmp_path / "run")
    assert _run(str(tmp_path / "run")) == 0
    out = capsys.readouterr().out.split()
    names = sorted(Path(p).name for p in out)
    assert names == ["cost.png", "loss.png", "reward.png", "validation.png"]
    for p in out:
        with Image.open(p) as img:
            assert img.format == "PNG" and img.size == (700, 400)
    assert all(Path(p).parent == tmp_path / "run" / "plots" for p in out)


def test_plot_cost_falls_back_to_nodes_and_skips_missing_curves(tmp_path: Path) -> None:
    path = _synthetic_run(tmp_path / "run", with_cost=False)
    only_nodes = tmp_path / "nodes.jsonl"
    only_nodes.write_text("".join(line + "\n" for line in path.read_text().splitlines()
                                  if '"topic":"node"' in line))  # fmt: skip
    result = plot.plot_run(only_nodes, tmp_path / "out")
    assert [p.name for p in result.written] == ["cost.png"]
    assert any("validation.png: no 'validation' records with 'score'" in s for s in result.skipped)


def test_plot_skips_corrupt_lines_and_counts_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _synthetic_run(tmp_path / "run")
    lines = path.read_text().splitlines()
    lines.insert(3, "{not json")
    path.write_text("\n".join(lines) + "\n" + lines[-1][:15])  # torn last line too
    assert _run(str(tmp_path / "run"), "--out", str(tmp_path / "png")) == 0
    captured = capsys.readouterr()
    assert f"skipped 2 corrupt line(s) in {path}" in captured.err
    assert "line 4:" in captured.err and f"line {len(lines) + 1}:" in captured.err
    assert len(captured.out.split()) == 4


def test_plot_errors_name_the_path_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    assert _run(str(missing)) == 2
    assert f"no metrics file at {missing / 'metrics.jsonl'}" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("\n\n")
    assert _run(str(empty)) == 2
    assert f"{empty / 'metrics.jsonl'} is empty" in capsys.readouterr().err

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "metrics.jsonl").write_text('\n{"time": 1}\ngarbage\n')
    assert _run(str(corrupt)) == 2
    err = capsys.readouterr().err
    assert "all 2 lines are corrupt; first at line 2: missing keys" in err

    useless = tmp_path / "useless"
    useless.mkdir()
    record = MetricRecord(time=1.0, source="x", topic="scheduler", fields={"queue_depth": 1})
    with JsonlWriter.for_run_dir(useless) as w:
        w.write(record)
    assert _run(str(useless)) == 1
    assert "nothing to plot in 1 records" in capsys.readouterr().err
