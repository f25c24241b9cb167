"""Teacher diagnoses: one batched call, strict parsing of malformed replies, storage in the tree."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import pytest

from data.records import MCQItem
from engines.base import Completion, Prompt, SamplingParams
from tree import AbilityTree
from tests.testing_utils import read_fixture_expected, read_fixture_records
from tree.diagnose import DiagnoseConfig, diagnose, diagnosis_prompt, parse_diagnoses, parse_subtopic


class ScriptedTeacher:
    """Returns fixed replies (the teacher's text is the input under test) and records each call."""

    name = "scripted"

    def __init__(self, replies: Sequence[object]) -> None:
        self.replies = list(replies)
        self.calls: list[list[Prompt]] = []

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Completion]:
        self.calls.append(list(prompts))
        return [Completion(text=r, finish_reason="stop", num_tokens=0) for r in self.replies[: len(prompts)]]  # type: ignore[arg-type]


def mcq(i: int) -> MCQItem:
    return MCQItem(id=f"q-{i}", question=f"Which drug treats condition {i}?", options={"A": "aspirin", "B": "heparin", "C": "warfarin"},
                   answer_idx="B", meta_info="medqa:x")


GOOD = "- Confuses heparin's mechanism with that of warfarin.\n- Misses contraindications of aspirin in asthma."


@pytest.mark.parametrize(
    "text, expected",
    [
        (GOOD, ["Confuses heparin's mechanism with that of warfarin.", "Misses contraindications of aspirin in asthma."]),
        ("Here are the diagnoses:\n1. **Confuses** heparin with warfarin dosing.\n2) Diagnosis: ignores renal clearance of drugs.",
         ["Confuses heparin with warfarin dosing.", "ignores renal clearance of drugs."]),
        ("The student confuses anticoagulant mechanisms.", ["The student confuses anticoagulant mechanisms."]),
        ("", []),
        ("   \n\n  ", []),
        (None, []),
        (12345, []),
        ({"diagnosis": "x"}, []),
        ("- ok", []),  # too short to say anything
        ("- " + "the student rambles on about everything " * 20, []),  # too long
        ("Well, " + "this is a long paragraph that goes on. " * 3 + "\nIt has many lines.\nAnd more lines.\nAnd more.", []),
        ("- %%%% 1234 #### ---- 5678 ;;;;", []),
        ("- the the the the the the the the", []),
        ("- a\x00b c d e", []),
        ("- Same point made twice here.\n- same point made TWICE here.\n- Third distinct point stated here.\n- Fourth one is over the limit.",
         ["Same point made twice here.", "Third distinct point stated here.", "Fourth one is over the limit."]),
    ],
)
def test_parse_table(text, expected):
    assert parse_diagnoses(text) == expected


def test_limits_come_from_config():
    cfg = DiagnoseConfig(max_diagnoses=1, max_words=5)
    assert parse_diagnoses("- short but valid point\n- another short valid point", cfg) == ["short but valid point"]
    assert parse_diagnoses("- this sentence has more than five words", cfg) == []
    with pytest.raises(ValueError):
        DiagnoseConfig(max_diagnoses=0)


def test_one_batched_call_and_storage():
    t = AbilityTree("clinical medicine")
    a, b, c = (t.add_ability(f"clinical medicine/{n}") for n in ("hematology", "pharmacology", "cardiology"))
    t.set_diagnoses(b, ["An earlier diagnosis that must survive."])
    teacher = ScriptedTeacher([GOOD, "I cannot help with that request because reasons and more reasons " * 5])
    wrong = {a: [(mcq(i), "A") for i in range(5)], b: [(mcq(9), None)], c: []}
    out = diagnose(teacher, t, wrong, max_per_node=2)
    assert len(teacher.calls) == 1 and len(teacher.calls[0]) == 2  # c had no misses: not asked
    first = teacher.calls[0][0][0]["content"]
    assert "Which drug treats condition 1?" in first and "condition 2?" not in first  # max_per_node
    assert "Student's answer: A" in first and "Correct answer: B" in first and "hematology" in first
    assert "Student's answer: no answer" in teacher.calls[0][1][0]["content"]
    assert out == {a: parse_diagnoses(GOOD), b: []}
    assert t.info(a)["diagnoses"] == parse_diagnoses(GOOD)
    assert t.info(b)["diagnoses"] == ["An earlier diagnosis that must survive."]


def test_no_misses_no_call():
    teacher = ScriptedTeacher([])
    assert diagnose(teacher, AbilityTree("r"), {}) == {}
    assert teacher.calls == []


