"""``lower(weight_number=...)`` on sharded models (gloo, 2 CPU processes) ends where one
process ends, bit for bit.

FSDP2 gives a lowered layer a full copy of its weights for each forward pass, gathered
from the stored shards. Before, only that copy was rounded: the stored shards, which the
optimizer steps and the backward pass gathers again, stayed unrounded, and FSDP2 keeps
the copy's version counter across refills. Tensor-parallel DTensor weights were rounded
at every call, drawing a seed each time (torch's ``foreach`` optimizer kernels leave a
DTensor's version unchanged, so versions cannot tell an update). Both now round the
stored weights once per change (:mod:`qtorch.auto_low.sharded`), also a weight tied
across two layers (FSDP2 rounded it once per layer: NVFP4's planted block twice).

As in ``test_ddp.py``, every value is dyadic with few bits (the layer outputs and their
gradients are rounded to fixed point), so sums are exact whatever their order, and every
process seeds torch's RNG as the single process does. Each data-parallel process sees its
share of the batch; its loss is its share of the global loss, and the gradients, which
FSDP2 averages over the processes, are multiplied back by the world size (exactly).
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from edge_cases import bits_equal
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import qtorch
from qtorch import NVFP4, FixedPoint
from qtorch.auto_low import lower

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")

WORLD = 2
STEPS = 3
FIX = FixedPoint(8, 4)
FP4 = NVFP4(block_size=8)
# (name, model, weight format, weight rounding)
CASES = [
    ("fsdp_layers", "tied", FIX, "stochastic"),
    ("fsdp_root", "tied", FP4, "nearest"),  # trained under FlopCounterMode
    ("tp", "mlp", FIX, "stochastic"),
    ("tp_nvfp4", "mlp", FP4, "nearest"),
]


class Tied(nn.Module):
    """``mid`` runs twice in each forward pass (weights shared across depth), and ``c``
    shares ``mid``'s weight (tied across layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.mid = nn.Linear(8, 8)
        self.c = nn.Linear(8, 8)
        self.c.weight = self.mid.weight
        self.b = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        h = torch.relu(self.mid(torch.relu(self.mid(h))))
        return self.b(torch.relu(self.c(h)))


def _model(kind: str) -> nn.Module:
    model: nn.Module = (
        Tied() if kind == "tied" else nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.round(torch.rand(p.shape, generator=g) * 64 - 32) / 64)
        # a block whose NVFP4 rounding rounded again differs (test_auto_low): rounded at
        # every call, or by each of two layers tied to it, it would change with no update
        planted = model.mid.weight if kind == "tied" else model[0].weight
        planted[2] = torch.tensor(
            [0.0073, -0.0019, -0.0046, -0.0057, -0.0182, 0.0039, -0.0022, 0.0056]
        )
    return model


def _lower(model: nn.Module, fmt: Any, rounding: str) -> nn.Module:
    return lower(
        model,
        ["linear"],
        forward_number=FixedPoint(10, 5),
        backward_number=FixedPoint(12, 8),
        forward_rounding="nearest",
        backward_rounding="nearest",
        weight_number=fmt,
        weight_rounding=rounding,
    )


