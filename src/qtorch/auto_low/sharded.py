"""Rounding a layer's parameters where they are kept in shards (FSDP2, tensor parallelism).

:class:`~qtorch.auto_low.WeightQuantizer` rounds the parameters a layer stores, the ones
an optimizer steps. Two kinds of layers do not hold them as plain tensors:

- **tensor parallelism** and other DTensor parameters: the layer holds the DTensor;
- **FSDP2** (``fully_shard``): between passes the layer holds a DTensor, this process's
  shard; during the forward pass it holds a full copy gathered from all shards, refilled
  at every gather (and again before backward when FSDP2 freed it after forward).
  Rounding only the copy left the stored shards unrounded: the optimizer stepped values
  the forward pass never saw, and the backward pass, gathering again, used unrounded
  weights. Here the copy is rounded and each process writes its part of the rounded copy
  into its shard, so forward, backward and optimizer see one rounded weight, as in one
  process.

Whether such a parameter changed since it was last rounded cannot be read from version
counters: torch's ``foreach`` optimizer kernels (the default on CUDA) leave a DTensor's
version unchanged, and FSDP2 keeps the copy's version across refills. It is read from
the values: each process keeps a copy of its shard as rounded (so memory for one more
shard of each rounded parameter) and compares bits; one all-reduce over the DTensor's
mesh makes every process decide alike, and checks that all of them are about to draw
the same stochastic-rounding seed (they must: each rounds the whole copy).

FSDP2's parameter records are reached through its private state (``torch 2.13``); where
they cannot be read, layers under FSDP2 are treated as plain ones, as they are under torch's
tracing dispatch modes (fake, proxy, functional tensors). Under ``torch.compile``
this rounding runs eagerly (``torch.compiler.disable``: a graph break at each lowered layer
with sharded parameters).
"""

from __future__ import annotations

import sys
import weakref
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist
from torch.utils.weak import WeakTensorKeyDictionary

from qtorch.formats.base import Format
from qtorch.kernels.dtensor import is_dtensor
from qtorch.kernels.noise import draw_seed
from qtorch.quantize import quantize_
from qtorch.rounding import Rounding

__all__ = ["Stored", "round_layer", "stored_param", "tracing_mode_active"]

_INT_OF = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}


@dataclass
class Stored:
    """A parameter kept in shards: the DTensor the optimizer steps, and the full copy the
    layer holds for this forward pass (FSDP2), or ``None`` when it holds the DTensor."""

    param: Any  # torch.distributed.tensor.DTensor
    copy: torch.Tensor | None

    def changed_since(self, snapshot: torch.Tensor) -> bool:
        """Whether this process's shard differs, bit for bit, from ``snapshot``."""
        local = self.param.to_local()
        if snapshot.shape != local.shape or snapshot.dtype != local.dtype:
            return True
        if snapshot.device != local.device:  # (moved: torch.equal refuses two devices)
            return True
        bits = _INT_OF[local.element_size()]
        return not torch.equal(local.contiguous().view(bits), snapshot.view(bits))

    def snapshot(self) -> torch.Tensor:
        """A copy of this process's shard, contiguous."""
        return self.param.to_local().detach().clone(memory_format=torch.contiguous_format)

    def round_(self, fmt: Format, rounding: Rounding) -> None:
        """Round the stored parameter in place (and the copy, when there is one)."""
        if self.copy is None:
            quantize_(self.param, fmt, rounding)
        elif is_dtensor(self.copy):
            # FSDP2 over tensor-parallel shards: both round the same full tensor, so the
            # same seed gives the same values (a DTensor's rounding is its full tensor's).
            if self.param.device != self.copy.device:
                raise RuntimeError(
                    "lower: FSDP2 keeps this tensor-parallel weight on another device "
                    "than its copy; its rounding cannot be shared"
                )
            generator = _default_generator(self.copy.device)
            state = generator.get_state()
            quantize_(self.copy, fmt, rounding)
            after = generator.get_state()
            generator.set_state(state)
            quantize_(self.param, fmt, rounding)
            generator.set_state(after)
        else:
            from torch.distributed.tensor import distribute_tensor

            quantize_(self.copy, fmt, rounding)
            part = distribute_tensor(
                self.copy.detach(),
                self.param.device_mesh,
                self.param.placements,
                src_data_rank=None,  # this process's part of the copy, no communication
            ).to_local()
            local = self.param.to_local()
            if part.shape != local.shape:
                raise RuntimeError(
                    f"lower: FSDP2's shard has shape {tuple(local.shape)} where its "
                    f"placements give {tuple(part.shape)}"
                )
            local.copy_(part)


def round_layer(layer: torch.nn.Module, names: list[str], fmt: Format, rounding: Rounding) -> None:
    """Round ``layer``'s sharded parameters ``names`` that changed in any process since they
    were last rounded to ``fmt`` with ``rounding`` (by this layer's quantizer or, for a
    weight tied across layers, another's).

    One all-reduce per mesh (of the changed flags and the next seed's halves) makes every
    process decide alike. Stochastic rounding: raises ``RuntimeError`` when the processes
    are not all about to draw the same seed (their RNGs differ: their roundings would).
    """
    stored = {name: stored_param(layer, name, layer.get_parameter(name)) for name in names}
    by_mesh: dict[int, list[str]] = {}
    for name, entry in stored.items():
        if entry is not None:
            by_mesh.setdefault(id(entry.param.device_mesh), []).append(name)
    for group in by_mesh.values():
        entries = [cast(Stored, stored[name]) for name in group]
        changed = [_changed(entry, fmt, rounding) for entry in entries]
        for entry, again in zip(entries, _any_process(entries, changed, rounding), strict=True):
            if again:
                entry.round_(fmt, rounding)
                _LAST[entry.param] = (entry.snapshot(), fmt, rounding)
            elif rounding is Rounding.STOCHASTIC:  # what rounding would draw (WeightQuantizer)
                draw_seed(None, (entry.param if entry.copy is None else entry.copy).device)


