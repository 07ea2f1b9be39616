"""The accelerator path: training and harvesting on ``cuda`` give what they give on the CPU.

CI has no GPU, so these tests skip there; on a GPU machine run ``pytest tests/test_device.py``.
``ATOMS_TEST_DEVICE=cpu`` runs the same tests on the CPU (a check of the tests themselves).
They need nothing outside the repository (no embedded model, no corpus package, no sae-lens), so
they run on a bare GPU image with torch and transformers.
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from atomslib import identification as idf
from atomslib.train import train_tsae
from atomslib.tsae import TSAEConfig

DEVICE = os.environ.get("ATOMS_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (or ATOMS_TEST_DEVICE=cpu)")
PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")


@pytest.fixture(scope="module")
def planted():
    return idf.planted_problem(32, 48, 2, n_train=20_000, n_heldout=2_000, seed=0)


def _same(a, b) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in PARAMS)


def test_training_reads_activations_on_either_device_alike(planted):
    # Activations kept on the GPU (a harvest the user left there) and on the CPU reach the step as
    # the same batches: the epoch order is drawn on the CPU and applied where the rows live.
    cfg = TSAEConfig(d_model=32, n_units=96, n_tokens=60_000, device=DEVICE, seed=0)
    a = train_tsae(planted.train, cfg, progress=False)
    b = train_tsae(planted.train.to(DEVICE), cfg, progress=False)
    assert a.W_dec.device.type == torch.device(DEVICE).type
    assert _same(a, b)


def test_training_is_deterministic_and_resumes_bit_identically(planted, tmp_path):
    cfg = TSAEConfig(d_model=32, n_units=96, n_tokens=60_000, device=DEVICE, seed=1, checkpoint_every=40)
    ref = train_tsae(planted.train, cfg, progress=False)
    assert _same(ref, train_tsae(planted.train, cfg, progress=False))

    def stop(rec):
        if rec["step"] >= 100:          # after the checkpoint at step 80 (records come every 50 steps)
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_tsae(planted.train, cfg, checkpoint_dir=tmp_path / "ck", log=stop, progress=False)
    resumed = train_tsae(planted.train, cfg, checkpoint_dir=tmp_path / "ck", progress=False)
    assert resumed.train_log.meta["resumed_at"] == 80
    assert _same(ref, resumed)


def test_defaults_identify_planted_atoms_on_the_device():
    # Chapter 8's base cell at its budget (2 units per atom, 1M tokens): the share of atoms with a
    # unit at cos > 0.95, the bar's first half (MCC needs sae-lens, which a bare GPU image lacks).
    p = idf.planted_problem(32, 48, 2, n_train=40_000, n_heldout=5_000, seed=0)
    u = train_tsae(p.train, TSAEConfig(d_model=32, n_units=96, seed=0, device=DEVICE), progress=False)
    D = torch.nn.functional.normalize(p.atoms.D.double(), dim=1)
    L = torch.nn.functional.normalize(u.dictionary().detach().double().cpu(), dim=1)
    share = float(((D @ L.T).abs().max(1).values > 0.95).double().mean())
    with torch.no_grad():
        l0 = float((u(p.heldout.to(DEVICE)).codes != 0).sum(1).double().mean())
    assert share >= 0.95 and abs(l0 - 2) <= 0.4, (share, l0)


def _byte_tokenizer():
    """A byte-level tokenizer built in code (no files): 256 byte tokens and an end-of-text token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    vocab["<|endoftext|>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def test_harvest_on_the_device_matches_the_cpu(tmp_path):
    # A small random Llama (SmolLM2's architecture) on both devices: the same hooks, the same tokens
    # kept, activations equal up to float32 rounding.
    from transformers import LlamaConfig, LlamaForCausalLM

    from atomslib.harvesting import harvest

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "text": f"Document {i}. " + "The quick brown fox jumps. " * 40})
                              + "\n" for i in range(40)))
    tok = _byte_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    caches = {}
    for dev in dict.fromkeys(("cpu", DEVICE)):
        caches[dev] = harvest((model.to(dev), tok), layers=(1, 2), tokens=1024, out=tmp_path / dev.replace(":", "_"),
                              corpus=str(corpus), split="all", ctx_len=64, batch_size=4, progress=False)
    for layer in (1, 2):
        x_cpu = caches["cpu"].load(layer).double()
        x_dev = caches[DEVICE].load(layer).double()
        assert x_cpu.shape == x_dev.shape and x_cpu.shape[0] > 900
        rel = float((x_dev - x_cpu).norm(dim=1).max() / x_cpu.norm(dim=1).median())
        assert rel < 1e-3, rel
