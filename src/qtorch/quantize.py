"""The one entry point: ``qtorch.quantize(x, fmt, rounding, generator)``."""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as forward_ad

from qtorch.formats.base import Format
from qtorch.kernels import dtensor, fused, sparse
from qtorch.kernels import eager as eager_path
from qtorch.kernels.compiled_call import transform_active
from qtorch.kernels.noise import draw_seed, uniform_from_counter
from qtorch.rounding import Rounding

_ACCEPTED = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def working_dtype(x: torch.Tensor, caller: str = "quantize") -> torch.dtype:
    """Check the input contract and return x's working dtype (float32 or float64).

    float16 and bfloat16 work in float32 (exactly); other dtypes raise ``TypeError``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{caller}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _ACCEPTED:
        raise TypeError(f"{caller}: x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def working_tensor(x: torch.Tensor, caller: str = "quantize") -> torch.Tensor:
    """Check the input contract and return x in its working dtype (float32 or float64).

    float16 and bfloat16 are widened to float32 (exactly); other dtypes raise ``TypeError``.
    """
    return x.to(working_dtype(x, caller))


def uniform_noise(
    x: torch.Tensor, generator: torch.Generator | None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Uniform [0, 1) noise shaped like ``x`` from ``generator`` or the device's torch RNG.

    The one way qtorch draws stochastic-rounding noise: one seed from the generator
    (:func:`qtorch.kernels.noise.draw_seed`), then the counter-based noise of x's logical
    row-major element indices (:func:`qtorch.kernels.noise.uniform_from_counter`), exactly
    what the compiled kernels compute inside. The noise has ``dtype`` (default: x's dtype,
    float32 or float64) and is contiguous.
    """
    dtype = x.dtype if dtype is None else dtype
    return uniform_from_counter(draw_seed(generator, x.device), x.shape, dtype)


