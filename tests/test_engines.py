"""Model specs, engine config, CPU threads and the transformers engine: batching never changes results."""

from __future__ import annotations

import json

import subprocess
import sys
import time

import numpy as np
import pytest

from engines import (
    GRAMMAR,
    EngineCapabilityError,
    EngineConfig,
    SamplingParams,
    SpecError,
    load_engine,
    load_model_and_tokenizer,
    parse_spec,
    resolve_engine,
)
from engines.hf_engine import TransformersEngine
from engines.smollm2 import derive_student, layer_indices
from engines.threads import ThreadGovernor, _Sample, usable_cores

# ------------------------------------------------------------------------------------------ specs


@pytest.mark.parametrize(
    "spec, kind, path, model, layers",
    [
        ("smollm2", "smollm2", "", "", None),
        ("smollm2?layers=6", "smollm2", "", "", 6),
        ("  smollm2  ", "smollm2", "", "", None),
        ("hf:/models/x", "hf", "/models/x", "", None),
        ("hf:/models/x?layers=3", "hf", "/models/x", "", 3),
        ("hf:HuggingFaceTB/SmolLM2-135M-Instruct", "hf", "HuggingFaceTB/SmolLM2-135M-Instruct", "", None),
        ("vllm:/models/y", "vllm", "/models/y", "", None),
        ("vllm:smollm2?layers=10", "vllm", "smollm2", "", 10),
        ("openai:http://127.0.0.1:8000/v1#served", "openai", "http://127.0.0.1:8000/v1", "served", None),
        ("openai:http://a:1/v1/,https://b/v1#org/m", "openai", "http://a:1/v1,https://b/v1", "org/m", None),
    ],
)
def test_parse_spec(spec, kind, path, model, layers):
    s = parse_spec(spec)
    assert (s.kind, s.path, s.model, s.layers) == (kind, path, model, layers)
    assert parse_spec(s) is s and str(s) == spec.strip()


def test_spec_properties():
    assert parse_spec("vllm:smollm2").embedded and parse_spec("smollm2?layers=2").embedded
    assert not parse_spec("hf:/x").embedded and parse_spec("hf:/x").is_local
    remote = parse_spec("openai:http://a:1/v1,http://b:2/v1#m")
    assert not remote.is_local and remote.base_urls == ["http://a:1/v1", "http://b:2/v1"]
    with pytest.raises(SpecError, match="no local folder"):
        remote.local_path()


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "gpt4", "hf:", "vllm:", "tgi:/m", "smollm2?layers=0", "smollm2?layers=x", "smollm2?depth=3",
     "smollm2?", "openai:http://x", "openai:ftp://x#m", "openai:http://x#", "openai:http://a,nothttp#m"],
)
def test_bad_specs_name_the_grammar(bad):
    with pytest.raises(ValueError) as err:  # SpecError is a ValueError
        parse_spec(bad)
    assert isinstance(err.value, SpecError) and GRAMMAR in str(err.value)


def test_missing_local_models_are_clear_errors(tmp_path):
    with pytest.raises(SpecError, match="not a model folder"):
        parse_spec(f"hf:{tmp_path}/nothing").local_path()
    with pytest.raises(SpecError, match="not a model folder"):
        parse_spec(f"hf:{tmp_path}").local_path()  # exists, no config.json
    with pytest.raises(SpecError, match="never downloaded"):
        parse_spec("hf:no-such-org/no-such-model-xyz").local_path()


def test_resolve_engine():
    assert resolve_engine(parse_spec("vllm:/m"), "transformers") == "vllm"
    assert resolve_engine(parse_spec("openai:http://a/v1#m"), "auto") == "openai"
    assert resolve_engine(parse_spec("hf:/m"), "transformers") == "transformers"
    assert resolve_engine(parse_spec("hf:/m"), "auto") in ("transformers", "vllm")
    with pytest.raises(SpecError, match="openai"):
        resolve_engine(parse_spec("smollm2"), "openai")


