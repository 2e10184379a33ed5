"""The control plane's processes: each started with its own log, watched, stopped in order."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


class ClusterError(RuntimeError):
    """A component failed to start, died, or a kubectl call failed."""


class PortInUse(ClusterError):
    """A component lost its port to another process: the start is retried on new ones."""


def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class _Component:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    log_file: IO[bytes]


@dataclass
class Launcher:
    """The processes of one start attempt, and their teardown."""

    log_dir: Path
    components: list[_Component] = field(default_factory=list)

    def start(self, name: str, argv: list[str]) -> None:
        log = self.log_dir / f"{name}.log"
        log_file = log.open("wb")
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C on the terminal reaches only us, and we stop them
                # in order.
                start_new_session=True,
            )
        except BaseException:
            log_file.close()
            raise
        self.components.append(_Component(name, process, log, log_file))

    def check(self) -> None:
        """Raise if a component has exited."""
        for component in self.components:
            code = component.process.poll()
            if code is None:
                continue
            component.log_file.flush()
            end = tail(component.log)
            error = PortInUse if "address already in use" in end else ClusterError
            raise error(f"{component.name} exited with {code}; end of {component.log}:\n{end}")

    def wait(self, what: str, ready: Callable[[], bool], deadline: float) -> None:
        """Until `ready()`; ClusterError with every log's end once `deadline` has passed."""
        while True:
            self.check()
            if ready():
                return
            if time.monotonic() > deadline:
                tails = "\n".join(
                    f"--- end of {c.log}:\n{tail(c.log, 10)}" for c in self.components
                )
                raise ClusterError(f"{what} not ready in time\n{tails}")
            time.sleep(0.25)

    def stop(self) -> None:
        """SIGTERM the components in reverse start order (etcd last); SIGKILL stragglers."""
        for component in reversed(self.components):
            process = component.process
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=15)
            component.log_file.close()
        self.components.clear()
