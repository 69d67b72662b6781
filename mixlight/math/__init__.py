"""The mixing math, written once with einops over any array type (numpy is the reference)."""

from mixlight.math._losses import load_balance_loss, router_z_loss, routing_summary
from mixlight.math._mixing import lowrank_mixture, merge_vectors, mix_vectors
from mixlight.math._routing import pool_sequence, router_logits, router_probs

__all__ = [
    "load_balance_loss",
    "lowrank_mixture",
    "merge_vectors",
    "mix_vectors",
    "pool_sequence",
    "router_logits",
    "router_probs",
    "router_z_loss",
    "routing_summary",
]
