"""What the JAX backend can adapt, and under which names.

Every adaptable module is seen in the canonical layout of adapter files: an input of
``d_in`` and an output of ``d_out`` features, a kernel ``[d_in, d_out]``. A module whose
kernel has more axes maps onto it by flattening, in order:

* ``nnx.Linear``: kernel ``[in, out]`` as it is.
* ``nnx.LinearGeneral`` contracting its input's trailing axes (``axis=-1``, ``(-2, -1)``,
  ...; no ``batch_axis``): kernel ``[*in_features, *out_features]``, so
  ``d_in = prod(in_features)`` and ``d_out = prod(out_features)``. ``nnx.MultiHeadAttention``'s
  query/key/value (``[d_model, heads, head_dim]``) flatten head-major, as HF lays out its
  q/k/v projections' outputs, and its ``out`` (``[heads, head_dim, d_model]``) likewise.
* ``nnx.Einsum`` whose equation is a linear map of the input's trailing axes onto the
  output's trailing axes (``"btd,dnh->btnh"``, ``"...d,ndh->...nh"``: every kernel axis is
  contracted or kept, none is shared by all three operands, the batch axes lead both sides
  in the same order): the contracted axes in the input's order make ``d_in``, the kept ones
  in the output's order ``d_out``, whatever the kernel's own axis order.

A module whose output has two kernel-made axes ``(heads, head_dim)`` reports ``heads`` as its
head count (``Site(heads="auto")``; under grouped-query attention the key/value kernels' own
head axis, not the attention's query head count).

**Stacked layers** (``nnx.vmap`` over a layer constructor, run with ``nnx.scan``) hold each
parameter with one leading layer axis. Such a module is adapted once, its adapter stacked
the same way (each parameter gets the same leading axis, so ``nnx.scan`` hands every step its
own layer's adapter), and it is *listed* and *saved* as one module per layer: the layer
index goes right after the outermost module below the model whose known parameters
(``Linear``/``LinearGeneral``/``Einsum`` kernels, ``Embed``, ``LayerNorm``/``RMSNorm``,
``Conv``) all carry the same leading layer axis, i.e. the module ``nnx.vmap`` built when its
parent holds anything else (an embedding, a final norm). A stack at ``model.layers`` lists
``model.layers.0.self_attn.k_proj``, ``model.layers.1.self_attn.k_proj``, ... exactly as
HF's unrolled ``LlamaForCausalLM``, so site patterns and adapter files are the same for a
stacked and an unrolled model. A site must take every layer of a stack or none.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import jax.numpy as jnp
import numpy as np
from flax import nnx

Path = tuple[Any, ...]  # attribute names (str) and list indices (int)

SUPPORTED = (
    "nnx.Linear, nnx.LinearGeneral (contracting its input's trailing axes, no batch_axis), "
    "nnx.Einsum (a linear map of the input's trailing axes onto the output's trailing axes) "
    "and parameterless activation modules, each also stacked by nnx.vmap (one leading layer "
    "axis)"
)


@attrs.frozen
class Layout:
    """How one module maps onto the canonical ``[d_in, d_out]`` layout.

    ``in_shape`` / ``out_shape``: the input's contracted trailing axes and the output's
    kernel-made trailing axes (per layer). ``kernel_order``: the per-layer kernel's axes in
    canonical order (contracted, then kept; empty without a kernel). ``heads``: the head
    count of a ``(heads, head_dim)`` output, else None. ``stack``: the number of layers of a
    stacked module (leading axis of every parameter), else None.
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel_order: tuple[int, ...] = ()
    heads: int | None = None
    stack: int | None = None

    @property
    def d_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def d_out(self) -> int:
        return math.prod(self.out_shape)

    def canonical_kernel(self, kernel: Any) -> Any:
        """The kernel as ``[d_in, d_out]`` (``[layers, d_in, d_out]`` stacked)."""
        lead = 0 if self.stack is None else 1
        order = (*range(lead), *(lead + a for a in self.kernel_order))
        return jnp.transpose(kernel, order).reshape(*kernel.shape[:lead], self.d_in, self.d_out)

    def native_kernel(self, flat: Any, shape: tuple[int, ...]) -> Any:
        """Inverse of :meth:`canonical_kernel`: ``flat`` back to a kernel of ``shape``."""
        lead = 0 if self.stack is None else 1
        order = (*range(lead), *(lead + a for a in self.kernel_order))
        permuted = tuple(shape[a] for a in order)
        return jnp.transpose(jnp.reshape(flat, permuted), tuple(np.argsort(order).tolist()))

    def native_index(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, ...]:
        """Index arrays into the per-layer kernel of canonical ``[d_in, d_out]`` positions
        ``(rows, cols)``."""
        canonical = (
            *np.unravel_index(rows, self.in_shape),
            *np.unravel_index(cols, self.out_shape),
        )
        native: list[np.ndarray] = [np.empty(0, np.int64)] * len(canonical)
        for position, axis in enumerate(self.kernel_order):
            native[axis] = np.asarray(canonical[position])
        return tuple(native)