def test_real_tiny_teacher_never_crashes(tiny_model_path):
    from tests.test_eval_local_engine import LocalHFEngine

    t = AbilityTree("clinical medicine")
    node = t.add_ability("clinical medicine/pharmacology")
    out = diagnose(LocalHFEngine(tiny_model_path), t, {node: [(mcq(1), "A")]}, config=DiagnoseConfig(max_new_tokens=12))
    assert set(out) == {node}
    assert all(isinstance(d, str) and 0 < len(d) <= 240 for d in out[node])


def test_long_stems_are_clipped_in_the_prompt():
    tree = AbilityTree(root="clinical medicine")
    node = tree.add_ability("clinical medicine/cardiology")
    stem = "A 54-year-old man presents with chest pain. " * 40  # ~1,800 characters, like a PubMedQA context
    item = MCQItem(id="x-1", question=stem, options={"A": "aspirin", "B": "heparin"}, answer_idx="A")
    prompt = diagnosis_prompt(tree, node, [(item, "B")], DiagnoseConfig(max_question_chars=200))
    assert stem not in prompt and stem[:150] in prompt and "…" in prompt
    assert len(prompt) < len(stem)


def _cardiology_tree() -> tuple[AbilityTree, dict[str, str]]:
    t = AbilityTree("clinical medicine")
    nodes = {n: t.add_ability(f"clinical medicine/{n}") for n in ("cardiology", "nephrology", "dermatology", "oncology")}
    t.add_ability("clinical medicine/cardiology/heart failure")
    return t, nodes


def test_diagnoses_grow_bounded_deduplicated_children():
    t, n = _cardiology_tree()
    replies = [
        GOOD + "\nSub-topic: Arrhythmias",  # cardiology, 3 misses: added, described by its first diagnosis
        GOOD + "\nSub-topic: acute kidney injury",  # nephrology, 2 misses: added
        GOOD + "\nSub-topic: Dermatology",  # repeats the node itself: refused
        GOOD + "\nSub-topic: tumour lysis",  # oncology, 1 miss: not asked, so a stray line is ignored
    ]
    wrong = {n["cardiology"]: [(mcq(i), "A") for i in range(3)], n["nephrology"]: [(mcq(5), "A"), (mcq(6), "C")],
             n["dermatology"]: [(mcq(7), "A"), (mcq(8), "A")], n["oncology"]: [(mcq(9), "A")]}
    teacher = ScriptedTeacher(replies)
    out = diagnose(teacher, t, wrong, config=DiagnoseConfig(max_new_children=4))
    asked = ["Sub-topic:" in p[0]["content"] for p in teacher.calls[0]]
    assert asked == [True, True, True, False]
    assert out[n["cardiology"]] == parse_diagnoses(GOOD), "the sub-topic line is not a diagnosis"
    assert t.children(n["cardiology"]) == ["clinical medicine/cardiology/heart failure", "clinical medicine/cardiology/Arrhythmias"]
    assert t.info("clinical medicine/cardiology/Arrhythmias")["description"] == parse_diagnoses(GOOD)[0]
    assert t.children(n["nephrology"]) == ["clinical medicine/nephrology/acute kidney injury"]
    assert t.children(n["dermatology"]) == [] and t.children(n["oncology"]) == []


def test_child_growth_limits():
    t, n = _cardiology_tree()
    wrong = {n["cardiology"]: [(mcq(i), "A") for i in range(3)], n["nephrology"]: [(mcq(5), "A"), (mcq(6), "C")]}
    replies = [GOOD + "\nSub-topic: heart failures", GOOD + "\nSub-topic: renal/stones"]
    diagnose(ScriptedTeacher(replies), t, wrong, config=DiagnoseConfig(max_new_children=1))
    assert len(t) == 6, "a near duplicate and a name with the path separator are both refused"
    replies = [GOOD + "\nSub-topic: heart failures", GOOD + "\nSub-topic: renal stones"]
    diagnose(ScriptedTeacher(replies), t, wrong, config=DiagnoseConfig(max_new_children=1))
    # cardiology (most misses) goes first but its name near-duplicates "heart failure"; nephrology takes the one slot
    assert len(t.children(n["cardiology"])) == 1 and t.children(n["nephrology"]) == ["clinical medicine/nephrology/renal stones"]
    t2, n2 = _cardiology_tree()
    teacher = ScriptedTeacher([GOOD + "\nSub-topic: arrhythmias"] * 2)
    diagnose(teacher, t2, wrong, config=DiagnoseConfig(max_new_children=0))
    assert not any("Sub-topic" in p[0]["content"] for p in teacher.calls[0]) and len(t2) == 6
    with pytest.raises(ValueError, match="max_new_children"):
        DiagnoseConfig(max_new_children=-1)


