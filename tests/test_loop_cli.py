"""The loop's command line: clear errors, exit code 2, nothing written on bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents.config import LoopConfig, parse_config

ROOT = Path(__file__).resolve().parents[1]


def run_loop(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agents.loop", *args], cwd=cwd, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_unknown_domain_exits_2_and_writes_nothing(tmp_path):
    p = run_loop("--domain", "nosuch", cwd=tmp_path)
    assert p.returncode == 2
    assert "unknown domain 'nosuch'" in p.stderr and "clinical" in p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "runs").exists()


def test_broken_jsonl_line_named(tmp_path):
    good = json.dumps({"id": "a-1", "question": "Q", "options": {"A": "x", "B": "y"}, "answer_idx": "A"})
    (tmp_path / "seed.jsonl").write_text(good + "\n" + good.replace("a-1", "a-2") + "\n{broken\n")
    (tmp_path / "eval.jsonl").write_text(good.replace("a-1", "e-1") + "\n")
    (tmp_path / "d.yaml").write_text("name: t\nroot: r\nseed_files: [seed.jsonl]\neval_files: [eval.jsonl]\n")
    p = run_loop("--domain", str(tmp_path / "d.yaml"), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert f"{tmp_path / 'seed.jsonl'}:3: not valid JSON" in p.stderr
    assert not (tmp_path / "run").exists()


def test_a_bad_start_tree_is_refused_before_anything_is_written(tmp_path):
    p = run_loop("--tree", str(tmp_path / "missing.json"), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert p.returncode == 2 and "missing.json: tree file not found" in p.stderr
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "atkd.ability_tree", "version": 1, "root": "law", "edges": [],
                                 "nodes": [{"id": "law", "name": "law"}]}))
    p = run_loop("--tree", str(other), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert p.returncode == 2 and "the tree's root 'law' is not the domain's root 'clinical medicine'" in p.stderr
    assert not (tmp_path / "run").exists()


def test_existing_run_dir_needs_resume(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    p = run_loop("--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert p.returncode == 2 and "--resume" in p.stderr
    assert (tmp_path / "run" / "keep.txt").read_text() == "mine"
    p = run_loop("--run-dir", str(tmp_path / "other"), "--resume", cwd=tmp_path)
    assert p.returncode == 2 and "config.yaml not found" in p.stderr


def test_help_lists_every_option(tmp_path):
    p = run_loop("--help", cwd=tmp_path)
    assert p.returncode == 0
    for name in LoopConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in p.stdout


def test_yaml_config_and_cli_precedence(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("budget: 7\nprobe-size: 5\nalpha: 1\n")
    config, explicit = parse_config(["--config", str(cfg), "--budget", "9"])
    assert (config.budget, config.probe_size, config.alpha) == (9, 5, 1.0)
    assert {"budget", "probe_size", "alpha"} <= explicit
    cfg.write_text("colour: red\n")
    p = run_loop("--config", str(cfg), cwd=tmp_path)
    assert p.returncode == 2 and "unknown option 'colour'" in p.stderr
    cfg.write_text("budget: many\n")
    p = run_loop("--config", str(cfg), cwd=tmp_path)
    assert p.returncode == 2 and "'budget' must be int" in p.stderr


@pytest.mark.parametrize("args, message", [(["--alpha", "2"], "alpha must be in [0, 1]"), (["--engine", "tpu"], "engine must be one of")])
def test_range_checks(tmp_path, args, message):
    p = run_loop(*args, cwd=tmp_path)
    assert p.returncode == 2 and message in p.stderr


def test_graph_shape_snapshot():
    from agents.graph import build_graph

    mermaid = build_graph(None, iterations=1).get_graph().draw_mermaid()
    snapshot = Path(__file__).parent / "snapshots" / "loop_graph.mmd"
    if os.environ.get("ATKD_UPDATE_SNAPSHOTS"):  # regenerate deliberately, then review the diff
        snapshot.write_text(mermaid)
    assert mermaid == snapshot.read_text(), "graph topology changed; if intended, rerun with ATKD_UPDATE_SNAPSHOTS=1"


def test_kv_teachers_reach_the_train_stage(tmp_path):
    from agents.stages import train_kv_options

    config, _ = parse_config(["--kv-teachers", "smollm2, minilm", "--kv-phase", "5", "--kv-loss-weight", "0.5"])
    assert train_kv_options(config) == {
        "kv_teachers": ["smollm2", "minilm"], "kv_fusion": "fixed", "kv_loss_weight": 0.5, "kv_teacher_domains": None,
        "kv_phase": 5,
    }
    config, _ = parse_config(["--kv-teachers", "a,b", "--kv-fusion", "domain", "--kv-teacher-domains", "medmcqa|medqa,mmlu"])
    assert train_kv_options(config)["kv_teacher_domains"] == ["medmcqa|medqa", "mmlu"]
    from training import KDConfig

    # What the loop hands over is a valid KDConfig (checked there too).
    KDConfig(output_dir=str(tmp_path), **train_kv_options(config))
    assert train_kv_options(parse_config([])[0]) == {}
    for args, message in [(["--kv-phase", "4"], "kv_phase needs kv_teachers"),
                          (["--kv-teachers", "a", "--kv-fusion", "vote"], "kv_fusion must be one of"),
                          (["--kv-teachers", "a", "--kv-teacher-domains", "x,y"], "one entry per KV teacher")]:
        p = run_loop(*args, cwd=tmp_path)
        assert p.returncode == 2 and message in p.stderr


def test_encoder_options_of_the_loop(tmp_path):
    """--encoder wins; else the run's own distilled encoder (<run>/encoder/student); else minilm."""
    from agents.context import EnginePool, LoopContext
    from agents.run_dir import RunDir
    from agents.stages import generate_inputs, validate_inputs
    from data.domains import get_domain

    config, _ = parse_config(["--near-dup-metric", "embedding", "--exemplar-choice", "embedding"])
    ctx = LoopContext(config, RunDir(tmp_path / "run"), get_domain("clinical"), EnginePool())
    assert ctx.encoder_spec == "minilm"
    own = tmp_path / "run" / "encoder" / "student"
    own.mkdir(parents=True)
    (own / "modules.json").write_text("[]")
    assert ctx.encoder_spec == str(own)
    state = {"iteration": 0}
    assert validate_inputs(ctx, state)[0]["near_dup_metric"] == "embedding" and validate_inputs(ctx, state)[0]["encoder"] == str(own)
    assert generate_inputs(ctx, state)[0]["exemplar_choice"] == "embedding"
    config, _ = parse_config(["--encoder", "st:/x"])
    assert LoopContext(config, RunDir(tmp_path / "run"), get_domain("clinical"), EnginePool()).encoder_spec == "st:/x"
    plain = LoopContext(parse_config([])[0], RunDir(tmp_path / "run"), get_domain("clinical"), EnginePool())
    assert "near_dup_metric" not in validate_inputs(plain, state)[0]  # runs made before the option keep their inputs
    assert "exemplar_choice" not in generate_inputs(plain, state)[0]
    for args, message in [(["--near-dup-metric", "cosine"], "near_dup_metric must be"), (["--exemplar-choice", "best"], "exemplar_choice must be")]:
        p = run_loop(*args, cwd=tmp_path)
        assert p.returncode == 2 and message in p.stderr