# ----------------------------------------------------------------------------------------- config


def test_engine_config_checks():
    assert EngineConfig(threads=0).threads == "auto"
    assert EngineConfig(threads=3).threads == 3
    for bad in (dict(engine="tgi"), dict(threads=-1), dict(threads="many"), dict(batch_size=0), dict(dtype="int8"),
                dict(max_logprobs=0), dict(gpu_memory_utilization=1.5), dict(concurrency=0), dict(timeout_s=0),
                dict(max_retries=-1), dict(max_model_len=8)):
        with pytest.raises(ValueError):
            EngineConfig(**bad)


# ---------------------------------------------------------------------------------------- threads


def test_thread_choice_gives_up_cores_that_neighbours_use():
    g = ThreadGovernor("auto", cores=2, ticks_per_s=100)
    assert [g.choose(x) for x in (0.0, 0.2, 0.5, 0.67, 1.0, 1.9, 5.0)] == [2, 2, 1, 1, 1, 1, 1]
    g16 = ThreadGovernor("auto", cores=16)
    assert [g16.choose(x) for x in (0.1, 1.0, 3.2, 15.5)] == [16, 15, 13, 1]
    # Machine-wide busy ticks minus our own: 150 busy ticks of which 50 ours over 1 s (100 ticks/s) -> 1 core.
    a, b = _Sample(0.0, 1000, 500), _Sample(1.0, 1150, 550)
    assert g.others_busy(a, b) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ThreadGovernor(-2)


def test_auto_threads_leave_a_busy_neighbour_its_core():
    """A real busy process on this machine: auto takes at most the other cores, and restores the count."""
    import torch

    cores = usable_cores()
    if cores < 2:
        pytest.skip("needs at least 2 usable cores")
    before = torch.get_num_threads()
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 20: pass"])
    try:
        time.sleep(0.3)
        g = ThreadGovernor("auto")
        n = g.start(probe_s=0.3)
        assert 1 <= n <= cores - 1 and torch.get_num_threads() == n
        g.finish()
        assert torch.get_num_threads() == before
    finally:
        busy.kill()
        busy.wait()
    fixed = ThreadGovernor(1)
    assert fixed.start() == 1 and torch.get_num_threads() == 1
    fixed.finish()
    assert torch.get_num_threads() == before


# ------------------------------------------------------------------------------------- derivation


def test_layer_indices():
    assert layer_indices(30, 6) == [0, 6, 12, 17, 23, 29]
    assert layer_indices(30, 30) == list(range(30))
    assert layer_indices(30, 1) == [29]
    with pytest.raises(ValueError):
        layer_indices(4, 5)


