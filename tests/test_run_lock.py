"""One process per run directory: the lock names its holder, and a killed holder never leaves it locked."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from data.run_lock import LOCK_NAME, RunLock, RunLockedError

ROOT = Path(__file__).resolve().parents[1]
HOLD = "import sys, time; from data.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)"


def _holder(run: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_lock_names_the_holder_and_writes_nothing(tmp_path):
    with RunLock(tmp_path) as lock:
        assert lock.held and lock.previous == {}
        record = json.loads((tmp_path / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname() and record["started"]
        before = (tmp_path / LOCK_NAME).read_bytes()
        with pytest.raises(RunLockedError, match=rf"in use by pid {os.getpid()} on {socket.gethostname()} \(since .*\); wait for it"):
            RunLock(tmp_path).acquire()
        assert (tmp_path / LOCK_NAME).read_bytes() == before
    assert not lock.held
    assert (tmp_path / LOCK_NAME).read_text() == "", "a clean release empties the record"
    with RunLock(tmp_path) as again:  # and the next holder sees no dead holder to warn about
        assert again.previous == {}


def test_another_process_holds_it_until_killed_then_it_is_taken_over(tmp_path, caplog):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError, match=f"pid {proc.pid} "):
            RunLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with caplog.at_level(logging.WARNING, logger="data.run_lock"):
        lock = RunLock(tmp_path).acquire()
    try:
        assert lock.previous["pid"] == proc.pid
        assert f"taking over the lock of pid {proc.pid}" in caplog.text and "no longer running" in caplog.text
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        lock.release()


def test_an_unreadable_record_still_locks(tmp_path):
    (tmp_path / LOCK_NAME).write_bytes(b"\xff\xfe not json")
    with RunLock(tmp_path) as lock:
        assert lock.previous.get("note") == "unreadable lock record"
        with pytest.raises(RunLockedError):
            RunLock(tmp_path).acquire()
    with RunLock(tmp_path) as lock:  # released: free again, the bad record was replaced
        assert lock.previous == {}
