"""Who judges the generated keys, as the loop's pre-flight says it: the domain's verifier (or a user's,
refused in one line when it cannot be loaded), the solver (sampled votes) and the critic, and a plain
warning when the generator is its own only judge. ``main(argv)`` in-process: a subprocess proves nothing more."""

from __future__ import annotations

import pytest

from agents.loop import main


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("spec, detail", [
    ("no.such.module:verify", "'no.such.module:verify': module 'no.such.module' cannot be imported"),
    ("data.arithmetic.verify", "is not module:function"),
    ("data.arithmetic.verify:nothing", "has no attribute 'nothing'"),
])
def test_a_bad_verifier_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, spec, detail):
    run = tmp_path / "run"
    code, _, err = run_main(capsys, "--domain", "arithmetic", "--verifier", spec, "--run-dir", str(run))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --verifier: ") and detail in lines[0], err
    assert not run.exists()


def test_the_plan_names_the_judges_and_warns_when_the_teacher_judges_itself(tmp_path, capsys):
    code, out, _ = run_main(capsys, "--domain", "arithmetic", "--run-dir", str(tmp_path / "a"), "--dry-run")
    assert code == 0
    assert "keys judged by: verifier data.arithmetic.verify:verify_item; solver smollm2; critic smollm2" in out
    assert "warning:" not in out
    code, out, _ = run_main(capsys, "--domain", "clinical", "--run-dir", str(tmp_path / "c"), "--dry-run")
    assert code == 0 and "keys judged by: solver smollm2; critic smollm2" in out
    assert "warning: the teacher smollm2 writes the items and is their only judge" in out
    code, out, _ = run_main(capsys, "--domain", "arithmetic", "--verifier", "none", "--solver-samples", "5", "--solver-temperature", "0.7",
                            "--solver-min-share", "0.5", "--critic-sees-explanation", "--run-dir", str(tmp_path / "n"), "--dry-run")
    assert code == 0 and "keys judged by: solver smollm2, 5 sampled at 0.7; critic smollm2 (shown the explanation)" in out
    assert "warning: the teacher smollm2 writes the items" in out  # sampling itself more often is still judging itself
    code, out, _ = run_main(capsys, "--domain", "clinical", "--solver", "smollm2?layers=15", "--run-dir", str(tmp_path / "s"), "--dry-run")
    assert code == 0 and "warning:" not in out
    assert not any((tmp_path / name).exists() for name in "acns")


def test_loop_options_are_range_checked(tmp_path, capsys):
    for args, message in [(["--solver-min-share", "1.5"], "solver_min_share must be in [0, 1]"),
                          (["--solver-temperature", "-1"], "solver_temperature must be >= 0"),
                          (["--verifier-on-wrong", "ignore"], "verifier_on_wrong must be one of rekey, reject"),
                          (["--verifier-unknown", "maybe"], "verifier_unknown must be one of keep, reject")]:
        code, _, err = run_main(capsys, *args, "--run-dir", str(tmp_path / "r"))
        assert code == 2 and message in err, (args, err)
