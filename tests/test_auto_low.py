"""lower / sequential_lower: which layers are reached, what survives copies and checkpoints."""

from __future__ import annotations

import copy
import io
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from edge_cases import bits_equal
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import qtorch
from qtorch import NVFP4, FixedPoint, FloatingPoint
from qtorch.auto_low import LAYER_TYPES, lower, sequential_lower
from qtorch.quant import Quantizer

FIX = FixedPoint(8, 4)


def on_fixed_grid(t: torch.Tensor, fl: int = 4, wl: int = 8) -> bool:
    """Independent check of FixedPoint(wl, fl) membership: integer multiples of 2**-fl in range."""
    k = t * 2.0**fl
    top = 2 ** (wl - 1)
    return bool(torch.equal(k, torch.round(k)) and (k >= -top).all() and (k <= top - 1).all())


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU())])
        self.heads = nn.ModuleDict({"a": nn.Linear(4, 3)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.heads["a"](x)


def test_nested_containers_all_reached_and_outputs_quantized() -> None:
    model = Custom()
    x = torch.randn(5, 4)
    plain = copy.deepcopy(model)
    lower(model, ["linear"], FIX, None, "nearest")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 3
    assert all(isinstance(m.qtorch_output, Quantizer) for m in linears)
    assert not hasattr(model.blocks[1][1], "qtorch_output")  # ReLU not asked for

    # Reference: quantize (to the 1/16 grid, nearest, clamped) after each Linear by hand.
    def q(t: torch.Tensor) -> torch.Tensor:
        return torch.clamp(torch.round(t * 16) / 16, -8, 7.9375)

    h = q(plain.blocks[0](x))
    h = torch.relu(q(plain.blocks[1][0](h)))
    expected = q(plain.heads["a"](h))
    out = model(x)
    assert bits_equal(out.detach(), expected.detach())
    assert on_fixed_grid(out.detach())


def test_unknown_layer_type_lists_accepted_names() -> None:
    with pytest.raises(ValueError, match="'conv', 'linear', 'pool', 'pad', 'activation'"):
        lower(nn.Linear(2, 2), ["lineer"])
    with pytest.raises(TypeError, match="list"):
        lower(nn.Linear(2, 2), "linear")
    with pytest.raises(ValueError, match="rounding"):
        lower(nn.Linear(2, 2), ["linear"], FIX, forward_rounding="nearst")


def test_every_layer_type_name_is_supported() -> None:
    assert list(LAYER_TYPES) == [
        "conv",
        "linear",
        "pool",
        "pad",
        "activation",
        "normalization",
        "dropout",
        "loss",
        "attention",  # QPyTorch's eight, then these
        "recurrent",
        "embedding",
    ]
    layers = [nn.Conv1d(1, 2, 3), nn.MaxPool1d(2), nn.ZeroPad1d(1), nn.Tanh()]
    layers += [nn.BatchNorm1d(2), nn.Dropout(0.0), nn.Flatten(), nn.Linear(12, 2)]
    model = nn.Sequential(*layers)
    lower(model, list(LAYER_TYPES), FIX, None, "nearest")
    lowered = [m for m in model if hasattr(m, "qtorch_output")]
    assert len(lowered) == 7  # all but Flatten
    out = model(torch.randn(3, 1, 10))
    assert on_fixed_grid(out.detach())
    loss = lower(nn.MSELoss(), ["loss"], FIX, None, "nearest")
    assert loss(torch.tensor([0.3]), torch.tensor([0.0])).item() == 0.0625  # 0.09 -> 1/16


def test_backward_format_reaches_the_output_gradient() -> None:
    layer = nn.Linear(3, 1, bias=False)
    lower(layer, ["linear"], None, FixedPoint(8, 1), backward_rounding="nearest")
    x = torch.tensor([[1.0, 2.0, 3.0]])
    layer(x).backward(torch.tensor([[0.3]]))  # 0.3 -> 0.5 on the 1/2 grid
    assert layer.weight.grad is not None
    assert layer.weight.grad.tolist() == [[0.5, 1.0, 1.5]]


def _lowered() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return lower(model, ["linear", "activation"], FIX, FIX, "nearest", "nearest")


def test_survives_deepcopy_pickle_and_state_dict() -> None:
    model = _lowered()
    x = torch.randn(6, 4)
    expected = model(x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert bits_equal(clone(x), expected)
        assert on_fixed_grid(clone(x).detach())
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert bits_equal(loaded(x), expected)
    # state_dict keys are those of the unlowered model, both ways round.
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert list(plain.state_dict()) == list(model.state_dict())
    plain.load_state_dict(model.state_dict())
    fresh = _lowered()
    fresh.load_state_dict(plain.state_dict())
    assert bits_equal(fresh(x), expected)


def test_sequential_lower_leaves_the_original_untouched() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(6, 4)
    plain_out = model(x)
    new = sequential_lower(model, ["linear"], FIX, None, "nearest")
    assert new is not model
    assert not any(hasattr(m, "qtorch_output") for m in model.modules())
    assert not any(len(m._forward_hooks) for m in model.modules())
    assert bits_equal(model(x), plain_out)
    assert on_fixed_grid(new(x).detach())
    for key, value in model.state_dict().items():
        assert bits_equal(value, before[key])


def test_weight_quantization_option() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    lower(model, ["linear"], weight_number=FIX, weight_rounding="nearest")
    keys = list(model.state_dict())
    model(torch.randn(2, 4))
    for layer in (model[0], model[2]):
        assert on_fixed_grid(layer.weight.detach()) and on_fixed_grid(layer.bias.detach())
    assert list(model.state_dict()) == keys
    assert "FixedPoint(wl=8, fl=4" in repr(model)
    # Lowering again without weight_number removes the weight rounding.
    lower(model, ["linear"])
    assert not hasattr(model[0], "qtorch_weight") and len(model[0]._forward_pre_hooks) == 0


class Loop(nn.Module):
    """One layer applied three times (weights shared across steps)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = torch.tanh(self.layer(x))
        return x


def test_a_layer_called_several_times_in_a_pass_rounds_its_weights_once() -> None:
    """Output and gradients are those of the unlowered layer holding the rounded weights.
    Rounding the weights again at the second and third calls bumped their version after
    the second call had saved them: backward raised ("modified by an inplace operation")."""
    torch.manual_seed(2)
    model = lower(Loop(), ["linear"], weight_number=FIX)  # stochastic rounding
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    y = model(x)
    y.sum().backward()
    plain = Loop()
    with torch.no_grad():
        plain.layer.weight.copy_(model.layer.weight)
        plain.layer.bias.copy_(model.layer.bias)
    want = plain(x)
    want.sum().backward()
    assert on_fixed_grid(model.layer.weight.detach()) and on_fixed_grid(model.layer.bias.detach())
    assert bits_equal(y, want)
    for a, b in ((model.layer.weight, plain.layer.weight), (model.layer.bias, plain.layer.bias)):
        assert a.grad is not None and b.grad is not None and bits_equal(a.grad, b.grad)


def test_weights_are_rounded_again_only_when_they_changed() -> None:
    """NVFP4's rounding is not idempotent (a block maximum rounded up a binade changes its
    scale): rounded at every forward pass, weights changed with no update between passes.
    Changes seen: an update under no_grad, ``load_state_dict``, new storage through
    ``.data =``; each is rounded at the next pass (nearest: qtorch.quantize's result)."""
    fmt = NVFP4(block_size=8)
    layer = lower(nn.Linear(8, 8), ["linear"], weight_number=fmt, weight_rounding="nearest")
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(4))
    # a block whose E4M3 scale is subnormal: 0.0182 / 6 -> 2**-8 makes the maximum 2**-6,
    # then 2**-6 / 6 -> 2**-9 makes it 6 * 2**-9
    w[2] = torch.tensor([0.0073, -0.0019, -0.0046, -0.0057, -0.0182, 0.0039, -0.0022, 0.0056])
    twice = qtorch.quantize(qtorch.quantize(w, fmt), fmt)
    assert not bits_equal(twice, qtorch.quantize(w, fmt))  # the input shows the difference
    x = torch.randn(3, 8)

    def check(set_weight: Callable[[torch.Tensor], None], value: torch.Tensor) -> None:
        set_weight(value)
        outputs = [layer(x) for _ in range(3)]
        assert bits_equal(layer.weight.detach(), qtorch.quantize(value, fmt))
        assert all(bits_equal(out, outputs[0]) for out in outputs)

    def in_place(v: torch.Tensor) -> None:
        with torch.no_grad():
            layer.weight.copy_(v)

    def new_storage(v: torch.Tensor) -> None:
        layer.weight.data = v.clone()

    def state(v: torch.Tensor) -> None:
        layer.load_state_dict({"weight": v, "bias": layer.bias.detach()})

    check(in_place, w)
    check(new_storage, w * 1.5)
    check(state, w - 0.25)


def test_tied_weights_are_rounded_once_per_change() -> None:
    """A weight shared by two lowered layers was rounded by each at every pass: backward
    raised ("modified by an inplace operation") once the first layer had saved it, and
    NVFP4's non-idempotent block ended rounded twice. Now the second layer finds it rounded
    by the first; the same holds in a deepcopy."""
    fmt = NVFP4(block_size=8)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
    model[2].weight = model[0].weight
    lower(model, ["linear"], weight_number=fmt, weight_rounding="nearest")
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(4))
    w[2] = torch.tensor([0.0073, -0.0019, -0.0046, -0.0057, -0.0182, 0.0039, -0.0022, 0.0056])
    x = torch.randn(3, 8, requires_grad=True)
    for value in (w, w * 1.5):
        with torch.no_grad():
            model[0].weight.copy_(value)
        for net in (model, copy.deepcopy(model)):
            version = net[0].weight._version
            net(x).sum().backward()
            net(x).sum().backward()
            assert net[0].weight._version == version + 1  # the second pass rounds nothing
            assert bits_equal(net[0].weight.detach(), qtorch.quantize(value, fmt))


def test_a_deepcopy_is_not_rounded_again() -> None:
    """A deepcopy of a lowered model whose weights were rounded and not changed since
    computes what the original computes. Before, the copy's parameters were new tensors, so
    its first pass rounded them again: NVFP4's non-idempotent block changed. The copy's own
    updates are still seen."""
    fmt = NVFP4(block_size=8)
    model = lower(nn.Linear(8, 8), ["linear"], weight_number=fmt, weight_rounding="nearest")
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(4))
    w[2] = torch.tensor([0.0073, -0.0019, -0.0046, -0.0057, -0.0182, 0.0039, -0.0022, 0.0056])
    once = qtorch.quantize(w, fmt)
    assert not bits_equal(qtorch.quantize(once, fmt), once)  # the input shows the difference
    with torch.no_grad():
        model.weight.copy_(w)
    x = torch.randn(3, 8)
    want = model(x)
    clone = copy.deepcopy(model)
    assert bits_equal(clone(x), want)
    assert bits_equal(clone.weight.detach(), once)
    with torch.no_grad():
        clone.weight.mul_(1.5)
    clone(x)
    assert bits_equal(clone.weight.detach(), qtorch.quantize(once * 1.5, fmt))
    assert bits_equal(model.weight.detach(), once)


