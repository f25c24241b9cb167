"""training.kv.align: token alignment on content characters (with the real SmolLM2 and MiniLM fast
tokenizers), layer maps and rotary positions (checked against a tiny random Llama's own cache).

Token alignment is checked by properties that must hold for every text (English, CJK, emoji with
modifiers and flags, accents, whitespace runs, newlines, digits), in both directions and against a
naive reference of ``overlap_matrix``; the hand-made strings pin down ``render_segments`` and
``content_spans``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from training.kv.align import (
    alignment_matrix,
    apply_rotary,
    content_marker,
    content_spans,
    derotate,
    layer_map,
    ntk_scaled_base,
    overlap_matrix,
    render_segments,
    rope_inv_freq,
    rotary_cos_sin,
    row_normalize,
    teacher_layers_used,
)

# ------------------------------------------------------------------------------------------ helpers

TEXTS = {
    "english": "Which drug lowers blood pressure? Pick one: A, B, C or D.",
    "cjk": "日本語のテキスト 中文",
    "emoji": "ok 😀👍🏽 🇯🇵🇫🇷 done",
    "accents": "naïve café, Ñandú",
    "whitespace": "a   b\t\tc  \t d",
    "newlines": "line one\nline two\n\nline four",
    "digits": "12345678",
}
ANSWER = "The answer is B."
SMOL_SPECIALS = ("<|im_start|>", "<|im_end|>")


def conversation(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}, {"role": "assistant", "content": ANSWER}]


def contents_of(conv: list[dict[str, str]]) -> str:
    return "".join(m["content"] for m in conv)


def ref_overlap(student, teacher) -> np.ndarray:
    """Naive overlap matrix: shared characters; without any, 1 on the nearest teacher token by character
    gap, a preceding token before a following one at the same gap, then the lower index."""
    out = np.zeros((len(student), len(teacher)))
    for i, s in enumerate(student):
        if s is None:
            continue
        hit = False
        for j, t in enumerate(teacher):
            if t is not None:
                shared = min(s[1], t[1]) - max(s[0], t[0])
                if shared > 0:
                    out[i, j] = shared
                    hit = True
        if hit:
            continue
        candidates = []
        for j, t in enumerate(teacher):
            if t is None:
                continue
            if t[1] <= s[0]:
                candidates.append((s[0] - t[1], 0, j))  # preceding
            else:
                candidates.append((t[0] - s[1], 1, j))  # following
        if candidates:
            out[i, min(candidates)[2]] = 1.0
    return out


def check_view(view, tokenizer, conv, *, chat: bool) -> None:
    """Spans are non-empty, inside the contents, and name the characters the token really covers."""
    content = contents_of(conv)
    enc = tokenizer(view.text, add_special_tokens=not chat, return_offsets_mapping=True)
    assert list(enc["input_ids"]) == view.input_ids
    assert len(view.spans) == len(view.input_ids)
    for (start, end), span in zip(enc["offset_mapping"], view.spans):
        if span is None:
            continue
        lo, hi = span
        assert 0 <= lo < hi <= len(content)
        # The content characters of a token are a substring of what it covers in the rendered text.
        assert content[lo:hi] in view.text[start:end]


def check_alignment(a: torch.Tensor, student_spans, teacher_spans) -> None:
    """Rows with a span sum to 1; rows without one are 0; the matrix matches the naive reference."""
    assert a.shape == (len(student_spans), len(teacher_spans))
    sums = a.sum(-1)
    for i, span in enumerate(student_spans):
        if span is None:
            assert torch.count_nonzero(a[i]) == 0, f"token {i} without span got mass"
        else:
            assert sums[i].item() == pytest.approx(1.0, abs=1e-6), f"token {i} {span} has mass {sums[i].item()}"
    assert (a >= 0).all()
    # No mass on teacher tokens without content (their special tokens, template text).
    for j, span in enumerate(teacher_spans):
        if span is None:
            assert torch.count_nonzero(a[:, j]) == 0
    ref = ref_overlap(student_spans, teacher_spans)
    np.testing.assert_allclose(overlap_matrix(student_spans, teacher_spans), ref, rtol=0, atol=0)
    ref_a = np.where(ref.sum(-1, keepdims=True) > 0, ref / np.maximum(ref.sum(-1, keepdims=True), 1e-12), 0.0)
    np.testing.assert_allclose(a.numpy(), ref_a, rtol=1e-6, atol=1e-7)


def covered(spans, length: int) -> np.ndarray:
    mask = np.zeros(length, dtype=bool)
    for span in spans:
        if span is not None:
            mask[span[0] : span[1]] = True
    return mask


# --------------------------------------------------------------------------------- real tokenizers


@pytest.fixture(scope="module")
def smol(smollm2_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    assert tok.is_fast and tok.chat_template
    return tok


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoTokenizer

    from engines import parse_spec

    tok = AutoTokenizer.from_pretrained(parse_spec("minilm").local_path())
    assert tok.is_fast
    return tok


@pytest.fixture(scope="module")
def views(smol, minilm):
    from training.kv.teachers import token_view

    out = {}
    for name, text in TEXTS.items():
        conv = conversation(text)
        out[name] = (conv, token_view(smol, conv, chat=True), token_view(minilm, conv, chat=False))
    return out


@pytest.mark.parametrize("name", list(TEXTS))
def test_views_spans_inside_contents(name, views, smol, minilm):
    conv, s, m = views[name]
    check_view(s, smol, conv, chat=True)
    check_view(m, minilm, conv, chat=False)
    content = contents_of(conv)
    # Byte-level BPE covers every content character; WordPiece every non-space character.
    assert covered(s.spans, len(content)).all()
    cov = covered(m.spans, len(content))
    assert all(cov[i] for i, ch in enumerate(content) if not ch.isspace())


@pytest.mark.parametrize("name", list(TEXTS))
def test_special_and_template_tokens_have_no_span(name, views, smol, minilm):
    _, s, m = views[name]
    smol_tokens = smol.convert_ids_to_tokens(s.input_ids)
    for tok, span in zip(smol_tokens, s.spans):
        if tok in SMOL_SPECIALS:
            assert span is None
    # The chat template's own words (system prompt, role names) carry no content either.
    assert sum(span is None for span in s.spans) > len(SMOL_SPECIALS) * 3
    assert s.spans[0] is None and smol_tokens[0] == "<|im_start|>"
    mini_tokens = minilm.convert_ids_to_tokens(m.input_ids)
    assert mini_tokens[0] == "[CLS]" and mini_tokens[-1] == "[SEP]"
    assert m.spans[0] is None and m.spans[-1] is None
    assert all(span is not None for span in m.spans[1:-1])


@pytest.mark.parametrize("name", list(TEXTS))
def test_minilm_text_has_no_smollm2_specials(name, views):
    conv, s, m = views[name]
    assert all(tok in s.text for tok in SMOL_SPECIALS)
    assert not any(tok in m.text for tok in SMOL_SPECIALS)
    assert m.text == "\n".join(msg["content"] for msg in conv)


@pytest.mark.parametrize("name", list(TEXTS))
def test_alignment_smollm2_student_minilm_teacher(name, views):
    _, s, m = views[name]
    check_alignment(alignment_matrix(s.spans, m.spans), s.spans, m.spans)


@pytest.mark.parametrize("name", list(TEXTS))
def test_alignment_minilm_student_smollm2_teacher(name, views):
    _, s, m = views[name]
    check_alignment(alignment_matrix(m.spans, s.spans), m.spans, s.spans)


@pytest.mark.parametrize("name", list(TEXTS))
def test_alignment_row_normalize_of_overlap(name, views):
    _, s, m = views[name]
    overlap = overlap_matrix(s.spans, m.spans)
    assert overlap.dtype == np.float32
    torch.testing.assert_close(row_normalize(torch.from_numpy(overlap)), alignment_matrix(s.spans, m.spans), rtol=0, atol=0)


def test_bos_asymmetry(views, smol, minilm):
    """SmolLM2's chat starts with template tokens, MiniLM with [CLS]: neither side's extras get or give mass."""
    _, s, m = views["english"]
    a = alignment_matrix(s.spans, m.spans)
    assert torch.count_nonzero(a[:, 0]) == 0 and torch.count_nonzero(a[:, -1]) == 0  # [CLS], [SEP]
    b = alignment_matrix(m.spans, s.spans)
    assert torch.count_nonzero(b[0]) == 0 and torch.count_nonzero(b[-1]) == 0
    first_content = next(i for i, span in enumerate(s.spans) if span is not None)
    assert first_content > 0
    assert torch.count_nonzero(b[:, :first_content]) == 0
    # The first content tokens meet: "Which" in both.
    assert b[1, first_content].item() == pytest.approx(1.0)
    assert a[first_content, 1].item() == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["cjk", "emoji", "accents"])
def test_byte_level_pieces_of_one_character_all_get_mass(name, views, smol):
    """SmolLM2 splits a multi-byte character into byte tokens that share (part of) its span."""
    _, s, m = views[name]
    spanned = [i for i, span in enumerate(s.spans) if span is not None]
    pieces = sorted(
        {
            i
            for i in spanned
            for j in spanned
            if i != j and min(s.spans[i][1], s.spans[j][1]) > max(s.spans[i][0], s.spans[j][0])
        }
    )
    assert pieces, "the text should make SmolLM2 split a character over several byte-level tokens"
    # The pieces decode to nothing printable on their own: they are matched by span, not by string.
    assert any("\ufffd" in smol.decode([s.input_ids[i]]) for i in pieces)
    for student, teacher in ((s.spans, m.spans), (s.spans, s.spans)):
        a = alignment_matrix(student, teacher)
        torch.testing.assert_close(a[pieces].sum(-1), torch.ones(len(pieces)), rtol=0, atol=1e-6)
    a = alignment_matrix(s.spans, m.spans)
    groups: dict[tuple[int, int], list[int]] = {}
    for i in spanned:
        groups.setdefault(s.spans[i], []).append(i)
    same = [idx for idx in groups.values() if len(idx) > 1]
    if name != "accents":  # CJK and emoji characters: 2-4 tokens with exactly the same one-character span
        assert same and all(s.spans[idx[0]][1] - s.spans[idx[0]][0] == 1 for idx in same)
    for idx in same:  # every piece of a character is aligned the same way
        for i in idx[1:]:
            torch.testing.assert_close(a[i], a[idx[0]], rtol=0, atol=0)
    # The other direction: the teacher's character is matched to all of its pieces.
    b = alignment_matrix(m.spans, s.spans)
    for idx in same:
        rows = [r for r, span in enumerate(m.spans) if span is not None and span[0] <= s.spans[idx[0]][0] < span[1]]
        assert rows and bool((b[rows[0], idx] > 0).all())


def test_whitespace_runs_fall_back_to_nearest_teacher_token(views, smol):
    """MiniLM drops spaces and tabs; SmolLM2's whitespace tokens take the nearest MiniLM token."""
    conv, s, m = views["whitespace"]
    content = contents_of(conv)
    a = alignment_matrix(s.spans, m.spans)
    overlap = overlap_matrix(s.spans, m.spans)
    n_fallback = 0
    for i, span in enumerate(s.spans):
        if span is None or content[span[0] : span[1]].strip():
            continue
        row = overlap[i]
        if row.max() == 1.0 and np.count_nonzero(row) == 1:
            j = int(row.argmax())
            t = m.spans[j]
            gap = span[0] - t[1] if t[1] <= span[0] else t[0] - span[1]
            others = [
                (span[0] - u[1]) if u[1] <= span[0] else (u[0] - span[1]) for u in m.spans if u is not None
            ]
            assert gap == min(others)
            n_fallback += 1
        assert a[i].sum().item() == pytest.approx(1.0, abs=1e-6)
    assert n_fallback >= 3


