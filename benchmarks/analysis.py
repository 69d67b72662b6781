"""What the CPU measurements mean, per case: what dominates a missed target, and the target we
propose instead where the original one is out of reach for composed torch ops on a CPU.

Written from the profiles and ratios of the CPU run (2 shared cores); ``mixlight bench
--render`` refreshes RESULTS.md with this text without measuring again.
"""

MOV_SITE = """\
Analysis. Every operation in this case is memory-bound on a CPU. The (IA)³ site makes about six
passes over `[tokens, d]` (forward `h * v`; backward `g * v` and the reduction of `g * h`).
The fused op is built from torch ops, so it still writes the merged `[tokens, d]` vector in
forward and again in backward (recomputed: that is what keeps its saved activations at `h`
plus `[tokens, E]` probabilities, the met memory target), and backward adds `g * h`,
`g_out * merged`, the router's `[tokens, E] x [E, d]` contraction and their sum. The
contractions over E are skinny matmuls (inner size E, the `bmm` lines of the profile) that
run at memory speed at best. That is roughly 3-4x the (IA)³ traffic, as measured; for E >= 10
the fused op is also 1.15-1.25x slower than plain autograd through `mixlight.math`
(`unfused`), the price of the recomputation that halves the saved activations. 1.3x is out of
reach for composed ops on a CPU: it needs one pass per token row that computes logits, softmax
and the merge without materialising `[tokens, d]` intermediates (a Triton/CUDA kernel).
Proposed CPU target: fused <= 4x (IA)³ time at E=10 (and <= 1.25x `unfused`); keep 1.3x for
a dedicated GPU kernel."""

MOLORA_SITE = """\
Analysis. Counted in units of one `[tokens, d] x [d, E*r]` matmul, the rank-E·r LoRA does 6 per
step (2 forward, 4 backward). The fused op does the same 6, plus one more because backward
recomputes `x @ A_cat` (the price of saving only `x` and the probabilities: its saved
activations equal LoRA's), plus the router (`[tokens, d] x [d, E]` forward and two such
products backward, 3/r = 0.75 units at r=4), plus the expansion of the probabilities to
`[tokens, E*r]` and the products with it. That is about 1.3x the LoRA's matmul work before any
overhead, and the E*r-wide matmuls are least efficient at small E (the extra `bmm`/`mm` time
in the profiles), hence ~1.3x at E=16 and ~1.7x at E=4. <= 1.1x is out of reach while backward
recomputes; saving `u = x @ A_cat` (`[tokens, E*r]`, 6% of `x` at E=16) would remove one
unit. Proposed CPU target: fused <= 1.4x LoRA(rank E·r) at E=16 and <= 1.8x at E=4. The
loop targets are met: about 15x faster at E=16, and 0.06-0.20x its saved activations (at E=4
exactly at the bound: fused saves `x` and the probabilities, the loop those plus four
`[tokens, d]` expert outputs and their `[tokens, r]` factors, five times as much)."""

T5_TRAINING = """\
Analysis. Rounds on 2 shared cores are noisy (see the IQRs; the two (IA)³ implementations,
which do the same work, differ by up to 15% from round to round), so ratios within ~0.05 of a
bound are not decisive. MoV-10 adds case 1's routing work at 64 sites (k and v of 24
attentions, 16 FFN activations), a few percent of a step whose time is the frozen model's
matmuls (`mm`). MoLoRA-10 adds case 2's ~1.3x adapter overhead (recomputation, routers,
probability products) at the 128 sites it shares with PEFT LoRA r=40, about 15% of the step:
the extra time in its profile is `mm`, `bmm` (routers) and `mul` (single profiled steps on a
shared machine: other lines, e.g. `pow`/`tanh` of the GELU that both run, are noise). Proposed
CPU target: MoLoRA-10 <= 1.2x PEFT LoRA r=40; the MoV-10 time and memory targets stand."""

GENERATION = """\
Analysis. With the KV cache each decoding step processes one token per sequence, so the base
model's step is a chain of small matrix-vector products, and MoV-10 adds per step, at 24
decoder sites (self-attention k/v and the FFN activation; cross-attention k/v are computed
once), a per-head router contraction, a softmax and the merge: tiny `bmm`s (the profile's
extra lines) whose cost is dispatch and thread wake-up, not arithmetic. A side experiment (32
new tokens, 3 rounds) gave 1.19x at batch 1 with one torch thread (where the base model is
2.3x faster than with two threads on these shared cores) and 1.22x at batch 8 with two, so
the overhead is not a threading artefact. Proposed CPU target: <= 1.3x; 1.15x needs the
per-token routing in one kernel or a compiled decode step (torch.compile / CUDA graphs)."""

ANALYSIS = {1: MOV_SITE, 2: MOLORA_SITE, 3: T5_TRAINING, 4: GENERATION}


def analysis_for(case: int, device: str, quick: bool) -> str:
    """The analysis of ``case``, for full-size CPU runs only (it describes those)."""
    return "" if quick or device != "cpu" else ANALYSIS.get(case, "")
