"""DTensors (gloo, 2 CPU processes): rounded to the DTensor of the full tensor's rounding.

For every format family, both roundings, ``quantize`` and ``quantize_``, and placements that
shard rows (contiguous parts), columns (strided parts, uneven) or replicate, the DTensor's
full tensor must equal ``quantize(x.full_tensor())`` bit for bit, the same seed drawn on
every rank; so must a ``Partial`` DTensor's rounding (its pending sum), and a 2-D mesh's.
The full tensor's rounding by the plain-tensor path is the reference (it is checked against
independent oracles elsewhere); NaN payloads aside, as between the eager and compiled paths
in a few cases (see qtorch.kernels.vector_clamp; some parts are rounded eagerly).
Before, stochastic rounding and codebooks raised on DTensors, and posits and block floating
point gave other numbers.
"""

from __future__ import annotations

import json
import os
import socket
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from edge_cases import bits_equal

import qtorch

WORLD = 2

#: One format of each family, and the cases that take the gathering path.
SPECS = [
    "fixed(8,4)",
    "float(5,2)",
    "posit(8,2)",
    "nf4",
    "codebook(0.5,1,2,4)",
    "block(8,0)",
    "block(8,-1)",
    "mxfp8_e4m3",
    "nvfp4",
    'nvfp4(tensor_scale="amax")',
]
SHAPES = [(12, 40), (7, 33)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cases(rank: int) -> tuple[int, list[str]]:
    """Run every case on this rank; return how many ran and the ones that failed."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    failed: list[str] = []
    ran = 0

    def check(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
        nonlocal ran
        ran += 1
        full = got.full_tensor()  # collective: every rank calls it
        if not bits_equal(full, want):
            failed.append(name)

    for shape in SHAPES:
        full = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 4
        full[0, :3] = torch.tensor([0.0, -0.0, float("nan")])
        for spec in SPECS:
            fmt = qtorch.format_from_string(spec)
            for placement in (Shard(0), Shard(1), Replicate()):
                for rounding in ("nearest", "stochastic"):
                    torch.manual_seed(3)
                    want = qtorch.quantize(full, fmt, rounding)
                    for inplace in (False, True):
                        name = f"{shape} {spec} {placement} {rounding} inplace={inplace}"
                        x = distribute_tensor(full, mesh, [placement])
                        torch.manual_seed(3)
                        q = (qtorch.quantize_ if inplace else qtorch.quantize)(x, fmt, rounding)
                        if not isinstance(q, DTensor) or q.placements != (placement,):
                            failed.append(f"{name}: not a DTensor so placed")
                        elif inplace and q is not x:
                            failed.append(f"{name}: quantize_ did not return x")
                        check(name, q, want)

    # a pending sum: rounded as the sum, replicated; quantize_ refuses it
    part = torch.randn(6, 20, generator=torch.Generator().manual_seed(10 + rank))
    pending = DTensor.from_local(part, mesh, [Partial()])
    total = pending.full_tensor()
    torch.manual_seed(4)
    got = qtorch.quantize(pending, qtorch.FloatingPoint(4, 3), "stochastic")
    torch.manual_seed(4)
    check("partial", got, qtorch.quantize(total, qtorch.FloatingPoint(4, 3), "stochastic"))
    if got.placements != (Replicate(),):
        failed.append(f"partial: placements {got.placements}")
    try:
        qtorch.quantize_(pending, qtorch.FloatingPoint(4, 3))
        failed.append("partial quantize_: no error")
    except ValueError:
        pass

    # a 2-D mesh (1 x 2): rows replicated over the first axis, sharded over the second
    mesh2 = init_device_mesh("cpu", (1, WORLD))
    full = torch.randn(9, 16, generator=torch.Generator().manual_seed(5))
    for placements in ([Replicate(), Shard(1)], [Shard(0), Shard(0)]):
        x = distribute_tensor(full, mesh2, placements)
        torch.manual_seed(6)
        got = qtorch.quantize(x, qtorch.Posit(8, 1), "stochastic")
        torch.manual_seed(6)
        check(
            f"mesh 1x2 {placements}", got, qtorch.quantize(full, qtorch.Posit(8, 1), "stochastic")
        )

    # autograd: a Quantizer's forward and backward roundings, and quantize's zero gradient
    quant = qtorch.Quantizer(
        qtorch.FixedPoint(8, 4), qtorch.FixedPoint(8, 3), "stochastic", "stochastic"
    )
    full = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    x = distribute_tensor(full, mesh, [Shard(0)]).requires_grad_()
    torch.manual_seed(5)
    y = quant(x)
    (y * y).sum().backward()
    leaf = full.clone().requires_grad_()
    torch.manual_seed(5)
    y0 = quant(leaf)
    (y0 * y0).sum().backward()
    assert x.grad is not None and leaf.grad is not None
    check("quantizer forward", y, y0.detach())
    check("quantizer backward", x.grad, leaf.grad)
    x = distribute_tensor(full, mesh, [Shard(1)]).requires_grad_()
    qtorch.quantize(x, qtorch.Posit(8, 1), "stochastic").sum().backward()
    assert x.grad is not None
    check("zero gradient", x.grad, torch.zeros_like(full))
    return ran, failed


def _worker(rank: int, port: int, out: str, kernel_mode: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    # a rank that fails leaves the other waiting in a collective: not for ever
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120))
    qtorch.set_kernel_mode(kernel_mode)
    try:
        ran, failed = _cases(rank)
        report: dict[str, Any] = {"ran": ran, "failed": failed}
    except BaseException:
        report = {"ran": 0, "failed": [traceback.format_exc()]}
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()
    os._exit(0)  # as in test_ddp.py: gloo processes may abort in C++ static destructors


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("kernel_mode", ["eager", pytest.param("compiled", marks=pytest.mark.slow)])
def test_dtensors_round_as_their_full_tensors(tmp_path: Path, kernel_mode: str) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), kernel_mode), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert report["failed"] == [], report["failed"]
        assert report["ran"] == len(SHAPES) * len(SPECS) * 3 * 2 * 2 + 6