@pytest.mark.parametrize("name", list(TEXTS))
def test_smollm2_against_itself(name, views):
    """Same tokenizer on both sides: an identity on content tokens, up to the pieces sharing a character."""
    _, s, _ = views[name]
    a = alignment_matrix(s.spans, s.spans)
    check_alignment(a, s.spans, s.spans)
    idx = [i for i, span in enumerate(s.spans) if span is not None]
    for i in idx:
        assert a[i, i].item() == pytest.approx(a[i].max().item(), abs=0)  # the diagonal is never beaten
        for j in torch.nonzero(a[i]).flatten().tolist():
            si, sj = s.spans[i], s.spans[j]
            assert min(si[1], sj[1]) > max(si[0], sj[0])  # mass only where the spans overlap
    distinct = all(s.spans[i][1] <= s.spans[j][0] for i, j in itertools.pairwise(idx))
    if distinct:  # no character split over tokens: exactly the identity on the content tokens
        torch.testing.assert_close(a[idx][:, idx], torch.eye(len(idx)), rtol=0, atol=0)
    assert name != "english" or distinct


# ----------------------------------------------------------------------------- hand-made renderings


def _segments(template, contents):
    """``render_segments`` of a hand-made template (a function of the contents), as token_view calls it."""
    text = template(contents)
    return text, render_segments(text, contents, template([content_marker(k) for k in range(len(contents))]))


