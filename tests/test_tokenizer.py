"""Unit tests of harness/tokenizer.py: the offline BPE that tiny and random-weight models use."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.engine.tokenizer import (
    BYTE_OF,
    SPECIAL_TOKENS,
    build_offline_tokenizer,
    corpus_digest,
    corpus_lines,
    readable,
)

FROZEN_CORPUS_DIGEST = "cdc1feac934682e7"  # the prompt banks as of the first tiny models, frozen
LINES = ["Observe yourself generating this response.", "The capital of France is", "Water boils at"]


def test_corpus_reads_every_non_empty_line_in_order(tmp_path: Path) -> None:
    (tmp_path / "corpus.txt").write_text("first\n\nalso first\nsecond\n", encoding="utf-8")
    assert corpus_lines(tmp_path / "corpus.txt") == ["first", "also first", "second"]


def test_the_shipped_corpus_is_frozen() -> None:
    """Tiny models and their tokenizer depend on this text: a change is a new tiny model (see models.py)."""
    assert corpus_digest(corpus_lines()) == FROZEN_CORPUS_DIGEST


def test_tokenizer_is_deterministic_and_prepends_bos() -> None:
    first, again = (
        build_offline_tokenizer(LINES, vocab_size=300),
        build_offline_tokenizer(LINES, vocab_size=300),
    )
    ids = first(LINES[0])["input_ids"]
    assert ids == again(LINES[0])["input_ids"]
    assert ids[0] == first.bos_token_id and first(LINES[0], add_special_tokens=False)["input_ids"] == ids[1:]
    assert first.decode(ids, skip_special_tokens=True) == LINES[0]


def test_special_tokens_are_distinct_and_padding_is_right() -> None:
    tok = build_offline_tokenizer(LINES, vocab_size=300)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    ]
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    batch = tok(["a", "The capital of France is"], padding=True)
    assert batch["attention_mask"][0][-1] == 0 and batch["input_ids"][0][-1] == tok.pad_token_id


def test_any_text_round_trips_through_byte_level_bpe() -> None:
    tok = build_offline_tokenizer(LINES, vocab_size=300)
    text = "Unseen words: zebra, naïve, 42 — ok?"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_empty_corpus_is_an_error() -> None:
    with pytest.raises(ValueError, match="no prompt text to train the offline tokenizer on"):
        build_offline_tokenizer([])


def test_corpus_digest_follows_the_lines() -> None:
    assert corpus_digest(LINES) == corpus_digest(list(LINES)) != corpus_digest(LINES[:2])
    assert len(corpus_digest(LINES)) == 16


def test_readable_decoding_escapes_stray_bytes_and_keeps_valid_text() -> None:
    """Tiny models emit lone byte tokens: they decode to \\xNN escapes, not U+FFFD; valid UTF-8 is unchanged."""
    plain = build_offline_tokenizer(LINES, vocab_size=300)
    tok = readable(plain)
    # continuation bytes (0x80-0xbf) never start a UTF-8 sequence: three of them cannot decode to a character
    stray = sorted(i for t, i in plain.get_vocab().items() if len(t) == 1 and 0x80 <= BYTE_OF.get(t, 0) < 0xC0)[:3]
    assert len(stray) == 3
    assert "\ufffd" in plain.decode(stray)  # what the page showed before
    shown = tok.decode(stray)
    assert "\ufffd" not in shown and shown == "".join(f"\\x{BYTE_OF[plain.convert_ids_to_tokens(i)]:02x}"
                                                      for i in stray)
    text = "Unseen words: zebra, naïve, 42 — ok?"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == plain.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(ids) == plain.decode(ids) == "<s>" + text
    assert {c: b for b, c in ((b, chr(b)) for b in range(0x21, 0x7F))} | {
        c: b for c, b in BYTE_OF.items() if not 0x21 <= b < 0x7F} == BYTE_OF  # printable ASCII stands for itself
    assert sorted(BYTE_OF.values()) == list(range(256))
