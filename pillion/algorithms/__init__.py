"""RL math as pure tensor functions: advantages, losses (with aggregation and KL), filters.

Formulas, edge cases and worked examples: docs/algorithms.md. Nothing here touches a model,
tokenizer, config or file; every function takes tensors (rows of one prompt contiguous, [B, T]
token tensors with a response mask) and returns tensors.
"""

from pillion.algorithms import advantages, filters, losses

__all__ = ["advantages", "filters", "losses"]
