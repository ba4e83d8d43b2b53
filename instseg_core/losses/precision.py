"""The losses run in float32: a network output computed under autocast (bfloat16 / float16) is cast back first."""

from __future__ import annotations

import torch


def to_float32(output: object) -> object:
    """The floating tensors of a network output (a tensor, or tuples, lists and dicts of them, nested) in float32;
    other tensors and values unchanged."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() else output
    if isinstance(output, (tuple, list)):
        return type(output)(to_float32(o) for o in output)
    if isinstance(output, dict):
        return {k: to_float32(v) for k, v in output.items()}
    return output
