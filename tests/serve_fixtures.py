"""`edgeba serve` as a clinic runs it: a real server process on a free loopback port, for the tests that
need real sockets (concurrency, privacy of the logs, the browser)."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "runs" / "serve"  # ignored by git (/runs/): screenshots show real radiographs


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    output: list[str] = field(default_factory=list)  # every line the server printed (stdout and stderr)

    def stop(self) -> str:
        """Stop it (Ctrl+C, as a user would) and return everything it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return "".join(self.output)


def start_server(*args: str, timeout: float = 120) -> Server:
    """`python -m edgeba.cli serve --port 0 ARGS`; waits for its 'open http://...' line."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "edgeba.cli", "serve", "--port", "0", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue = queue.Queue()
    output: list[str] = []

    def read():
        for line in proc.stdout:
            output.append(line)
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            proc.kill()
            pytest.fail(f"edgeba serve did not start within {timeout:.0f} s: {''.join(output)}")
        if line is None:
            pytest.fail(f"edgeba serve exited with {proc.wait()}: {''.join(output)}")
        if " open http://" in line:
            url = line.split(" open ")[1].split()[0]
            server = Server(proc, url, output)
            server._reader = reader
            return server
