"""Batch streams for the trainer: a position in an endless sequence of epochs, so that a resumed
run reads exactly the batches an uninterrupted one would have.

A stream hands out fixed-size batches that may straddle epochs (so every step has the same
size and the number of steps is known in advance). Its position is the number of rows consumed;
for a tensor that is all the state there is (each epoch's permutation is a function of the seed
and the epoch), for an iterable it is (epoch, rows into the epoch).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from ._util import check_acts, iter_batches

Tensor = torch.Tensor


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # A counter-based seed: no RNG state has to be carried in a checkpoint.
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % (2**63))


class TensorStream:
    """Rows of an (n, H) tensor, reshuffled (seeded) every epoch when ``shuffle``."""

    def __init__(self, x: Tensor, shuffle: bool, seed: int) -> None:
        self.x, self.shuffle, self.seed = x, shuffle, seed
        self.n, self.H = x.shape
        self.pos = 0
        self._perm: tuple[int, Tensor | None] = (-1, None)

    @property
    def epoch(self) -> int:
        return self.pos // self.n

    def _order(self, epoch: int) -> Tensor | None:
        if not self.shuffle:
            return None
        if self._perm[0] != epoch:
            # Drawn on the CPU (the same order whatever the device), used where the rows live.
            perm = torch.randperm(self.n, generator=epoch_generator(self.seed, epoch))
            self._perm = (epoch, perm.to(self.x.device))
        return self._perm[1]

    def peek(self, size: int) -> Tensor:
        """The next ``min(size, n)`` rows without consuming them."""
        pos = self.pos
        out = self.take(min(size, self.n))
        self.pos = pos
        return out

    def take(self, size: int) -> Tensor:
        parts = []
        while size > 0:
            epoch, off = divmod(self.pos, self.n)
            k = min(size, self.n - off)
            order = self._order(epoch)
            parts.append(self.x[off:off + k] if order is None else self.x.index_select(0, order[off:off + k]))
            self.pos += k
            size -= k
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state(self) -> dict:
        return {"pos": self.pos}

    def restore(self, state: dict) -> None:
        self.pos = int(state["pos"])

    def fingerprint(self) -> dict:
        head = self.x[: min(self.n, 256)].double()
        return {"kind": "tensor", "n": self.n, "H": self.H, "head_sum": float(head.sum()),
                "head_sq": float(head.pow(2).sum())}


class IterStream:
    """Rows of a re-iterable of (b, H) batches (a list, an ActivationReader, ...), read in its own
    order; each pass over it is an epoch. A one-shot iterator works for a single pass."""

    def __init__(self, src: Iterable[Tensor], H: int) -> None:
        self.src, self.H = src, H
        self.one_shot = iter(src) is src if isinstance(src, Iterator) else False
        self.epoch, self.offset, self.pos = 0, 0, 0
        self._it: Iterator[Tensor] | None = None
        self._ended = False
        self._buf: list[Tensor] = []   # rows read from the source but not yet consumed
        self._nbuf = 0

    def _open(self) -> None:
        if self.one_shot and self.epoch > 0:
            raise ValueError("acts is a one-shot iterator and is exhausted; pass a list or a re-iterable reader "
                             "(e.g. ActivationCache(dir).reader(layer, ...)) to train for more than one pass, or "
                             "lower n_tokens")
        if hasattr(self.src, "set_epoch"):
            # A cache reader reshuffles per iteration; pin each epoch's order so that a resumed run,
            # or one after a counting pass, reads what an uninterrupted run would.
            self.src.set_epoch(self.epoch)
        self._it = iter_batches(self.src, None, "acts")
        self._ended = False

    def _pull(self) -> bool:
        """Read one more batch of the current epoch into the buffer; False once the epoch is over."""
        if self._ended:
            return False
        if self._it is None:
            self._open()
        try:
            b = next(self._it)
        except StopIteration:
            self._it, self._ended = None, True
            return False
        if b.shape[1] != self.H:
            raise ValueError(f"acts yields batches of width {b.shape[1]} but TSAEConfig.d_model={self.H}; "
                             f"set d_model to the activations' width (or pass the right layer/site)")
        self._buf.append(b)
        self._nbuf += b.shape[0]
        return True

    def _fill(self, size: int) -> bool:
        """Buffer at least ``size`` rows of the current epoch; False if the epoch ends first."""
        while self._nbuf < size:
            if not self._pull():
                return False
        return True

    def _pop(self, k: int) -> Tensor:
        cat = self._buf[0] if len(self._buf) == 1 else torch.cat(self._buf)
        out, rest = cat[:k], cat[k:]
        self._buf, self._nbuf = ([rest] if rest.shape[0] else []), rest.shape[0]
        return out

    def take(self, size: int) -> Tensor:
        parts = []
        while size > 0:
            ended = not self._fill(size)
            k = self._nbuf if ended else size
            if ended and k == 0 and self.offset == 0:
                raise ValueError("acts yielded no rows; pass a non-empty tensor or iterable of (b, H) batches")
            if k:
                parts.append(self._pop(k))
                self.offset += k
                self.pos += k
                size -= k
            if ended:                   # the epoch is used up: the next rows come from the next one
                self.epoch, self.offset = self.epoch + 1, 0
                self._it, self._ended = None, False
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def peek(self, size: int) -> Tensor:
        """Up to ``size`` rows of the current epoch without consuming them."""
        self._fill(size)
        if self._nbuf == 0:
            raise ValueError("acts yielded no rows; pass a non-empty tensor or iterable of (b, H) batches")
        cat = self._buf[0] if len(self._buf) == 1 else torch.cat(self._buf)
        self._buf = [cat]
        return cat[:size]

    def count_rows(self) -> int:
        """Rows in one pass (reads the source once; not for one-shot iterators)."""
        if self.one_shot:
            raise ValueError("n_epochs needs to know the length of acts, but acts is a one-shot iterator; "
                             "pass a re-iterable (a list, a reader) or set n_tokens instead")
        n = getattr(self.src, "n_tokens", None)
        if isinstance(n, int) and not isinstance(n, bool):
            return n
        return sum(b.shape[0] for b in iter_batches(self.src, None, "acts"))

    def state(self) -> dict:
        return {"pos": self.pos, "epoch": self.epoch, "offset": self.offset}

    def restore(self, state: dict) -> None:
        """Seek to a saved position by re-reading the source from the start of that epoch."""
        self.epoch, self.offset, self.pos = int(state["epoch"]), 0, int(state["pos"])
        self._buf, self._nbuf, self._it, self._ended = [], 0, None, False
        if self.one_shot:
            raise ValueError("cannot resume from a checkpoint when acts is a one-shot iterator; pass a re-iterable")
        self._open()
        skip = int(state["offset"])
        while skip > 0:
            if not self._fill(1):
                raise ValueError("acts is shorter than when the checkpoint was written; is it the same data?")
            k = min(skip, self._nbuf)
            self._pop(k)
            skip -= k
        self.offset = int(state["offset"])

    def fingerprint(self) -> dict:
        """What a resumed run checks it is reading the same data (cheap facts only)."""
        fp: dict = {"kind": "iterable", "H": self.H}
        src = self.src
        if isinstance(src, (list, tuple)):
            fp["rows"] = int(sum(b.shape[0] for b in src))
            if src:
                fp["head_sum"] = float(torch.as_tensor(src[0][:256]).double().sum())
        for k in ("n_tokens", "layer", "shuffle", "seed"):
            v = getattr(src, k, None)
            if isinstance(v, (int, float, bool, str)):
                fp[k] = v
        cache = getattr(getattr(src, "cache", None), "path", None)
        if cache is not None:
            fp["cache"] = str(cache)
        return fp


def make_stream(acts, H: int, shuffle: bool, seed: int):
    """A stream over ``acts`` (tensor, numpy array, or iterable of batches), width-checked."""
    if isinstance(acts, (torch.Tensor, np.ndarray)):
        x = check_acts(acts, "acts")
        if x.shape[1] != H:
            raise ValueError(f"acts has width {x.shape[1]} but TSAEConfig.d_model={H}; set d_model to the "
                             f"activations' width (or pass the right layer/site)")
        return TensorStream(x, shuffle, seed)
    if isinstance(acts, (str, bytes)) or not isinstance(acts, Iterable):
        raise TypeError(f"acts must be an (n, H) tensor or a re-iterable of (b, H) tensors, got {type(acts).__name__}")
    return IterStream(acts, H)