def test_derived_student_keeps_teacher_layers(tiny_teacher_path, tmp_path):
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    teacher_dir = shutil.copytree(tiny_teacher_path, tmp_path / "teacher")
    out = parse_spec(f"hf:{teacher_dir}?layers=1").local_path()
    assert out == tmp_path / "teacher-layers1" and out.is_dir()
    assert parse_spec(f"hf:{teacher_dir}?layers=1").local_path() == out  # cached: built once
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.num_hidden_layers == 1 < teacher.config.num_hidden_layers
    kept = layer_indices(teacher.config.num_hidden_layers, 1)[0]
    assert torch.equal(student.model.layers[0].mlp.up_proj.weight, teacher.model.layers[kept].mlp.up_proj.weight)
    assert torch.equal(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    both = derive_student(teacher_dir, 2, tmp_path / "two")
    assert AutoModelForCausalLM.from_pretrained(both).config.num_hidden_layers == 2


def test_load_model_and_tokenizer(tiny_model_path):
    import torch

    model, tok = load_model_and_tokenizer(f"hf:{tiny_model_path}")
    assert model.dtype == torch.float32 and model.config.num_hidden_layers == 2
    assert tok.pad_token is not None and len(tok) == model.config.vocab_size
    bf16, _ = load_model_and_tokenizer(f"hf:{tiny_model_path}", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    with pytest.raises(SpecError, match="local weights"):
        load_model_and_tokenizer("openai:http://127.0.0.1:1/v1#m")
    with pytest.raises(ValueError, match="dtype"):
        load_model_and_tokenizer(f"hf:{tiny_model_path}", dtype="int4")


# ---------------------------------------------------------------------------- transformers engine


@pytest.fixture(scope="module")
def engine(tiny_teacher_path) -> TransformersEngine:
    return load_engine(f"hf:{tiny_teacher_path}", "transformers", batch_size=3)


PROMPTS = [
    [{"role": "user", "content": "What is the first-line drug for anaphylaxis?"}],
    "Plain text prompt",
    [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "The answer is"}],
    [{"role": "user", "content": "A much longer question about the management of diabetic ketoacidosis in adults"}],
]


def test_chat_rendering(engine):
    text = engine.render(PROMPTS[2])
    assert text.rstrip().endswith("The answer is") and text.count("<|im_start|>assistant") == 1
    assert engine.render(PROMPTS[0]).endswith("<|im_start|>assistant\n")  # a generation prompt is opened
    assert engine.render("raw") == "raw"


def test_batched_generate_equals_one_by_one(engine):
    params = SamplingParams(max_new_tokens=12)
    batched = engine.generate(PROMPTS, params)
    single = [engine.generate([p], params)[0] for p in PROMPTS]
    assert [c.text for c in batched] == [c.text for c in single]
    assert [c.num_tokens for c in batched] == [c.num_tokens for c in single]
    assert all(1 <= c.num_tokens <= 12 and c.finish_reason in ("stop", "length") for c in batched)
    assert engine.generate([], params) == []


def test_ignore_eos_generates_the_full_length(engine):
    """Benchmarks at a fixed length: EOS does not end a row (the tiny random model ends early otherwise)."""
    out = engine.generate(PROMPTS, SamplingParams(max_new_tokens=10, ignore_eos=True))
    assert [c.num_tokens for c in out] == [10] * len(PROMPTS) and {c.finish_reason for c in out} == {"length"}


def test_seeded_sampling_is_reproducible(engine):
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=7)
    first = [c.text for c in engine.generate(PROMPTS, params)]
    assert first == [c.text for c in engine.generate(PROMPTS, params)]
    assert first != [c.text for c in engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=1.0, seed=8))]


def test_stop_strings_trim_output(engine):
    free = engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=16))[0].text
    assert len(free) > 2
    stop = free[1:3]
    cut = engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=16, stop=["never-there", stop]))[0]
    assert cut.text == free[: free.find(stop)] and cut.finish_reason == "stop"


SMALL_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["accept", "reject"]},
        "reason": {"type": "string", "minLength": 1, "maxLength": 24},
        "votes": {"type": "integer"},
    },
    "required": ["verdict", "reason", "votes"],
    "additionalProperties": False,
}


def test_json_schema_decoding_makes_even_a_random_model_write_valid_objects(engine):
    """engines.grammar: every token outside the schema is masked, so random weights still write it."""
    pytest.importorskip("xgrammar")
    assert engine.enforces_json_schema
    params = SamplingParams(max_new_tokens=80, temperature=1.0, seed=3, json_schema=SMALL_SCHEMA)
    out = engine.generate(PROMPTS * 2, params)  # 8 rows over 3 batches: per-row matchers per call
    for completion in out:
        obj = json.loads(completion.text, strict=False)  # random weights may write a raw control byte in a string
        assert list(obj) == ["verdict", "reason", "votes"]  # in the schema's order
        assert obj["verdict"] in ("accept", "reject") and 1 <= len(obj["reason"]) <= 24 and isinstance(obj["votes"], int)
        assert completion.finish_reason == "stop"
    free = engine.generate(PROMPTS, SamplingParams(max_new_tokens=20, temperature=1.0, seed=3))
    assert not all(c.text.startswith('{"verdict"') for c in free)  # without a schema: unconstrained