def test_activation_checkpointing_recomputes_the_forward_noise() -> None:
    """``torch.utils.checkpoint`` restores torch's RNG and runs the layers again in backward,
    where their weights are already rounded. Stochastic weight rounding skipped there drew
    no seed, so the recomputed activations had other noise than the forward pass's and the
    gradients differed from those without checkpointing; a skipped rounding now draws
    the seed it would have drawn."""
    from torch.utils.checkpoint import checkpoint

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
            self.head = nn.Linear(32, 4)
            self.reentrant: bool | None = None  # None: no checkpointing

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.reentrant is None:
                return self.head(self.body(x))
            return self.head(checkpoint(self.body, x, use_reentrant=self.reentrant))

    torch.manual_seed(0)
    model = Net()
    lower(model, ["linear", "activation"], FIX, FIX, weight_number=FIX)  # all stochastic
    x = torch.randn(64, 16, requires_grad=True)
    grads = []
    for reentrant in (None, False, True):
        run = copy.deepcopy(model)
        run.reentrant = reentrant
        torch.manual_seed(1)
        for _ in range(2):  # the second step's weights were changed by the first
            run(x).square().mean().backward()
            with torch.no_grad():
                for p in run.parameters():
                    assert p.grad is not None
                    p.sub_(p.grad)
        grads.append([p.grad for p in run.parameters()])
    for checkpointed in grads[1:]:
        assert all(bits_equal(a, b) for a, b in zip(grads[0], checkpointed, strict=True))