def test_render_segments_positions():
    text, segs = _segments(lambda c: f"<s>user: {c[0]}</s><s>bot: {c[1]}</s>", ["Hi there", "Yo"])
    assert segs == [(text.index("Hi there"), 0, 8), (text.index("Yo"), 8, 2)]
    for start, offset, length in segs:
        assert text[start : start + length] == "Hi thereYo"[offset : offset + length]


def test_render_segments_skips_empty_contents():
    _, segs = _segments(lambda c: f"[sys]{c[0]}[u]{c[1]}[a]{c[2]}{c[3]}", ["", "Hello", "", "World"])
    assert segs == [(8, 0, 5), (16, 5, 5)]
    assert render_segments("anything", [], "anything") == []


def test_render_segments_finds_short_contents_in_their_own_turn():
    # "a" also occurs in the template ("<|im_start|>assistant"); the markers say where the content is.
    text, segs = _segments(lambda c: f"<|im_start|>user\n{c[0]}<|im_end|><|im_start|>assistant\n{c[1]}", ["a", "s"])
    assert [text[p : p + n] for p, _, n in segs] == ["a", "s"]
    assert segs[0][0] == text.index("user\n") + 5 and segs[1][0] == len(text) - 1


def test_render_segments_rejects_rewritten_content():
    with pytest.raises(ValueError, match="verbatim"):
        _segments(lambda c: f"<u>{c[0]}</u><a>{c[1].upper()}</a>", ["hello", "the answer"])
    with pytest.raises(ValueError, match="verbatim"):
        _segments(lambda c: f"<u>{c[0].strip()}</u>", [" hello "])
    with pytest.raises(ValueError, match="in order"):
        _segments(lambda c: f"{c[1]} {c[0]}", ["alpha", "beta"])
    with pytest.raises(ValueError, match="in order"):
        _segments(lambda c: f"{c[0]}", ["alpha", "beta"])