def test_launcher_and_vllm_options_reach_the_stages(tmp_path, monkeypatch):
    """train_launcher's fields enter the train fingerprint only when set (older runs keep theirs); the
    vllm_* fields reach every engine the pool loads; bad combinations exit 2 naming the option."""
    import engines
    from agents.context import EnginePool, LoopContext
    from agents.run_dir import RunDir
    from agents.stages import train_inputs
    from data.domains import get_domain

    state = {"iteration": 1, "student": "smollm2"}
    plain = LoopContext(parse_config([])[0], RunDir(tmp_path / "run"), get_domain("clinical"), EnginePool())
    assert "train_launcher" not in train_inputs(plain, state)[0]
    config, _ = parse_config(["--train-launcher", "accelerate", "--train-num-processes", "4", "--train-batch-size", "8"])
    launched = LoopContext(config, RunDir(tmp_path / "run"), get_domain("clinical"), EnginePool())
    assert train_inputs(launched, state)[0]["train_num_processes"] == 4

    config, _ = parse_config(["--vllm-tensor-parallel-size", "2", "--vllm-max-model-len", "2048", "--vllm-gpu-memory-utilization", "0.5"])
    seen = []
    monkeypatch.setattr(engines, "load_engine", lambda spec, cfg: seen.append(cfg) or object())
    pool = EnginePool(config.engine, config.threads, config.batch_size, config.vllm_options)
    pool.get("vllm:smollm2")
    assert (seen[0].tensor_parallel_size, seen[0].max_model_len, seen[0].gpu_memory_utilization) == (2, 2048, 0.5)

    for args, message in [(["--train-launcher", "slurm"], "train_launcher must be in-process or accelerate"),
                          (["--train-launcher", "accelerate", "--train-num-processes", "3"], "train_batch_size must be a multiple of train_num_processes"),
                          (["--train-accelerate-config", "x.yaml"], "train_accelerate_config needs train_launcher accelerate"),
                          (["--vllm-tensor-parallel-size", "0"], "vllm_tensor_parallel_size must be >= 1")]:
        p = run_loop(*args, cwd=tmp_path)
        assert p.returncode == 2 and message in p.stderr, (args, p.stderr)


