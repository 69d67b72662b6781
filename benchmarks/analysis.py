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
against the (IA)³ site's one forward and two backward. That took E=10 from 2.7x to 1.8x, and
computing the probabilities' gradient as an experts-major product (an `[E, n]` output, 2-3x
faster in MKL than the same product with a skinny `[n, E]` one) from 1.8x to 1.57x
(`HISTORY.md`). What remains is passes over `[tokens, d]`: about 17 for the fused op
(forward: the logits read `h`, the merge writes, the scaling reads and writes; backward:
`g_out * h`, two contractions with it, the router-kernel gradient, the merge again, the
scaling and the router term) against about 7 for (IA)³. Fewer passes need one loop per token
block that reads `h` and `g_out` once and keeps the merged vector in registers: that is
`mixlight_torch.ops.triton_mov` on CUDA (interpreter-tested here, never timed: no GPU was
lent). Proposed CPU target for the composed-op path: <= 2.0x (IA)³ at E=10 and <= 1.05x its
saved activations; keep 1.3x for the Triton kernel on GPU."""

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
Analysis. Rounds on 2 shared cores are noisy (see the IQRs; ratios within ~0.05 of a bound are
not decisive). The anchor rows are the naive forward hooks a user would write
(`benchmarks/naive_hooks.py`: per-head routers and einsum merges in plain autograd): mixlight's
fused ops beat them at both MoV-10 and MoLoRA-10 while saving a fifth less for backward.
Against PEFT, MoV-10 adds per-head routing at 64 sites (k and v of 24 attentions, 16 FFN
activations); a profile of one step each (2026-11-30, after moving the CPU router to an
experts-major layout, which took its softmax off the profile) puts the extra at: the router
products, forward and weight gradient (`mm`, +54 ms of ~1.3 s), the per-head `bmm`s of the
merge, its recomputation in backward and its two gradients (+56 ms), the elementwise work of
the merge and the routing gradient (`mul`/`add`, +20 ms) and the two autograd Functions' own
Python (+36 ms). The recomputation of the merged vector is what keeps saved activations at
1.02x (IA)³: saving it instead would trade ~15 ms for a second `[tokens, d]` tensor per site.
What is left is arithmetic that a soft merge needs and PEFT's (IA)³ does not, on small tensors;
fusing it is the Triton kernel's job on GPU. Proposed CPU targets: MoV-10 <= 1.15x PEFT (IA)³,
MoLoRA-10 <= 1.15x PEFT LoRA r=40, and both below the naive hooks.

Compiled (inductor, the *train step compiled* group), MoV-10 is 1.13x compiled PEFT (IA)³ and
below the compiled hooks (0.96x). Inside `fused_mov` the sums over the experts now fuse with
the loops around them (case 5), but the step's extra is the same small products as eager: the
per-site profile diff names whole compiled graphs, and the library products left between them
(`bmm`, +24 ms) are the merge's contractions; a kernel that does a site's routing, merge and
gradients in one pass over its tokens would remove them (the Triton kernel's job on CUDA;
compiled graphs trace the torch ops instead). Compiled, MoV-10 saves 1.17x (IA)³'s bytes (358
against 308 MiB; eager: 524 against 513). Listing the saved tensors of a one-layer model shows
what the partitioner keeps: for (IA)³ it recomputes each FFN's gelu output in backward from the
`wi_0` output it keeps anyway, while for MoV that output is the input `h` which the custom
Function saves for its own backward (its router reads it), so one `[tokens, d_ff]` tensor per
FFN layer stays alive. A site that recomputed `h` would need its producer, which a site op does
not see. Proposed CPU target for the compiled row: <= 1.15x time, <= 1.2x saved, below the
compiled hooks (met: 0.96x time, 0.73x saved)."""

