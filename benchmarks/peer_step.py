r"""One training step of our UNet3D beside a PyTorch peer, diffusers' `UNet3DConditionModel`.

The same step on both sides: v-prediction MSE loss on random video (B=2, 8 frames) and random
text embeddings, cosine log-SNR schedule, forward + backward + Adam update. Architectures are
matched as far as both allow (widths, res blocks per level, which levels hold spatial, text and
temporal attention, heads, GroupNorm groups, text length/width); what could not be matched is
printed. FLOPs are counted the same way on both sides: matmul + convolution FLOPs of forward and
backward (JAX: the step's jaxpr, `benchmarks/flops.py`; torch: `FlopCounterMode`, attention on
the math kernel so its two matmuls are counted). Step times are medians of repeats taken
alternately (ours, peer, ours, ...) after warm-up, so both sides see the same machine load; the
thread count is torch's `set_num_threads` and XLA's default CPU pool (all cores) — printed.
Runs unchanged on a GPU (torch: cuda if available; JAX: its default backend); there both sides
run float32 matmuls as TF32 (JAX's default precision), or pass `--dtype bfloat16` (autocast /
bf16 compute, float32 weights).

Needs the optional benchmark dependencies: `pip install -r requirements-bench.txt`.

  python benchmarks/peer_step.py --sizes s --repeats 3          # smallest: a minute or two on 2 CPU cores
  python benchmarks/peer_step.py --sizes s,m,l --repeats 5      # table + benchmarks/results/peer_step.json
  python benchmarks/peer_step.py --sizes m --profile            # + top ops by time on each side
"""

import argparse
import collections
import copy
import dataclasses
import gzip
import json
import math
import os
import pathlib
import re
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

try:
    import torch
    from diffusers import UNet3DConditionModel
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
except ImportError as e:  # an optional dependency: say how to get it
    sys.exit(f"peer_step.py needs torch and diffusers ({e}); run `pip install -r requirements-bench.txt`.")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from flops import count_flops  # noqa: E402
from results_io import write_json  # noqa: E402
from dreamix_jax.models.unet3d import UNet3D, UNet3DConfig, param_count  # noqa: E402
from dreamix_jax.objective import make_train_step  # noqa: E402

BATCH, FRAMES, CHANNELS = 2, 8, 3
LEARNING_RATE = 1e-4


@dataclasses.dataclass(frozen=True)
class Size:
    """One matched architecture: U-Net widths and depth, attention placement, text shape, resolution."""

    channels: tuple[int, ...]
    resolution: int
    num_res_blocks: int
    attention_levels: tuple[int, ...]  # spatial self + text cross + temporal attention, as diffusers groups them
    num_heads: int
    num_groups: int
    text_length: int
    text_dim: int


# Attention always includes the last level: diffusers' mid block always attends, ours only there.
SIZES = {
    "s": Size((32, 64), 16, 1, (0, 1), 4, 8, 16, 64),
    "m": Size((64, 128, 256), 32, 1, (1, 2), 4, 16, 32, 128),
    "l": Size((128, 256, 512), 32, 2, (1, 2), 8, 32, 64, 256),
}

UNMATCHED = (
    "feed-forward: diffusers' spatial and temporal transformers each end in a GEGLU MLP (4x width) "
    "inside proj_in/proj_out linears with a GroupNorm in front; ours are attention-only (LayerNorm, q/k/v/out)",
    "temporal transformer: diffusers runs self-attention twice (double_self_attention) and has no position "
    "information; ours once, with a learned relative-position bias and a frame embedding",
    "diffusers adds a temporal transformer after conv_in (transformer_in: 8 heads of width "
    "attention_head_dim); ours has none",
    "temporal conv: diffusers 4 x (GroupNorm over time, SiLU, 3x1x1 Conv3d); ours LayerNorm, 2 x 3-tap conv",
    "mid block: diffusers res, tconv, attention, res, tconv; ours 2 full blocks (res, tconv, attention) x 2",
    "res block: diffusers adds the time embedding (one linear to C); ours scale/shift (one linear to 2C)",
    "text: diffusers ignores the text mask and pools no text into the time embedding; ours masks "
    "(all tokens valid here) and adds pooled text to the embedding",
    "diffusers' TemporalConvLayer hard-codes dropout 0.1: set to 0 here, as ours (dropout=0)",
    "optimizer: optax.adam (one fused XLA program with the step) vs torch.optim.Adam (its default "
    "for-each/single-tensor kernels, eager)",
)


def our_config(size: Size, dtype: str) -> UNet3DConfig:
    """Our U-Net at a matched size."""
    return UNet3DConfig(
        channels=size.channels, num_res_blocks=size.num_res_blocks, attention_levels=size.attention_levels,
        temporal_attention_levels=size.attention_levels, num_heads=size.num_heads, text_dim=size.text_dim,
        in_channels=CHANNELS, out_channels=CHANNELS, num_groups=size.num_groups, dtype=dtype)