def test_a_bad_accelerate_config_is_refused_before_anything_is_written(tmp_path):
    base = ["--train-launcher", "accelerate", "--run-dir", str(tmp_path / "run")]
    p = run_loop(*base, "--train-accelerate-config", str(tmp_path / "none.yaml"), cwd=tmp_path)
    assert p.returncode == 2 and f"--train-accelerate-config: {tmp_path / 'none.yaml'} not found" in p.stderr
    (tmp_path / "multi.yaml").write_text("distributed_type: MULTI_GPU\nnum_machines: 2\nnum_processes: 16\n")
    p = run_loop(*base, "--train-accelerate-config", str(tmp_path / "multi.yaml"), cwd=tmp_path)
    assert p.returncode == 2 and "asks for 2 machines" in p.stderr
    (tmp_path / "fsdp.yaml").write_text("distributed_type: FSDP\nnum_machines: 1\n")
    p = run_loop(*base, "--train-accelerate-config", str(tmp_path / "fsdp.yaml"), "--dry-run", cwd=tmp_path)
    assert p.returncode == 0 and "training: accelerate launch, 2 processes, 4 examples each per step, config" in p.stdout and "(FSDP)" in p.stdout
    assert not (tmp_path / "run").exists()


def test_a_failed_launch_stops_the_loop_resumably_with_its_log_tail(tmp_path, monkeypatch, capsys):
    """The train stage's LaunchError: exit 1, its message (with the log's tail) and how to continue;
    the run directory stays locked by nobody."""
    import agents.loop as loop
    from data.run_lock import RunLock
    from training.launch import LaunchError

    def failing(config, run):
        raise LaunchError("accelerate launch of training.distill exited with code 1; its last lines:\nRuntimeError: out of memory")

    monkeypatch.setattr(loop, "run_loop", failing)
    run = tmp_path / "run"
    assert loop.main(["--run-dir", str(run), "--train-launcher", "accelerate"]) == 1
    err = capsys.readouterr().err
    assert "error: accelerate launch of training.distill exited with code 1" in err and "RuntimeError: out of memory" in err
    assert f"continue: python -m agents.loop --run-dir {run} --resume" in err
    with RunLock(run) as lock:  # released on the way out
        assert lock.previous == {}