def test_json_schema_decoding_with_a_stop_string_that_ends_rows_early(engine):
    """A row cut by a stop string is fed padding afterwards: the mask lets it go instead of failing."""
    pytest.importorskip("xgrammar")
    params = SamplingParams(max_new_tokens=60, temperature=1.0, seed=5, json_schema=SMALL_SCHEMA, stop=['"reason"'])
    out = engine.generate(PROMPTS, params)
    assert all(c.text.startswith('{"verdict":') and '"reason"' not in c.text and c.finish_reason == "stop" for c in out)


def test_structured_decoding_can_be_turned_off(tiny_teacher_path):
    plain = TransformersEngine(tiny_teacher_path, structured=False, progress=False)
    assert plain.enforces_json_schema is False
    out = plain.generate(PROMPTS[:2], SamplingParams(max_new_tokens=6, json_schema=SMALL_SCHEMA))
    assert len(out) == 2  # the schema is ignored, as on any engine that cannot enforce it


def test_stop_strings_look_at_the_output_only(engine):
    """transformers' own stop_strings would match "\n" (end of prompt) + "\n" (first new token)."""
    import torch

    from engines.hf_engine import _stop_in_output

    prompt = engine.tokenizer("Question:\n")["input_ids"]
    nl = engine.tokenizer("\n", add_special_tokens=False)["input_ids"]
    stop = _stop_in_output(engine.tokenizer, ["\n\n"], len(prompt))
    assert stop(torch.tensor([prompt + nl]), None).tolist() == [False]
    assert stop(torch.tensor([prompt + nl + nl, prompt + nl + engine.tokenizer("ok", add_special_tokens=False)["input_ids"]]), None).tolist() == [True, False]