def peer_model(size: Size) -> "torch.nn.Module":
    """diffusers' UNet3DConditionModel at a matched size, dropout off."""
    levels = range(len(size.channels))
    down = tuple("CrossAttnDownBlock3D" if i in size.attention_levels else "DownBlock3D" for i in levels)
    up = tuple("CrossAttnUpBlock3D" if i in size.attention_levels else "UpBlock3D" for i in reversed(levels))
    model = UNet3DConditionModel(
        sample_size=size.resolution, in_channels=CHANNELS, out_channels=CHANNELS, down_block_types=down,
        up_block_types=up, block_out_channels=size.channels, layers_per_block=size.num_res_blocks,
        norm_num_groups=size.num_groups, cross_attention_dim=size.text_dim,
        attention_head_dim=size.num_heads)  # sic: diffusers reads this as the number of heads per block
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


# ----------------------------------------------------------------------------------------------- ours


def build_ours(size: Size, dtype: str):
    """(jitted step, state, batch, step for counting) of our U-Net."""
    cfg = our_config(size, dtype)
    model = UNet3D(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    params, rest = nnx.split_state(state, nnx.Param, ...)
    optimizer = optax.adam(LEARNING_RATE)
    opt_state = optimizer.init(params)
    step_fn = make_train_step(graphdef, optimizer, paths=("video",))
    keys = jax.random.split(jax.random.key(1), 2)
    batch = dict(
        video=jax.random.normal(keys[0], (BATCH, FRAMES, size.resolution, size.resolution, CHANNELS)),
        text=jax.random.normal(keys[1], (BATCH, size.text_length, size.text_dim)),
        text_mask=jnp.ones((BATCH, size.text_length)))
    return dict(step=jax.jit(step_fn, donate_argnums=(0, 1)), step_fn=step_fn, params=params,
                opt_state=opt_state, rest=rest, batch=batch, n_params=param_count(model), calls=0)


def run_ours(o: dict) -> float:
    """One step; returns seconds (result waited for)."""
    start = time.perf_counter()
    o["params"], o["opt_state"], loss, _ = o["step"](o["params"], o["opt_state"], o["rest"], o["batch"],
                                                     jax.random.key(o["calls"]))
    jax.block_until_ready(loss)
    o["calls"] += 1
    return time.perf_counter() - start


def flops_ours(o: dict) -> int:
    """Matmul + conv FLOPs of the step (forward + backward; Adam has none)."""
    return count_flops(o["step_fn"], o["params"], o["opt_state"], o["rest"], o["batch"], jax.random.key(0))


# ----------------------------------------------------------------------------------------------- peer


def build_peer(size: Size, dtype: str, device: str):
    """Model, optimizer and batch of the PyTorch peer."""
    gen = torch.Generator().manual_seed(0)
    model = peer_model(size).to(device).train()
    return dict(
        model=model, opt=torch.optim.Adam(model.parameters(), lr=LEARNING_RATE), device=device, dtype=dtype,
        video=torch.randn(BATCH, CHANNELS, FRAMES, size.resolution, size.resolution, generator=gen).to(device),
        text=torch.randn(BATCH, size.text_length, size.text_dim, generator=gen).to(device),
        n_params=sum(p.numel() for p in model.parameters()))


def _peer_loss(p: dict) -> "torch.Tensor":
    """v-loss with the same cosine log-SNR schedule as ours (dreamix_jax.diffusion.schedule)."""
    x = p["video"]
    t = torch.rand(x.shape[0], device=x.device)
    b = math.atan(math.exp(-0.5 * 20.0))
    a = math.atan(math.exp(0.5 * 20.0)) - b
    logsnr = -2.0 * torch.log(torch.tan(a * t + b))
    alpha = torch.sigmoid(logsnr).sqrt().view(-1, 1, 1, 1, 1)
    sigma = torch.sigmoid(-logsnr).sqrt().view(-1, 1, 1, 1, 1)
    eps = torch.randn_like(x)
    z, v = alpha * x + sigma * eps, alpha * eps - sigma * x
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=p["dtype"] == "bfloat16"):
        pred = p["model"](z, logsnr, encoder_hidden_states=p["text"]).sample
    return torch.mean((pred.float() - v) ** 2)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_peer(p: dict) -> float:
    """One step; returns seconds (device synchronised)."""
    _sync(p["device"])
    start = time.perf_counter()
    loss = _peer_loss(p)
    loss.backward()
    p["opt"].step()
    p["opt"].zero_grad(set_to_none=True)
    loss.item()
    _sync(p["device"])
    return time.perf_counter() - start