def test_content_spans_basic():
    text, segs = _segments(lambda c: f"<u>{c[0]}</u><a>{c[1]}</a>", ["Hello world", "Yes"])
    offsets = [(0, 0), (0, 3), (3, 8), (8, 14), (14, 18), (18, 21), (21, 24), (24, 28)]
    assert content_spans(offsets, segs) == [None, None, (0, 5), (5, 11), None, None, (11, 14), None]


def test_content_spans_clips_template_characters():
    text, segs = _segments(lambda c: f"<u>{c[0]}</u>", ["Hello"])
    # A token "u>He" starts in the template: only its content characters count.
    assert content_spans([(1, 5), (5, 10)], segs) == [(0, 2), (2, 5)]


def test_content_spans_token_straddling_a_segment_boundary():
    text, segs = _segments(lambda c: f"{c[0]}|{c[1]}", ["abc", "def"])  # the template puts "|" between them
    assert segs == [(0, 0, 3), (4, 3, 3)]
    # "c|d" straddles the boundary: the hull of its content parts [2, 3) and [3, 4).
    assert content_spans([(0, 2), (2, 5), (5, 7)], segs) == [(0, 2), (2, 4), (4, 6)]
    # "bc|de" too, with a gap of template between its parts.
    _, segs2 = _segments(lambda c: f"{c[0]}<sep>{c[1]}", ["abc", "def"])
    assert content_spans([(1, 10)], segs2) == [(1, 5)]
    assert content_spans([(3, 8)], segs2) == [None]  # only "<sep>"


def test_content_spans_empty_and_zero_offsets():
    _, segs = _segments(lambda c: c[0], ["xyz"])
    assert content_spans([(0, 0), (2, 2), (3, 3), (1, 3)], segs) == [None, None, None, (1, 3)]
    assert content_spans([(0, 3)], []) == [None]


# ----------------------------------------------------------------------------------- overlap_matrix


def test_overlap_counts_shared_characters():
    out = overlap_matrix([(0, 5), None, (5, 9)], [(0, 2), (2, 4), (4, 8), None, (8, 9)])
    expected = np.array([[2, 2, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 3, 0, 1]], dtype=np.float32)
    np.testing.assert_array_equal(out, expected)
    a = alignment_matrix([(0, 5), None, (5, 9)], [(0, 2), (2, 4), (4, 8), None, (8, 9)])
    torch.testing.assert_close(a[0], torch.tensor([0.4, 0.4, 0.2, 0.0, 0.0]), rtol=0, atol=1e-7)
    torch.testing.assert_close(a[2], torch.tensor([0.0, 0.0, 0.75, 0.0, 0.25]), rtol=0, atol=1e-7)
    assert torch.count_nonzero(a[1]) == 0


def test_overlap_fallback_nearest_teacher_token():
    # Gap 1 before vs gap 2 after: the preceding token.
    np.testing.assert_array_equal(overlap_matrix([(5, 6)], [(0, 4), (8, 9)]), [[1, 0]])
    # Gap 2 before vs gap 1 after: the following token.
    np.testing.assert_array_equal(overlap_matrix([(5, 6)], [(0, 3), (7, 9)]), [[0, 1]])
    # Touching spans share nothing: gap 0 before beats gap 0 after (tie -> preceding).
    np.testing.assert_array_equal(overlap_matrix([(4, 6)], [(0, 4), (6, 9)]), [[1, 0]])
    # No preceding token at all.
    np.testing.assert_array_equal(overlap_matrix([(0, 1)], [(3, 5), (6, 7)]), [[1, 0]])
    # No following token at all: the nearest preceding one.
    np.testing.assert_array_equal(overlap_matrix([(9, 10)], [(0, 2), (3, 5)]), [[0, 1]])


