"""qtorch traced by torch (``torch.export``, ``FakeTensorMode``) and on the meta device.

A trace runs the eager path (``torch.compiler.is_compiling()``), under torch's dispatch
modes. What it must not do is leave its fake or traced tensors behind: codebook tables
were cached when first built, and a model exported before its first call returned
FakeTensors from then on (:class:`qtorch.kernels.codebook.TableCache`). Tables are built
without reading a tensor back, so they can be built under a mode and on the meta device.
"""

from __future__ import annotations

import pytest
import torch
from edge_cases import bits_equal
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.export import Dim
from torch.utils._python_dispatch import TorchDispatchMode

import qtorch
from qtorch.auto_low import lower
from qtorch.cli.bench import FAMILIES, family_format
from qtorch.formats import codebook
from qtorch.quant import Quantizer, configurable_table_quantize
from qtorch.quant import table as table_module

FORMATS = {
    "codebook": qtorch.Codebook([0.375, 1.25, 2.5]),  # of this test only: no tables yet
    "codebook256": family_format("codebook256"),  # bucketed tables, built under the trace
    "fixed": qtorch.FixedPoint(8, 4),
    "block": qtorch.BlockFloatingPoint(8, dim=0),
    "mx": qtorch.mxfp8_e4m3,
}


def _model(fmt: qtorch.Format, rounding: str) -> torch.nn.Module:
    torch.manual_seed(0)
    act = Quantizer(forward_number=fmt, forward_rounding=rounding)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), act)


def _seeded(model: torch.nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return model(x)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("name", list(FORMATS))
def test_exported_models_compute_what_the_model_computes(name: str, rounding: str) -> None:
    """Exported with a dynamic batch before the model's first call (so that no table
    exists yet), the program gives the model's bits at other batch sizes, stochastic
    rounding with the same seed; and the model still returns real tensors afterwards."""
    model = _model(FORMATS[name], rounding)
    batch = {"input": {0: Dim("batch", min=1, max=1024)}}
    program = torch.export.export(model, (torch.randn(4, 64),), dynamic_shapes=batch).module()
    for n in (1, 3, 300):
        x = torch.randn(n, 64) * 4
        got = _seeded(program, x, n)
        want = _seeded(model, x, n)
        assert type(want) is torch.Tensor
        assert bits_equal(got, want)
    if rounding == "stochastic":  # the noise is drawn at run time, not fixed at export
        assert not bits_equal(_seeded(program, x, 1), _seeded(program, x, 2))


def test_exported_lowered_models_compute_what_the_model_computes() -> None:
    """A model lowered with weight, activation and gradient formats (its hooks round the
    weights in place and the outputs stochastically) exports, and the program gives the
    model's bits at other batch sizes."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)]
    model = lower(
        nn.Sequential(*layers),
        ["conv", "linear"],
        forward_number=qtorch.Codebook([0.625, 1.5, 3.5]),  # of this test only
        forward_rounding="stochastic",
        backward_number=qtorch.FixedPoint(8, 4),
        weight_number=qtorch.FixedPoint(8, 6),
    )
    batch = {"input": {0: Dim("batch", min=1, max=64)}}
    program = torch.export.export(model, (torch.randn(2, 3, 8, 8),), dynamic_shapes=batch)
    assert isinstance(model[3].qtorch_output, Quantizer)
    for n in (1, 5):
        x = torch.randn(n, 3, 8, 8)
        assert bits_equal(_seeded(program.module(), x, n), _seeded(model, x, n))


def test_codebook_tables_built_under_fake_tensor_mode_are_not_kept() -> None:
    """Under ``FakeTensorMode`` a codebook and a qtorch+ table quantize to fake tensors
    of x's shape; later calls on real tensors give real tensors, nearest the nearest
    entry, and the same bits as with tables built anew."""
    entries = [0.25, 0.75, 3.0]
    fmt = qtorch.Codebook(entries)  # a new codebook: its tables are built under the mode
    table = [0.0, 0.3, 1.7, 2.5]
    x = torch.randn(1000) * 3

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        return [
            qtorch.quantize(x, fmt),
            qtorch.quantize(x, fmt, "stochastic", torch.Generator().manual_seed(1)),
            configurable_table_quantize(x, table, 1.5),
            qtorch.quantize(x, family_format("codebook256"), "stochastic"),
        ]

    with FakeTensorMode() as mode:
        fakes = run(mode.from_tensor(x))
    assert all(isinstance(f, FakeTensor) and f.shape == x.shape for f in fakes)
    after = run(x)
    assert all(type(q) is torch.Tensor for q in after)
    signed = torch.tensor([-e for e in entries] + entries)
    nearest = signed[(x[:, None] - signed).abs().argmin(dim=1)]
    assert bits_equal(after[0], nearest)
    codebook._build_tables.cache_clear()
    table_module._nearest_tables.cache_clear()
    for got, want in zip(after[:3], run(x)[:3], strict=True):  # (the last: torch RNG)
        assert bits_equal(got, want)


class _PassThrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        return func(*args, **(kwargs or {}))


def test_modes_that_make_plain_tensors_use_the_cached_tables() -> None:
    """Under a dispatch mode whose tensors are plain ones (one that watches the operations,
    as ``FlopCounterMode`` does) the cached tables serve: built anew on every call, a
    256-entry codebook's took 12-16 ms a call there, against 0.3-1 ms."""
    fmt = family_format("codebook256")
    x = torch.randn(1000) * 3
    want = qtorch.quantize(x, fmt)
    hits = codebook._build_tables._cached.cache_info().hits
    with _PassThrough():
        got = [qtorch.quantize(x, fmt) for _ in range(2)]
    assert codebook._build_tables._cached.cache_info().hits - hits >= 2
    assert all(type(q) is torch.Tensor and bits_equal(q, want) for q in got)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_meta_tensors_give_meta_results(name: str, rounding: str) -> None:
    """On the meta device (shapes without data: models built empty, shape inference), every
    family gives a meta result of x's shape ("auto" runs the eager path there), and
    ``quantize_`` returns x. A 256-entry codebook's stochastic tables read a device tensor
    back to the host while they were built ("Cannot copy out of meta tensor"), and failed
    there."""
    fmt = family_format(name)
    x = torch.empty(64, 64, device="meta")
    with qtorch.kernel_mode("auto"):
        q = qtorch.quantize(x, fmt, rounding)
        assert q.device.type == "meta" and q.shape == x.shape and q.dtype == x.dtype
        assert qtorch.quantize_(x, fmt, rounding) is x


def test_formats_built_on_the_meta_default_device() -> None:
    """Models built empty (``with torch.device("meta")``) build their formats there too:
    NVFP4 rounded a numeric tensor_scale to float32 through a tensor it read back
    ("Tensor.item() cannot be called on meta tensors")."""
    with torch.device("meta"):
        fmt = qtorch.NVFP4(tensor_scale=0.3)
        model = torch.nn.Sequential(torch.nn.Linear(32, 32), qtorch.Quantizer(fmt, fmt, "nearest"))
    assert fmt.tensor_scale == torch.tensor(0.3, dtype=torch.float32).item()
    model = model.to_empty(device="cpu")
    x = torch.randn(4, 32)
    assert bits_equal(model[1](x), qtorch.quantize(x, qtorch.NVFP4(tensor_scale=0.3)))