GENERATION = """\
Analysis. With the KV cache each decoding step routes one token per sequence, so MoV-10 adds,
at 24 decoder sites (self-attention k/v and the FFN activation; cross-attention k/v are
computed once), a router contraction, a softmax and the merge on a few hundred numbers. On
this VM each matmul or softmax kernel call opens an OpenMP parallel region even for such
sizes, and waking the sleeping worker thread costs ~0.1 ms: one site took 425 us against 23
us for the frozen Linear before it. Contractions under 32k multiply-adds on CPU now run as
broadcast-and-sum with an elementwise softmax (49 us per site), which took generation from
1.31-1.40x to 1.16-1.19x (`HISTORY.md`). The rest is per-site Python and dispatch (about 20
small ops): timed one site and token at a time, 22 us for the frozen Linear, ~50 us for the
fused op's routing and merge (about 10 tensor ops and their Python) and ~25 us for the
adapter layer around it. The in-place softmax of this run (two allocations fewer per site and
token) did not move the ratio measurably (1.16x). The same ops written without the glue
(dtype and autocast checks, views) take ~28 us, so this design's floor on CPU is about (28
us + ~20 us of layer) x 24 sites x 65 tokens ~ 75 ms over the base's ~1.6 s, near 1.05x; the
rest is Python per site. Proposed CPU target: <= 1.2x; on GPU the Triton kernel does a
site's routing in one launch."""

COMPILE = """\
Analysis. While dynamo traces, `fused_mov` writes its sums over up to 16 experts (the merge;
in backward the router term `g_logits @ W^T`) as sums of per-expert products, which inductor
fuses into the loop that scales `h` and into the one that builds the input gradient in the
buffer of `g_out * h` (generated code: one `[n, d]` allocation per pass, as for (IA)³). That
took the fused site from 55.9 to 41.2 ms and its saved bytes from 2.01x to 1.01x (IA)³: the
merged vector is no longer a library product's output that AOT autograd keeps. The ratio
did not move (3.75x -> 3.86x) because in this run the compiled (IA)³ site ran at memory speed
(10.9 ms; 14.3 ms before): after case 3 in the same process, fresh 32 MiB buffers came without
page faults. A profile in that state (glibc's mmap threshold raised) puts the MoV site at
43.6 ms against 12.8: its fused loops 19.1 ms against (IA)³'s 12.8, and four library products
with a 10-wide side, 24.4 ms (the logits and the router-kernel gradient, `mm` 12.7 ms; the
vectors' and probabilities' gradients, `bmm` 11.7 ms), each ~3x slower than reading its 32 MiB
operand. Run alone, where every fresh buffer faults its pages, the same code reads 1.70-1.82x
(IA)³. Written as column or row reductions for inductor to fuse, those four products were
slower (4.2-5.3x). What would remove them is one loop per token block that reads `h` and
`g_out` once and accumulates the products in registers: the Triton kernel on CUDA, a C++
kernel on CPU (mixlight ships none). Proposed CPU target: <= 2.0x compiled (IA)³ when
allocations fault (met: 1.70-1.82x), saved <= 1.05x (met)."""

