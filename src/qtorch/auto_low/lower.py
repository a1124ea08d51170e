"""Insert quantizers into an existing model: ``lower`` (in place), ``sequential_lower`` (copy).

A lowered layer keeps its class, its ``forward`` and its ``state_dict`` keys. It gains a
child :class:`~qtorch.quant.Quantizer` named ``qtorch_output`` and a forward hook that
passes the layer's output through it; with ``weight_number`` it also gains a child
``qtorch_weight`` and a forward pre-hook that rounds the layer's own parameters in place
(when they changed since it last did).
Hooks and children are ordinary module state, so lowered models survive
``copy.deepcopy``, pickling, ``state_dict`` round trips and ``torch.compile``.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.weak import WeakTensorKeyDictionary

from qtorch.auto_low.sharded import round_layer, stored_param, tracing_mode_active
from qtorch.formats.base import Format
from qtorch.kernels.compiled_call import dispatch_mode_active, transform_active
from qtorch.kernels.noise import draw_seed
from qtorch.quant.quantizer import Quantizer
from qtorch.quantize import quantize_
from qtorch.rounding import Rounding

__all__ = [
    "LAYER_TYPES",
    "ParametrizedWeightQuantizer",
    "WeightQuantizer",
    "lower",
    "sequential_lower",
]


def _classes(names: str) -> tuple[type[nn.Module], ...]:
    return tuple(getattr(nn, name) for name in names.split())


#: The layer-type names of QPyTorch and the module classes each one covers (subclasses
#: included, so lazy variants and user subclasses are reached too).
LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "conv": _classes(
        "Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d ConvTranspose3d Unfold Fold"
    ),
    "linear": _classes("Linear Bilinear"),
    "pool": _classes(
        "MaxPool1d MaxPool2d MaxPool3d MaxUnpool1d MaxUnpool2d MaxUnpool3d AvgPool1d AvgPool2d "
        "AvgPool3d FractionalMaxPool2d FractionalMaxPool3d LPPool1d LPPool2d LPPool3d "
        "AdaptiveMaxPool1d AdaptiveMaxPool2d AdaptiveMaxPool3d AdaptiveAvgPool1d "
        "AdaptiveAvgPool2d AdaptiveAvgPool3d"
    ),
    "pad": _classes(
        "ReflectionPad1d ReflectionPad2d ReflectionPad3d ReplicationPad1d ReplicationPad2d "
        "ReplicationPad3d ZeroPad1d ZeroPad2d ZeroPad3d ConstantPad1d ConstantPad2d "
        "ConstantPad3d CircularPad1d CircularPad2d CircularPad3d"
    ),
    "activation": _classes(
        "ELU CELU GELU GLU Hardshrink Hardsigmoid Hardswish Hardtanh LeakyReLU LogSigmoid Mish "
        "PReLU ReLU ReLU6 RReLU SELU SiLU Sigmoid Softplus Softshrink Softsign Tanh Tanhshrink "
        "Threshold Softmin Softmax Softmax2d LogSoftmax"
    ),
    "normalization": _classes(
        "BatchNorm1d BatchNorm2d BatchNorm3d SyncBatchNorm GroupNorm InstanceNorm1d "
        "InstanceNorm2d InstanceNorm3d LayerNorm LocalResponseNorm RMSNorm"
    ),
    "dropout": _classes("Dropout Dropout1d Dropout2d Dropout3d AlphaDropout FeatureAlphaDropout"),
    "loss": _classes(
        "L1Loss MSELoss CrossEntropyLoss NLLLoss PoissonNLLLoss GaussianNLLLoss KLDivLoss BCELoss "
        "BCEWithLogitsLoss MarginRankingLoss HingeEmbeddingLoss MultiLabelMarginLoss HuberLoss "
        "SmoothL1Loss SoftMarginLoss MultiLabelSoftMarginLoss CosineEmbeddingLoss "
        "MultiMarginLoss TripletMarginLoss CTCLoss"
    ),
    # not QPyTorch's: the attention module's outputs and own parameters (the q/k/v input
    # projections; out_proj's too, unless that is lowered with a weight format of its own)
    "attention": _classes("MultiheadAttention"),
    # not QPyTorch's: the sequence modules' outputs (the whole sequence and the final
    # states, not the states inside the recurrence) and the cells' (each step's)
    "recurrent": _classes("RNN LSTM GRU RNNCell LSTMCell GRUCell"),
    # not QPyTorch's: the looked-up vectors and the tables
    "embedding": _classes("Embedding EmbeddingBag"),
}

OUTPUT_NAME = "qtorch_output"
WEIGHT_NAME = "qtorch_weight"


class WeightQuantizer(nn.Module):
    """Rounds the parameters a layer owns directly (weight, bias, ...) in place, once per
    change of their values.

    Floating-point parameters only, under ``torch.no_grad()``; parameters of sub-modules
    are left to their own lowering (but for a ``MultiheadAttention``'s ``out_proj``, which
    the attention uses without calling it), and parametrized tensors to a
    :class:`ParametrizedWeightQuantizer`. A parameter is rounded when it has changed since this
    module last rounded it: a new tensor or new storage (``.to()``, ``p.data = ...``), or
    an in-place write that autograd sees (an optimizer step, ``load_state_dict``, any
    update under ``torch.no_grad()``; in-place writes to ``p.data`` are invisible to it,
    as to autograd). Rounding again what is already rounded would bump the parameter's
    version: a layer called twice in one forward pass then failed in backward ("modified
    by an inplace operation") once the first call had saved the weight for it, and formats
    whose rounding is not idempotent (NVFP4's and MXINT8's block scales, with a block
    maximum rounded up a binade) changed the weights at every forward pass.

    A parameter left as it is still draws the seed its stochastic rounding would have
    drawn, so a pass draws from torch's RNG what it would if every weight were rounded:
    activation checkpointing (``torch.utils.checkpoint``) restores the RNG and runs the
    layer again in backward, where the weights are already rounded; its recomputed
    activations had the noise of seeds shifted by the skipped draws, not the forward
    pass's, and the gradients differed from those without checkpointing.

    A weight tied to another lowered layer's (an embedding and an output layer sharing one
    table) is rounded by whichever layer runs first and left by the other when their
    formats and rounding modes are the same; rounding it again bumped its version after
    the first layer had saved it, and backward raised. Tied to layers of different
    formats, it is rounded by each, as asked.

    ``copy.deepcopy`` of a lowered model carries this over to the copies of parameters
    rounded and unchanged since, so a copy draws and computes what the original would.
    Pickling does not: an unpickled model rounds its weights once more (the same values,
    but for those non-idempotent blocks).

    Sharded parameters (FSDP2's, tensor-parallel DTensors): the stored shards are rounded,
    once per change of their values, read from the values (:mod:`qtorch.auto_low.sharded`);
    that runs eagerly, also inside a compiled model.

    Where versions are not the values' own, the parameters are rounded at every call:
    while ``torch.compile`` or ``torch.export`` traces the layer, under a dispatch mode,
    for other tensor subclasses and for ``torch.func``'s wrappers (``functional_call``
    under ``grad``). A layer called twice in one pass fails there as it did everywhere.
    """

    def __init__(self, number: Format, rounding: Rounding | str = "stochastic") -> None:
        super().__init__()
        if not isinstance(number, Format):
            raise TypeError(f"lower: weight_number must be a qtorch format, got {number!r}")
        self.number = number
        self.rounding = number.check_rounding(rounding)
        #: parameter name (dotted from the layer) -> the parameter as this module last
        #: rounded it: what ``copy.deepcopy`` carries to a copy (:data:`_LAST` decides)
        self._rounded: dict[str, _Rounded | None] = {}

    @torch.no_grad()
    def forward(self, layer: nn.Module) -> None:
        compiling = torch.compiler.is_compiling()
        modes = not compiling and dispatch_mode_active()  # (Dynamo cannot ask)
        traced = compiling or modes
        real = not (modes and tracing_mode_active())  # FlopCounterMode: real; fake: not
        for prefix, owner in _weight_owners(layer):
            self._round_owned(owner, prefix, traced, real)

    def _round_owned(self, owner: nn.Module, prefix: str, traced: bool, real: bool) -> None:
        params = [(n, p) for n, p in owner.named_parameters(recurse=False) if p.is_floating_point()]
        sharded = [n for n, p in params if real and stored_param(owner, n, p) is not None]
        if sharded:
            _round_sharded(self, owner, sharded)
        for name, param in params:
            if name in sharded:
                continue
            tracked = not traced and _versioned(param)
            if tracked and _holds_rounding(param, self.number, self.rounding):
                if self.rounding is Rounding.STOCHASTIC:
                    draw_seed(None, param.device)  # what rounding it would draw (see above)
                continue
            quantize_(param, self.number, self.rounding)
            if tracked:
                record = _Rounded(param, self.number, self.rounding)
                self._rounded[prefix + name] = _LAST[param] = record

    def extra_repr(self) -> str:
        return f"number={self.number!r}, rounding={self.rounding.value!r}"


@torch.compiler.disable  # all-reduces and host-side decisions: eager, also when compiled
def _round_sharded(quantizer: WeightQuantizer, owner: nn.Module, names: list[str]) -> None:
    """Round ``owner``'s sharded parameters ``names`` that changed in any process since
    they were last rounded alike (:mod:`qtorch.auto_low.sharded`)."""
    round_layer(owner, names, quantizer.number, quantizer.rounding)


def _weight_owners(layer: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules whose own parameters ``layer``'s weight quantizer rounds, with their
    prefixes: the layer, and a ``MultiheadAttention``'s ``out_proj``, whose weights it uses
    without calling it (unless ``out_proj`` is lowered with a weight format of its own)."""
    owners = [("", layer)]
    if isinstance(layer, nn.MultiheadAttention) and not hasattr(layer.out_proj, WEIGHT_NAME):
        owners.append(("out_proj.", layer.out_proj))
    return owners


