"""training.embedding.data: parallel and sentence files (errors name file:line), MCQ files, the stable
held-out split by id, and build_data's guarantees (no held-out question trained on, dev pairs' shape)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data.records import MCQItem
from training.embedding.data import (
    EncoderData,
    build_data,
    dev_pairs_of,
    in_domain_pairs,
    is_dev,
    read_mcq_files,
    read_pairs_tsv,
    read_sentences,
)
from training.embedding.errors import EmbeddingDataError

SHARED_OPTION = "None of the above"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def item(i: int, *, question: str | None = None, answer: str = "B") -> MCQItem:
    """A small 4-option item; every one carries the shared option 'None of the above' as D."""
    return MCQItem(
        id=f"item-{i}",
        question=question or f"Question number {i}?",
        options={"A": f"alpha {i}", "B": f"beta {i}", "C": f"gamma {i}", "D": SHARED_OPTION},
        answer_idx=answer,
    )


ITEMS = [item(i) for i in range(20)]
FRACTION = 0.3
DEV_IDS = {it.id for it in ITEMS if is_dev(it.id, FRACTION)}


def test_fixture_split_has_both_sides():
    """The tests below rely on the 20 items splitting into a few held out and the rest trained."""
    assert 2 <= len(DEV_IDS) <= 10
    assert DEV_IDS == {"item-3", "item-6", "item-8", "item-10", "item-14"}  # a salted sha256: stable


# ------------------------------------------------------------------------------ read_pairs_tsv


def test_read_pairs_tsv_good_file_strips_and_skips_blank_lines(tmp_path):
    """Two columns per line, whitespace and CRLF stripped; blank (or whitespace-only) lines are skipped."""
    p = write(tmp_path / "pairs.tsv", "a cat\tun chat\n\n  a dog \t un chien\r\n   \nbird\toiseau\n\n")
    assert read_pairs_tsv(p) == [("a cat", "un chat"), ("a dog", "un chien"), ("bird", "oiseau")]


@pytest.mark.parametrize("bad_line,ncols", [("only one column", 1), ("a\tb\tc", 3)])
def test_read_pairs_tsv_wrong_column_count_names_file_and_line(tmp_path, bad_line, ncols):
    """A line without exactly one tab fails, the message starting 'FILE:LINE:' at that line (blank lines counted)."""
    p = write(tmp_path / "pairs.tsv", f"x\ty\n\nz\tw\n{bad_line}\nq\tr\n")
    with pytest.raises(EmbeddingDataError) as e:
        read_pairs_tsv(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:4:"), msg
    assert f"got {ncols}" in msg


@pytest.mark.parametrize("bad_line,side", [("\tthe target", "source"), ("the source\t   ", "target"), ("  \tb", "source")])
def test_read_pairs_tsv_empty_side_names_file_and_line(tmp_path, bad_line, side):
    """An empty (or whitespace) source or target is an error at its line, saying which side."""
    p = write(tmp_path / "pairs.tsv", f"x\ty\n{bad_line}\n")
    with pytest.raises(EmbeddingDataError) as e:
        read_pairs_tsv(p)
    assert str(e.value).startswith(f"{p}:2:")
    assert f"empty {side}" in str(e.value)


def test_read_pairs_tsv_missing_file(tmp_path):
    """A wrong path says 'file not found' with the path."""
    p = tmp_path / "nope.tsv"
    with pytest.raises(EmbeddingDataError, match="file not found") as e:
        read_pairs_tsv(p)
    assert str(e.value).startswith(str(p))


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_read_pairs_tsv_no_pairs(tmp_path, text):
    """An empty (or all-blank) parallel file is an error, not an empty training set."""
    p = write(tmp_path / "pairs.tsv", text)
    with pytest.raises(EmbeddingDataError, match="no pairs"):
        read_pairs_tsv(p)


# ------------------------------------------------------------------------------ read_sentences


def test_read_sentences_strips_and_allows_trailing_blank_lines(tmp_path):
    """One sentence per line, stripped; blank lines at the end are fine."""
    p = write(tmp_path / "s.txt", " first \nsecond\r\nthird\n\n  \n")
    assert read_sentences(p) == ["first", "second", "third"]


@pytest.mark.parametrize("text,lineno", [("a\nb\n\nc\n", 3), ("\na\n", 1), ("a\n   \nb", 2)])
def test_read_sentences_empty_line_inside_is_an_error(tmp_path, text, lineno):
    """An empty line before the last sentence is a file:line error (it would shift any line-aligned labels)."""
    p = write(tmp_path / "s.txt", text)
    with pytest.raises(EmbeddingDataError) as e:
        read_sentences(p)
    assert str(e.value).startswith(f"{p}:{lineno}:")
    assert "empty sentence" in str(e.value)


def test_read_sentences_missing_or_empty_file(tmp_path):
    """A missing file and a file of only blank lines are both errors naming the file."""
    with pytest.raises(EmbeddingDataError, match="file not found"):
        read_sentences(tmp_path / "nope.txt")
    p = write(tmp_path / "blank.txt", "\n \n")
    with pytest.raises(EmbeddingDataError, match="no sentences") as e:
        read_sentences(p)
    assert str(e.value).startswith(str(p))


def test_read_sentences_splits_only_at_newlines(tmp_path):
    """A form feed (common in PDF-extracted text) inside a sentence should not make it two sentences."""
    p = write(tmp_path / "s.txt", "page one\x0cpage two\nnext\n")
    assert read_sentences(p) == ["page one\x0cpage two", "next"]


# ------------------------------------------------------------------------------ read_mcq_files


def test_read_mcq_files_good_and_bad_json_line(tmp_path):
    """Good lines read into MCQItems; a line that is not JSON raises EmbeddingDataError at file:line."""
    good = [item(0).model_dump(), item(1).model_dump()]
    p = write(tmp_path / "a.jsonl", "".join(json.dumps(r) + "\n" for r in good))
    assert [it.id for it in read_mcq_files([p])] == ["item-0", "item-1"]
    bad = write(tmp_path / "b.jsonl", json.dumps(good[0]) + "\n\n{not json\n")
    with pytest.raises(EmbeddingDataError) as e:
        read_mcq_files([bad])
    assert str(e.value).startswith(f"{bad}:3:")
    assert "not valid JSON" in str(e.value)


def test_read_mcq_files_schema_error_and_missing_file(tmp_path):
    """A record missing a field and a missing file both come back as EmbeddingDataError (not DataError only)."""
    row = item(0).model_dump()
    del row["answer_idx"]
    p = write(tmp_path / "a.jsonl", json.dumps(row) + "\n")
    with pytest.raises(EmbeddingDataError, match="answer_idx") as e:
        read_mcq_files([p])
    assert str(e.value).startswith(f"{p}:1:")
    with pytest.raises(EmbeddingDataError, match="file not found"):
        read_mcq_files([tmp_path / "missing.jsonl"])


# ------------------------------------------------------------------------------ is_dev


def test_is_dev_stable_and_about_the_right_fraction():
    """Membership depends on the id alone (same answer every call) and ~dev_fraction of ids are held out."""
    ids = [f"id-{i}" for i in range(2000)]
    first = [is_dev(i, 0.1) for i in ids]
    assert first == [is_dev(i, 0.1) for i in ids]
    assert 0.07 <= sum(first) / len(ids) <= 0.13
    assert 0.45 <= sum(is_dev(i, 0.5) for i in ids) / len(ids) <= 0.55


def test_is_dev_nested_in_the_fraction():
    """A larger fraction only adds ids to the held-out set (the hash is compared to a threshold)."""
    ids = [f"id-{i}" for i in range(500)]
    small = {i for i in ids if is_dev(i, 0.1)}
    large = {i for i in ids if is_dev(i, 0.3)}
    assert small < large
    assert not any(is_dev(i, 0.0) for i in ids) and all(is_dev(i, 1.0) for i in ids)


# ------------------------------------------------------------------------------ build_data


def split():
    dev = [it for it in ITEMS if it.id in DEV_IDS]
    train = [it for it in ITEMS if it.id not in DEV_IDS]
    return train, dev


def test_build_data_never_trains_on_a_held_out_question():
    """No held-out question is in train_sentences or in any train pair; every train question is."""
    train, dev = split()
    data = build_data(ITEMS, dev_fraction=FRACTION)
    held = {it.question for it in dev}
    assert not held & set(data.train_sentences)
    assert not any(a in held or b in held for a, b in data.train_pairs)
    assert {it.question for it in train} <= set(data.train_sentences)
    assert [it.id for it in data.dev_items] == [it.id for it in dev]
    # held-out items' own (unshared) options are not trained on either
    assert not {it.options["A"] for it in dev} & set(data.train_sentences)


def test_build_data_shared_option_stays_in_train_sentences():
    """'None of the above' appears in train and dev items alike: it is trained, once."""
    data = build_data(ITEMS, dev_fraction=FRACTION)
    assert data.train_sentences.count(SHARED_OPTION) == 1


def test_build_data_train_sentences_unique_in_first_seen_order():
    """Sentences are every train question and option, deduplicated, in the order first seen."""
    train, _ = split()
    data = build_data(ITEMS, dev_fraction=FRACTION)
    expected = list(dict.fromkeys(t for it in train for t in (it.question, *it.options.values())))
    assert data.train_sentences == expected


def test_build_data_dev_pairs_shape():
    """Each held-out question is paired with every option of its item, then once with another held-out question."""
    _, dev = split()
    data = build_data(ITEMS, dev_fraction=FRACTION)
    option_pairs = [(it.question, t) for it in dev for t in it.options.values()]
    assert data.dev_pairs[: len(option_pairs)] == option_pairs
    qq = data.dev_pairs[len(option_pairs):]
    assert len(qq) == len(dev)
    questions = [it.question for it in dev]
    assert [a for a, _ in qq] == questions  # one per held-out item, in order
    assert all(b in questions and b != a for a, b in qq)  # another held-out question, never itself
    assert all(a != b for a, b in data.dev_pairs)
    assert len(data.dev_pairs) == sum(len(it.options) for it in dev) + len(dev)


def test_dev_pairs_seeded():
    """The question-question partner is drawn from a seeded RNG: same seed, same pairs."""
    _, dev = split()
    assert dev_pairs_of(dev, seed=3) == dev_pairs_of(dev, seed=3)
    assert dev_pairs_of(dev[:1]) == [(dev[0].question, t) for t in dev[0].options.values()]  # alone: no partner


def test_dev_pairs_never_pair_identical_question_texts():
    """Real pools repeat a question under two ids; the question-question dev pair should still be two texts."""
    dup = [item(100, question="Same text?"), item(101, question="Same text?")]
    pairs = dev_pairs_of(dup)  # with two items each one's partner is the other
    assert all(a != b for a, b in pairs[-2:])


def test_build_data_in_domain_pairs_are_question_to_key():
    """pairs=None: one (question, key option) pair per train item, and the source says in-domain."""
    items = [item(i, answer="ABCD"[i % 4]) for i in range(20)]
    data = build_data(items, dev_fraction=FRACTION)
    assert data.pairs_source == "in-domain"
    expected = [(it.question, it.options[it.answer_idx]) for it in items if it.id not in DEV_IDS]
    assert data.train_pairs == expected
    assert data.train_pairs == in_domain_pairs([it for it in items if it.id not in DEV_IDS])
    assert ("Question number 7?", SHARED_OPTION) in data.train_pairs  # item 7's key is D


def test_build_data_uses_parallel_pairs_and_drops_held_out_questions():
    """A parallel list replaces in-domain pairs, its texts join the sentences, and a pair naming a held-out question is dropped."""
    _, dev = split()
    held_q = dev[0].question
    parallel = [("hello", "bonjour"), (held_q, "leak"), ("thanks", "merci"), ("x", held_q)]
    data = build_data(ITEMS, pairs=parallel, dev_fraction=FRACTION, extra_sentences=["an extra one", held_q])
    assert data.pairs_source == "parallel file"
    assert data.train_pairs == [("hello", "bonjour"), ("thanks", "merci")]
    for s in ("hello", "bonjour", "thanks", "merci", "an extra one"):
        assert s in data.train_sentences
    assert held_q not in data.train_sentences and "leak" not in data.train_sentences
    assert data.summary() == {
        "train sentences": len(data.train_sentences),
        "train pairs": 2,
        "pairs from": "parallel file",
        "dev pairs": len(data.dev_pairs),
        "dev items": len(dev),
    }


def test_build_data_question_also_in_train_is_not_held_out():
    """A held-out item whose question text a train item also has: that text is trained (it is not held out)."""
    _, dev = split()
    assert not is_dev("item-6-copy-x", FRACTION)  # the copy is a train item
    items = [*ITEMS, MCQItem(id="item-6-copy-x", question=dev[0].question, options={"A": "p", "B": "q"}, answer_idx="A")]
    data = build_data(items, dev_fraction=FRACTION)
    assert dev[0].question in data.train_sentences
    assert (dev[0].question, "p") in data.train_pairs


@pytest.mark.parametrize("items", [[], [item(0)], [item(6)], [item(0), item(1)]])
def test_build_data_too_few_items(items):
    """No train or no held-out items (0, 1 or 2 items at 0.3) is an error saying how the items split."""
    with pytest.raises(EmbeddingDataError, match=f"{len(items)} items give"):
        build_data(items, dev_fraction=FRACTION)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_build_data_bad_dev_fraction(fraction):
    """dev_fraction must lie strictly between 0 and 1."""
    with pytest.raises(EmbeddingDataError, match="--dev-fraction must be in"):
        build_data(ITEMS, dev_fraction=fraction)


def test_encoder_data_defaults():
    """EncoderData defaults: no dev items, in-domain source."""
    d = EncoderData(["a"], [("a", "b")], [])
    assert d.dev_items == [] and d.pairs_source == "in-domain"
    assert d.summary()["train pairs"] == 1
