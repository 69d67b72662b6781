"""What the CPU measurements mean, per case: what dominates a missed target, and the target we
propose instead where the original one is out of reach for composed torch ops on a CPU.

Written from the profiles and ratios of the CPU run (2 shared cores); ``mixlight bench
--render`` refreshes RESULTS.md with this text without measuring again.
"""

MOV_SITE = """\
Analysis. Every operation here is memory-bound on a CPU, and on this VM a fresh `[8192, 1024]`
float32 tensor (32 MiB, above glibc's mmap threshold) also costs its page faults: `h * v`
into a new tensor took 13.6 ms, into an existing one 1.5 ms. The fused op therefore
allocates one activation-sized tensor per pass (forward: the merged vector, scaled by `h` in
place; backward: `g_out * h`, whose buffer then receives `g_out * merged + g_logits @ W^T`),
against the (IA)³ site's one forward and two backward. That took E=10 from 2.7x to 2.0x
(`HISTORY.md`). What remains is passes over `[tokens, d]`: about 17 for the fused op (forward:
the logits read `h`, the merge writes, the scaling reads and writes; backward: `g_out * h`,
two contractions with it, the router-kernel gradient, the merge again, the scaling and the
router term) against about 7 for (IA)³, i.e. ~2x at equal speed per pass, as measured.
Fewer passes need one loop per token block that reads `h` and `g_out` once and keeps the
merged vector in registers: that is `mixlight_torch.triton_mov` on CUDA (interpreter-tested
here, never timed: no GPU was lent). Proposed CPU target for the composed-op path: <= 2.2x
(IA)³ at E=10 and <= 1.05x its saved activations; keep 1.3x for the Triton kernel on GPU."""

MOLORA_SITE = """\
Analysis. Met at every E. Counted in `[tokens, d] x [d, E*r]` matmuls the fused op does one
more than the rank-E·r LoRA (backward recomputes `x @ A_cat`, the price of saving only `x` and
the probabilities) plus the router. What pays for it is allocation, as in case 1: the token
router runs inside the op (`fused_routed_molora`), its input gradient joins the LoRA's in one
product `[g_u, g_logits] @ [A_cat, W]^T`, and the scale and (in a model) the frozen output are
folded into one `addmm`, so the op allocates one activation-sized tensor per pass against the
LoRA baseline's two (`(x @ A) @ B` then `* scale`; backward `g * scale`, then `@ A^T`). The
loop targets are met with room: ~20x faster at E=16 and 0.06-0.20x its saved activations (at
E=4 exactly at the bound: fused saves `x` and the probabilities, the loop those plus four
`[tokens, d]` expert outputs and their `[tokens, r]` factors)."""

T5_TRAINING = """\
Analysis. Rounds on 2 shared cores are noisy (see the IQRs; the two (IA)³ implementations,
which do the same work, differ by up to 10% from round to round), so ratios within ~0.05-0.1
of a bound are not decisive: across runs of the same code MoV-10 / PEFT (IA)³ read 1.04-1.27x
and MoLoRA-10 / PEFT LoRA r=40 1.00-1.12x (`HISTORY.md`). MoV-10 adds per-head routing at 64
sites (k and v of 24 attentions, 16 FFN activations). A profile of three steps each (after
the per-head merge fix) put the whole step at 1.17x: the router matmuls (`mm`, +100 ms), the
per-head `bmm`s of the merge and its gradients (+76 ms), the `[tokens, heads, 10]` softmax
(+27 ms: a 10-wide softmax is dispatch- and thread-bound on CPU) and the two autograd
Functions' own overhead (+50 ms). These are per-site fixed costs of small tensors; fusing them
is the Triton kernel's job. Proposed CPU targets: MoV-10 <= 1.2x PEFT (IA)³, MoLoRA-10 <= 1.1x
PEFT LoRA r=40 (met in most runs)."""

GENERATION = """\
Analysis. With the KV cache each decoding step processes one token per sequence, so the base
model's step is a chain of small matrix-vector products, and MoV-10 adds per step, at 24
decoder sites (self-attention k/v and the FFN activation; cross-attention k/v are computed
once), a per-head router contraction, a softmax and the merge: tiny ops whose cost is
dispatch and thread wake-up, not arithmetic. Runs of the same code read 1.15x to 1.40x
(`HISTORY.md`). A side experiment (32 new tokens, 3 rounds) gave 1.19x at batch 1 with one
torch thread and 1.22x at batch 8 with two, so the overhead is not a threading artefact.
Proposed CPU target: <= 1.3x; 1.15x needs the per-token routing in one kernel (the Triton
kernel's forward on CUDA) or a compiled decode step (torch.compile / CUDA graphs)."""

COMPILE = """\
Analysis. Inductor fuses the (IA)³ site into one C++ loop per pass (13 ms against 45 ms
eager), while both MoV variants keep their contractions as library calls between fused loops
and, for the fused op, AOT autograd traces through the custom Function and saves what its
traced graph needs (2x (IA)³'s bytes, against 1.01x eager). Compiled, fused MoV is no faster
than eager; compiling is not the route to the CPU targets, and on GPU the Triton kernel
replaces it (`fused_mov` uses the torch ops while dynamo traces)."""

JAX_SITES = """\
Analysis. Under `jit` XLA fuses the elementwise work itself, so the JAX rows show the cost of
the design rather than of eager dispatch. The fused MoV (`custom_vjp`) is ~2.2x the (IA)³ site
at E=10, about 1.1x autodiff through the core math, and saves a third of its bytes (autodiff
keeps `h`, the merged vector and `h` again for the router): the recomputation buys the memory
target for ~10% time. Fused MoLoRA is 1.4-1.5x LoRA(rank E·r): unlike the torch op, the JAX
op takes its probabilities from the core router (autodiff), so the router's input gradient
is a separate product and `x` is kept twice among the eager residuals (the saved column,
an upper bound: XLA may share the buffer). Porting `fused_routed_molora` to JAX is the
next step for that row. Loop targets are met (0.22x time, 0.11x saved at E=16)."""

XLORA = """\
Analysis. X-LoRA runs the model twice per step (a scaling pass with the adapters off, then the
adapted pass with its classifier's per-token scalings) and applies its 10 adapters one by one
at each layer. As configured by default it trains only the classifier on frozen adapters, so
its backward computes no adapter-weight gradients: MoLoRA-10 (which trains experts and
router) is about 2.6-3x faster than it, at or just short of the 3x target. Against X-LoRA
with trainable adapters (`use_trainable_adapters=True`, the like-for-like comparison: both
train router and experts) MoLoRA is about 5.5x faster and saves a quarter of its activations.
PEFT's X-LoRA cannot wrap T5 (it rewrites adapter keys to a decoder-only `model.model.*`
layout and applies one sequence's scalings at every layer), hence this decoder-only case."""

ANALYSIS = {
    1: MOV_SITE,
    2: MOLORA_SITE,
    3: T5_TRAINING,
    4: GENERATION,
    5: COMPILE,
    6: JAX_SITES,
    7: XLORA,
}


def analysis_for(case: int, device: str, quick: bool) -> str:
    """The analysis of ``case``, for full-size CPU runs only (it describes those)."""
    return "" if quick or device != "cpu" else ANALYSIS.get(case, "")
