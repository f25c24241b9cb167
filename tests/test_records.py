import json

import pytest

from data.records import DataError, MCQItem, atomic_write_text, read_items, read_jsonl, write_jsonl


def _item(**kw):
    base = {"id": "x-1", "question": "Q?", "options": {"A": "a", "B": "b", "C": "c"}, "answer_idx": "B"}
    base.update(kw)
    return base


def test_round_trip(tmp_path):
    items = [MCQItem(**_item(id=f"x-{i}")) for i in range(3)]
    path = write_jsonl(tmp_path / "a.jsonl", items)
    assert read_jsonl(path, MCQItem) == items
    assert not list(tmp_path.glob(".*.tmp")), "temporary files must not be left behind"


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ('{"id": "x-2", "question": "Q?"', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps(_item(answer_idx="E")), "answer_idx"),
        (json.dumps(_item(options={"A": "a", "C": "c"})), "option letters"),
        (json.dumps(_item(question="   ")), "question"),
        (json.dumps({**_item(), "extra": 1}), "extra"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, bad, fragment):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_item()) + "\n\n" + bad + "\n")
    with pytest.raises(DataError) as e:
        read_jsonl(path, MCQItem)
    assert f"{path}:3:" in str(e.value)
    assert fragment in str(e.value)


def test_missing_file_and_duplicate_ids(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")
    a = write_jsonl(tmp_path / "a.jsonl", [_item(id="dup")])
    b = write_jsonl(tmp_path / "b.jsonl", [_item(id="dup")])
    with pytest.raises(DataError, match="duplicate id 'dup'"):
        read_items([a, b])


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = atomic_write_text(tmp_path / "f.txt", "old")

    class Boom:
        def encode(self, _):
            raise RuntimeError("boom")

    with pytest.raises(Exception):
        atomic_write_text(path, Boom())  # type: ignore[arg-type]
    assert path.read_text() == "old"


def test_source_of_item():
    assert MCQItem(**_item(meta_info="mmlu:anatomy")).source == "mmlu"
    assert MCQItem(**_item(id="medqa-12")).source == "medqa"


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    import os

    from data.records import atomic_write_text, usual_mode

    path = atomic_write_text(tmp_path / "x.txt", "hello")
    assert path.stat().st_mode & 0o777 == usual_mode() and usual_mode() & 0o400
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert plain.stat().st_mode & 0o777 == path.stat().st_mode & 0o777
    assert os.access(path, os.R_OK)
