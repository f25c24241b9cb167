"""The pieces of a student update that never ships a regression: the gate's rules, the score cache,
the epoch choice, the dev split, rehearsal sampling, the domain's loop defaults and tracking options."""

from __future__ import annotations


import pytest
from scipy.stats import binomtest

from data.records import DataError, MCQItem, Reply, write_jsonl
from eval.gate import GateConfig, decide, p_worse
from eval.score_cache import ScoreCache, ScoreRequest, model_identity


def replies(pattern: str, prefix: str = "q") -> list[Reply]:
    """One reply per character: 1 right, 0 wrong."""
    return [Reply(id=f"{prefix}{i}", prompt="", output="", parsed_answer="A" if c == "1" else "B", key="A", correct=c == "1")
            for i, c in enumerate(pattern)]


# ------------------------------------------------------------------------------------------ gate


def test_margin_rule_rejects_a_drop_and_adopts_a_tie():
    before = replies("1111100000")
    worse, tie, better = replies("1111000000"), replies("0111110000"), replies("1111110000")
    assert not decide(before, worse).adopted
    d = decide(before, tie)
    assert d.adopted and (d.gained, d.lost, d.delta) == (1, 1, 0.0)
    assert decide(before, better).adopted
    # A tolerance of 10 points lets the 1-item drop in; a required gain of 10 points refuses the tie.
    assert decide(before, worse, GateConfig(margin=10.0)).adopted
    assert not decide(before, tie, GateConfig(margin=-10.0)).adopted
    assert decide(before, better, GateConfig(margin=-10.0)).adopted
    assert "rejected" in decide(before, worse).reason and "dev 50.0% -> 40.0%" in decide(before, worse).reason


@pytest.mark.parametrize("gained, lost", [(0, 0), (0, 5), (3, 9), (10, 2), (20, 20)])
def test_p_worse_is_the_one_sided_exact_binomial(gained, lost):
    expected = 1.0 if gained + lost == 0 else binomtest(lost, gained + lost, 0.5, alternative="greater").pvalue
    assert p_worse(gained, lost) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_rule_rejects_only_what_the_dev_split_can_tell():
    before = replies("1" * 30 + "0" * 10)
    slightly = replies("0" * 2 + "1" * 28 + "0" * 10)  # 2 lost, 0 gained: p = 0.25
    clearly = replies("0" * 8 + "1" * 22 + "0" * 10)  # 8 lost: p = 0.0039
    rule = GateConfig(rule="mcnemar", alpha=0.05)
    assert decide(before, slightly, rule).adopted
    assert not decide(before, clearly, rule).adopted
    assert not decide(before, slightly).adopted  # the margin rule (default) is stricter


def test_off_and_empty_and_bad_configs():
    assert decide(replies("1"), replies("0"), GateConfig(rule="off")).adopted
    assert decide([], [], GateConfig()).adopted
    with pytest.raises(ValueError, match="same dev items"):
        decide(replies("11"), replies("11", prefix="x"))
    for kwargs, message in [({"rule": "vote"}, "gate rule must be one of"), ({"alpha": 0.0}, "alpha"), ({"margin": 500.0}, "margin")]:
        with pytest.raises(ValueError, match=message):
            GateConfig(**kwargs)


# ----------------------------------------------------------------------------------- score cache


def item(i: int, key: str = "A") -> MCQItem:
    return MCQItem(id=f"i{i}", question=f"What is {i} plus {i}?", options={"A": str(2 * i), "B": str(2 * i + 1)}, answer_idx=key)