def layout(module: Any) -> Layout | str | None:
    """The :class:`Layout` of a linear-like module, a sentence saying why a module that has a
    kernel cannot be adapted, or None for a module without one (an activation, a norm)."""
    kernel = getattr(module, "kernel", None)
    if not isinstance(kernel, nnx.Variable):
        return None
    if isinstance(module, nnx.Linear):
        shapes = _stacked(kernel.shape, (module.in_features, module.out_features))
        if isinstance(shapes, str):
            return shapes
        return Layout((module.in_features,), (module.out_features,), (0, 1), None, shapes)
    if isinstance(module, nnx.LinearGeneral):
        return _linear_general(module, kernel)
    if isinstance(module, nnx.Einsum):
        return _einsum(module, kernel)
    return f"mixlight adapts {SUPPORTED}"


def _stacked(shape: tuple[int, ...], per_layer: tuple[int, ...]) -> int | None | str:
    """The layer count of a kernel of ``shape`` whose per-layer shape is ``per_layer``: None
    when it is not stacked, else the leading axis; a sentence when it fits neither."""
    if tuple(shape) == tuple(per_layer):
        return None
    if len(shape) == len(per_layer) + 1 and tuple(shape[1:]) == tuple(per_layer):
        return int(shape[0])
    return (
        f"its per-layer kernel is {list(per_layer)}, so this one is neither a plain module nor "
        "one stacked by nnx.vmap along a single leading layer axis (nested stacks and stacks "
        "along another axis are not supported)"
    )


def _linear_general(module: nnx.LinearGeneral, kernel: nnx.Variable) -> Layout | str:
    ins, outs = tuple(module.in_features), tuple(module.out_features)
    if module.batch_axis:
        return f"its batch_axis {dict(module.batch_axis)} gives each batch entry its own kernel"
    if tuple(module.axis) != tuple(range(-len(ins), 0)):
        return (
            f"it contracts axis={tuple(module.axis)}, not the input's trailing axes "
            f"{tuple(range(-len(ins), 0))}"
        )
    stack = _stacked(kernel.shape, ins + outs)
    if isinstance(stack, str):
        return stack
    heads = outs[0] if len(outs) == 2 else None
    return Layout(ins, outs, tuple(range(len(ins) + len(outs))), heads, stack)


def _einsum(module: nnx.Einsum, kernel: nnx.Variable) -> Layout | str:
    equation = module.einsum_str.replace(" ", "")
    per_layer = tuple(module.kernel_shape)
    stack = _stacked(kernel.shape, per_layer)
    if isinstance(stack, str):
        return stack
    parsed = einsum_axes(equation)
    if isinstance(parsed, str):
        return f"its equation {equation!r} {parsed}"
    contracted, kept, kernel_letters = parsed
    if len(kernel_letters) != len(per_layer):
        return f"its equation {equation!r} names {len(kernel_letters)} kernel axes"
    size = dict(zip(kernel_letters, per_layer, strict=True))
    order = tuple(kernel_letters.index(c) for c in contracted + kept)
    outs = tuple(size[c] for c in kept)
    heads = outs[0] if len(outs) == 2 else None
    return Layout(tuple(size[c] for c in contracted), outs, order, heads, stack)


