"""Matmul + convolution FLOPs of a JAX function, counted from its jaxpr (shared by the benchmarks).

Counts what `torch.utils.flop_counter.FlopCounterMode` counts on the PyTorch side, so the two
sides of a comparison are measured the same way: 2·M·N·K for every dot_general and convolution,
nothing for elementwise ops, norms or softmax. Sub-jaxprs (jit, remat, custom_vjp, scan × length,
the costlier branch of a cond) are walked. A transposed convolution (the input gradient of a
strided conv, lowered with lhs_dilation) is counted without the multiplications by the zeros
that the dilation inserts, i.e. as many FLOPs as the forward conv, as torch counts it.
cuDNN fused attention (a GPU custom primitive) is counted as its matmuls: 2 forward, 4 backward.

  python -c "import jax, jax.numpy as jnp; from benchmarks.flops import count_flops; \\
             print(count_flops(jnp.dot, jnp.ones((4, 8)), jnp.ones((8, 2))))"   # 128
"""

import math
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jex_core


def _dot_general_flops(eqn) -> int:
    """2 · batch · M · N · K of one dot_general."""
    (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    out = eqn.outvars[0].aval.shape
    contracted = math.prod(lhs[d] for d in lhs_contract)
    return 2 * math.prod(out) * contracted


def _conv_flops(eqn) -> int:
    """2 · output elements · (kernel window × input features per group), minus lhs-dilation zeros."""
    dn = eqn.params["dimension_numbers"]
    rhs = eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    window = math.prod(rhs[d] for d in dn.rhs_spec[2:])
    in_features = rhs[dn.rhs_spec[1]]  # already divided by feature_group_count
    zeros = math.prod(eqn.params.get("lhs_dilation") or (1,))
    return 2 * math.prod(out) * window * in_features // zeros


def _cudnn_attention_flops(eqn) -> int:
    """Matmuls of a fused attention call: q·kᵀ and p·v forward; dq, dk, dv, dp backward."""
    q, k = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape  # (B, T, N, H), (B, S, N, H)
    b, t, n, h = q
    s = k[1]
    one = 2 * b * n * t * s * h
    return one * (4 if "bwd" in eqn.primitive.name else 2)


def _sub_jaxprs(eqn) -> list[tuple[Any, int]]:
    """(jaxpr, multiplicity) pairs nested in an equation's parameters."""
    found = []
    for name, value in eqn.params.items():
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if isinstance(v, jex_core.ClosedJaxpr):
                found.append((v.jaxpr, name))
            elif isinstance(v, jex_core.Jaxpr):
                found.append((v, name))
    return found


def jaxpr_flops(jaxpr, by_primitive: dict[str, int] | None = None) -> int:
    """Matmul + conv FLOPs of a jaxpr, recursing into sub-jaxprs."""
    total = 0
    for eqn in jaxpr.eqns:
        prim = eqn.primitive.name
        if prim == "dot_general":
            f = _dot_general_flops(eqn)
        elif prim == "conv_general_dilated":
            f = _conv_flops(eqn)
        elif prim.startswith("dot_product_attention"):  # its *_wrapper primitives are what a jaxpr holds
            f = _cudnn_attention_flops(eqn)
        else:
            subs = _sub_jaxprs(eqn)
            if prim == "cond":  # one branch runs: count the costliest
                total += max((jaxpr_flops(j, by_primitive) for j, _ in subs), default=0)
                continue
            if prim == "while":  # trip count unknown: count one pass (none of our steps loop)
                subs = [(j, n) for j, n in subs if n == "body_jaxpr"]
            times = eqn.params.get("length", 1) if prim == "scan" else 1
            for sub, _ in subs:
                total += times * jaxpr_flops(sub, by_primitive)
            continue
        total += f
        if by_primitive is not None:
            by_primitive[prim] = by_primitive.get(prim, 0) + f
    return total


def count_flops(fn: Callable, *args, by_primitive: dict[str, int] | None = None, **kwargs) -> int:
    """Matmul + conv FLOPs of `fn(*args, **kwargs)` (arrays or ShapeDtypeStructs); nothing is run."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr, by_primitive)
