"""bfloat16 weights, float32 arithmetic: a gradient model for CPUs without fast bfloat16.

Without AVX-512 torch has no fast bfloat16 kernels on the CPU: a backward pass is ~45× slower
than in float32. Loading the model in float32 doubles its memory, which beside a vLLM engine
may not fit. Here the large matrices of the decoder stay in bfloat16 and are cast to float32
for each product (in the backward pass too, from the saved bfloat16 weight, so no float32 copy
lives longer than one product); everything else (embeddings, output head, norms, biases) is
converted to float32 once. The activations, and so the gradients, are float32 throughout.
"""

from __future__ import annotations

from typing import Any

import torch


class _Float32Product(torch.autograd.Function):
    """``x @ weight.T + bias`` in float32 for a bfloat16 ``weight`` that takes no gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> Any:
        ctx.save_for_backward(weight)  # the bfloat16 weight, not its float32 cast
        return torch.nn.functional.linear(x, weight.float(), bias)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (weight,) = ctx.saved_tensors
        return grad @ weight.float(), None, None


class Float32ComputeLinear(torch.nn.Linear):
    """A linear layer that keeps its weight in its stored dtype and computes in float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Float32Product.apply(x.float(), self.weight, self.bias)


def compute_in_float32(model: torch.nn.Module) -> torch.nn.Module:
    """Make ``model`` (loaded in bfloat16, its weights frozen) compute in float32, in place.

    Every linear layer but the output head keeps its bfloat16 weight and casts it per product;
    every other parameter and floating buffer becomes float32. Returns ``model``.
    """
    head = model.get_output_embeddings()
    for module in model.modules():
        if type(module) is torch.nn.Linear and module is not head:
            module.__class__ = Float32ComputeLinear
    for module in model.modules():
        large = isinstance(module, Float32ComputeLinear)
        for name, param in module.named_parameters(recurse=False):
            if large and name == "weight":
                continue
            param.data = param.data.float()
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point():
                setattr(module, name, buffer.float())
    return model
