"""The wait-k schedule with fixed pre-decision, in one place.

The source is cut into chunks of ``ratio`` encoder states (with 40 ms per
encoder state, ``ratio=9`` is 360 ms). Target token ``i`` (0-based) is written
after ``k + i`` chunks have been read, so it attends to the encoder states

    [0, min((k + i) * ratio, T_enc))

and once the source has ended it attends to all of it. Training (the prefix
lengths of the cross-attention), ``fairseq-generate`` (the same prefix lengths
step by step) and the streaming agent (when to READ and when to WRITE) all
call the functions below, so the three cannot drift apart.
"""

from typing import Optional, Union

import torch
from torch import Tensor


def check_waitk_arguments(k: Optional[int], ratio: int) -> None:
    """Raise ValueError when the lagging ``k`` or the pre-decision ``ratio`` is invalid.

    ``k=None`` means no schedule: every target token sees the whole source.
    """
    if k is not None and (not isinstance(k, int) or k < 1):
        raise ValueError(f"wait-k lagging must be an integer >= 1 (or None for offline), got {k!r}")
    if not isinstance(ratio, int) or ratio < 1:
        raise ValueError(f"fixed pre-decision ratio must be an integer >= 1, got {ratio!r}")


def waitk_required_states(target_index: Union[int, Tensor], k: int, ratio: int) -> Union[int, Tensor]:
    """Return ``(k + target_index) * ratio``: the encoder states read before token ``target_index`` is written.

    This is the schedule itself; every other function here derives from it.
    ``target_index`` may be an int or a LongTensor of indices.
    """
    return (target_index + k) * ratio


def waitk_source_budget(target_index: int, num_source_states: int, k: Optional[int], ratio: int) -> int:
    """Return how many encoder states target token ``target_index`` may attend to.

    ``num_source_states`` is the number of encoder states available: read so
    far when streaming, the whole encoder output offline. The result is
    ``min((k + target_index) * ratio, num_source_states)``, so once the whole
    source has been read a late token sees all of it. A streaming caller
    writes token ``target_index`` only when :func:`waitk_should_write` allows
    it, and then this prefix is the one the offline forward uses, whether or
    not the end of the source arrived in the same read.
    """
    check_waitk_arguments(k, ratio)
    if k is None:
        return num_source_states
    return min(waitk_required_states(target_index, k, ratio), num_source_states)


def waitk_should_write(num_source_states_read: int, source_finished: bool, num_target_written: int, k: Optional[int], ratio: int) -> bool:
    """Return True when the next target token may be written, False when the agent must READ.

    The next token has index ``num_target_written``; it is written once
    ``(k + num_target_written) * ratio`` encoder states have been read, or
    once the source has ended.
    """
    check_waitk_arguments(k, ratio)
    if source_finished or k is None:
        return True
    return num_source_states_read >= waitk_required_states(num_target_written, k, ratio)


def waitk_prefix_lengths(num_target: int, encoder_lengths: Tensor, k: Optional[int], ratio: int, first_target_index: int = 0) -> Tensor:
    """Return the number of encoder states each target position attends to.

    Args:
        num_target: number of target positions T.
        encoder_lengths: LongTensor (B,), the encoder length of each utterance.
            Offline the whole source is known, so the tail of a long target
            sees all of it.
        k: the lagging in chunks, or None for no schedule.
        ratio: encoder states per chunk.
        first_target_index: index of the first position (incremental decoding
            passes the step number and ``num_target=1``).

    Returns:
        LongTensor (B, T): entry [b, j] is
        ``min((k + first_target_index + j) * ratio, encoder_lengths[b])``.
    """
    check_waitk_arguments(k, ratio)
    if num_target < 0:
        raise ValueError(f"num_target must be >= 0, got {num_target}")
    encoder_lengths = encoder_lengths.long()
    lengths = encoder_lengths.unsqueeze(1).expand(-1, num_target)
    if k is None:
        return lengths.contiguous()
    index = torch.arange(first_target_index, first_target_index + num_target, device=encoder_lengths.device)
    budget = waitk_required_states(index, k, ratio)
    return torch.minimum(budget.unsqueeze(0), lengths)


def chunk_prefix_lengths(num_states: int, lengths: Tensor, block: int) -> Tensor:
    """Return the key prefix of each query under the block-causal (chunk) mask.

    Query ``t`` sees every state before its block and all of its own block:
    keys ``[0, min(ceil((t + 1) / block) * block, lengths[b]))``.

    Returns:
        LongTensor (B, num_states).
    """
    if block < 1:
        raise ValueError(f"chunk block size must be >= 1, got {block}")
    index = torch.arange(num_states, device=lengths.device)
    block_end = (index // block + 1) * block
    return torch.minimum(block_end.unsqueeze(0), lengths.long().unsqueeze(1))


def causal_prefix_lengths(num_states: int, lengths: Tensor) -> Tensor:
    """Return the key prefix of each query under the causal mask: query ``t`` sees ``[0, t + 1)``."""
    index = torch.arange(1, num_states + 1, device=lengths.device)
    return torch.minimum(index.unsqueeze(0), lengths.long().unsqueeze(1))