def _versioned(param: torch.Tensor) -> bool:
    """Whether param's version and storage tell when its values may have changed (not for
    tensor subclasses and ``torch.func``'s wrappers, which have no storage)."""
    if type(param) is not nn.Parameter and type(param) is not torch.Tensor:
        return False
    return not (transform_active() and _functorch_wrapped(param))


class _Rounded:
    """A parameter just after it was rounded: the tensor (weakly), its version, its storage
    (values change with one of the three), and the format and rounding mode used."""

    __slots__ = ("number", "ptr", "ref", "rounding", "version")

    def __init__(self, param: torch.Tensor, number: Format, rounding: Rounding) -> None:
        self.ref = weakref.ref(param)
        self.version = param._version
        self.ptr = param.data_ptr()
        self.number, self.rounding = number, rounding

    def holds(self, param: torch.Tensor) -> bool:
        same = self.ref() is param and param._version == self.version
        return same and param.data_ptr() == self.ptr

    def __deepcopy__(self, memo: dict[int, Any]) -> _Rounded | None:
        """The record of the parameter's copy, if this deepcopy copied it (``nn.Module``
        copies a layer's parameters before its children) while it was still as rounded;
        registered in :data:`_LAST`, which decides."""
        param = self.ref()
        if param is None or not self.holds(param):
            return None
        clone = memo.get(id(param))
        if not isinstance(clone, torch.Tensor):
            return None
        record = _Rounded(clone, self.number, self.rounding)
        _LAST[clone] = record
        return record

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return _nothing, ()  # an unpickled parameter is new: rounded at the next call