JAX_SITES = """\
Analysis. Under `jit` XLA fuses the elementwise work itself; its dots stay library calls that
write their result out. On this VM writing a fresh `[8192, 1024]` float32 buffer costs more
than the arithmetic on it: 32 MiB is above glibc's largest mmap threshold, so each output, and
the block of a step's temporaries, is a new mapping whose pages fault on first touch (`h * v`
into a new output ~20 ms, a reduction over the same two arrays ~5 ms). (IA)³ writes two such
buffers per step. The fused MoV (E=10: 2.5x -> 1.8x on 1 thread, `HISTORY.md`) writes three:
the merge `probs @ vectors` and the routing term `g_logits @ W^T` are sums over E of broadcast
products that XLA fuses into the scaling (forward) and into `g_out * merged` (backward), and
the kernel gradients are 2-D row contractions with the narrow operand on the left (the `[d, E]`
orientation ran ~6x slower). The third buffer, `g_out * h`, misses 1.5x: its two consumers
(`p^T (g*h)` for the vectors, `(g*h) V^T` for the probabilities) are dots, which XLA does not
fuse with a producer; computing them over row blocks (`lax.map`) kept it in cache but cost more
in loop overhead (2.0x). One profiled step: output 21 ms, `g_out * h` 20, input gradient 14,
logits, softmax and the four skinny contractions 19, against (IA)³'s 2 x 22 + 5. Above 16
experts the broadcast sum's E multiply-adds per element cost more than the pass they save, so
it stays a dot (E=60 unchanged). What would remove the third buffer is a kernel that reads `h`
and `g_out` once per token block and accumulates both contractions in registers (Pallas on an
accelerator; XLA's CPU dots cannot take a fused producer). Fused MoLoRA is now faster than
LoRA(E·r) (0.71-0.86x, was 1.5-1.75x): with its router on float32 `x` it does `x @ [A_cat, W]`,
the input gradient and both kernel gradients in one dot each, scales the small `B` kernel
rather than the output, and puts the narrow operand on the left, where LoRA's own autodiff
spends 36 of its ~125 ms on `x^T g_u`. The loop runs in its own group: whichever step was timed
after it ran ~70 ms slow (LoRA 195 against 126 ms, fused 178 against 110). Saved bytes are
unchanged (MoV 1.01x, MoLoRA 0.96-0.99x). Proposed CPU target: MoV <= 2.0x (IA)³ at E=10;
MoLoRA keeps 1.1x."""

JAX_T5 = """\
Analysis. On 2 threads (this run) MoV-10 is 1.10x the JAX (IA)³ step and 0.96x the naive MoV,
MoLoRA-10 1.04x LoRA r=40; pinned to one thread the same code read 1.05x, 0.92x and 1.00x
(`HISTORY.md`): as in torch, the small per-site work does not get faster with a second thread,
the frozen model's matmuls do. MoV-10 adds, at 64 sites (k and v of 24 attentions, routed per
head, and 16 FFN activations), the router, the merge and their gradients to a step whose time
is the frozen T5's matmuls; it is at the (IA)³ bound and below the naive MoV (the same sites
traced with the fast ops off: `core_math_only`, the core math under plain autodiff), which
keeps the merged vectors and the router's input for backward (1.24x (IA)³'s bytes against the
fused op's 1.01x). Per-head sites merge with a dot: as sums of broadcast products (the fast
form at a single site without heads, case 6) XLA fused the sums of several sites into one loop
and wrote their `[tokens, H, E, k]` operands out (then 1.26x (IA)³ and 1.05x naive; the op
before this work: 1.20x and 0.98x; now 1.05x and 0.92x, `HISTORY.md`). What remains against
(IA)³ is spread over per-site small work (softmax and its gradient, the `[H, tokens, E]`
transposes of the per-head kernel gradients), at 64 sites: fewer ops per site (a single-pass
site kernel) is what would remove it. MoLoRA-10 r=4 now equals LoRA r=40 (was 1.08x): the same
matmul shapes, with the router in the same dots as `A` (case 6)."""