def flops_peer(p: dict) -> int:
    """Matmul + conv FLOPs of forward + backward; attention on the math kernel so its bmm's are counted
    (FlopCounterMode has no formula for the CPU flash kernel)."""
    model = copy.deepcopy(p["model"])  # the counting pass leaves the timed model's grads alone
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        _peer_loss(dict(p, model=model)).backward()
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------------- profile


_RUNTIME_EVENT = re.compile(r"::|^\$|^end: |PjitFunction|Execute|ParseArguments|Handle input|Allocate|"
                            r"CollectGarbage|Await|^Thunk|CreateOutputs")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.+?\s+([a-z][\w\-]*)\(")
_MOVES = {"copy", "transpose", "bitcast", "broadcast", "parameter", "constant", "reshape", "slice", "concatenate",
          "pad", "dynamic-slice", "dynamic-update-slice", "tuple", "get-tuple-element", "gather", "iota"}


def hlo_ops(hlo: str) -> dict[str, dict]:
    """name -> {opcode, category, op_name} for every instruction of a compiled HLO module's text.

    The category says what an op (for a fusion: its fused computation, nested calls included)
    spends its time on: convolution, dot, reduce, data movement (copies, transposes, broadcasts,
    concatenations) or elementwise math.
    """
    comp_ops, comp_calls, instrs, current = collections.defaultdict(set), collections.defaultdict(set), {}, None
    for line in hlo.splitlines():
        m = _INSTRUCTION.match(line)
        if m is None:
            header = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
            current = header.group(1) if header else current
            continue
        name, opcode = m.groups()
        calls = re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", line)
        comp_ops[current].add(opcode)
        comp_calls[current].update(calls)
        op_name = re.search(r'op_name="([^"]*)"', line)
        instrs[name] = dict(opcode=opcode, op_name=op_name.group(1) if op_name else "", calls=calls)

    def closure(comps: list[str]) -> set[str]:
        """Opcodes of these computations and of everything they call."""
        ops, todo, seen = set(), list(comps), set()
        while todo:
            comp = todo.pop()
            if comp not in seen:
                seen.add(comp)
                ops |= comp_ops[comp]
                todo.extend(comp_calls[comp])
        return ops

    for info in instrs.values():
        ops = ({info["opcode"]} | closure(info.pop("calls"))) - {"fusion"}
        info["category"] = ("convolution" if "convolution" in ops else "dot" if "dot" in ops
                            else "custom-call" if "custom-call" in ops else "while" if "while" in ops
                            else "reduce" if ops & {"reduce", "reduce-window"}
                            else "data movement" if ops <= _MOVES else "elementwise")
    return instrs


def profile_ours(o: dict, top: int) -> None:
    """Per-HLO-op time from a jax.profiler trace (XLA's CPU thunks and GPU kernels both appear), each
    op with what it computes and the JAX op it came from, plus the program's XLA cost analysis."""
    compiled = o["step"].lower(o["params"], o["opt_state"], o["rest"], o["batch"], jax.random.key(0)).compile()
    ops = hlo_ops(compiled.as_text())
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    print(f"\n[ours] XLA cost analysis of the compiled step: {cost.get('flops', 0) / 1e9:.2f} GFLOP, "
          f"{cost.get('bytes accessed', 0) / 2**20:.1f} MiB accessed, "
          f"{cost.get('transcendentals', 0) / 1e6:.2f} M transcendentals; {len(ops)} HLO instructions")
    steps = 3
    with tempfile.TemporaryDirectory() as logdir:
        with jax.profiler.trace(logdir, create_perfetto_trace=True):
            for _ in range(steps):
                run_ours(o)
        traces = sorted(pathlib.Path(logdir).rglob("perfetto_trace.json.gz"))
        events = json.load(gzip.open(traces[-1])) if traces else {}
    events = events.get("traceEvents", events) if isinstance(events, dict) else events
    per_op = collections.defaultdict(float)
    for e in events:
        if e.get("ph") == "X" and not _RUNTIME_EVENT.search(e.get("name", "")):
            per_op[e["name"]] += e.get("dur", 0.0) / steps
    total = sum(per_op.values()) or 1.0
    unknown = dict(category="?", op_name="")
    print(f"[ours] top {top} ops by time per step (jax.profiler trace, {steps} steps, "
          f"{total / 1e3:.1f} ms/step in ops):")
    print(f"  {'op':<30} {'computes':<14} {'ms/step':>8} {'share':>6}  from (JAX op)")
    for name, us in sorted(per_op.items(), key=lambda kv: -kv[1])[:top]:
        info = ops.get(name, unknown)
        origin = "/".join(info["op_name"].split("/")[-3:])[-60:]
        print(f"  {name[:30]:<30} {info['category']:<14} {us / 1e3:>8.2f} {us / total:>6.1%}  {origin}")
    by_kind = collections.defaultdict(float)
    for name, us in per_op.items():
        by_kind[ops.get(name, unknown)["category"]] += us
    print("  time by what ops compute: "
          + ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])))