def test_overlap_fallback_tie_goes_to_preceding():
    np.testing.assert_array_equal(overlap_matrix([(5, 6)], [(0, 4), (7, 9)]), [[1, 0]])
    # With template tokens (None) between: the column is the teacher's own index.
    np.testing.assert_array_equal(overlap_matrix([(5, 6)], [None, (0, 4), None, (7, 9), None]), [[0, 1, 0, 0, 0]])
    # Several teacher pieces with the same span: the first of them.
    np.testing.assert_array_equal(overlap_matrix([(5, 6)], [(3, 4), (3, 4), (7, 8)]), [[1, 0, 0]])


def test_overlap_without_teacher_spans_is_zero():
    out = overlap_matrix([(0, 3), None], [None, None])
    assert out.shape == (2, 2) and not out.any()
    assert overlap_matrix([], [(0, 1)]).shape == (0, 1)
    assert overlap_matrix([(0, 1)], []).shape == (1, 0)


def test_overlap_matches_reference_on_random_spans():
    rng = np.random.default_rng(0)
    for _ in range(50):
        def spans(n):
            cuts = np.sort(rng.choice(np.arange(1, 40), size=n, replace=False))
            out, prev = [], 0
            for c in cuts:
                if rng.random() < 0.25:
                    out.append(None)
                elif rng.random() < 0.3:  # a gap (a dropped space)
                    out.append((int(prev) + 1, int(c)) if c > prev + 1 else (int(prev), int(c)))
                else:
                    out.append((int(prev), int(c)))
                prev = c
            return out

        s, t = spans(int(rng.integers(1, 12))), spans(int(rng.integers(1, 12)))
        np.testing.assert_array_equal(overlap_matrix(s, t), ref_overlap(s, t).astype(np.float32))
        a = alignment_matrix(s, t)
        has = torch.tensor([x is not None for x in s]) & any(x is not None for x in t)
        torch.testing.assert_close(a.sum(-1)[has], torch.ones(int(has.sum())), rtol=0, atol=1e-6)


def test_row_normalize_batched_and_zero_rows():
    overlap = torch.tensor([[[2.0, 2.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 3.0, 1.0], [1.0, 0.0, 0.0]]])
    a = row_normalize(overlap)
    expected = torch.tensor([[[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]], [[0.0, 0.75, 0.25], [1.0, 0.0, 0.0]]])
    torch.testing.assert_close(a, expected, rtol=0, atol=0)
    assert not torch.isnan(a).any()


# ----------------------------------------------------------------------------------------- layer_map


def weights_sum_to_one(mapping) -> None:
    for s, sources in mapping.items():
        assert sum(w for _, w in sources) == pytest.approx(1.0, abs=1e-12), (s, sources)
        assert all(w > 0 for _, w in sources)


def test_layer_map_ratio_30_onto_6():
    m = layer_map("ratio", 6, 30)
    assert sorted(m) == list(range(6))
    used = [t for sources in m.values() for t, _ in sources]
    assert sorted(used) == list(range(30))  # every teacher layer exactly once
    weights_sum_to_one(m)
    for sources in m.values():
        assert len({w for _, w in sources}) == 1  # an equal average
    # Contiguous blocks, in depth order, the last teacher layer on the last student layer.
    flat = [t for s in sorted(m) for t, _ in m[s]]
    assert flat == list(range(30))
    assert m[5][-1][0] == 29 and m[0][0][0] == 0
    assert teacher_layers_used(m) == list(range(30))


def test_layer_map_ratio_6_onto_30():
    m = layer_map("ratio", 30, 6)
    assert m == {4: [(0, 1.0)], 9: [(1, 1.0)], 14: [(2, 1.0)], 19: [(3, 1.0)], 24: [(4, 1.0)], 29: [(5, 1.0)]}
    assert teacher_layers_used(m) == list(range(6))


def test_layer_map_ratio_hand_computed():
    # 4 teacher layers onto 2: round(t * 2 / 4) for t = 1..4 is 0 (-> 1), 1, 2, 2.
    assert layer_map("ratio", 2, 4) == {0: [(0, 0.5), (1, 0.5)], 1: [(2, 0.5), (3, 0.5)]}
    assert layer_map("ratio", 3, 3) == {0: [(0, 1.0)], 1: [(1, 1.0)], 2: [(2, 1.0)]}


