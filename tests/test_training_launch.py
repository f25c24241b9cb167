"""training.launch: a failed launch says why, with its log's tail; launched processes die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.records import MCQItem, write_jsonl
from training.launch import (
    LaunchConfig,
    LaunchError,
    accelerate_command,
    launch_distill,
)

ROOT = Path(__file__).resolve().parents[1]
CHILD = ("import os, time; from training.lifetime import die_with_parent; die_with_parent(parent=int(os.environ['PARENT'])); "
         "print('ready', flush=True); time.sleep(600)")
PARENT = ("import os, subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', sys.argv[1]], env={**os.environ, 'PARENT': str(os.getpid())}); "
          "print(child.pid, flush=True); time.sleep(600)")


def _alive(pid: int) -> bool:
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:"))
    except (FileNotFoundError, StopIteration):
        return False
    return "Z" not in state.split()[1]  # a zombie has exited; only its parent has not reaped it


def test_the_command_uses_this_interpreter_and_the_config_file(tmp_path):
    assert accelerate_command(LaunchConfig(num_processes=2))[:3] == [sys.executable, "-m", "training.launch"]
    assert "--multi_gpu" in accelerate_command(LaunchConfig(num_processes=2))
    assert "--multi_gpu" not in accelerate_command(LaunchConfig(num_processes=1))
    (tmp_path / "fsdp.yaml").write_text("distributed_type: FSDP\n")
    cmd = accelerate_command(LaunchConfig(num_processes=4, accelerate_config=str(tmp_path / "fsdp.yaml")))
    assert cmd[3:] == ["--config_file", str(tmp_path / "fsdp.yaml"), "--num_processes", "4"]
    with pytest.raises(ValueError, match="not found"):
        LaunchConfig(accelerate_config=str(tmp_path / "none.yaml"))


def test_a_failed_launch_raises_with_the_tail_of_its_log(tmp_path):
    data = tmp_path / "items.jsonl"
    write_jsonl(data, [MCQItem(id="a-1", question="Q?", options={"A": "x", "B": "y"}, answer_idx="A")])
    log = tmp_path / "train.log"
    with pytest.raises(LaunchError) as failure:
        launch_distill(tmp_path / "no-student", [data], tmp_path / "out", {"max_steps": 1}, LaunchConfig(num_processes=1, log_file=str(log)),
                       env={"PYTHONPATH": str(ROOT)})
    message = str(failure.value)
    assert message.startswith("accelerate launch of training.distill exited with code ") and f"(whole log: {log}); its last lines:" in message
    assert "error: " in message and "no-student" in message
    text = log.read_text()
    assert text.startswith("$ ") and "--num_processes 1 -m training.distill" in text.splitlines()[0]
    assert (tmp_path / "out.launch.yaml").read_text() == "max_steps: 1\n"
    assert not (tmp_path / "out").exists()


def test_a_launched_process_dies_with_its_parent(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = int(parent.stdout.readline())
    assert parent.stdout.readline().strip() == "ready"
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the child outlived its killed parent"
