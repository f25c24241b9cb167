"""Run the distillation loop.

    python -m agents.loop --domain clinical                 # one iteration of the embedded default
    python -m agents.loop --run-dir runs/x --resume         # continue a run that was stopped or killed
    python -m agents.loop --teacher hf:big --dry-run        # check every setting, print the plan, write nothing

Each stage writes its outputs into the run directory atomically; the LangGraph SQLite checkpointer in
``<run-dir>/checkpoints.sqlite`` records which stages finished, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Sequence

import yaml

from agents.config import LoopConfig, parse_config
from agents.context import EnginePool, LoopContext
from agents.preflight import PreflightError, preflight
from agents.run_dir import RunDir
from agents.summary import print_summary
from data.domains import get_domain
from data.records import DataError, atomic_write_text, read_yaml
from data.run_lock import LOCK_NAME, RunLock, RunLockedError, RunLockError
from tree.ability_tree import AbilityTree

logger = logging.getLogger("agents.loop")

THREAD_ID = "loop"  # one LangGraph thread per run directory


class UsageError(Exception):
    """A mistake in how the loop was invoked: printed as one line, exit code 2."""


class Stopped(BaseException):  # not Exception: no `except Exception` in a stage may swallow it
    """SIGTERM (what a scheduler sends) arrived: unwound like an error, so locks and engines are released
    and the finished stages stay, exactly as after a kill; the run continues with --resume."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signal.Signals(signum).name)


def _resolve_config(config: LoopConfig, explicit: set[str]) -> tuple[LoopConfig, RunDir]:
    """Decide the run dir and the config in force (a resumed run uses its stored config.yaml)."""
    root = Path(config.run_dir) if config.run_dir else config.default_run_dir()
    run = RunDir(root)
    if config.resume:
        if not run.config_file.is_file():
            raise UsageError(f"--resume: {run.config_file} not found; start the run without --resume first")
        try:
            stored = read_yaml(run.config_file)
        except DataError as e:
            raise UsageError(f"--resume: {e}") from None
        if not isinstance(stored, dict):
            raise UsageError(f"--resume: {run.config_file}: not the options of a run (expected a mapping)")
        unknown = sorted(set(stored) - {f.name for f in dataclasses.fields(LoopConfig)})
        if unknown:
            raise UsageError(f"--resume: {run.config_file}: unknown option(s) {', '.join(unknown)} (written by another version?)")
        stored["run_dir"] = str(root)
        changed = sorted(k for k in explicit - {"run_dir"} if stored.get(k) != getattr(config, k))
        if changed:
            raise UsageError(
                f"--resume keeps the run's stored options; these differ from {run.config_file}: "
                + ", ".join(f"{k} (stored {stored.get(k)!r})" for k in changed)
            )
        return LoopConfig(**stored, resume=True, dry_run=config.dry_run), run
    if run.root.exists() and not run.root.is_dir():
        raise UsageError(f"--run-dir: {root} exists and is not a folder; choose another --run-dir")
    if run.root.exists() and any(p.name != LOCK_NAME for p in run.root.iterdir()):
        raise UsageError(f"run directory {root} already exists; continue it with --resume or choose another --run-dir")
    config.run_dir = str(root)
    return config, run


def run_loop(config: LoopConfig, run: RunDir) -> dict:
    """Run (or resume) the graph to the end; returns the final state."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    from agents.graph import build_graph

    domain = get_domain(config.domain)
    ctx = LoopContext(config=config, run=run, domain=domain, engines=EnginePool(config.engine, config.threads, config.batch_size, config.vllm_options))
    # Every data file is read and validated here too (the pre-flight did so from main): a caller of
    # run_loop alone gets the file:line error before anything is written.
    ctx.seed_items, ctx.eval_items, ctx.dev_items  # noqa: B018 (cached properties, evaluated for their validation)
    run.root.mkdir(parents=True, exist_ok=True)
    if not config.resume:
        atomic_write_text(run.config_file, yaml.safe_dump(config.to_dict(), sort_keys=False))

    conn = sqlite3.connect(run.checkpoints, check_same_thread=False)
    try:
        graph = build_graph(ctx, config.iterations, checkpointer=SqliteSaver(conn))
        thread = {"configurable": {"thread_id": THREAD_ID}}
        snapshot = graph.get_state(thread)
        if snapshot.created_at is not None and not snapshot.next:
            logger.info("run %s is already complete", run.root)
            return snapshot.values
        start = None if snapshot.created_at is not None else {"iteration": 1, "student": config.student, "history": []}
        if start is None:
            logger.info("resuming %s before %s", run.root, ", ".join(snapshot.next))
        for update in graph.stream(start, thread, stream_mode="updates"):
            for stage, delta in update.items():
                for rec in (delta or {}).get("history", []):
                    verb = "reused" if rec["skipped"] else "done"
                    logger.info("iteration %d %-8s %s in %.1f s", rec["iteration"], rec["stage"], verb, rec["seconds"])
        return graph.get_state(thread).values
    finally:
        ctx.engines.release()
        if "tracker" in ctx.__dict__:  # made only when a stage finished
            ctx.tracker.close()
        conn.close()


def _hold_new_run(run: RunDir) -> RunLock:
    """Create the run directory and lock it; refuse it if another new run took it in between."""
    created = not run.root.exists()
    run.root.mkdir(parents=True, exist_ok=True)
    try:
        lock = RunLock(run.root).acquire()
    except RunLockError as e:
        if created and not isinstance(e, RunLockedError):  # this filesystem cannot lock: leave nothing behind
            (run.root / LOCK_NAME).unlink(missing_ok=True)
            run.root.rmdir()
        raise
    if run.config_file.exists():
        lock.release()
        raise UsageError(f"run directory {run.root} was just started by another process; continue it with --resume")
    return lock


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()  # signal handlers can only be set there


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    lock: RunLock | None = None
    try:
        config, explicit = parse_config(argv)
        config, run = _resolve_config(config, explicit)
        if config.resume and not config.dry_run:  # a second process on a working run stops here, having written nothing
            lock = RunLock(run.root).acquire()
        domain = get_domain(config.domain)  # fail on a bad domain or tree file before anything is created
        if config.tree and (root := AbilityTree.load(config.tree).root).casefold() != domain.root.casefold():
            raise DataError(f"{config.tree}: the tree's root {root!r} is not the domain's root {domain.root!r}")
        plan = preflight(config, run.root, domain, devices=config.dry_run)
        if config.dry_run:
            print(plan.render())
            return 0
        lock = lock or _hold_new_run(run)
    except (UsageError, DataError, PreflightError, RunLockError, ValueError) as e:
        if lock is not None:
            lock.release()
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    from training.launch import LaunchError

    resume = f"python -m agents.loop --run-dir {run.root} --resume"
    previous = signal.signal(signal.SIGTERM, _raise_stopped) if _main_thread() else None
    try:
        state = run_loop(config, run)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (Stopped, KeyboardInterrupt) as e:
        name = str(e) if isinstance(e, Stopped) else "SIGINT"
        print(f"stopped by {name}; the finished stages are kept; continue with: {resume}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, Stopped) else signal.SIGINT)
    except LaunchError as e:  # the stages before train are kept: a resumed run starts at train
        print(f"error: {e}\nthe run stopped in its train stage; fix the cause, then continue: {resume}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        lock.release()
    history = state.get("history", [])
    print_summary(run.root, history, total_seconds=time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