class Float8Casts(torch.autograd.Function):
    """torch's casts: to float8_e4m3fn forward, to float8_e5m2 backward (a plain ``.to`` chain
    would also cast the gradient to float8_e4m3fn on its way back)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.float8_e4m3fn).to(t.dtype)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        return g.to(torch.float8_e5m2).to(g.dtype)


def test_autocast_outputs_and_gradients_are_torch_casts() -> None:
    """Under CPU autocast (bfloat16) lowered layers round the bfloat16 outputs and gradients
    they get, in that dtype: torch's float8 casts applied to the plain model's, bit for bit;
    the parameters' gradients stay float32."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    model = copy.deepcopy(plain)
    fp8, bf8 = qtorch.float8_e4m3fn, qtorch.float8_e5m2
    lower(model, ["linear", "activation"], fp8, bf8, "nearest", "nearest")
    for layer in plain:
        layer.register_forward_hook(lambda module, args, out: Float8Casts.apply(out))
    x = torch.randn(64, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, want = model(x), plain(x)
    assert got.dtype == torch.bfloat16 and bits_equal(got, want)
    grad = torch.randn(64, 4)
    got.float().backward(grad)
    want.float().backward(grad)
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None
        assert a.grad.dtype == torch.float32 and bits_equal(a.grad, b.grad)


def fix(t: torch.Tensor, wl: int = 8, fl: int = 4) -> torch.Tensor:
    """FixedPoint(wl, fl) nearest by hand: ties to even (torch.round), saturating."""
    top = 2 ** (wl - 1)
    return torch.clamp(torch.round(t * 2.0**fl), -top, top - 1) / 2.0**fl


class Fix(torch.autograd.Function):
    """fix() forward; backward fix() of the gradient to FixedPoint(*grad_format), or the
    gradient straight through for None."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, grad_format: tuple[int, int] | None) -> torch.Tensor:
        ctx.grad_format = grad_format
        return fix(t)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        return (g if ctx.grad_format is None else fix(g, *ctx.grad_format)), None


def test_multihead_attention_out_proj_and_attention() -> None:
    """``nn.MultiheadAttention`` computes its output projection from ``out_proj``'s weights
    without calling ``out_proj``: lowering "linear" left those weights unrounded and that
    output unquantized, silently. The attention module's hooks now run ``out_proj``'s
    lowering; "attention" lowers its own outputs and parameters (the q/k/v projections)."""
    torch.manual_seed(0)
    plain = nn.MultiheadAttention(16, 2, batch_first=True)
    with torch.no_grad():
        plain.in_proj_bias.uniform_(-1, 1)
        plain.out_proj.bias.uniform_(-1, 1)
    x = torch.randn(2, 5, 16)

    def by_hand(names: list[str], fl: int = 4) -> nn.MultiheadAttention:
        ref = copy.deepcopy(plain)
        with torch.no_grad():
            for name in names:
                ref.get_parameter(name).copy_(fix(ref.get_parameter(name), fl=fl))
        return ref

    out_proj = ["out_proj.weight", "out_proj.bias"]
    model = lower(
        copy.deepcopy(plain),
        ["linear"],
        FIX,
        FixedPoint(12, 8),
        "nearest",
        "nearest",
        weight_number=FIX,
        weight_rounding="nearest",
    )
    ref = by_hand(out_proj)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, weights = model(xa, xa, xa)
    raw, want_weights = ref(xb, xb, xb)
    want = Fix.apply(raw, (12, 8))
    assert bits_equal(got, want) and bits_equal(weights, want_weights)
    assert bits_equal(model.out_proj.weight, ref.out_proj.weight)
    assert bits_equal(model.in_proj_weight, plain.in_proj_weight)  # not a Linear's
    grad = torch.randn_like(got)
    got.backward(grad)
    want.backward(grad)
    assert xa.grad is not None and xb.grad is not None and bits_equal(xa.grad, xb.grad)

    both = {
        "linear": {},
        "attention": {"forward_number": FixedPoint(8, 2), "weight_number": FixedPoint(8, 2)},
    }
    model = lower(
        copy.deepcopy(plain),
        both,
        FIX,
        None,
        "nearest",
        weight_number=FIX,
        weight_rounding="nearest",
    )
    ref = by_hand(["in_proj_weight", "in_proj_bias"], fl=2)
    with torch.no_grad():
        for name in out_proj:
            ref.get_parameter(name).copy_(fix(ref.get_parameter(name)))
        got, weights = model(x, x, x)
        raw, raw_weights = ref(x, x, x)
    assert not bits_equal(fix(fix(raw), fl=2), fix(raw, fl=2))  # the order shows
    assert bits_equal(got, fix(fix(raw), fl=2)) and bits_equal(weights, fix(raw_weights, fl=2))
    for name, param in model.named_parameters():
        assert bits_equal(param, ref.get_parameter(name)), name

    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    lower(
        layer,
        ["linear", "attention", "normalization"],
        FIX,
        None,
        "nearest",
        weight_number=FIX,
        weight_rounding="nearest",
    )
    out = layer(x)
    assert on_fixed_grid(out.detach())
    for name, param in layer.named_parameters():
        assert on_fixed_grid(param.detach()), name


def test_recurrent_modules_sequences_states_and_cells() -> None:
    """``"recurrent"``: an LSTM's output sequence and final states (a ``PackedSequence`` output
    keeps its type and batch sizes) and its weights; a cell's output at each step of a loop,
    gradients included. Against torch's modules with weights and outputs rounded by hand."""
    torch.manual_seed(0)
    plain = nn.LSTM(4, 6, num_layers=2, batch_first=True)
    model = lower(
        copy.deepcopy(plain),
        ["recurrent"],
        FIX,
        None,
        "nearest",
        weight_number=FIX,
        weight_rounding="nearest",
    )
    with torch.no_grad():
        for param in plain.parameters():
            param.copy_(fix(param))
    x = torch.randn(3, 5, 4)
    with torch.no_grad():
        (out, (h, c)), (want, (want_h, want_c)) = model(x), plain(x)
        assert bits_equal(out, fix(want)) and bits_equal(h, fix(want_h))
        assert bits_equal(c, fix(want_c))
        packed = pack_padded_sequence(x, [5, 3, 2], batch_first=True)
        got_packed, want_packed = model(packed)[0], plain(packed)[0]
    assert isinstance(got_packed, PackedSequence)
    assert bits_equal(got_packed.data, fix(want_packed.data))
    assert torch.equal(got_packed.batch_sizes, want_packed.batch_sizes)

    cell = nn.GRUCell(4, 6)
    lowered = lower(
        copy.deepcopy(cell), ["recurrent"], FIX, FixedPoint(12, 8), "nearest", "nearest"
    )
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ha = hb = None
    for t in range(5):
        ha = lowered(xa[:, t], ha)
        hb = Fix.apply(cell(xb[:, t], hb), (12, 8))
    assert ha is not None and hb is not None and bits_equal(ha, hb)
    ha.sum().backward()
    hb.sum().backward()
    assert xa.grad is not None and xb.grad is not None and bits_equal(xa.grad, xb.grad)