XLORA = """\
Analysis. X-LoRA runs the model twice per step (a scaling pass with the adapters off, then the
adapted pass with its classifier's per-token scalings) and applies its 10 adapters one by one
at each layer. As configured by default it trains only the classifier on frozen adapters, so
its backward computes no adapter-weight gradients: MoLoRA-10, which trains experts and
router, is 2.6x faster (0.39x), short of the 3x target. Against X-LoRA with trainable adapters
(`use_trainable_adapters=True`; like for like, both train router and experts) it is ~4x faster
(0.26x, met) and saves a quarter of its activations. The 7.9x of peft#1472 was measured
against the base model on GPU at a larger scale; here the frozen Llama's own matmuls dominate
every step. Proposed target: >= 2.5x faster than default X-LoRA, >= 3x than trainable X-LoRA.
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
    8: JAX_T5,
}


# (case, the target, the target proposed for this CPU and why, in one line)
PROPOSED_CPU_TARGETS = [
    (1, "MoV site E=10 <= 1.3x (IA)³", "<= 2.0x with composed torch ops (~17 passes over "
     "[tokens, d] against (IA)³'s ~7); 1.3x stays the Triton kernel's target on GPU"),
    (3, "MoV-10 / MoLoRA-10 step <= 1.05x PEFT (IA)³ / LoRA r=40", "<= 1.15x each, and below "
     "the naive forward hooks: the soft merge's own arithmetic on small tensors at 64 sites"),
    (3, "compiled MoV-10 step <= 1.05x compiled PEFT (IA)³, saved <= 1.05x", "<= 1.15x time, "
     "<= 1.2x saved (the FFN input a site's Function keeps), below the compiled hooks"),
    (4, "generation <= 1.10x base", "<= 1.2x: measured 1.16-1.19x; the rest is per-site "
     "dispatch of ~20 small ops per token"),
    (5, "compiled MoV site <= 1.5x compiled (IA)³", "<= 2.0x when fresh buffers fault their "
     "pages (1.70-1.82x); with free allocations four 10-wide library products dominate"),
    (6, "JAX MoV <= 1.5x (IA)³, MoLoRA <= 1.1x LoRA(E·r)", "MoV <= 2.0x under jit on CPU: "
     "`g_out * h` feeds two dots, so XLA writes it out as a fresh [tokens, d] buffer"),
    (7, "MoLoRA-10 >= 3x faster than X-LoRA", ">= 2.5x against default X-LoRA (frozen "
     "adapters, no adapter-weight gradients), >= 3x against trainable X-LoRA (met: ~4x)"),
    (8, "JAX MoV-10 step <= 1.05x JAX (IA)³", "<= 1.15x on 2 threads (1.05x on one): the "
     "per-site small work does not speed up with a second thread"),
]  # fmt: skip


# (case, measure, first full measurement, after the fixes in HISTORY.md); CPU, 2 threads
BEFORE_AFTER = [
    (1, "MoV site E=10, fused / (IA)³ time", "3.57x", "1.57x"),
    (2, "MoLoRA site E=4 / 10 / 16, fused / LoRA(E·r) time", "1.79x / 1.65x / 1.52x",
     "0.87x / 0.98x / 1.03x"),
    (3, "MoLoRA-10 / PEFT LoRA r=40 step time", "1.16-1.32x", "1.00-1.15x"),
    (3, "MoV-10 / PEFT (IA)³ step time", "1.04-1.30x", "1.13x (hooks: 1.17x)"),
    (3, "MoLoRA-10 / naive hooks step time", "-", "0.96-0.98x (MoV-10: 0.97-0.99x)"),
    (4, "generation, MoV-10 / base", "1.31-1.40x", "1.16-1.19x"),
    (5, "compiled MoV site E=10: time; saved / (IA)³", "55.9 ms; 2.01x", "41.2 ms; 1.01x"),
    (6, "JAX MoV E=10 / (IA)³; MoLoRA E=16 / LoRA(E·r)", "2.34x; 1.31x", "1.63x; 0.86x"),
    (8, "JAX T5 step MoV-10 / (IA)³; / naive MoV-10", "1.20x; 0.98x (1 thread)",
     "1.10x; 0.96x"),
]  # fmt: skip


def before_after(device: str, quick: bool) -> list[list[object]]:
    """:data:`BEFORE_AFTER` for full-size CPU runs, else empty."""
    return [] if quick or device != "cpu" else [list(t) for t in BEFORE_AFTER]


def proposed_targets(device: str, quick: bool) -> list[list[object]]:
    """:data:`PROPOSED_CPU_TARGETS` for full-size CPU runs, else empty."""
    return [] if quick or device != "cpu" else [list(t) for t in PROPOSED_CPU_TARGETS]


def analysis_for(case: int, device: str, quick: bool) -> str:
    """The analysis of ``case``, for full-size CPU runs only (it describes those)."""
    return "" if quick or device != "cpu" else ANALYSIS.get(case, "")