def quantize(
    x: torch.Tensor,
    fmt: Format,
    rounding: Rounding | str = "nearest",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Return a new tensor holding x rounded to the format ``fmt``.

    Args:
        x: float32 (primary), float64, float16 or bfloat16 tensor of any shape, never
            modified; the result has x's dtype, shape and device. Dense (strided) or
            sparse COO (its stored values rounded as the dense tensor's, the result
            coalesced: :mod:`qtorch.kernels.sparse`); other layouts raise ``TypeError``.
            A DTensor gives the DTensor of its full tensor's rounding, with its mesh and
            placements (:mod:`qtorch.kernels.dtensor`).
        fmt: any :class:`qtorch.formats.Format` (FixedPoint, FloatingPoint, ...).
        rounding: ``"nearest"`` (ties to even) or ``"stochastic"``; some formats accept the
            directed modes ``"toward_zero"``, ``"down"``, ``"up"``.
        generator: source of randomness for stochastic rounding; the device's default torch
            RNG when ``None``, so ``torch.manual_seed`` reproduces results.

    What NaN, ±Inf and overflow do is the format's choice and is documented on each format.
    For float16/bfloat16 inputs the rounded float32 value is cast back to x's dtype.
    The work runs as one fused compiled kernel or as the eager reference, as
    :func:`qtorch.set_kernel_mode` says; both give bit-identical results.

    Autograd: for an x that requires grad (with grad mode on), a dual tensor of forward-mode
    AD, or under a ``torch.func`` transform, the result is in x's graph and its gradient
    (tangent) is zero, the derivative of a step function, for every format and rounding
    (:func:`zero_gradient`). Straight-through gradients are
    :func:`qtorch.quant.quantizer`'s.
    """
    if isinstance(x, torch.Tensor) and differentiated(x):
        return zero_gradient(x, _rounded(x.detach(), fmt, rounding, generator, False))
    return _rounded(x, fmt, rounding, generator, False)


def differentiated(x: torch.Tensor) -> bool:
    """Whether a derivative of a call on x may be taken: x requires grad with grad mode
    on, forward-mode AD is on (``torch.autograd.forward_ad.dual_level``; ``no_grad`` does
    not stop it), or a ``torch.func`` transform (``grad``, ``jvp``, ``vmap``, ...) is."""
    return (
        (x.requires_grad and torch.is_grad_enabled())
        or forward_ad._current_level >= 0
        or transform_active()
    )


def zero_gradient(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """q's values (bit for bit) in x's autograd graph, with gradient and tangent zero.

    A select that never picks x: ``where(False, x, q)``, a plain operation, so backward and
    forward mode, ``torch.func`` and ``torch.compile`` all see it (compiled, it fuses into
    the kernel before it; eagerly, one more pass over the tensor). The eager operations of
    the kernels built a graph of their own before, and not the same one for every format:
    none for float, MX and NVFP4 nearest (bit operations detach), a NaN gradient for
    IEEE-style formats with Inf under stochastic rounding (``where(special, x * inf, q)``:
    0 * inf) and for MX and NVFP4 stochastic in blocks holding ±Inf or NaN, a nonzero one
    at the NaN inputs of codebooks, and an error in the backward pass for fixed point
    stochastic (an output modified in place). A sparse COO x (q holds its coalesced
    places) gets the select on the stored values.
    """
    if dtensor.is_dtensor(x):
        return torch.where(dtensor.never_like(x), x, q)
    never = torch.zeros((), dtype=torch.bool, device=x.device)
    if x.is_sparse:  # (COO; not ``layout``, which Dynamo refuses in a backward)
        values = torch.where(never, x.coalesce().values(), q.values())
        return torch.sparse_coo_tensor(
            q.indices(), values, q.shape, is_coalesced=True, check_invariants=False
        )
    return torch.where(never, x, q)


def quantize_(
    x: torch.Tensor,
    fmt: Format,
    rounding: Rounding | str = "nearest",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """In-place :func:`quantize`: overwrite x with its rounding to ``fmt`` and return x.

    Same contract as :func:`quantize` (x must be a floating tensor of an accepted dtype);
    the same seed gives the same result. On the compiled path a contiguous x is rewritten by
    the kernel itself, without a full-size temporary.

    Autograd: an x in a graph (:func:`differentiated`) gets the rounded values by
    ``x.copy_``, so the gradient (tangent) to its earlier values is zero, as with
    :func:`quantize`; a leaf that requires grad raises torch's error for in-place
    operations on it.
    """
    if isinstance(x, torch.Tensor) and differentiated(x):
        return x.copy_(_rounded(x.detach(), fmt, rounding, generator, False))
    return _rounded(x, fmt, rounding, generator, True)


def _rounded(
    x: torch.Tensor,
    fmt: Format,
    rounding: Rounding | str,
    generator: torch.Generator | None,
    inplace: bool,
) -> torch.Tensor:
    """x rounded (into x itself if ``inplace``), by the call's plan or the full dispatch."""
    out = fused.run_planned(x, fmt, rounding, generator, inplace)
    if out is not None:
        return out
    caller = "quantize_" if inplace else "quantize"
    return _dispatch(x, fmt, rounding, generator, inplace=inplace, caller=caller)


def _dispatch(
    x: torch.Tensor,
    fmt: Format,
    rounding: Rounding | str,
    generator: torch.Generator | None,
    inplace: bool,
    caller: str,
) -> torch.Tensor:
    """Validate, draw the seed, then run the compiled kernel or the eager reference.

    Stochastic rounding draws one seed here; both paths make the same noise from it
    (:func:`qtorch.kernels.noise.uniform_from_counter`), the compiled one inside its kernel.
    The caller first tries the call's plan (:func:`qtorch.kernels.fused.run_planned`).
    Sparse COO tensors go to :mod:`qtorch.kernels.sparse`, DTensors to
    :mod:`qtorch.kernels.dtensor` (which rounds plain tensors as this function does).
    """
    if not isinstance(fmt, Format):
        raise TypeError(f"{caller}: fmt must be a qtorch format, got {type(fmt).__name__}")
    mode = fmt.check_rounding(rounding)
    dtype = working_dtype(x, caller)
    # (not while compiling: Dynamo refuses ``layout`` in an autograd function's backward)
    strided = torch.compiler.is_compiling() or (x.layout is torch.strided and not x.is_nested)
    if not strided:
        sparse.check_layout(x, caller)  # sparse COO passes, before a seed is drawn
    seed = draw_seed(generator, x.device) if mode is Rounding.STOCHASTIC else None
    if not strided:
        return sparse.quantize(x, fmt, mode, seed, dtype, inplace, caller)

    def dense(t: torch.Tensor, seed: torch.Tensor | None, inplace: bool) -> torch.Tensor:
        def eager() -> torch.Tensor:
            return eager_path.run(t, fmt, mode, seed, dtype, inplace)

        plan_key = (id(fmt), rounding, inplace)
        return fused.quantize(t, fmt, mode, seed, inplace, eager, plan_key)

    if dtensor.is_dtensor(x):
        return dtensor.quantize(x, fmt, mode, seed, dtype, inplace, caller, dense)
    return dense(x, seed, inplace)