def test_embeddings_round_their_tables_and_lookups() -> None:
    """``"embedding"``: the table rounded in place (sparse gradients too), the looked-up
    vectors (and an ``EmbeddingBag``'s sums) quantized; against torch's modules with the
    table and the output rounded by hand."""
    torch.manual_seed(0)
    ids = torch.tensor([[1, 5, 5, 0], [7, 2, 9, 3]])
    for plain in (nn.Embedding(10, 6, sparse=True), nn.EmbeddingBag(10, 6, mode="sum")):
        model = lower(
            copy.deepcopy(plain),
            ["embedding"],
            FixedPoint(8, 2),
            None,
            "nearest",
            weight_number=FIX,
            weight_rounding="nearest",
        )
        with torch.no_grad():
            plain.weight.copy_(fix(plain.weight))
        got, want = model(ids), plain(ids)
        assert bits_equal(model.weight, plain.weight)
        assert bits_equal(got, fix(want, fl=2))
        got.sum().backward()
        want.sum().backward()
        g, w = model.weight.grad, plain.weight.grad
        assert g is not None and w is not None and g.layout == w.layout
        assert bits_equal(g.to_dense(), w.to_dense())  # Embedding's sparse, EmbeddingBag's not


def test_parametrized_weights_are_rounded_after_their_parametrization() -> None:
    """``weight_norm``/``spectral_norm`` (``torch.nn.utils.parametrize``) compute the weight
    from its originals at every access: lower's in-place rounding found no weight parameter
    and skipped it, silently. Now the computed weight is rounded at every access, gradient
    straight through to the originals, which stay unrounded; lowering again without
    ``weight_number`` takes the rounding away."""
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm

    def make() -> nn.Module:
        torch.manual_seed(0)
        return weight_norm(nn.Linear(4, 3))

    plain, model = make(), make()
    lower(model, ["linear"], weight_number=FIX, weight_rounding="nearest")
    x = torch.randn(5, 4)
    with torch.no_grad():
        plain.bias.copy_(fix(plain.bias))
    got = model(x)
    want = nn.functional.linear(x, Fix.apply(plain.weight, None), plain.bias)
    assert bits_equal(got, want)
    assert bits_equal(model.weight, fix(plain.weight))
    got.sum().backward()
    want.sum().backward()
    for (name, a), b in zip(model.named_parameters(), plain.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None and bits_equal(a.grad, b.grad), name
        assert bits_equal(a, b), name  # originals unrounded (the bias rounded in both)
    lower(model, ["linear"])
    assert bits_equal(model.weight, plain.weight)

    sn = lower(spectral_norm(nn.Linear(4, 3)), ["linear"], weight_number=FIX)
    sn(x)
    assert on_fixed_grid(sn.weight.detach()) and not on_fixed_grid(
        sn.parametrizations.weight.original.detach()
    )


def test_torch_func_grad_once_the_weights_are_rounded() -> None:
    """``torch.func.grad`` refuses in-place writes to the weights it captures; weights
    rounded by an earlier call are not written again, so it gives autograd's gradient
    (it raised at every call before)."""
    model = lower(Loop(), ["linear"], weight_number=FIX, weight_rounding="nearest")
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(5))
    model(x)
    got = torch.func.grad(lambda a: model(a).sum())(x)
    leaf = x.clone().requires_grad_()
    model(leaf).sum().backward()
    assert leaf.grad is not None and bits_equal(got, leaf.grad)


def test_per_layer_type_formats_and_no_stacking() -> None:
    fp = FloatingPoint(5, 2)
    model = nn.Sequential(nn.Conv1d(1, 1, 1), nn.Flatten(), nn.Linear(3, 2))
    lower(model, {"conv": {"forward_number": FIX}, "linear": {}}, fp, None, "nearest")
    assert model[0].qtorch_output.config.forward_number == FIX
    assert model[2].qtorch_output.config.forward_number == fp
    lower(model, ["conv"], fp, None, "nearest")
    assert model[0].qtorch_output.config.forward_number == fp
    assert len(model[0]._forward_hooks) == 1
    with pytest.raises(ValueError, match="setting"):
        lower(model, {"conv": {"forward_numbr": FIX}})


def test_tuple_outputs_quantize_floating_tensors_only() -> None:
    pool = lower(nn.MaxPool1d(2, return_indices=True), ["pool"], FIX, None, "nearest")
    values, indices = pool(torch.tensor([[[0.3, 0.1, -0.2, -0.7]]]))
    assert values.tolist() == [[[0.3125, -0.1875]]]
    assert indices.dtype == torch.int64 and indices.tolist() == [[[0, 2]]]
