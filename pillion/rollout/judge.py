"""A generative pairwise judge: a causal LM that pillion loads (the same `Transformer` as the
policy) reads a principle, a question and two responses, and its next-token probabilities of
the labels "A" and "B" give the verdict (docs/algorithms.md §17; the arithmetic from verdicts to
rewards is pillion/rewards/judge.py).

    judge = load_judge(cfg.reward.judge, device, dtype)     # None without reward.judge.model
    rewards = group_rewards(judge, question, responses, generator)   # [G] mean win probabilities

Each judged pair costs two forwards (both orders), batched `batch` prompts at a time; a forward
reads only the last prompt position's logits (right padding: a causal model's earlier
positions do not see the padding after them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pillion.errors import UserError
from pillion.model.checkpoint import load_model, resolve_model
from pillion.model.tokenizer import load_tokenizer
from pillion.model.transformer import Transformer
from pillion.rewards.judge import LABELS, JudgeConfig, judge_prompt, judge_rewards, opponent_pairs, win_matrix


@dataclass
class Judge:
    model: Transformer
    tokenizer: object
    cfg: JudgeConfig
    labels: tuple[int, int]  # token ids of "A" and "B"
    batch: int = 64  # prompts per forward


def load_judge(cfg: JudgeConfig, device, dtype=torch.float32) -> Judge | None:
    """The judge of `reward.judge.model` on `device`, frozen; None when no judge is configured.
    A folder that is not a model, or a tokenizer whose labels are not one token each, is a
    UserError naming the key."""
    if cfg.model is None:
        return None
    try:
        folder = resolve_model(cfg.model)
        tokenizer = load_tokenizer(folder)
        model = load_model(folder, dtype=dtype, device=device).eval().requires_grad_(False)
    except (UserError, OSError) as e:
        raise UserError(f"config key 'reward.judge.model': {e}") from None
    labels = []
    for label in LABELS:
        ids = tokenizer.encode(label, add_special_tokens=False)
        if len(ids) != 1:
            raise UserError(f"config key 'reward.judge.model': its tokenizer writes {label!r} as {len(ids)} tokens; "
                            "the verdict is read from one next token")
        labels.append(ids[0])
    return Judge(model, tokenizer, cfg, (labels[0], labels[1]))


@torch.no_grad()
def verdicts(judge: Judge, prompts: list[str]) -> torch.Tensor:
    """P(A) / (P(A) + P(B)) [N] at the token after each prompt."""
    device = judge.model.lm_head.weight.device
    out = []
    for start in range(0, len(prompts), judge.batch):
        ids = [judge.tokenizer.encode(p, add_special_tokens=False) for p in prompts[start : start + judge.batch]]
        lengths = torch.tensor([len(x) for x in ids], device=device)  # [b]
        longest = int(lengths.max())
        tokens = torch.zeros(len(ids), longest, dtype=torch.long, device=device)  # [b, L] right-padded
        for i, x in enumerate(ids):
            tokens[i, : len(x)] = torch.tensor(x, device=device)
        positions = torch.arange(longest, device=device).expand(len(ids), -1)  # [b, L]
        hidden = judge.model(tokens, positions, None)  # [b, L, H], causal
        last = hidden[torch.arange(len(ids), device=device), lengths - 1]  # [b, H]
        logits = judge.model.logits(last)[:, list(judge.labels)]  # [b, 2]: A, B
        out.append(torch.softmax(logits, dim=-1)[:, 0].cpu())  # P(A) among the two labels
    return torch.cat(out) if out else torch.zeros(0)


def group_rewards(judge: Judge, question: str, responses: list[str], generator: torch.Generator | None = None
                  ) -> torch.Tensor:
    """Mean win probability [G] of each response against its opponents, both orders judged."""
    cfg = judge.cfg
    pairs = opponent_pairs(len(responses), cfg.opponents, generator)
    forward = [judge_prompt(cfg.template, cfg.principle, question, responses[i], responses[j]) for i, j in pairs]
    swapped = [judge_prompt(cfg.template, cfg.principle, question, responses[j], responses[i]) for i, j in pairs]
    p = verdicts(judge, forward + swapped)  # [2K]
    return judge_rewards(win_matrix(pairs, p[: len(pairs)], p[len(pairs) :], len(responses)))