@pytest.mark.parametrize("student,teacher", [(s, t) for s in (1, 2, 3, 5, 6, 12, 30) for t in (1, 2, 4, 6, 7, 30)])
def test_layer_map_ratio_and_skip_in_range(student, teacher):
    for kind in ("ratio", "skip"):
        m = layer_map(kind, student, teacher)
        assert all(0 <= s < student for s in m)
        assert all(0 <= t < teacher for sources in m.values() for t, _ in sources)
        weights_sum_to_one(m)
    ratio = layer_map("ratio", student, teacher)
    assert sorted(t for sources in ratio.values() for t, _ in sources) == list(range(teacher))
    skip = layer_map("skip", student, teacher)
    assert sorted(skip) == list(range(student))
    assert all(len(v) == 1 for v in skip.values())
    chosen = [skip[s][0][0] for s in range(student)]
    assert chosen == sorted(chosen) and chosen[-1] == teacher - 1


def test_layer_map_uniform_hand_computed():
    m = layer_map("uniform", 3, 4)  # positions 1/3, 5/3, 3
    assert [t for t, _ in m[0]] == [0, 1] and [w for _, w in m[0]] == pytest.approx([2 / 3, 1 / 3], abs=1e-12)
    assert [t for t, _ in m[1]] == [1, 2] and [w for _, w in m[1]] == pytest.approx([1 / 3, 2 / 3], abs=1e-12)
    assert m[2] == [(3, 1.0)]
    m = layer_map("uniform", 2, 5)  # positions 1.5, 4
    assert [t for t, _ in m[0]] == [1, 2] and [w for _, w in m[0]] == pytest.approx([0.5, 0.5], abs=1e-12)
    assert m[1] == [(4, 1.0)]
    assert layer_map("uniform", 6, 30) == {s: [(5 * s + 4, 1.0)] for s in range(6)}


@pytest.mark.parametrize("student,teacher", [(s, t) for s in (1, 2, 3, 5, 6) for t in (6, 7, 12, 30) if s <= t])
def test_layer_map_uniform_relative_depth(student, teacher):
    m = layer_map("uniform", student, teacher)
    assert sorted(m) == list(range(student))
    weights_sum_to_one(m)
    for s, sources in m.items():
        assert all(0 <= t < teacher for t, _ in sources)
        depth = sum(t * w for t, w in sources)
        assert depth == pytest.approx((s + 1) * teacher / student - 1, abs=1e-9)
        if len(sources) == 2:
            assert sources[1][0] == sources[0][0] + 1


def test_layer_map_uniform_more_student_layers_stays_in_range():
    for student, teacher in [(4, 2), (30, 6)]:
        m = layer_map("uniform", student, teacher)
        assert all(0 <= t < teacher for sources in m.values() for t, _ in sources), m[0]


def test_layer_map_skip_hand_computed():
    assert layer_map("skip", 6, 30) == {s: [(5 * s + 4, 1.0)] for s in range(6)}
    assert layer_map("skip", 2, 3) == {0: [(1, 1.0)], 1: [(2, 1.0)]}  # round(1.5) = 2 -> 1


def test_layer_map_explicit_pairs():
    assert layer_map("0:1, 2:5", 3, 6) == {0: [(1, 1.0)], 2: [(5, 1.0)]}
    m = layer_map("0:1,0:3,1:2,", 2, 4)
    assert m == {0: [(1, 0.5), (3, 0.5)], 1: [(2, 1.0)]}
    assert teacher_layers_used(m) == [1, 2, 3]
    assert list(layer_map("1:0,0:0", 2, 1)) == [0, 1]  # sorted by student layer
    assert layer_map(" ratio ", 2, 2) == layer_map("ratio", 2, 2)


@pytest.mark.parametrize(
    "spec,match",
    [
        ("0:9", "teacher layer 9 is outside 0..3"),
        ("7:0", "student layer 7 is outside 0..5"),
        ("0:1,x:2", r"'x:2' is not 'student:teacher'"),
        ("0-1", r"'0-1' is not 'student:teacher'"),
        ("0:-1", r"'0:-1' is not 'student:teacher'"),
        ("bogus", r"'bogus' is not 'student:teacher'.*ratio, uniform, skip"),
        (":3", r"':3' is not 'student:teacher'"),
        (",", "maps no layers"),
        ("", "maps no layers"),
    ],
)
def test_layer_map_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        layer_map(spec, 6, 4)


