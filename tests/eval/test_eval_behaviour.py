"""Behaviour metrics (reflection phrases, lengths by outcome) and the KL-to-initial probe."""

import math
import shutil

import pytest
import torch

from pillion.eval.behaviour import (
    DEFAULT_PHRASES,
    behaviour_metrics,
    kl_to_initial,
    phrase_counts,
    phrase_pattern,
    probe_rows,
)


def test_phrases_match_whole_words_case_insensitively():
    texts = [
        "Wait, 2+2=4. Let me check: yes.",  # "Wait" and "Let me check" -> 2
        "I awaited the result and verified it.",  # "awaited", "verified": not whole words -> 0
        "let me\n  check again, then DOUBLE CHECK and double-check.",  # one scan, longest first -> 3
        "On second thought, reconsider. Verify!",  # 3
        "",
    ]
    assert phrase_counts(texts) == [2, 0, 3, 3, 0]
    # "let me check again": one match, not two, though "check again" is also listed
    assert phrase_counts(["let me check again"], ["check again", "let me check"]) == [1]
    assert phrase_counts(["Hmm, hmm."], ["hmm"]) == [2]
    assert phrase_pattern(["a.b"]).search("a.b") and not phrase_pattern(["a.b"]).search("axb")  # escaped
    assert "wait" in DEFAULT_PHRASES and "on second thought" in DEFAULT_PHRASES


@pytest.mark.parametrize("phrases", [[], "wait", ["wait", ""], ["ok", 3]])
def test_bad_phrase_lists_are_named(phrases):
    with pytest.raises(ValueError, match="behaviour.phrases"):
        phrase_pattern(phrases)


def test_behaviour_metrics_by_hand():
    texts = ["wait, wait", "no reflection", "let me verify", "done"]  # counts 2, 0, 1, 0
    correct = [True, False, None, True]  # None (ungradable) counts as incorrect
    tokens = [10, 20, 30, 50]
    out = behaviour_metrics(texts, correct, tokens)
    assert out == pytest.approx({
        "reflection_rate": 0.5,  # 2 of 4 responses
        "reflection_count": 0.75,  # (2 + 0 + 1 + 0) / 4
        "response_length_correct": 30.0,  # (10 + 50) / 2
        "response_length_incorrect": 25.0,  # (20 + 30) / 2
    })
    only_right = behaviour_metrics(["a", "b"], [True, True], [4, 6], phrases=["a"])
    assert only_right == {"reflection_rate": 0.5, "reflection_count": 0.5, "response_length_correct": 5.0}
    assert behaviour_metrics([], [], []) == {}
    with pytest.raises(ValueError, match="same length"):
        behaviour_metrics(["a"], [True, False], [1])


def test_probe_rows_spread_over_the_batch():
    assert probe_rows(10, 4).tolist() == [0, 3, 6, 9]  # linspace(0, 9, 4) = 0, 3, 6, 9
    assert probe_rows(3, 16).tolist() == [0, 1, 2]


def _hf_response_logprobs(model, prompt, response):
    """log p(response tokens | prompt) of one unpadded row, straight from transformers."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)  # [L, V]
    P = len(prompt)
    return torch.stack([logp[P - 1 + t, tok] for t, tok in enumerate(response)])


def test_kl_to_initial_against_transformers(tiny_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    from pillion.model.checkpoint import load_model
    from pillion.model.sequences import pack

    folder = tiny_checkpoint("qwen2")
    moved = tmp_path / "moved"
    hf_init = AutoModelForCausalLM.from_pretrained(folder).eval()
    hf_moved = AutoModelForCausalLM.from_pretrained(folder).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in hf_moved.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf_moved.save_pretrained(moved)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{folder}/{name}", moved / name)

    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    responses = [[20, 21, 22, 23], [24, 25], [26, 27, 28]]
    batch = pack(prompts, responses, pad_id=0)
    initial, policy = load_model(folder).eval(), load_model(moved).eval()

    out = kl_to_initial(policy, initial, batch, temperature=1.0, rows=16)
    delta = torch.cat([_hf_response_logprobs(hf_moved, p, r) - _hf_response_logprobs(hf_init, p, r)
                       for p, r in zip(prompts, responses)])  # [9] tokens of all rows
    k3 = (torch.exp(-delta) + delta - 1).mean()  # token mean over 4 + 2 + 3 tokens
    assert out["kl_initial"] == pytest.approx(float(k3), rel=1e-4, abs=1e-7)
    assert out["kl_initial_k1"] == pytest.approx(float(delta.mean()), rel=1e-4, abs=1e-7)
    assert out["kl_initial"] > 0

    same = kl_to_initial(initial, initial, batch, rows=2)  # rows 0 and 2 of 3
    assert same == {"kl_initial": 0.0, "kl_initial_k1": 0.0}
    assert math.isfinite(kl_to_initial(policy, initial, batch, rows=1)["kl_initial"])