@pytest.mark.parametrize("text, name", [
    ("- a\nSub-topic: Atrial fibrillation", "Atrial fibrillation"),
    ("- a\n**Sub-topic:** \"valve disease\".", "valve disease"),
    ("- a\nSubtopic: x\nsub topic: Heart block", "Heart block"),
    ("- a\n4) Sub-topic: \"clinical medicine/college medicine\"", None),  # numbered like a diagnosis: not the line asked for
    ("- a\nSub-topic: cardiology/valves", "cardiology/valves"),  # parsed; refused as a name (test below)
    ("- a\nThe sub-topic is valves", None),
    ("Sub-topic:", None),
    (None, None),
])
def test_parse_subtopic(text, name):
    assert parse_subtopic(text) == name


def test_real_smollm2_diagnosis_replies():
    """Real SmolLM2-135M replies to the diagnosis prompt with the sub-topic question (fixtures): none gives
    a usable "Sub-topic:" line, one buries it mid-line; the strict parsers find no sub-topic."""
    expected = read_fixture_expected("tree_expected.json")
    records = read_fixture_records("diagnose_outputs.jsonl")
    assert len(records) == 6
    for r in records:
        assert parse_diagnoses(r["completion"]) == expected[r["id"]]["diagnoses"], r["id"]
        assert parse_subtopic(r["completion"]) == expected[r["id"]]["subtopic"] is None, r["id"]


# Lines a default `make run` showed as diagnoses before echoes were refused (issue 19, tree.html and the
# generation prompt of a real SmolLM2 run): an option copied back with its letter, and the prompt's
# own frame around a quoted option.
REAL_ECHOES = [
    ("- A. Tetralogy of Fallot", "option"),
    ("- C. Congenital cataracts", "option"),
    ("- A. An accumulation of inorganic phosphate.", "option"),
    ('- The student gets wrong in this area: "The auditory tube" is incorrect.', "prompt"),
]


@pytest.mark.parametrize("line, reason", REAL_ECHOES)
def test_real_echoes_are_not_diagnoses(line, reason):
    rejected = Counter()
    assert parse_diagnoses(line, rejected=rejected) == []
    assert rejected == {reason: 1}


def test_echoes_of_the_items_shown_are_counted_by_reason():
    item = MCQItem(id="q-1", question="Which anticoagulant is reversed by protamine sulfate in an emergency?",
                   options={"A": "Aspirin", "B": "Unfractionated heparin", "C": "Warfarin"}, answer_idx="B")
    reply = "\n".join([
        "- Unfractionated heparin.",                               # an option's text alone
        '- "Warfarin" is the wrong pick here.',                    # a quoted option in a few words
        "- Which anticoagulant is reversed by protamine sulfate",  # the question
        "- Each names one specific fact the student misunderstands.",  # the prompt's instructions
        "- Confuses the reversal agents of heparin and warfarin.",  # a diagnosis
        "- ok",                                                   # too short
    ])
    rejected = Counter()
    config = DiagnoseConfig(max_diagnoses=6)
    assert parse_diagnoses(reply, config, missed=[(item, "A")], rejected=rejected) == ["Confuses the reversal agents of heparin and warfarin."]
    assert rejected == {"option": 2, "question": 1, "prompt": 1, "shape": 1}
    # Without the items only the answer-shaped and prompt echoes can be seen; the rest reads as text.
    assert "Which anticoagulant is reversed by protamine sulfate" in parse_diagnoses(reply, config)


def test_diagnose_counts_what_it_drops(tmp_path):
    t = AbilityTree("clinical medicine")
    node = t.add_ability("clinical medicine/pharmacology")
    teacher = ScriptedTeacher(["- A. aspirin\n- Confuses heparin's mechanism with that of warfarin."])
    rejected = Counter()
    out = diagnose(teacher, t, {node: [(mcq(1), "A")]}, rejected=rejected)
    assert out == {node: ["Confuses heparin's mechanism with that of warfarin."]} and rejected == {"option": 1}
    teacher = ScriptedTeacher(['- "heparin" is incorrect.'])
    assert diagnose(teacher, t, {node: [(mcq(1), "A")]}, rejected=rejected) == {node: []}
    assert t.info(node)["diagnoses"] == ["Confuses heparin's mechanism with that of warfarin."], "an echo never replaces a diagnosis"