def test_choice_logprobs_equal_unpadded_forward(engine):
    import torch

    letters = ["A", "B", "C", "D"]
    got = engine.choice_logprobs(PROMPTS, letters)
    for prompt, scores in zip(PROMPTS, got):
        ids = engine.tokenizer(engine.render(prompt), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(engine.model(input_ids=ids).logits[0, -1].float(), -1)
        for c in letters:
            want = max(float(lp[t]) for t in engine.choice_token_ids(c))
            assert scores[c] == pytest.approx(want, abs=1e-4)
    assert len(engine.choice_token_ids("A")) == 2  # "A" and " A" are both single tokens
    with pytest.raises(ValueError, match="not a single token"):
        engine.choice_logprobs(PROMPTS[:1], ["pneumothorax"])


def test_topk_logprobs_equal_full_softmax(engine):
    import torch

    seqs = [engine.tokenizer("the heart pumps blood through the body and the lungs")["input_ids"],
            engine.tokenizer("a b")["input_ids"], engine.tokenizer("aspirin inhibits cyclooxygenase")["input_ids"]]
    out = engine.topk_logprobs(seqs, 5)
    engine.max_batch_tokens = 4  # one sequence per forward now: the same numbers
    try:
        alone = engine.topk_logprobs(seqs, 5)
    finally:
        engine.max_batch_tokens = 4096
    for seq, (ids, lps), (ids1, lps1) in zip(seqs, out, alone):
        assert ids.shape == lps.shape == (len(seq) - 1, 5) and ids.dtype == np.int32 and lps.dtype == np.float32
        with torch.no_grad():
            full = torch.log_softmax(engine.model(input_ids=torch.tensor([seq])).logits[0, :-1].float(), -1)
        want_lp, want_ids = full.topk(5, dim=-1)
        np.testing.assert_allclose(lps, want_lp.numpy(), atol=1e-4)
        assert (ids[:, 0] == want_ids[:, 0].numpy()).all()
        assert (np.diff(lps, axis=1) <= 1e-6).all(), "sorted descending"
        np.testing.assert_allclose(lps, lps1, atol=1e-4)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        engine.topk_logprobs([[5]], 3)


def test_gqa_attention_equals_eager_on_padded_batches(tiny_teacher_path):
    """engines.attention (SDPA with enable_gqa and the padding mask) against transformers' eager
    attention: prefill logits of a left-padded batch, and greedy decoding through the KV cache."""
    import torch
    from transformers import AutoModelForCausalLM

    from engines.attention import register

    eager = AutoModelForCausalLM.from_pretrained(tiny_teacher_path, attn_implementation="eager").eval()
    assert eager.config.num_key_value_heads < eager.config.num_attention_heads, "the test needs a GQA model"
    gqa = AutoModelForCausalLM.from_pretrained(tiny_teacher_path).eval()
    gqa.set_attn_implementation(register())
    ids = torch.tensor([[0, 0, 0, 11, 12, 13], [21, 22, 23, 24, 25, 26], [0, 31, 32, 33, 34, 35]])
    mask = (ids != 0).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        want = eager(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        got = gqa(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        real = mask.bool()
        torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-4)
        kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(gqa.generate(input_ids=ids, **kw), eager.generate(input_ids=ids, **kw))
    engine = load_engine(f"hf:{tiny_teacher_path}", "transformers")
    assert engine.model.config._attn_implementation == "atkd_sdpa_gqa"  # what the CPU engine runs


def test_engine_calls_restore_the_callers_threads(engine):
    import torch

    before = torch.get_num_threads()
    engine.governor = ThreadGovernor(1)
    try:
        engine.choice_logprobs(PROMPTS[:1], ["A"])
        assert torch.get_num_threads() == before
    finally:
        engine.governor = ThreadGovernor("auto")


def test_http_engines_cannot_label():
    client = load_engine("openai:http://127.0.0.1:9/v1#m")
    with pytest.raises(EngineCapabilityError, match="local engine"):
        client.topk_logprobs([[1, 2, 3]], 4)


# ------------------------------------------------------------------------------------ real weights


@pytest.mark.slow
def test_transformers_engine_on_smollm2(smollm2_path):
    """The real model answers, scores options, and greedy batched output equals one-by-one."""
    engine = load_engine("smollm2", "transformers", batch_size=4)
    try:
        prompts = [[{"role": "user", "content": "What is the capital of France?"}],
                   [{"role": "user", "content": "Name one beta blocker."}], "The heart has four"]
        params = SamplingParams(max_new_tokens=16)
        out = engine.generate(prompts, params)
        assert "Paris" in out[0].text
        assert [c.text for c in out] == [engine.generate([p], params)[0].text for p in prompts]
        mcq = [{"role": "user", "content": "What is the capital of France?\nA. Berlin\nB. Paris\nC. Rome\nD. Madrid\n"
                                           "Answer with the letter."}, {"role": "assistant", "content": "The answer is"}]
        # SmolLM2-135M has a strong position bias (it prefers "A" whatever the key), so the check is on
        # the numbers, not on the model being right: proper log-probs, equal batched and alone.
        swapped = [{**mcq[0], "content": mcq[0]["content"].replace("A. Berlin\nB. Paris", "A. Paris\nB. Berlin")}, mcq[1]]
        batched = engine.choice_logprobs([mcq, swapped, prompts[2]], ["A", "B", "C", "D"])
        alone = engine.choice_logprobs([mcq], ["A", "B", "C", "D"])[0]
        assert batched[0] == pytest.approx(alone, abs=1e-4)
        for scores in batched:
            assert all(v < 0 for v in scores.values()) and sum(np.exp(list(scores.values()))) <= 1.0
        assert sum(np.exp(list(alone.values()))) > 0.5, "the letters should take most of the mass after 'The answer is'"
    finally:
        engine.close()
