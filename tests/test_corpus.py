"""atomslib.corpus: the embedded Wikipedia corpus, the train/held-out rule, local files, packing."""
from __future__ import annotations

import json
import time

import pytest
import torch

from atomslib import corpus as C
from atomslib.corpus import is_heldout, load_corpus, pack_contexts, record_text
from conftest_activations import no_network, smol  # noqa: F401,F811  (fixtures)


def test_wiki_offline_split_is_deterministic_and_disjoint(no_network):
    train, held, every = load_corpus(), load_corpus(split="heldout"), load_corpus(split="all")
    assert len(every) == 10_033 and len(train) + len(held) == len(every)
    assert 0.08 < len(held) / len(every) < 0.12
    assert not set(train.titles) & set(held.titles)
    assert all(is_heldout(t) for t in held.titles) and not any(is_heldout(t) for t in train.titles)
    again = load_corpus(split="heldout")
    assert list(again) == list(held) and again.titles == held.titles
    assert held.fingerprint == train.fingerprint and held.fingerprint.startswith("sha256:")
    assert isinstance(train, list) and all(isinstance(t, str) and t for t in train[:50])
    # A larger held-out fraction only moves documents from train to held-out (the hash rule is monotone).
    held20 = load_corpus(split="heldout", heldout_fraction=0.2)
    assert set(held.titles) <= set(held20.titles)
    assert len(load_corpus(max_docs=5)) == 5


def test_split_rule_documented_values():
    # sha256("atoms-split:" + key)[:8] / 2**64 < fraction: pinned so the rule cannot drift silently.
    import hashlib
    for key in ["Paris", "Albert Einstein", "x"]:
        u = int.from_bytes(hashlib.sha256(("atoms-split:" + key).encode()).digest()[:8], "big") / 2**64
        assert is_heldout(key, 0.1) == (u < 0.1)
        assert is_heldout(key, 0.999999) == (u < 0.999999)


def test_local_files_and_globs(tmp_path):
    (tmp_path / "a.txt").write_text("First document text.")
    (tmp_path / "b.txt").write_text("Second document text.")
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"id": "r1", "body": "from jsonl one"}) + "\n\n" + json.dumps({"body": "from jsonl two"}) + "\n")
    docs = load_corpus(str(tmp_path / "*.txt"), split="all")
    assert list(docs) == ["First document text.", "Second document text."] and docs.titles == ["a.txt", "b.txt"]
    j = load_corpus(str(tmp_path / "c.jsonl"), split="all", text_field="body")
    assert list(j) == ["from jsonl one", "from jsonl two"] and j.titles == ["r1", "c.jsonl:3"]
    folder = load_corpus(str(tmp_path), split="all", text_field="body")
    assert len(folder) == 4
    tr = load_corpus(str(tmp_path), split="train", text_field="body", heldout_fraction=0.5)
    he = load_corpus(str(tmp_path), split="heldout", text_field="body", heldout_fraction=0.5)
    assert sorted(tr.titles + he.titles) == sorted(folder.titles)
    with pytest.raises(FileNotFoundError, match="matches no"):
        load_corpus(str(tmp_path / "*.csv"))


def test_record_text_formats():
    assert record_text("plain") == "plain"
    assert record_text({"text": "t"}) == "t"
    assert record_text({"title": "T", "extract": "lead"}) == "lead"
    rome = {"case_id": 0, "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                                                "target_true": {"str": "French", "id": "Q150"},
                                                "target_new": {"str": "English"}}}
    assert record_text(rome) == "The mother tongue of Danielle Darrieux is French"
    assert record_text({"prompt": "The Eiffel Tower is in", "target_true": " Paris"}) == "The Eiffel Tower is in Paris"
    with pytest.raises(ValueError, match="text_field"):
        record_text({"foo": 1})


def test_bad_names_and_offline_hub_dataset(monkeypatch, no_network):
    with pytest.raises(ValueError, match="not 'wiki-offline'"):
        load_corpus("nonexistent_corpus_name")
    with pytest.raises(ValueError, match="split='test'"):
        load_corpus(split="test")
    with pytest.raises(ValueError, match="heldout_fraction"):
        load_corpus(heldout_fraction=1.5)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    t = time.time()
    for name in ("wikipedia", "counterfact", "NeelNanda/counterfact-tracing"):
        with pytest.raises(RuntimeError, match="cannot be reached.*wiki-offline"):
            load_corpus(name)
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    with pytest.raises(RuntimeError, match="no network"):
        load_corpus("azhx/counterfact")
    assert time.time() - t < 5


def test_pack_contexts(smol):
    _, tok = smol
    docs = load_corpus(split="heldout")
    p = pack_contexts(docs, tok, ctx_len=64, n_tokens=1000, seed=0)
    assert p.input_ids.shape == (16, 64) and p.input_ids.dtype == torch.int64
    assert p.doc_ids.shape == (16, 64) and p.doc_ids.dtype == torch.int32
    again = pack_contexts(docs, tok, ctx_len=64, n_tokens=1000, seed=0)
    assert torch.equal(again.input_ids, p.input_ids) and torch.equal(again.doc_ids, p.doc_ids)
    other = pack_contexts(docs, tok, ctx_len=64, n_tokens=1000, seed=1)
    assert not torch.equal(other.input_ids, p.input_ids)
    # The stream is the documents' tokens, each followed by EOS, in doc_ids order.
    flat, d = p.input_ids.reshape(-1), p.doc_ids.reshape(-1)
    first = int(d[0])
    toks = tok(docs[first], add_special_tokens=False)["input_ids"]
    n = len(toks)
    assert flat[:n].tolist() == toks[:len(flat[:n])] and (n >= flat.numel() or flat[n] == tok.eos_token_id)
    assert (d[:n + 1] == first).all()
    assert p.n_docs == len(torch.unique(d))
    assert not C.prepends_bos(tok)
    with pytest.raises(ValueError, match="hold only"):
        pack_contexts(docs[:2], tok, ctx_len=64, n_tokens=100_000)
    with pytest.raises(ValueError, match="ctx_len"):
        pack_contexts(docs, tok, ctx_len=1, n_tokens=10)


def test_pack_contexts_prepends_bos_when_asked(smol):
    _, tok = smol
    p = pack_contexts(["one two three four five six seven eight nine ten"] * 4, tok, ctx_len=8, n_tokens=16, bos=True)
    assert (p.input_ids[:, 0] == tok.bos_token_id).all() and (p.doc_ids[:, 0] == -1).all()


def test_missing_local_file_is_reported_as_a_missing_file(tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    for name in ("data/my-texts.jsonl", "./notes.txt", str(tmp_path / "gone" / "a.json"), "~/no/such/dir/x"):
        with pytest.raises(FileNotFoundError, match=r"corpus file .* does not exist .*check the path") as e:
            load_corpus(name)
        assert "Hugging Face dataset" not in str(e.value).split(";")[0] and "hub" not in str(e.value)
    assert no_network == []