def einsum_axes(equation: str) -> tuple[str, str, str] | str:
    """``(contracted, kept, kernel)`` axis letters of an ``input,kernel->output`` equation that
    maps the input's trailing axes linearly onto the output's trailing axes; else a sentence
    saying why not."""
    if equation.count("->") != 1 or equation.count(",") != 1:
        return "is not of the form 'input,kernel->output'"
    lhs, out = equation.split("->")
    inp, ker = lhs.split(",")
    inp, out = inp.replace("...", "*"), out.replace("...", "*")
    if "." in inp + out + ker or "*" in ker:
        return "has a misplaced ellipsis"
    if any(len(set(s)) != len(s) for s in (inp, ker, out)):
        return "repeats an axis within one operand"
    shared = set(inp) & set(ker) & set(out)
    if shared:
        return f"gives each {''.join(sorted(shared))!r} entry its own kernel (a batched kernel)"
    contracted = "".join(c for c in inp if c in ker)
    kept = "".join(c for c in out if c in ker)
    batch = "".join(c for c in inp if c not in ker)
    if set(ker) != set(contracted) | set(kept):
        return "sums the kernel over an axis the input does not have"
    if inp != batch + contracted or out != batch + kept:
        return (
            "does not map the input's trailing axes onto the output's trailing axes with the "
            "other axes in the same order on both sides"
        )
    return contracted, kept, ker


# --- stacks ---------------------------------------------------------------------------------


def _lead(module: Any) -> tuple[int, ...] | None:
    """The leading axes a known module's parameters carry beyond its per-layer shape (``()``
    for a plain module, ``(layers,)`` for a stacked one); None for a module of unknown kind."""
    per_layer: dict[type, tuple[str, Any]] = {
        nnx.Linear: ("kernel", 2),
        nnx.LinearGeneral: (
            "kernel",
            lambda m: len(m.batch_axis) + len(m.in_features) + len(m.out_features),
        ),
        nnx.Einsum: ("kernel", lambda m: len(m.kernel_shape)),
        nnx.Conv: ("kernel", lambda m: len(m.kernel_size) + 2),
        nnx.Embed: ("embedding", 2),
        nnx.LayerNorm: ("scale", 1),
        nnx.RMSNorm: ("scale", 1),
    }
    for kind, (attr, ndim) in per_layer.items():
        if isinstance(module, kind):
            value = getattr(module, attr, None)
            if not isinstance(value, nnx.Variable):
                return None
            n = ndim(module) if callable(ndim) else ndim
            return tuple(value.shape[: max(value.ndim - n, 0)])
    return None


def stack_roots(modules: dict[Path, Any]) -> dict[Path, int]:
    """The stacks of a model, ``{path of the stacked module: layer count}``, from its
    modules by NNX path (the root, ``()``, included): the outermost modules below the root
    whose known modules all carry the same one leading layer axis."""
    leads: dict[Path, set[tuple[int, ...]]] = {}
    for path, module in modules.items():
        lead = _lead(module)
        if lead is None:
            continue
        for n in range(len(path) + 1):
            leads.setdefault(path[:n], set()).add(lead)
    candidates = {
        p: next(iter(s))[0]
        for p, s in leads.items()
        if p and len(s) == 1 and len(next(iter(s))) == 1
    }
    return {
        p: n for p, n in candidates.items() if not any(p[:k] in candidates for k in range(len(p)))
    }


@attrs.frozen
class Entry:
    """One module as site planning lists it: the NNX ``path`` of the module, and for a module
    inside a stack the ``layer`` it stands for and the stack's ``layers`` count."""

    path: Path
    layer: int | None = None
    layers: int | None = None


def listed(paths: dict[str, Path], roots: dict[Path, int]) -> dict[str, Entry]:
    """Dotted module path -> :class:`Entry`, one per layer for modules inside a stack
    (``model.layers.3.mlp.up_proj`` for the stacked ``model.layers.mlp.up_proj``); a stack's
    module itself is also listed under its own path, as HF lists its ``ModuleList``."""
    out: dict[str, Entry] = {}
    for dotted, path in paths.items():
        root = next((path[:n] for n in range(1, len(path) + 1) if path[:n] in roots), None)
        if root is None:
            out[dotted] = Entry(path)
            continue
        if path == root:
            out[dotted] = Entry(path)
        layers = roots[root]
        for i in range(layers):
            out[".".join(map(str, (*root, i, *path[len(root) :])))] = Entry(path, i, layers)
    return out


def per_layer_paths(entries: dict[str, Entry], path: Path) -> tuple[str, ...]:
    """The listed paths of the layers of the stacked module at NNX ``path``, by layer."""
    found = {
        e.layer: dotted for dotted, e in entries.items() if e.path == path and e.layer is not None
    }
    return tuple(found[i] for i in range(len(found)))
