"""``burrow node`` processes on this machine as a node pool (tests, a workstation, a bare GPU box).

Replica ``k`` of group ``G`` is ``burrow node`` with ``BURROW_NODE_ID=G-k`` and a state directory of its own
(``<directory>/k``; two nodes never share one). Each is noted in ``<directory>/k.pid``, so an autoscaler that
restarts finds the replicas it started and a reused pid is not mistaken for one. A replica is removed with
one SIGTERM, to its supervisor only: it stops taking work and its running jobs checkpoint and hand back
(``burrow node``'s drain), so nothing is lost; until it has exited it is counted as stopping, not as a
replica. Replicas run in their own session, so a Ctrl-C of the autoscaler does not reach them (two SIGTERMs
would make their workers abandon their jobs); they keep running if the autoscaler stops.

A replica that exits with ``EXIT_BOOT_FAILED`` (none of its workers could boot: a setting, a queue declared
with other arguments) is not replaced: every replacement would fail alike, so the group reports the error,
naming the replica's log, until the autoscaler is restarted with the problem fixed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node.attempt.journal import process_start_time
from node.supervisor.process import EXIT_BOOT_FAILED

from .provider import ProviderError

logger = logging.getLogger("burrow.autoscale")


class LocalProvider:
    """Starts and stops ``burrow node`` processes (see the module docstring).

    Parameters:
        group: The group's name (node ids are ``<group>-<k>``).
        directory: Where replicas' pid files, logs and state directories live.
        command: The node command (default ``burrow node``).
        env: The replicas' environment (the autoscaler's own plus the group's ``env``).
    """

    def __init__(self, group: str, directory: Path, command: list[str], env: Mapping[str, str]) -> None:
        self.name = f"local:{group}"
        self.group = group
        self.directory = Path(directory)
        self.command = list(command)
        self.env = dict(env)
        self._children: dict[int, subprocess.Popen] = {}
        self._cannot_boot: str | None = None  # why replicas are not started any more

    @classmethod
    def from_options(
        cls, group: str, options: Mapping[str, Any], environ: Mapping[str, str], state_dir: Path
    ) -> LocalProvider:
        directory = Path(options.get("directory") or state_dir / "autoscale" / group)
        command = list(options.get("command") or ["burrow", "node"])
        return cls(group, directory, command, {**environ, **options.get("env", {})})

    # -- the replicas -------------------------------------------------------------------------------------

    def replicas(self) -> dict[int, tuple[int, bool]]:
        """Live replicas: index → (pid, stopping). Notes of replicas that exited are removed."""
        live: dict[int, tuple[int, bool]] = {}
        for note in self.directory.glob("*.pid"):
            try:
                index = int(note.stem)
                pid, started = (int(x) for x in note.read_text().split())
            except (ValueError, OSError):
                continue
            child = self._children.get(pid)
            if child is not None and child.poll() is not None:
                del self._children[pid]  # reaped: it exited
                if child.returncode == EXIT_BOOT_FAILED:
                    self._cannot_boot = (
                        f"{self.name}: replica {index} could not boot (exit code {EXIT_BOOT_FAILED}; "
                        f"see {self.directory / f'{index}.log'}); no replica is started until that is fixed"
                    )
            if process_start_time(pid) != started:
                note.unlink(missing_ok=True)
                (self.directory / f"{index}.stopping").unlink(missing_ok=True)
                continue
            live[index] = (pid, (self.directory / f"{index}.stopping").exists())
        return live

    def current(self) -> int:
        return sum(1 for _, stopping in self.replicas().values() if not stopping)

    def scale_to(self, replicas: int, *, idle: frozenset[str] = frozenset()) -> None:
        live = self.replicas()
        running = sorted(i for i, (_, stopping) in live.items() if not stopping)
        if replicas > len(running):
            if self._cannot_boot is not None:
                raise ProviderError(self._cannot_boot)
            free = (i for i in range(len(live) + replicas + 1) if i not in live)
            for _ in range(replicas - len(running)):
                self._start(next(free))
        elif replicas < len(running):
            # Idle replicas go first (nothing to hand back), then the newest.
            order = sorted(running, key=lambda i: (f"{self.group}-{i}" not in idle, -i))
            for index in order[: len(running) - replicas]:
                self._stop(index, live[index][0])

    def _start(self, index: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        env = {
            **self.env,
            "BURROW_NODE_ID": f"{self.group}-{index}",
            "BURROW_STATE_DIR": str(self.directory / str(index)),
        }
        log = open(self.directory / f"{index}.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            child = subprocess.Popen(
                self.command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        except OSError as e:
            raise ProviderError(f"{self.name}: cannot start {' '.join(self.command)}: {e.strerror or e}") from None
        finally:
            log.close()
        self._children[child.pid] = child
        (self.directory / f"{index}.stopping").unlink(missing_ok=True)
        (self.directory / f"{index}.pid").write_text(f"{child.pid} {process_start_time(child.pid)}")
        logger.info("%s: started replica %d (pid %d)", self.name, index, child.pid)

    def _stop(self, index: int, pid: int) -> None:
        (self.directory / f"{index}.stopping").touch()
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        logger.info("%s: stopping replica %d (pid %d): SIGTERM, its jobs hand back", self.name, index, pid)

    def close(self, *, stop: bool = False) -> None:
        """Forget the children (``stop``: SIGTERM them first and wait; for tests)."""
        for child in list(self._children.values()):
            if stop and child.poll() is None:
                child.send_signal(signal.SIGTERM)
                child.wait()
        self._children.clear()
