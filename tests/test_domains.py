import pytest

from data.domains import available_domains, get_domain
from data.records import DataError


def test_clinical_preset_loads_and_is_clean():
    d = get_domain("clinical")
    assert "clinical" in available_domains()
    seed, ev = d.seed_items(), d.eval_items()
    assert len(seed) >= 500 and len(ev) >= 150
    assert not {i.id for i in seed} & {i.id for i in ev}
    norm = lambda s: "".join(ch for ch in s.lower() if ch.isalnum())  # noqa: E731
    assert not {norm(i.question) for i in seed} & {norm(i.question) for i in ev}
    assert d.root == "clinical medicine"


def test_unknown_domain_lists_available():
    with pytest.raises(DataError, match=r"unknown domain 'nosuch'; available: .*clinical"):
        get_domain("nosuch")


def test_user_domain_yaml(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"id": "a-1", "question": "Q", "options": {"A": "x", "B": "y"}, "answer_idx": "A"}\n')
    y = tmp_path / "domain.yaml"
    y.write_text("name: mine\nroot: my field\nseed_files: [s.jsonl]\neval_files: [missing.jsonl]\n")
    with pytest.raises(DataError, match="missing.jsonl not found"):
        get_domain(str(y))
    y.write_text("name: mine\nroot: my field\nseed_files: [s.jsonl]\neval_files: s.jsonl\ncolour: red\n")
    with pytest.raises(DataError, match="unknown field"):
        get_domain(str(y))
    y.write_text("name: mine\nroot: my field\nseed_files: [s.jsonl]\neval_files: s.jsonl\n")
    assert get_domain(str(y)).seed_items()[0].id == "a-1"


def test_answer_mode_defaults_to_logprob_and_is_checked(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"id": "a-1", "question": "Q", "options": {"A": "x", "B": "y"}, "answer_idx": "A"}\n')
    y = tmp_path / "domain.yaml"
    base = "name: mine\nroot: my field\nseed_files: [s.jsonl]\neval_files: s.jsonl\n"
    y.write_text(base)
    assert (get_domain(str(y)).answer_mode, get_domain(str(y)).answer_max_tokens) == ("logprob", 32)
    y.write_text(base + "answer_mode: generate\nanswer_max_tokens: 100\n")
    assert (get_domain(str(y)).answer_mode, get_domain(str(y)).answer_max_tokens) == ("generate", 100)
    for bad, field in (("answer_mode: letters", "answer_mode"), ("answer_max_tokens: 0", "answer_max_tokens"),
                       ("answer_max_tokens: many", "answer_max_tokens")):
        y.write_text(base + bad + "\n")
        with pytest.raises(DataError, match=rf"domain.yaml: field '{field}'"):
            get_domain(str(y))
    assert get_domain("arithmetic").answer_mode == "generate" and get_domain("clinical").answer_mode == "logprob"