#: stored parameter -> (this process's shard as last rounded, format, rounding mode); one
#: record per parameter, so that a weight tied across lowered layers is rounded once per
#: change (as :class:`~qtorch.auto_low.WeightQuantizer` does for plain ones)
_LAST: WeakTensorKeyDictionary = WeakTensorKeyDictionary()


def _changed(entry: Stored, fmt: Format, rounding: Rounding) -> bool:
    """Whether this process's shard of ``entry`` differs from its last rounding to ``fmt``
    with ``rounding`` (or was never so rounded)."""
    last = _LAST.get(entry.param)
    if last is None or last[1] != fmt or last[2] is not rounding:
        return True
    return entry.changed_since(last[0])


def _any_process(entries: list[Stored], changed: list[bool], rounding: Rounding) -> list[bool]:
    """Per entry, whether it changed in any process of their (common) mesh."""
    first = entries[0]
    mesh = first.param.device_mesh
    flags = [int(c) for c in changed]
    if rounding is Rounding.STOCHASTIC:
        seed = _next_seed(first.copy if first.copy is not None else first.param.to_local())
        halves = [seed >> 32, seed & 0xFFFFFFFF]  # negated without overflow, for the minimum
        flags += halves + [-h for h in halves]
    flags_t = torch.tensor(flags, dtype=torch.int64, device=mesh.device_type)
    for process_group in mesh.get_all_groups():
        dist.all_reduce(flags_t, op=dist.ReduceOp.MAX, group=process_group)
    result = flags_t.tolist()
    count = len(changed)
    again = [bool(f) for f in result[:count]]
    if rounding is Rounding.STOCHASTIC and any(again):
        high, low = result[count : count + 2], [-v for v in result[count + 2 :]]
        if high != low:  # the maximum of each half is not also its minimum
            raise RuntimeError(
                "lower: the processes would round this sharded weight with different "
                "stochastic-rounding seeds; seed torch's RNG alike in every process "
                "(torch.manual_seed) so they draw the same noise"
            )
    return again


def stored_param(layer: torch.nn.Module, name: str, param: torch.Tensor) -> Stored | None:
    """The sharded storage behind ``layer``'s parameter ``name`` (currently ``param``), or
    ``None`` for a plain parameter."""
    record = _fsdp_record(layer, name)
    if record is not None:
        sharded = record.sharded_param
        return Stored(sharded, None if sharded is param else param)
    if is_dtensor(param):
        return Stored(param, None)
    return None


def tracing_mode_active() -> bool:
    """Whether torch's tracing dispatch modes are on (fake, proxy or functional tensors:
    ``torch.export``, ``make_fx``), where there are no values to compare or all-reduce.
    Other dispatch modes (``FlopCounterMode``, say) see real tensors."""
    try:
        keys = torch._C._TorchDispatchModeKey
        modes = (keys.FAKE, keys.PROXY, keys.FUNCTIONAL)
        return any(torch._C._get_dispatch_mode(key) is not None for key in modes)
    except AttributeError:  # another torch: count every mode as tracing
        return True


def _fsdp_record(layer: torch.nn.Module, name: str) -> Any | None:
    """FSDP2's record (``FSDPParam``) of ``layer``'s parameter ``name``, if FSDP2 has one."""
    state_module = sys.modules.get("torch.distributed.fsdp._fully_shard._fsdp_state")
    composable = sys.modules.get("torch.distributed._composable_state")
    if state_module is None or composable is None:  # FSDP2 never imported: nothing under it
        return None
    try:
        states = composable._module_state_mapping
        if not states:  # no module is under FSDP2 (or another composable API)
            return None
        known = _RECORDS.get(layer, {}).get(name)
        if known is not None and _records_place(known, layer, name):
            return known
        for ref in list(states.values()):
            state = ref()
            if not isinstance(state, state_module.FSDPState):
                continue
            for group in state._fsdp_param_groups:
                for record in group.fsdp_params:
                    if _records_place(record, layer, name):
                        _RECORDS.setdefault(layer, {})[name] = record
                        return record
    except AttributeError:  # another torch: its FSDP2 keeps other records
        return None
    return None


#: layer -> parameter name -> FSDP2's record of it, found before
_RECORDS: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, Any]] = weakref.WeakKeyDictionary()


def _records_place(record: Any, layer: torch.nn.Module, name: str) -> bool:
    """Whether FSDP2's ``record`` is of ``layer``'s parameter ``name`` (shared ones too)."""
    info = record._module_info
    places = [(info.module, info.param_name)]
    places += list(zip(info.shared_modules, info.shared_param_names, strict=True))
    return any(module is layer and pname == name for module, pname in places)


def _default_generator(device: torch.device) -> torch.Generator:
    """The torch RNG that ``quantize`` draws from on ``device`` when given no generator."""
    if device.type == "cpu":
        return torch.default_generator
    module = getattr(torch, device.type)
    index = device.index if device.index is not None else module.current_device()
    generator: torch.Generator = module.default_generators[index]
    return generator


def _next_seed(like: torch.Tensor) -> int:
    """The seed ``quantize`` on ``like`` would draw next, without drawing it."""
    generator = _default_generator(like.device)
    state = generator.get_state()
    seed = int(draw_seed(generator, like.device))
    generator.set_state(state)
    return seed