def _nothing() -> None:
    return None


#: parameter -> its last rounding by any WeightQuantizer: one record per parameter, so
#: that a weight tied across layers is left by the second layer's quantizer once the first
#: rounded it (rounding it again bumped its version after the first layer had saved it
#: for backward)
_LAST: WeakTensorKeyDictionary = WeakTensorKeyDictionary()


def _holds_rounding(param: torch.Tensor, number: Format, rounding: Rounding) -> bool:
    """Whether ``param`` is as it was just after its last rounding, and that rounding was
    to ``number`` with ``rounding``."""
    last = _LAST.get(param)
    if last is None or not last.holds(param):
        return False
    return last.number == number and last.rounding is rounding


try:
    _functorch_wrapped: Callable[[torch.Tensor], bool] = (
        torch._C._functorch.is_functorch_wrapped_tensor
    )
except AttributeError:  # another torch: under a transform, every tensor counts as wrapped
    _functorch_wrapped = lambda t: True  # noqa: E731


def _quantize_output(layer: nn.Module, args: Any, output: Any) -> Any:
    """Forward hook: pass the floating-point tensors of the output through the quantizer."""
    quant = getattr(layer, OUTPUT_NAME)
    return _map_tensors(quant, output)


def _map_tensors(quant: nn.Module, value: Any) -> Any:
    """``value`` with its floating-point tensors, in tuples and lists at any depth
    (named tuples such as ``PackedSequence`` too), passed through ``quant``."""
    if isinstance(value, torch.Tensor):
        return quant(value) if value.is_floating_point() else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(_map_tensors(quant, v) for v in value))
    if isinstance(value, tuple | list):
        return type(value)(_map_tensors(quant, v) for v in value)
    return value


def _round_weights(layer: nn.Module, args: Any) -> None:
    """Forward pre-hook: round the layer's own parameters in place."""
    getattr(layer, WEIGHT_NAME)(layer)