def _batches(kind: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    width = 4 if kind == "tied" else 8
    return [
        (
            torch.randint(-8, 9, (8, width), generator=g).float() / 4,
            torch.randint(-8, 9, (8, 2), generator=g).float() / 4,
        )
        for _ in range(STEPS)
    ]


def _train(
    model: nn.Module, kind: str, share: slice, world: int
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Train STEPS steps; return the outputs of two forward passes before each step
    (same weights, so equal), and the weights as full tensors at the end and, under keys
    starting with FIRST, after the first pass (the forward quantizers may hide a
    difference in the first rounding, and the steps' roundings erase it)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.125, momentum=0.5, foreach=True)
    outputs = []
    first: dict[str, torch.Tensor] = {}
    for x, y in _batches(kind):
        opt.zero_grad()
        for _ in range(2):
            with torch.no_grad():
                outputs.append(model(x[share]).detach().clone())
            first = first or {FIRST + k: v for k, v in _full(model).items()}
        loss = ((model(x[share]) - y[share]) ** 2).sum() / 16
        loss.backward()
        for p in model.parameters():
            assert p.grad is not None
            p.grad.mul_(world)
        opt.step()
    return outputs, {**_full(model), **first}


FIRST = "after the first pass: "


def _full(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone()
        for k, v in model.state_dict().items()
    }


def _sharded(name: str, kind: str, fmt: Any, rounding: str, rank: int, compiled: bool) -> Any:
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    model = _model(kind)
    if name == "fsdp_layers":  # lowered before sharding, FSDP units of their own
        _lower(model, fmt, rounding)
        for unit in (model.a, [model.mid, model.c], model.b):  # (tied weights: one unit)
            fully_shard(unit)
        fully_shard(model)
    elif name == "fsdp_root":  # one FSDP unit holding every layer, lowered after
        fully_shard(model)
        _lower(model, fmt, rounding)
    else:  # tensor parallel: every process runs the whole batch
        mesh = init_device_mesh("cpu", (WORLD,))
        parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
        _lower(model, fmt, rounding)
    if compiled:  # the hooks traced too; the sharded rounding runs eagerly inside
        model.compile(backend="aot_eager")
    torch.manual_seed(123)
    share = slice(4 * rank, 4 * rank + 4) if name.startswith("fsdp") else slice(None)
    world = WORLD if name.startswith("fsdp") else 1
    if name == "fsdp_root":  # under a dispatch mode of real tensors, as when counting FLOPs
        with FlopCounterMode(display=False) as counter:
            outputs, full = _train(model, kind, share, world)
        assert counter.get_total_flops() > 0
    else:
        outputs, full = _train(model, kind, share, world)
    if name != "fsdp_layers":
        return outputs, full, None
    torch.manual_seed(rank)  # processes about to draw different seeds: refused
    with torch.no_grad():
        model.a.weight.add_(1 / 16)
    try:
        model(torch.zeros(1, 4))
        error = None
    except RuntimeError as e:
        error = str(e)
    return outputs, full, error


def _worker(rank: int, port: int, out: str, compiled: bool) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        results = {name: _sharded(name, *rest, rank, compiled) for name, *rest in CASES}
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    os._exit(0)  # as in test_ddp.py: gloo processes may abort in their C++ destructors


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_sharded_weights_round_as_one_process(tmp_path: Any, compiled: bool) -> None:
    """Compiled (``model.compile()`` in every process, against the eager single process):
    the hooks are traced, and the sharded rounding, all-reduces and bit comparisons, runs
    eagerly inside (before, the copy alone was rounded, in the graph)."""
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), compiled), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{tmp_path}/rank{rank}.pt") for rank in range(WORLD)]
    for name, kind, fmt, rounding in CASES:
        model = _lower(_model(kind), fmt, rounding)
        torch.manual_seed(123)
        outputs, full = _train(model, kind, slice(None), 1)
        for rank, results in enumerate(ranks):
            got_outputs, got_full, error = results[name]
            share = slice(4 * rank, 4 * rank + 4) if name.startswith("fsdp") else slice(None)
            assert len(got_outputs) == len(outputs)
            for got, want in zip(got_outputs, outputs, strict=True):
                assert bits_equal(got, want[share]), (name, rank)
            assert list(got_full) == list(full)
            for key, value in full.items():
                assert bits_equal(got_full[key], value), (name, rank, key)
            if name == "fsdp_layers":
                assert error is not None and "seed torch's RNG alike" in error
        # the single process trained, and its next pass rounds each weight to the format
        first = next(iter(full))
        assert not bits_equal(full[first], _model(kind).state_dict()[first])
        with torch.no_grad():
            model(_batches(kind)[0][0])
        for key, value in full.items():
            if key.startswith(FIRST):
                continue
            rounded = model.state_dict()[key]
            if rounding == "nearest":
                assert bits_equal(rounded, qtorch.quantize(value, fmt)), (name, key)
            else:  # on the grid, and within one step of it
                assert bits_equal(rounded, qtorch.quantize(rounded, fmt)), (name, key)
                assert bool(((rounded - value).abs() < 2**-4).all()), (name, key)


def _worker_2d(rank: int, port: int, out: str) -> None:
    """FSDP2 over tensor-parallel shards: a (data, tensor) mesh of 2 × 2 processes."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=4, timeout=timedelta(seconds=120))
    try:
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        model = _model("mlp")
        parallelize_module(model, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
        fully_shard(model, mesh=mesh["dp"])
        _lower(model, FIX, "stochastic")
        torch.manual_seed(123)
        dp = mesh["dp"].get_local_rank()
        torch.save(_train(model, "mlp", slice(4 * dp, 4 * dp + 4), 2), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    os._exit(0)


@pytest.mark.slow
def test_fsdp_over_tensor_parallel_shards_rounds_as_one_process(tmp_path: Any) -> None:
    """FSDP2's copy is then itself a DTensor: the copy and the shard are rounded with one
    seed (each is its full tensor's rounding), so they agree."""
    mp.spawn(_worker_2d, args=(_free_port(), str(tmp_path)), nprocs=4, join=True)
    model = _lower(_model("mlp"), FIX, "stochastic")
    torch.manual_seed(123)
    outputs, full = _train(model, "mlp", slice(None), 1)
    for rank in range(4):
        got_outputs, got_full = torch.load(f"{tmp_path}/rank{rank}.pt")
        dp = rank // 2  # mesh (dp, tp) in row-major rank order
        for got, want in zip(got_outputs, outputs, strict=True):
            assert bits_equal(got, want[4 * dp : 4 * dp + 4]), rank
        for key, value in full.items():
            assert bits_equal(got_full[key], value), (rank, key)