class CountingEngine:
    """Answers A to everything; counts the calls."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    def choice_logprobs(self, prompts, letters):
        self.calls += 1
        return [{letter: (-0.1 if letter == "A" else -3.0) for letter in letters} for _ in prompts]


def test_score_cache_scores_once_and_keys_on_model_items_and_mode(tmp_path):
    cache, engine = ScoreCache(tmp_path / "scores"), CountingEngine()
    items = [item(i) for i in range(5)]
    request = ScoreRequest(model="m1", split="dev")
    first = cache.score(request, lambda: engine, items)
    again = cache.score(request, lambda: pytest.fail("a stored score must not load the engine"), items)
    assert (first.reused, again.reused, engine.calls) == (False, True, 1)
    assert [r.model_dump() for r in again.replies] == [r.model_dump() for r in first.replies]
    # Another model, other items, another key or mode: scored again.
    for req, its in [(ScoreRequest(model="m2", split="dev"), items), (request, items[:4]),
                     (request, [item(0, "B"), *items[1:]]), (ScoreRequest(model="m1", split="dev", mode="generate"), items)]:
        assert cache.get(req, its) is None
    # A damaged entry is scored again, never trusted.
    entry = next((tmp_path / "scores").glob("dev-*.jsonl"))
    entry.write_text("{not json\n")
    assert cache.score(request, lambda: engine, items).reused is False and engine.calls == 2
    # No cache: always scores.
    assert ScoreCache(None).score(request, lambda: engine, items).reused is False and engine.calls == 3


def test_model_identity_changes_when_the_folder_is_rewritten(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"1234")
    first = model_identity(f"hf:{folder}")
    (folder / ".done.json").write_text("{}")  # hidden files (stage markers) are not the model
    assert model_identity(f"hf:{folder}") == first
    (folder / "model.safetensors").write_bytes(b"12345")
    assert model_identity(f"hf:{folder}") != first
    assert model_identity("openai:http://x/v1#m") == "openai:http://x/v1#m"


# ---------------------------------------------------------------------------------- epoch choice


def test_best_epoch_callback_restores_the_best_epochs_weights():
    import torch
    from types import SimpleNamespace

    from training.selection import BestEpochCallback

    model = torch.nn.Linear(3, 1)
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    model.register_parameter("frozen", frozen)
    scores = iter([0.5, 0.7, 0.6])
    callback = BestEpochCallback(lambda m: next(scores))
    kept = None
    for epoch in (1, 2, 3):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        callback.on_epoch_end(None, SimpleNamespace(epoch=float(epoch)), None, model=model)
        if epoch == 2:
            kept = model.weight.detach().clone()
    assert model.training  # scored in eval mode, put back
    callback.on_train_end(None, None, None, model=model)
    assert torch.equal(model.weight, kept) and callback.best_epoch == 2.0 and callback.restored
    assert [h["score"] for h in callback.history] == [0.5, 0.7, 0.6]
    # Ties keep the later epoch; the last being best leaves the weights alone.
    tie = BestEpochCallback(lambda m: 0.5)
    for epoch in (1, 2):
        tie.on_epoch_end(None, SimpleNamespace(epoch=float(epoch)), None, model=model)
    assert tie.best_epoch == 2.0 and not tie.restored


def test_wrapped_engine_answers_like_the_loaded_one(tiny_model_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engines.hf_engine import TransformersEngine
    from eval.mcq import score_items

    items = [item(i) for i in range(4)]
    loaded = TransformersEngine(tiny_model_path, threads=1, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    side = tokenizer.padding_side
    wrapped = TransformersEngine.wrap(AutoModelForCausalLM.from_pretrained(tiny_model_path).eval(), tokenizer, threads=1)
    assert tokenizer.padding_side == side  # the trainer's tokenizer is not changed
    for mode in ("logprob", "generate"):
        a = score_items(loaded, items, mode=mode, max_new_tokens=8).replies
        b = score_items(wrapped, items, mode=mode, max_new_tokens=8).replies
        assert [(r.parsed_answer, r.output) for r in a] == [(r.parsed_answer, r.output) for r in b]


# ------------------------------------------------------------------------------------- dev split


def test_shipped_dev_splits_are_disjoint_and_stratified():
    from collections import Counter

    from data.domains import get_domain

    arithmetic = get_domain("arithmetic")
    dev = arithmetic.dev_items()
    assert len(dev) == 208 and set(Counter(tuple(i.ability_path) for i in dev).values()) == {8}
    clinical = get_domain("clinical")
    dev = clinical.dev_items()
    assert len(dev) == 96 and len({i.source for i in dev}) == 6
    seen = {i.id for i in (*clinical.seed_items(), *clinical.eval_items())}
    assert not seen & {i.id for i in dev}


def test_a_dev_item_that_repeats_a_seed_item_is_refused_naming_the_file(tmp_path):
    from data.domains import get_domain

    write_jsonl(tmp_path / "seed.jsonl", [item(1), item(2)])
    write_jsonl(tmp_path / "eval.jsonl", [item(3)])
    write_jsonl(tmp_path / "dev.jsonl", [item(4), item(2).model_copy(update={"id": "other"})])
    (tmp_path / "domain.yaml").write_text("name: t\nroot: t\nseed_files: [seed.jsonl]\neval_files: [eval.jsonl]\ndev_files: [dev.jsonl]\n")
    with pytest.raises(DataError, match=r"dev.jsonl: dev item 'other' repeats a seed/eval item"):
        get_domain(str(tmp_path / "domain.yaml")).dev_items()


def test_stratified_draw_covers_every_group_evenly():
    from collections import Counter

    from data.splits import stratified

    items = [MCQItem(id=f"{g}{i}", question=f"{g}{i}?", options={"A": "1", "B": "2"}, answer_idx="A")
             for g in "abc" for i in range(10 if g != "c" else 2)]
    group = lambda i: i.id[0]  # noqa: E731
    picked = stratified(items, 9, seed=0, group=group)
    assert Counter(group(i) for i in picked) == {"a": 4, "b": 3, "c": 2}  # round-robin a, b, c, a, b, c, a, b, a
    assert stratified(items, 9, 0, group) == picked  # deterministic
    assert len(stratified(items, 100, 0, group)) == len(items)


# ---------------------------------------------------------------------------- config and domain


def test_domain_loop_defaults_sit_between_the_dataclass_and_the_user(tmp_path):
    from agents.config import parse_config

    write_jsonl(tmp_path / "seed.jsonl", [item(1)])
    write_jsonl(tmp_path / "eval.jsonl", [item(3)])
    (tmp_path / "domain.yaml").write_text("name: t\nroot: t\nseed_files: [seed.jsonl]\neval_files: [eval.jsonl]\n"
                                          "loop_defaults: {learning_rate: 0.001, warmup_ratio: 0.1}\n")
    domain = str(tmp_path / "domain.yaml")
    config, explicit = parse_config(["--domain", domain])
    assert (config.learning_rate, config.warmup_ratio) == (0.001, 0.1) and "learning_rate" not in explicit
    config, _ = parse_config(["--domain", domain, "--learning-rate", "0.5"])
    assert (config.learning_rate, config.warmup_ratio) == (0.5, 0.1)
    (tmp_path / "domain.yaml").write_text("name: t\nroot: t\nseed_files: [seed.jsonl]\neval_files: [eval.jsonl]\n"
                                          "loop_defaults: {learning_rat: 0.001}\n")
    with pytest.raises(DataError, match=r"domain.yaml: field 'loop_defaults': unknown option 'learning_rat'"):
        parse_config(["--domain", domain])


def test_new_loop_options_are_checked_and_booleans_can_be_turned_off(tmp_path, capsys):
    from agents.config import parse_config
    from agents.loop import main

    assert parse_config(["--no-select-epoch", "--no-score-cache"])[0].select_epoch is False
    for args, message in [(["--gate", "vote"], "gate must be one of margin, mcnemar, off"),
                          (["--lr-scheduler-type", "wiggly"], "lr_scheduler_type must be one of"),
                          (["--warmup-ratio", "1.5"], "warmup_ratio must be in [0, 1)"),
                          (["--report-to", "tensorboard,nope"], "unknown tracker(s) nope"),
                          (["--rehearsal", "-1"], "rehearsal must be >= 0")]:
        code = main([*args, "--run-dir", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "r").exists()


def test_tracking_flattens_figures_and_names_what_to_install(tmp_path):
    from eval.tracking import StageTracker, flatten, missing_trackers, parse_report_to

    assert parse_report_to("none") == [] and parse_report_to("tensorboard, wandb") == ["tensorboard", "wandb"]
    assert flatten({"a": 1, "b": {"c": 2.5, "d": "x", "e": True}, "f": float("nan")}, "gate") == {"gate/a": 1.0, "gate/b/c": 2.5, "gate/b/e": 1.0}
    assert all("pip install" in m for m in missing_trackers(["wandb", "trackio"]) )
    StageTracker([], tmp_path, "run", {}).log("gate", 1, {"adopted": True})  # no tracker: nothing at all
    assert not (tmp_path / "tracking").exists()


def test_tensorboard_gets_the_stage_figures(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (the track extra)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from eval.tracking import StageTracker

    tracker = StageTracker(["tensorboard"], tmp_path, "run", {"seed": 0})
    tracker.log("gate", 1, {"adopted": False, "before": 0.5, "after": 0.25})
    tracker.log("gate", 2, {"adopted": True, "before": 0.5, "after": 0.75})
    tracker.close()
    events = EventAccumulator(str(tmp_path / "tracking" / "tensorboard" / "loop"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("gate/after")] == [(1, 0.25), (2, 0.75)]
    assert [e.value for e in events.Scalars("gate/adopted")] == [0.0, 1.0]


def test_routed_top_k_takes_the_routed_sequences_from_the_other_engine():
    import numpy as np

    from training.teacher_logits import RoutedTopK, sequence_hash

    class Vocab:
        def __init__(self, words):
            self.words = words

        def get_vocab(self):
            return self.words

    class Fixed:
        """Top-k of every position: ids all equal to ``mark``."""

        def __init__(self, mark, vocab):
            self.mark, self.tokenizer, self.name, self.calls = mark, Vocab(vocab), f"m{mark}", []

        def topk_logprobs(self, sequences, k):
            self.calls.append(len(sequences))
            return [(np.full((len(s) - 1, k), self.mark, np.int32), np.zeros((len(s) - 1, k), np.float32)) for s in sequences]

    teacher, student = Fixed(1, {"a": 0}), Fixed(2, {"a": 0})
    seqs = [[5, 6, 7], [8, 9], [5, 6, 7, 8]]
    routed = RoutedTopK(teacher, student, {sequence_hash(seqs[1])})
    out = routed.topk_logprobs(seqs, 3)
    assert [int(ids[0, 0]) for ids, _ in out] == [1, 2, 1] and [ids.shape[0] for ids, _ in out] == [2, 1, 3]
    assert (teacher.calls, student.calls) == ([2], [1])
    assert RoutedTopK(teacher, student, set()).topk_logprobs(seqs, 1) and student.calls == [1]  # nothing routed: not asked
    with pytest.raises(ValueError, match="does not share the tokenizer"):
        RoutedTopK(teacher, Fixed(3, {"b": 0}), set())