def _settings_per_type(
    layer_types: Iterable[str] | Mapping[str, Mapping[str, Any]], defaults: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Resolve ``layer_types`` to {type name: full keyword settings}; check every name."""
    accepted = ", ".join(repr(name) for name in LAYER_TYPES)
    if isinstance(layer_types, str):
        raise TypeError(
            f"lower: layer_types must be a list of names, got the string {layer_types!r}"
        )
    if isinstance(layer_types, Mapping):
        items = list(layer_types.items())
    else:
        items = [(name, {}) for name in layer_types]
    settings: dict[str, dict[str, Any]] = {}
    for name, overrides in items:
        if name not in LAYER_TYPES:
            raise ValueError(f"lower: unknown layer type {name!r}; accepted: {accepted}")
        unknown = set(overrides) - set(defaults)
        if unknown:
            raise ValueError(
                f"lower: unknown setting(s) {sorted(unknown)} for {name!r}; "
                f"accepted: {sorted(defaults)}"
            )
        settings[name] = {**defaults, **overrides}
    return settings


def lower(
    model: nn.Module,
    layer_types: Iterable[str] | Mapping[str, Mapping[str, Any]] = (),
    forward_number: Format | None = None,
    backward_number: Format | None = None,
    forward_rounding: Rounding | str = "stochastic",
    backward_rounding: Rounding | str = "stochastic",
    *,
    weight_number: Format | None = None,
    weight_rounding: Rounding | str = "stochastic",
) -> nn.Module:
    """Quantize the outputs (and optionally the weights) of chosen layers, in place.

    Every sub-module of ``model`` (nested ``Sequential``, ``ModuleList``, ``ModuleDict`` and
    custom modules included) that is an instance of a class of one of ``layer_types`` (see
    :data:`LAYER_TYPES`) gets a :class:`~qtorch.quant.Quantizer` on its output: forward
    values rounded to ``forward_number``, their gradients to ``backward_number``. Output
    tuples and lists have each floating-point tensor quantized. With ``weight_number``, the
    layer's own floating-point parameters are rounded in place to it before a forward pass
    whenever they changed since they were last rounded (:class:`WeightQuantizer`).
    Lowering a layer again replaces its quantizers.

    ``nn.MultiheadAttention`` uses its ``out_proj`` (a ``Linear``) without calling it: a
    lowered ``out_proj`` is run from the attention module's hooks (its output quantizer on
    the attention output, its weights rounded before the pass). ``"attention"`` lowers the
    attention module itself: its outputs (attention output and weights), and its own
    parameters, the q/k/v input projections (and ``out_proj``'s, unless that is lowered
    with a weight format of its own). The q/k/v projections' outputs are computed inside
    torch's attention function, where no hook reaches them.

    Args:
        model: the model, modified in place (and returned).
        layer_types: names from ``"conv"``, ``"linear"``, ``"pool"``, ``"pad"``,
            ``"activation"``, ``"normalization"``, ``"dropout"``, ``"loss"``, ``"attention"``,
            ``"recurrent"``, ``"embedding"``; or a dict from such a name to keyword overrides
            for that type, e.g.
            ``{"conv": {"forward_number": fp8}, "linear": {}}``.
        forward_number: format of the outputs (``None``: unchanged).
        backward_number: format of the gradients of the outputs (``None``: unchanged).
        forward_rounding: rounding mode of the outputs.
        backward_rounding: rounding mode of their gradients.
        weight_number: format of the layers' own parameters (``None``: left alone).
        weight_rounding: rounding mode of the parameters.

    Raises:
        ValueError: an unknown layer type name (the message lists the accepted ones) or a
            rounding mode the format does not accept.

    >>> net = lower(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), ["activation"])
    >>> net[1].qtorch_output  # doctest: +ELLIPSIS
    Quantizer(forward_number=None, forward_rounding='stochastic', ...)
    """
    defaults = {
        "forward_number": forward_number,
        "backward_number": backward_number,
        "forward_rounding": forward_rounding,
        "backward_rounding": backward_rounding,
        "weight_number": weight_number,
        "weight_rounding": weight_rounding,
    }
    settings = _settings_per_type(layer_types, defaults)
    plans = []
    for name, s in settings.items():
        output = Quantizer(
            s["forward_number"], s["backward_number"], s["forward_rounding"], s["backward_rounding"]
        )
        weight = None
        if s["weight_number"] is not None:
            weight = WeightQuantizer(s["weight_number"], s["weight_rounding"])
        plans.append((LAYER_TYPES[name], output, weight))

    for layer in list(model.modules()):
        for classes, output, weight in plans:
            if isinstance(layer, classes):
                _attach(layer, output, weight)
                break
    for layer in model.modules():
        if isinstance(layer, nn.MultiheadAttention) and hasattr(layer.out_proj, OUTPUT_NAME):
            _route_out_proj(layer)
    return model


def _attach(layer: nn.Module, output: Quantizer, weight: WeightQuantizer | None) -> None:
    layer.add_module(OUTPUT_NAME, copy.deepcopy(output))
    if _quantize_output not in layer._forward_hooks.values():
        layer.register_forward_hook(_quantize_output)
    if weight is not None:
        layer.add_module(WEIGHT_NAME, copy.deepcopy(weight))
        if _round_weights not in layer._forward_pre_hooks.values():
            layer.register_forward_pre_hook(_round_weights)
    elif hasattr(layer, WEIGHT_NAME):
        delattr(layer, WEIGHT_NAME)
        for key, hook in list(layer._forward_pre_hooks.items()):
            if hook is _round_weights:
                del layer._forward_pre_hooks[key]
    if parametrize.is_parametrized(layer):
        _round_parametrized(layer, weight)


class ParametrizedWeightQuantizer(Quantizer):
    """The last parametrization of a lowered layer's parametrized tensor (``weight_norm``,
    ``spectral_norm``, any ``torch.nn.utils.parametrize``): such a tensor is computed from
    its originals at every access, so no stored tensor holds what the forward pass uses.
    Rounds the computed tensor at every access, gradient straight through (as the rounded
    parameters of :class:`WeightQuantizer` get it); the originals stay as they are."""

    def __init__(self, number: Format, rounding: Rounding | str = "stochastic") -> None:
        super().__init__(number, None, rounding)


def _round_parametrized(layer: nn.Module, weight: WeightQuantizer | None) -> None:
    """Put a :class:`ParametrizedWeightQuantizer` of ``weight``'s format at the end of each
    floating-point parametrized tensor's chain (replacing one put there before), or, with
    no ``weight``, take it away."""
    chains = cast(dict[str, nn.ModuleList], layer.parametrizations)
    for name, chain in chains.items():
        for index in reversed(range(len(chain))):
            if isinstance(chain[index], ParametrizedWeightQuantizer):
                del chain[index]
        originals = [*chain.parameters(recurse=False), *chain.buffers(recurse=False)]
        if weight is not None and all(t.is_floating_point() for t in originals):
            rounding = ParametrizedWeightQuantizer(weight.number, weight.rounding)
            # unsafe: torch's checks would compute the tensor (spectral_norm's power
            # iteration steps, stochastic rounding draws); shape and dtype are kept
            parametrize.register_parametrization(layer, name, rounding, unsafe=True)


def _route_out_proj(attention: nn.MultiheadAttention) -> None:
    """``MultiheadAttention`` computes its output projection from ``out_proj``'s weights,
    never calling ``out_proj``: a lowered ``out_proj``'s hooks would never run. They run from
    the attention module's hooks instead; the output quantizer before the attention's own
    (its first output is the projection's output)."""
    if _round_out_proj not in attention._forward_pre_hooks.values():
        attention.register_forward_pre_hook(_round_out_proj)
    if _quantize_out_proj not in attention._forward_hooks.values():
        attention.register_forward_hook(_quantize_out_proj, prepend=True)


def _round_out_proj(attention: nn.Module, args: Any) -> None:
    """Forward pre-hook of a ``MultiheadAttention``: round its lowered ``out_proj``'s weights."""
    quant = getattr(attention.out_proj, WEIGHT_NAME, None)
    if quant is not None:
        quant(attention.out_proj)


def _quantize_out_proj(attention: nn.Module, args: Any, output: Any) -> Any:
    """Forward hook of a ``MultiheadAttention``: its lowered ``out_proj``'s output quantizer
    on the first output (``attn_output``); the attention weights are left alone."""
    quant = getattr(attention.out_proj, OUTPUT_NAME, None)
    if quant is None:
        return output
    first, *rest = output
    return (_map_tensors(quant, first), *rest)


def sequential_lower(
    model: nn.Module,
    layer_types: Iterable[str] | Mapping[str, Mapping[str, Any]] = (),
    forward_number: Format | None = None,
    backward_number: Format | None = None,
    forward_rounding: Rounding | str = "stochastic",
    backward_rounding: Rounding | str = "stochastic",
    *,
    weight_number: Format | None = None,
    weight_rounding: Rounding | str = "stochastic",
) -> nn.Module:
    """Return a lowered deep copy of ``model``; ``model`` itself is untouched.

    Same arguments and result as :func:`lower` applied to ``copy.deepcopy(model)``.
    """
    return lower(
        copy.deepcopy(model),
        layer_types,
        forward_number,
        backward_number,
        forward_rounding,
        backward_rounding,
        weight_number=weight_number,
        weight_rounding=weight_rounding,
    )