def profile_peer(p: dict, top: int) -> None:
    """torch.profiler's per-operator table for a few steps."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if p["device"] == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            run_peer(p)
    sort = "self_device_time_total" if p["device"] == "cuda" else "self_cpu_time_total"
    print(f"\n[peer] top {top} operators by self time (torch.profiler, 3 steps):")
    print(prof.key_averages().table(sort_by=sort, row_limit=top))


# ------------------------------------------------------------------------------------------------- main


def measure(name: str, size: Size, args, device: str) -> tuple[dict, dict, dict]:
    """Build both sides, count FLOPs, warm up, then time alternately; returns (row, ours, peer)."""
    ours, peer = build_ours(size, args.dtype), build_peer(size, args.dtype, device)
    flops = dict(ours=flops_ours(ours), peer=flops_peer(peer))
    first_step_s = run_ours(ours)  # includes compilation
    for _ in range(args.warmup):
        run_ours(ours)
        run_peer(peer)
    times = dict(ours=[], peer=[])
    for _ in range(args.repeats):  # alternate: both sides see the same background load
        times["ours"].append(run_ours(ours))
        times["peer"].append(run_peer(peer))
    row = dict(size=name, **dataclasses.asdict(size), ours_first_step_s=first_step_s)
    for side, state in (("ours", ours), ("peer", peer)):
        median = statistics.median(times[side])
        row[side] = dict(params=state["n_params"], gflop_per_step=flops[side] / 1e9, step_s=median,
                         step_s_all=times[side], gflops_per_s=flops[side] / median / 1e9)
    row["time_ratio_ours_over_peer"] = row["ours"]["step_s"] / row["peer"]["step_s"]
    row["flop_ratio_ours_over_peer"] = flops["ours"] / flops["peer"]
    return row, ours, peer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="s,m", help=f"comma-separated, from {sorted(SIZES)}")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per side (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per side after compilation")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true", help="print the top ops by time on each side")
    parser.add_argument("--top", type=int, default=15, help="rows of each profile table")
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. machine load)")
    parser.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "peer_step.json"))
    args = parser.parse_args()
    names = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in names if s not in SIZES]
    if unknown:
        parser.error(f"unknown sizes {unknown}; choose from {sorted(SIZES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # JAX's default float32 matmul precision on GPU is TF32; let torch do the same.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    print(f"JAX backend {jax.default_backend()} ({jax.devices()[0].device_kind}), torch device {device}; "
          f"torch threads {torch.get_num_threads()}, XLA CPU pool: default (all {os.cpu_count()} cores); "
          f"B={BATCH}, {FRAMES} frames, {args.dtype}, median of {args.repeats} alternating repeats"
          + (f"; note: {args.note}" if args.note else ""))
    header = (f"{'size':<4} {'channels':<16} {'res':>3} {'side':<4} {'params':>10} {'GFLOP/step':>10} "
              f"{'step ms':>9} {'min ms':>8} {'GFLOP/s':>8} {'time ours/peer':>14} {'FLOP ours/peer':>14}")
    print(header, flush=True)
    rows = []
    for name in names:
        size = SIZES[name]
        row, ours, peer = measure(name, size, args, device)
        rows.append(row)
        for side in ("ours", "peer"):
            r = row[side]
            ratios = (f"{row['time_ratio_ours_over_peer']:>14.2f} {row['flop_ratio_ours_over_peer']:>14.2f}"
                      if side == "ours" else "")
            print(f"{name:<4} {str(size.channels):<16} {size.resolution:>3} {side:<4} {r['params']:>10,} "
                  f"{r['gflop_per_step']:>10.2f} {r['step_s'] * 1e3:>9.1f} {min(r['step_s_all']) * 1e3:>8.1f} "
                  f"{r['gflops_per_s']:>8.1f} {ratios}",
                  flush=True)
        if args.profile:
            profile_ours(ours, args.top)
            profile_peer(peer, args.top)

    print("\nNot matched between the architectures (FLOP and parameter columns show their weight):")
    for line in UNMATCHED:
        print(f"  - {line}")
    meta = dict(jax_backend=jax.default_backend(), jax_device=jax.devices()[0].device_kind, torch_device=device,
                jax=jax.__version__, torch=torch.__version__, diffusers=__import__("diffusers").__version__,
                torch_threads=torch.get_num_threads(), cpu_count=os.cpu_count(), batch=BATCH, frames=FRAMES,
                dtype=args.dtype, repeats=args.repeats, warmup=args.warmup, note=args.note,
                flops="matmul + conv, forward + backward (jaxpr / FlopCounterMode)", unmatched=list(UNMATCHED))
    print(f"wrote {write_json(args.out, dict(meta=meta, rows=rows))}")


if __name__ == "__main__":
    main()
