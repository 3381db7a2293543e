"""The checkpoint/restart baseline's pool: a notice or loss restarts every running node."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from spotlight.actors.spot.restart_pool import RestartPoolLauncher
from spotlight.config import ConfigError, SystemConfig, apply_overrides
from tests.procs import process_gone, wait_for

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform == "win32", reason="process groups"),
]

# a node: writes "<pid> <grandchild pid>" to <node>.<incarnation>.pids, records a SIGTERM
# in <node>.term (and keeps running, like a draining node would), waits forever
CHILD = textwrap.dedent(
    """
    import os, signal, subprocess, sys
    out, node = sys.argv[1], os.environ["SPOTLIGHT_NODE_ID"]
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    def on_term(*_):
        with open(os.path.join(out, node + ".term"), "w") as f:
            f.write("notice")
    signal.signal(signal.SIGTERM, on_term)
    n = 0
    while os.path.exists(os.path.join(out, f"{node}.{n}.pids")):
        n += 1
    tmp = os.path.join(out, f"{node}.{n}.tmp")
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()} {grandchild.pid}")
    os.rename(tmp, os.path.join(out, f"{node}.{n}.pids"))
    while True:
        signal.pause()
    """
)


async def _pids(tmp_path: Path, node: str, incarnation: int) -> list[int]:
    f = tmp_path / f"{node}.{incarnation}.pids"
    await wait_for(f.exists, f"{node} incarnation {incarnation} to start")
    return [int(x) for x in f.read_text().split()]


def test_notice_and_silent_loss_restart_every_running_node(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    command = f"{sys.executable} {script} {tmp_path} {{node}}"

    async def main() -> None:
        seen: list[int] = []
        try:
            async with RestartPoolLauncher(command) as pool:
                for node in ("a", "b", "c"):
                    await pool.add(node)
                first = {n: await _pids(tmp_path, n, 0) for n in ("a", "b", "c")}
                seen += [p for ps in first.values() for p in ps]

                # a notice: the noticed node dies at once, without its SIGTERM handler
                # (no drain), and b and c are killed and started again
                await pool.notice("a", deadline=time.monotonic() + 100)
                assert not (tmp_path / "a.term").exists()
                second = {n: await _pids(tmp_path, n, 1) for n in ("b", "c")}
                seen += [p for ps in second.values() for p in ps]
                await wait_for(
                    lambda: all(process_gone(p) for ps in first.values() for p in ps),
                    "every first incarnation (grandchildren too) gone",
                )
                assert sorted(pool.live_pids()) == sorted(ps[0] for ps in second.values())
                stats = pool.statistics()
                assert (stats.restarts, stats.relaunched, stats.killed_at_notice) == (1, 2, 1)
                assert stats.restart_log[0]["relaunched"] == ["b", "c"]
                # a restarted process is a new worker for the scheduler: "<node>.r<k>"
                assert [p.popen.args[-1] for p in pool.history] == ["a", "b", "c", "b.r1", "c.r1"]

                # the noticed node's removal at its deadline restarts nothing more
                await pool.remove("a", silent=False)
                assert pool.statistics().restarts == 1
                assert sorted(pool.live_pids()) == sorted(ps[0] for ps in second.values())

                # a silent loss of b: b gone for good, c restarted once more
                await pool.remove("b", silent=True)
                third = await _pids(tmp_path, "c", 2)
                seen += third
                assert pool.live_pids() == [third[0]]
                assert not (tmp_path / "b.2.pids").exists()
                stats = pool.statistics()
                assert (stats.restarts, stats.relaunched, stats.killed_silent) == (2, 3, 1)
                assert stats.restart_log[1]["cause"] == "silent"

                # a node that joins later is started once and is not disturbed by removals
                # of nodes that are already gone
                await pool.add("d")
                seen += await _pids(tmp_path, "d", 0)
                await pool.remove("b", silent=True)  # unknown now: nothing happens
                assert pool.statistics().restarts == 2
            # leaving the block killed and reaped everything, grandchildren included
            await wait_for(lambda: all(process_gone(p) for p in seen), "every process gone")
            assert [p.popen.args[-1] for p in pool.history] == [
                *("a", "b", "c"),
                *("b.r1", "c.r1"),
                "c.r2",
                "d",
            ]
            assert all(p.returncode is not None for p in pool.history)
        finally:
            for pid in seen:  # never leave a process behind
                if not process_gone(pid):
                    os.kill(pid, 9)

    asyncio.run(main())


def test_fault_mode_is_validated_and_defaults_to_elastic() -> None:
    assert SystemConfig().spot.fault_mode == "elastic"
    cfg = apply_overrides(SystemConfig(), ["spot.fault_mode=restart"])
    assert cfg.spot.fault_mode == "restart"
    with pytest.raises(ConfigError, match=r"spot.fault_mode='torchelastic'; valid: elastic"):
        apply_overrides(SystemConfig(), ["spot.fault_mode=torchelastic"])
