"""The registry of public ops: one entry per op, naming its module, its reference twin
and the torch.ops.genfast ops (forward and backward) its wrapper calls. tests/op_cases.py
and tests/test_op_contract.py check every registered op with one common contract, and
that every op in torch.ops.genfast belongs to a registered op."""
from dataclasses import dataclass


@dataclass(frozen=True)
class OpEntry:
    name: str  # genfast.ops.<name>, taking impl="auto" | "ext" | "reference"
    module: str  # the module holding the wrapper, e.g. "genfast.ops.dmol"
    reference: str  # genfast.ops.<reference>: the pure-PyTorch twin
    torch_ops: tuple[str, ...]  # the torch.ops.genfast.<op> names the wrapper calls


_REGISTRY: dict[str, OpEntry] = {}


def register_op(name: str, *, module: str, reference: str | None = None,
                torch_ops: tuple[str, ...] = ()) -> OpEntry:
    """Registers a public op; torch_ops defaults to (name,)."""
    if name in _REGISTRY:
        raise ValueError(f"op {name!r} is registered twice")
    entry = OpEntry(name, module, reference or f"{name}_reference", tuple(torch_ops) or (name,))
    _REGISTRY[name] = entry
    return entry


def registered_ops() -> tuple[OpEntry, ...]:
    """The registered ops in registration order."""
    return tuple(_REGISTRY.values())
