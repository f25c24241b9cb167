"""``python -m training.distill`` under ``accelerate launch``, in a subprocess, from a caller that stays
one process (the loop's train stage): DDP over several GPUs, FSDP / DeepSpeed from an accelerate config
file, or gloo processes on a CPU. (Several machines need a launcher on each; this starts one here.)

    from training.launch import LaunchConfig, launch_distill
    metrics = launch_distill("student/", ["items.jsonl"], "out/", {"alpha": 0.5, "per_device_train_batch_size": 4},
                             LaunchConfig(num_processes=2, log_file="out.log"), logits_dir="labels/")

The launched training's output is streamed, line by line, into ``log_file`` and this process's log. A
launch that fails raises :class:`LaunchError` with the log's tail; the output folder is then untouched
(``distill`` writes a temporary sibling and renames it at the end). The launched processes die with
the caller (Linux: a parent-death signal on the launcher and on each worker), so a killed loop leaves
no training running that would write into a run it no longer holds.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data.records import atomic_write_text
from training.lifetime import DIE_WITH_PARENT_ENV, die_with_parent

logger = logging.getLogger(__name__)



class LaunchError(RuntimeError):
    """The launched training failed; the message ends with the tail of its log."""


@dataclass
class LaunchConfig:
    """How ``accelerate launch`` runs the training."""

    num_processes: int = field(default=2, metadata={"help": "Processes in all (one per GPU; on a CPU, gloo processes); passed as --num_processes, over the config file's."})
    accelerate_config: str = field(default="", metadata={"help": "An accelerate config file (accelerate config): DDP, FSDP, DeepSpeed. Empty: DDP on this machine (--multi_gpu)."})
    log_file: str = field(default="", metadata={"help": "Where the launched training's output goes (empty: only this process's log)."})
    tail_lines: int = field(default=40, metadata={"help": "Lines of the log a LaunchError shows."})

    def __post_init__(self) -> None:
        if self.num_processes < 1:
            raise ValueError("num_processes must be >= 1")
        if self.accelerate_config and not Path(self.accelerate_config).is_file():
            raise ValueError(f"accelerate_config: {self.accelerate_config} not found")


def accelerate_command(launch: LaunchConfig) -> list[str]:
    """``accelerate launch`` with this interpreter (the same environment), up to the script."""
    cmd = [sys.executable, "-m", "training.launch"]  # accelerate launch, dying with its parent (see the end)
    if launch.accelerate_config:
        cmd += ["--config_file", str(Path(launch.accelerate_config).resolve())]
    elif launch.num_processes > 1:
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*cmd, "--num_processes", str(launch.num_processes)]


_PROGRESS = re.compile(r"\d+%\|")  # a tqdm bar's refresh (each "\r" ends a line in text mode)


def _stream(proc: subprocess.Popen, cmd: list[str], log_file: Path | None, tail: collections.deque, progress_every_s: float = 10.0) -> None:
    """The command, then every line, into the log file; the lines into this process's log too, but
    progress bars once per ``progress_every_s`` (and when they reach 100%), not at each refresh."""
    last_bar = -progress_every_s
    with open(log_file, "a", encoding="utf-8") if log_file else open(os.devnull, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            log.write(raw)
            log.flush()
            if not line.strip():
                continue
            bar = bool(_PROGRESS.search(line))
            if bar and tail and _PROGRESS.search(tail[-1]):
                tail[-1] = line  # a bar's refreshes take one line of the tail
            else:
                tail.append(line)
            if bar:
                if time.monotonic() - last_bar < progress_every_s and "100%|" not in line:
                    continue
                last_bar = time.monotonic()
            logger.info("train | %s", line)


def launch_distill(
    student: str | os.PathLike,
    data: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    overrides: dict[str, Any],
    launch: LaunchConfig,
    *,
    logits_dir: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train as ``training.distill.distill`` does, in ``launch.num_processes`` processes; returns its metrics.

    ``overrides`` are KDConfig fields (as ``training.distill.distill_config`` takes them); they travel
    as a YAML file beside ``output_dir`` (``--config``). ``per_device_train_batch_size`` is per process.
    """
    out = Path(output_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    args_file = out.parent / f"{out.name}.launch.yaml"
    atomic_write_text(args_file, yaml.safe_dump(dict(overrides), sort_keys=True))
    cmd = [*accelerate_command(launch), "-m", "training.distill", "--config", str(args_file), "--student", str(student),
           "--data", *map(str, data), "--output_dir", str(out)]
    if logits_dir is not None:
        cmd += ["--logits_dir", str(logits_dir)]
    log_file = Path(launch.log_file) if launch.log_file else None
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    logger.info("launching the training: %s", " ".join(cmd[1:]))
    environment = {**os.environ, **(env or {}), DIE_WITH_PARENT_ENV: str(os.getpid()), "PYTHONUNBUFFERED": "1"}
    tail: collections.deque = collections.deque(maxlen=launch.tail_lines)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                            errors="replace", env=environment)
    try:
        _stream(proc, cmd, log_file, tail)
        code = proc.wait()
    except BaseException:
        proc.terminate()  # the launcher stops its workers on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if code != 0:
        where = f" (whole log: {log_file})" if log_file else ""
        raise LaunchError(f"accelerate launch of training.distill exited with code {code}{where}; its last lines:\n" + "\n".join(tail))
    from training.distill import METRICS_FILE

    return json.loads((out / METRICS_FILE).read_text(encoding="utf-8"))


if __name__ == "__main__":  # `python -m training.launch ARGS`: `accelerate launch ARGS`, dying with its parent
    import runpy

    die_with_parent(parent=int(os.environ.get(DIE_WITH_PARENT_ENV, "0")) or None)
    sys.argv = ["accelerate launch", *sys.argv[1:]]
    runpy.run_module("accelerate.commands.launch", run_name="__main__", alter_sys=True)
