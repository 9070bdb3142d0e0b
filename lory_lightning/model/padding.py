"""Padded batches: each row's tokens moved to start at position 0, so a row computes what it computes alone.

Segment routing averages whole segments, and a segment is positions kT..kT+T-1 of its own sequence.
A left-padded row (how batches of prompts are padded for generation) would cut its segments at other
places than the same sequence alone, and padding would enter the segment means. So a padded batch is
aligned first: every row's tokens move to positions 0..n-1 with the padding after them. Then causal
attention never lets a token see padding (it comes later), RoPE counts from the first token, and the
FFN is told each row's length n so that a segment averages only its tokens (moe.segment_means).

Shape legend: B batch, L positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Padding:
    """Where each row's tokens lie in a padded batch.

    starts: (B,) position of each row's first token; lengths: (B,) its number of tokens.
    """

    starts: Tensor
    lengths: Tensor

    @classmethod
    def from_mask(cls, attention_mask: Tensor | None) -> Padding | None:
        """The padding of an attention mask (B, L) (1 a token, 0 padding); None when it has none.

        Each row's tokens must be one run (left padding, right padding or both); a row with a gap
        or without a token is refused, naming the row.
        """
        if attention_mask is None:
            return None
        if attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be (batch, length), got {tuple(attention_mask.shape)}")
        mask = attention_mask.bool()
        if bool(mask.all()):
            return None
        lengths = mask.sum(dim=1)  # (B,)
        starts = mask.int().argmax(dim=1)  # (B,): the first 1
        pos = torch.arange(mask.shape[1], device=mask.device)  # (L,)
        run = (pos >= starts[:, None]) & (pos < (starts + lengths)[:, None])  # (B, L): one run per row
        bad = ((run != mask).any(dim=1) | (lengths == 0)).nonzero()
        if len(bad):
            row = int(bad[0])
            raise ValueError(f"attention_mask row {row} is {mask[row].int().tolist()}: each row's tokens must be one "
                             "run of 1s, with padding only before and/or after it (left or right padding)")
        return cls(starts, lengths)

    def _take(self, t: Tensor, shift: Tensor) -> Tensor:
        B, L = t.shape[:2]
        index = (torch.arange(L, device=t.device) + shift[:, None]) % L  # (B, L)
        return t[torch.arange(B, device=t.device)[:, None], index]  # (B, L, ...)

    def aligned(self, t: Tensor) -> Tensor:
        """(B, L, ...) -> (B, L, ...) with row b's tokens at positions 0..lengths[b]-1, padding after."""
        return self._take(t, self.starts)

    def restored(self, t: Tensor) -> Tensor:
        """The inverse of ``aligned``: each row's positions back where the batch had them."""
        return self._take(t, -self.starts)