def test_layer_map_bad_counts():
    with pytest.raises(ValueError, match="layer counts must be >= 1"):
        layer_map("ratio", 0, 4)
    with pytest.raises(ValueError, match="teacher 0"):
        layer_map("uniform", 3, 0)


def test_teacher_layers_used():
    assert teacher_layers_used({0: [(3, 0.5), (1, 0.5)], 2: [(3, 1.0)]}) == [1, 3]
    assert teacher_layers_used({}) == []


# ------------------------------------------------------------------------------------------ rotary


def test_rope_inv_freq_closed_form():
    inv = rope_inv_freq(8, 10000.0)
    assert inv.dtype == torch.float64 and inv.shape == (4,)
    torch.testing.assert_close(inv, torch.tensor([10000.0 ** (-2 * i / 8) for i in range(4)], dtype=torch.float64))


def test_ntk_scaled_base_closed_form():
    assert ntk_scaled_base(10000.0, 4.0, 64) == pytest.approx(10000.0 * 4.0 ** (64 / 62), rel=1e-12)
    assert ntk_scaled_base(500000.0, 1.0, 128) == pytest.approx(500000.0, rel=1e-12)
    assert ntk_scaled_base(10000.0, 2.0, 8) == pytest.approx(10000.0 * 2 ** (8 / 6), rel=1e-12)
    for scale, dim in [(0.0, 64), (-1.0, 64), (2.0, 2)]:
        with pytest.raises(ValueError, match="scale must be > 0 and head_dim > 2"):
            ntk_scaled_base(10000.0, scale, dim)


def test_rotary_cos_sin_layout():
    inv = rope_inv_freq(4, 100.0)  # [1, 0.1]
    cos, sin = rotary_cos_sin(torch.tensor([[0, 1, 3]]), inv)
    assert cos.shape == sin.shape == (1, 3, 4)
    angles = torch.tensor([[0.0, 0.0], [1.0, 0.1], [3.0, 0.3]], dtype=torch.float64)
    torch.testing.assert_close(cos[0], torch.cat([angles, angles], -1).cos())
    torch.testing.assert_close(sin[0], torch.cat([angles, angles], -1).sin())


def test_apply_rotary_is_a_rotation_of_pairs():
    # d = 2: rotate-half pairs (x0, x1) and rotates by the angle.
    x = torch.tensor([[[[1.0, 2.0]]]], dtype=torch.float64)
    theta = 0.7
    cos, sin = torch.full((1, 2), math.cos(theta), dtype=torch.float64), torch.full((1, 2), math.sin(theta), dtype=torch.float64)
    out = apply_rotary(x, cos, sin)
    expected = torch.tensor([1.0 * math.cos(theta) - 2.0 * math.sin(theta), 2.0 * math.cos(theta) + 1.0 * math.sin(theta)])
    torch.testing.assert_close(out.flatten(), expected.to(torch.float64))


def test_rotary_roundtrip_norms_and_relative_positions():
    torch.manual_seed(0)
    d, length = 16, 11
    inv = rope_inv_freq(d, 10000.0)
    cos, sin = rotary_cos_sin(torch.arange(length), inv)  # (L, d)
    x = torch.randn(2, 3, length, d, dtype=torch.float64)
    rotated = apply_rotary(x, cos, sin)
    torch.testing.assert_close(derotate(rotated, cos, sin), x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(apply_rotary(derotate(x, cos, sin), cos, sin), x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rotated[..., 0, :], x[..., 0, :], rtol=0, atol=1e-15)  # position 0 is not rotated
    # <R_m q, R_n k> depends on m - n only.
    q, k = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    cq, sq = rotary_cos_sin(torch.tensor([2, 7]), inv)
    ck, sk = rotary_cos_sin(torch.tensor([0, 5]), inv)
    rq, rk = apply_rotary(q.expand(2, d), cq, sq), apply_rotary(k.expand(2, d), ck, sk)
    assert (rq[0] @ rk[0]).item() == pytest.approx((rq[1] @ rk[1]).item(), rel=1e-10)
    # float32 input keeps its dtype.
    assert apply_rotary(x.float(), cos, sin).dtype == torch.float32


# --------------------------------------------------------------------- against a real model's cache


def tiny_llama(eager: bool = False):
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_implementation="eager" if eager else "sdpa",
    )
    return LlamaModel(config).eval()


