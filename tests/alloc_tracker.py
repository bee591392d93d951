"""Counts what torch ops allocate (CPU or GPU alike), for tests that bound memory: a dispatch mode
sees every op's outputs, so the largest vocabulary-sized tensor and the peak of live bytes are
measured, not estimated."""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class AllocationTracker(TorchDispatchMode):
    """Every tensor an op returns on fresh storage: the largest one whose last dimension is the
    vocabulary (its element count and dtype), and the peak of the bytes alive at once."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.largest_vocab_numel = 0
        self.vocab_dtypes: set[torch.dtype] = set()
        self.live = 0
        self.peak = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.untyped_storage().data_ptr() in inputs:
                continue  # views and in-place results allocate nothing
            nbytes = t.untyped_storage().nbytes()
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._free, nbytes)
            if t.dim() >= 2 and t.shape[-1] == self.vocab:
                self.largest_vocab_numel = max(self.largest_vocab_numel, t.numel())
                self.vocab_dtypes.add(t.dtype)
        return out
