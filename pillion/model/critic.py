"""The critic for PPO and VAPO: pillion's decoder with a scalar value head.

V[i, t] is read at the position whose logits give log pi(y_it), i.e. the state (prompt,
y_<t) (docs/algorithms.md §2.2, "value alignment"). The trunk starts as a copy of the policy (VAPO
starts from a reward model; with verifiable rewards there is none) and the head at zero, so
initial values are 0 and the first advantages are Monte-Carlo returns.
"""

from __future__ import annotations

import torch
from torch import nn

from pillion.model.sequences import PackedLayout, SequenceBatch, packed_layout, packed_states
from pillion.model.transformer import Transformer, causal_padding_mask, padding_positions


class Critic(nn.Module):
    def __init__(self, trunk: Transformer):
        super().__init__()
        self.trunk = trunk
        self.value_head = nn.Linear(trunk.cfg.hidden_size, 1, device=trunk.lm_head.weight.device,
                                    dtype=trunk.lm_head.weight.dtype)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        if trunk.lm_head.weight is not trunk.model.embed_tokens.weight:
            # The values read hidden states: an untied LM head plays no part, gets no gradient, and
            # is frozen so that no optimizer holds it (FSDP2 created state for it on resume that no
            # checkpoint had: "Missing key ... trunk.lm_head.weight.step"). Kept, frozen, so that
            # the critic's tensors keep their names. A tied one is the embedding, which trains.
            trunk.lm_head.requires_grad_(False)

    def values(self, batch: SequenceBatch, packed: bool = True, share_prompts: bool = True) -> torch.Tensor:
        """Values [B, T] float32 of each response token's state; 0 on padding.

        packed: through the trunk's packed forward without padding (`packed_values`; each shared
        prompt once with `share_prompts`, as the policy's `response_logprobs`), else the padded
        batch (the reference the tests compare with). The critic may live on another device than
        the batch (`critic.device`): inputs go to the critic's device and values come back
        (through autograd) to the batch's.
        """
        if packed:
            return self.packed_values(packed_layout(batch, share_prompts))
        device = self.value_head.weight.device
        seqs = batch.to(device)
        attn = seqs.attention_mask
        hidden = self.trunk(seqs.input_ids, padding_positions(attn), causal_padding_mask(attn))
        P, T = batch.prompt_len, batch.response_mask.shape[1]
        v = self.value_head(hidden[:, P - 1 : P - 1 + T]).squeeze(-1).float()  # [B, T]
        v = torch.where(seqs.response_mask.bool(), v, torch.zeros_like(v))
        return v.to(batch.input_ids.device)

    def packed_values(self, layout: PackedLayout) -> torch.Tensor:
        """Values [B, T] float32 of the layout's targets (the micro-batch's layout, shared with the
        policy's forwards), on the layout's device; 0 elsewhere."""
        device = self.value_head.weight.device
        here = layout.to(device)
        v = self.value_head(packed_states(self.trunk, here)).squeeze(-1).float()  # [n]
        v = torch.zeros(here.where.shape, dtype=torch.float32, device=device).masked_scatter(here.where, v)
        return v.to(layout.where.device)
