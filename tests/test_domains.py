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