def test_derotated_cache_equals_pre_rope_keys():
    from training.kv.models import KVCapture, rotary_cos_sin_of

    model = tiny_llama()
    capture = KVCapture(model, [0, 1])
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), capture.recording():
        out = model(ids, use_cache=True)
    for layer in (0, 1):
        cached = out.past_key_values.layers[layer].keys  # (B, H_kv, L, d), post-RoPE
        assert cached.shape == (2, 2, 9, 8)
        pre = capture.keys[layer]  # (B, L, H_kv, d)
        assert pre.shape == (2, 9, 2, 8)
        cos, sin = rotary_cos_sin_of(model, cached, 9)
        assert cos.shape == (2, 9, 8)
        back = derotate(cached, cos[:, None], sin[:, None]).transpose(1, 2)
        torch.testing.assert_close(back, pre, rtol=0, atol=1e-5)
        # And the other way: rotating the captured keys gives the cache.
        torch.testing.assert_close(apply_rotary(pre.transpose(1, 2), cos[:, None], sin[:, None]), cached, rtol=0, atol=1e-5)
        # The cache is really rotated (beyond position 0), so the check above is not vacuous.
        assert (cached.transpose(1, 2)[:, 1:] - pre[:, 1:]).abs().max() > 1e-3
        # Values are not rotated: the cache holds the v_proj outputs.
        torch.testing.assert_close(out.past_key_values.layers[layer].values.transpose(1, 2), capture.values[layer], rtol=0, atol=1e-6)
    capture.remove()


def test_model_rotary_matches_rope_inv_freq():
    from training.kv.models import rotary_cos_sin_of

    model = tiny_llama()
    like = torch.zeros(1, 5, 8)
    cos, sin = rotary_cos_sin_of(model, like, 5)
    base = model.config.rope_parameters["rope_theta"] if hasattr(model.config, "rope_parameters") else model.config.rope_theta
    ref_cos, ref_sin = rotary_cos_sin(torch.arange(5)[None], rope_inv_freq(8, float(base)))
    torch.testing.assert_close(cos, ref_cos.float(), rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, ref_sin.float(), rtol=0, atol=1e-6)


def test_attention_probs_matches_llama_eager_attention():
    from training.kv.models import KVCapture, attention_probs, rotary_cos_sin_of

    model = tiny_llama(eager=True)
    assert model.config._attn_implementation == "eager"
    capture = KVCapture(model, [0, 1], queries=True)
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0  # right padding
    with torch.no_grad(), capture.recording():
        out = model(ids, attention_mask=mask, output_attentions=True)
    for layer in (0, 1):
        assert capture.queries[layer].shape == (2, 9, 4, 8)
        rotary = rotary_cos_sin_of(model, capture.keys[layer], 9)
        probs = attention_probs(capture.queries[layer], capture.keys[layer], mask, causal=True, rotary=rotary)
        assert probs.shape == (2, 9, 9)
        torch.testing.assert_close(probs, out.attentions[layer].mean(1), rtol=0, atol=1e-5)
        assert torch.triu(probs, diagonal=1).abs().max() == 0
        assert probs[1, :, 6:].abs().max() == 0
    # Without the rotary embedding the result is different: the rotation matters.
    wrong = attention_probs(capture.queries[0], capture.keys[0], mask, causal=True, rotary=None)
    assert (wrong - out.attentions[0].mean(1)).abs().max() > 1e-4


def test_attention_probs_matches_bert_eager_attention():
    from transformers import BertConfig, BertModel

    from training.kv.models import KVCapture, attention_probs, rotary_cos_sin_of

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        attn_implementation="eager",
    )
    model = BertModel(config).eval()
    assert rotary_cos_sin_of(model, torch.zeros(1, 3, 8), 3) is None
    capture = KVCapture(model, [0, 1], queries=True)
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 7:] = 0
    with torch.no_grad(), capture.recording():
        out = model(ids, attention_mask=mask, output_attentions=True)
    for layer in (0, 1):
        assert capture.keys[layer].shape == (2, 9, 4, 8)
        probs = attention_probs(capture.queries[layer], capture.keys[layer], mask, causal=False, rotary=None)
        torch.testing.assert_close(probs, out.attentions[layer].mean(1), rtol=0, atol=1e-5)
        assert probs[0, :, 7:].abs().max() < 1e-6
        assert torch.triu(probs, diagonal=1).abs().max() > 1e-3  # bidirectional


def test_kv_capture_rejects_bad_layers():
    from training.kv.models import KVCapture

    with pytest.raises(ValueError, match=r"layers \[2\] are outside 0..1"):
        KVCapture(tiny_llama(), [0, 2])


def test_short_content_is_located_in_its_own_turn(smol):
    from training.kv.teachers import token_view

    conv = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "B"}]
    view = token_view(smol, conv, chat=True)
    tokens = smol.convert_ids_to_tokens(view.input_ids)
    assert [tok for tok, span in zip(tokens, view.spans) if span is not None] == ["a", "B"]
