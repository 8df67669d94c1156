"""The registry of public ops and what every op wrapper repeats.

Each op module declares its op once, at module level:

    OP = register_op("name", module=__name__, kernel_dtypes=KERNEL_DTYPES,
                     torch_ops=("name", "name_backward"))

naming its reference twin (default name_reference), the torch.ops.genfast ops its
wrapper calls (forward and backward; default (name,)) and the dtypes each device's
kernel takes. The entry then gives the wrapper its impl switch, `OP.use_kernel(impl, t)`
(the wrapper still writes `return name_reference(...)` itself), and registers fake
kernels and autograd formulas at module level, as extension-cpp does:

    @OP.register_fake("name_backward")
    def _(grad_output, x): ...

    @OP.register_autograd(setup_context=_setup)
    def _backward(ctx, grad_output): ...

or, for an elementwise op (one tensor x; name_backward(grad_output, x, *arguments)
returns grad_x), both at once: OP.register_elementwise_backward("name_backward").

Both do nothing when genfast._C is not loaded (no schema to attach to; the wrappers
then run their references) and refuse a torch op the entry does not list, so the
registry stays the true list. tests/op_cases.py and tests/test_op_contract.py check
every registered op with one common contract, and that every op in torch.ops.genfast
belongs to a registered op."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from genfast import _backend
from genfast.ops._layout import empty_in_layout


@dataclass(frozen=True)
class OpEntry:
    name: str  # genfast.ops.<name>, taking impl="auto" | "ext" | "reference"
    module: str  # the module holding the wrapper, e.g. "genfast.ops.dmol"
    reference: str  # genfast.ops.<reference>: the pure-PyTorch twin
    torch_ops: tuple[str, ...]  # the torch.ops.genfast.<op> names the wrapper calls
    # device type -> the dtypes its compiled kernel takes (others run the reference)
    kernel_dtypes: dict = field(default_factory=dict, compare=False)

    def use_kernel(self, impl: str, tensor: torch.Tensor) -> bool:
        """The impl switch: True when the compiled kernel runs for `tensor` (its device
        and dtype) under impl "auto" | "ext" | "reference"; see genfast._backend."""
        return _backend.use_extension(self.name, impl, tensor, self.kernel_dtypes)

    def _qualname(self, torch_op: str | None) -> str | None:
        """genfast::<torch_op> (default: the op's name) when the loaded library has it."""
        torch_op = torch_op or self.name
        if torch_op not in self.torch_ops:
            raise ValueError(f"{self.name}: {torch_op!r} is not in its registry entry's torch_ops "
                             f"{self.torch_ops}")
        if not _backend.LIBRARY_LOADED or not hasattr(torch.ops.genfast, torch_op):
            return None
        return f"genfast::{torch_op}"

    def register_fake(self, torch_op: str | None = None) -> Callable:
        """Decorator: the function is the fake (meta) kernel of torch.ops.genfast.<torch_op>."""
        def register(fn):
            qualname = self._qualname(torch_op)
            if qualname is not None:
                torch.library.register_fake(qualname)(fn)
            return fn
        return register

    def register_autograd(self, *, setup_context: Callable, torch_op: str | None = None) -> Callable:
        """Decorator: the function is the backward formula of torch.ops.genfast.<torch_op>,
        with setup_context(ctx, inputs, output) saving what it needs."""
        def register(backward):
            qualname = self._qualname(torch_op)
            if qualname is not None:
                torch.library.register_autograd(qualname, backward, setup_context=setup_context)
            return backward
        return register

    def register_elementwise_backward(self, backward_op: str, *, keeps_channels_last: bool = False) -> None:
        """The fake kernel of backward_op and the op's autograd formula, for an op whose
        first argument x is its only tensor and whose backward op takes (grad_output,
        x, *the other arguments) and returns grad_x contiguous, or in x's layout
        (genfast/ops/_layout.py) with keeps_channels_last (the elementwise ops:
        gated_activation, concat_elu). Saves x alone."""
        def setup(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])
            ctx.arguments = inputs[1:]

        @self.register_autograd(setup_context=setup)
        def backward(ctx, grad_output):
            (x,) = ctx.saved_tensors
            grad_x = getattr(torch.ops.genfast, backward_op)(grad_output, x, *ctx.arguments)
            return (grad_x,) + (None,) * len(ctx.arguments)

        @self.register_fake(backward_op)
        def _(grad_output, x, *arguments):
            if keeps_channels_last:
                return empty_in_layout(x, x.shape)
            return torch.empty_like(x, memory_format=torch.contiguous_format)


_REGISTRY: dict[str, OpEntry] = {}


def register_op(name: str, *, module: str, kernel_dtypes: dict, reference: str | None = None,
                torch_ops: tuple[str, ...] = ()) -> OpEntry:
    """Registers a public op; torch_ops defaults to (name,)."""
    if name in _REGISTRY:
        raise ValueError(f"op {name!r} is registered twice")
    entry = OpEntry(name, module, reference or f"{name}_reference", tuple(torch_ops) or (name,),
                    dict(kernel_dtypes))
    _REGISTRY[name] = entry
    return entry


def registered_ops() -> tuple[OpEntry, ...]:
    """The registered ops in registration order."""
    return tuple(_REGISTRY.values())
