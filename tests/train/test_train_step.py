"""The fast RL step: token-budget micro-batches, the update's invariance to them, the one
no-grad pass, grading overlapped with generation, and the step-time breakdown."""

import threading

import pytest
import torch

from pillion import config as C
from pillion.eval.report import write_report
from pillion.model.checkpoint import load_model
from pillion.model.sequences import pack, response_logprobs
from pillion.problem import Problem
from pillion.ranks import World
from pillion.rollout.engine import Completion
from pillion.train import collect
from pillion.train import models as M
from pillion.train.batch import TrainBatch
from pillion.train.schedule import Schedule, micro_batches
from pillion.train.update import logprob_pass, step_times, update


def test_micro_batches_by_rows_and_by_balanced_token_budget():
    assert [m.tolist() for m in micro_batches([5, 5, 5, 5, 5], rows=2)] == [[0, 1], [2, 3], [4]]
    # 30 tokens, budget 15 -> 2 micro-batches; longest first into the lighter one:
    # 10 -> a, 8 -> b, 7 -> b (15), 3 -> a (13), 2 -> a (15): a = rows {0, 1, 3}, b = rows {2, 4}.
    assert [m.tolist() for m in micro_batches([10, 3, 7, 2, 8], rows=128, tokens=15)] == [[0, 1, 3], [2, 4]]
    # A row over the budget runs alone; the row cap still holds: 4 rows of 1 token, 2 rows each.
    assert [m.tolist() for m in micro_batches([20, 4, 4], rows=128, tokens=10)] == [[0], [1, 2]]
    assert sorted(len(m) for m in micro_batches([1, 1, 1, 1], rows=2, tokens=100)) == [2, 2]


def test_token_budget_micro_batches_keep_a_prompt_group_together():
    """With share_prompts a group's prompt runs once, so a group is placed whole (cost: prompt
    once) where it fits, and cut into pieces that fit where it does not."""
    # Rows 0-2 share a 4-token prompt (10 tokens each: cost 4 + 3 x 6 = 22), rows 3-4 a 2-token
    # one (6 each: 2 + 2 x 4 = 10). Budget 25: the groups go to two micro-batches, whole.
    groups = [([0, 1, 2], 4), ([3, 4], 2)]
    assert [m.tolist() for m in micro_batches([10, 10, 10, 6, 6], rows=128, tokens=25, groups=groups)] == [
        [0, 1, 2], [3, 4]]
    # Without groups the balanced split spreads the first group: 10 -> a, 10 -> b, 10 -> a, 6 -> b, 6 -> b.
    assert [m.tolist() for m in micro_batches([10, 10, 10, 6, 6], rows=128, tokens=25)] == [[0, 2], [1, 3, 4]]
    # Budget 20: the 22-token group does not fit whole; longest rows first, rows 0 and 1 cost
    # 4 + 6 + 6 = 16 and row 2 would make 22, so it is cut into [0, 1] (16) and [2] (10); the other
    # group (10) joins the lighter micro-batch: 10 + 10 = 20.
    assert [m.tolist() for m in micro_batches([10, 10, 10, 6, 6], rows=128, tokens=20, groups=groups)] == [
        [0, 1], [2, 3, 4]]
    # The row cap cuts a group as well: 2 rows at most, so three micro-batches.
    assert [m.tolist() for m in micro_batches([10, 10, 10, 6, 6], rows=2, tokens=100, groups=groups)] == [
        [0, 1], [2], [3, 4]]


def test_even_out_halves_the_heaviest_micro_batch_until_ranks_agree():
    """With several ranks each must run as many forwards as the others (FSDP2 gathers weights in
    each): a rank whose budget gave fewer micro-batches halves its heaviest one, longest rows first
    into the lighter half."""
    from pillion.train.schedule import even_out

    lengths = [10, 3, 7, 2, 8]
    parts = [torch.tensor([0, 2, 4]), torch.tensor([1, 3])]  # 25 and 5 tokens
    # Need 3: halve the heavier [0, 2, 4], longest first: 10 -> a, 8 -> b, 7 -> b (its 8 < a's 10).
    out = [m.tolist() for m in even_out(parts, lengths, 3)]
    assert out == [[0], [2, 4], [1, 3]]
    # Need 5 of 5 rows: every row alone.
    assert sorted(m.tolist() for m in even_out(parts, lengths, 5)) == [[0], [1], [2], [3], [4]]
    assert [m.tolist() for m in even_out(parts, lengths, 2)] == [[0, 2, 4], [1, 3]]  # enough already
    with pytest.raises(ValueError, match="5 rows cannot make 6 micro-batches"):
        even_out(parts, lengths, 6)


def _train_batch(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, 256, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
               for _ in range(n)]
    responses = [torch.randint(0, 256, (int(torch.randint(1, 25, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(n)]
    seqs = pack(prompts, responses, pad_id=0)
    mask = seqs.response_mask.float()  # [B, T]
    return TrainBatch(seqs=seqs, response_mask=mask, scores=torch.rand(n, generator=g),
                      correct=torch.rand(n, generator=g) > 0.5, truncated=torch.zeros(n, dtype=torch.bool),
                      engine_logprobs=torch.zeros_like(mask), advantages=torch.randn(mask.shape, generator=g) * mask,
                      loss_mask=mask)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean"])
def test_update_with_token_budget_micro_batches_equals_one_micro_batch(tiny_checkpoint, agg):
    """Same gradient, so the same weights after the optimizer step, whatever the split; the logged
    policy loss is the step's loss whatever the split (the micro-batches' shares summed)."""
    after, losses = [], []
    for extra in (["micro_batch=128"], ["micro_batch=128", "micro_batch_tokens=40"], ["micro_batch=2"]):
        cfg = C.resolve(C.TrainConfig, overrides=[f"loss.agg={agg}", "loss.kl_coef=0", "lr=1e-2", *extra])
        policy = load_model(tiny_checkpoint())
        optimizer = torch.optim.SGD(policy.parameters(), lr=cfg.lr)
        stats = update(M.Models(policy, []), M.Optimizers(optimizer), cfg, _train_batch(), World())
        assert stats["skipped_updates"] == 0 and stats["time_update"] >= 0
        after.append(torch.cat([p.detach().flatten() for p in policy.parameters()]))
        losses.append(stats["pg_loss"])
    assert abs(losses[0]) > 1e-3 and losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert losses[2] == pytest.approx(losses[0], rel=1e-5)  # 3 micro-batches of 2 rows: not a third of it
    torch.testing.assert_close(after[1], after[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(after[2], after[0], atol=1e-6, rtol=1e-5)


def test_every_logged_statistic_is_the_same_whatever_the_micro_batch_split(tiny_checkpoint):
    """Entropy, clip fractions, approx_kl and the ratio statistics are token means (min, max) over
    the step's tokens: one micro-batch of 6 rows, 3 of 2 rows and a token budget log the same
    numbers (a mean of micro-batch means would not: their token counts differ)."""
    logged = []
    for extra in (["micro_batch=128"], ["micro_batch=2"], ["micro_batch=128", "micro_batch_tokens=40"]):
        cfg = C.resolve(C.TrainConfig, overrides=["loss.kl_coef=0", "lr=1e-2", "loss.clip_high=0.1", *extra])
        batch = _train_batch()
        g = torch.Generator().manual_seed(1)
        # old log-probs far from the policy's: ratios spread, some clipped
        batch.old_logprobs = -5.5 - torch.rand(batch.response_mask.shape, generator=g)  # [B, T]
        policy = load_model(tiny_checkpoint())
        stats = update(M.Models(policy, []), M.Optimizers(torch.optim.SGD(policy.parameters(), lr=cfg.lr)), cfg,
                       batch, World())
        logged.append({k: v for k, v in stats.items() if k != "time_update"})
    keys = {"entropy", "clipfrac", "approx_kl", "ratio_mean", "ratio_min", "ratio_max", "pg_loss"}
    assert keys <= logged[0].keys() and 0 < logged[0]["clipfrac"] < 1
    assert logged[0]["ratio_min"] < logged[0]["ratio_mean"] < logged[0]["ratio_max"]
    for other in logged[1:]:
        assert other.keys() == logged[0].keys()
        for k in logged[0]:
            assert other[k] == pytest.approx(logged[0][k], rel=1e-5, abs=1e-7), k


def test_share_prompts_reaches_every_forward_of_the_step_and_keeps_the_update(tiny_checkpoint, monkeypatch):
    """`share_prompts` (default on): the update, old log-probs and the reference all take the
    shared-prompt forward when rows repeat a prompt, none does when it is off, and the weights
    after the step are the same either way (float summation order only)."""
    from pillion.model import sequences

    calls = []  # one entry per forward over a layout that holds some prompt once for several rows
    real = sequences.packed_states
    monkeypatch.setattr(sequences, "packed_states",
                        lambda model, layout: (calls.append(1) if layout.shared else None) or real(model, layout))
    base = _train_batch(2, n=8)
    ids = base.seqs  # rows 2k and 2k + 1 get the same prompt: four groups of two
    seqs = pack([[5 + k, 6, 7] for k in range(4) for _ in range(2)],
                [row[ids.prompt_len:][mask.bool()].tolist() for row, mask in zip(ids.input_ids, ids.response_mask)],
                pad_id=0)
    after = []
    for share, budget in (("true", 0), ("false", 0), ("true", 40)):
        calls.clear()
        cfg = C.resolve(C.TrainConfig, overrides=[f"share_prompts={share}", f"micro_batch_tokens={budget}", "lr=1e-2",
                                                  "loss.kl_coef=0"])
        models = M.Models(load_model(tiny_checkpoint()), [], ref=load_model(tiny_checkpoint(seed=1)).eval())
        batch = _train_batch(2, n=8)
        batch.seqs = seqs
        logprob_pass(models, cfg, batch, need_old=True)  # old log-probs and the reference: two calls
        optimizer = torch.optim.SGD(models.policy.parameters(), lr=cfg.lr)
        update(models, M.Optimizers(optimizer), cfg, batch, World())  # one micro-batch: one more
        if budget:  # token-budget micro-batches keep each group whole: every forward shares
            parts = Schedule(batch.seqs, cfg).split(torch.arange(8))
            assert len(parts) > 1 and len(calls) == 3 * len(parts)
            for m in parts:  # every prompt (its first token 5 + k) present in a micro-batch with both its rows
                assert sorted(seqs.input_ids[m, 0].tolist()) == sorted(2 * list(set(seqs.input_ids[m, 0].tolist())))
        else:
            assert len(calls) == (3 if share == "true" else 0)
        after.append(torch.cat([p.detach().flatten() for p in models.policy.parameters()]))
    torch.testing.assert_close(after[0], after[1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(after[2], after[1], atol=1e-6, rtol=1e-5)


def test_one_no_grad_pass_gives_old_and_reference_logprobs_in_row_order(tiny_checkpoint):
    cfg = C.resolve(C.TrainConfig, overrides=["micro_batch_tokens=30", "temperature=0.8"])
    models = M.Models(load_model(tiny_checkpoint()), [], ref=load_model(tiny_checkpoint(seed=1)).eval())
    batch = _train_batch(1, n=7)
    assert logprob_pass(models, cfg, batch, need_old=True) >= 0
    torch.testing.assert_close(batch.old_logprobs, response_logprobs(models.policy, batch.seqs, 0.8)[0].detach())
    torch.testing.assert_close(batch.ref_logprobs, response_logprobs(models.ref, batch.seqs, 0.8)[0])
    fresh = _train_batch(1, n=7)
    logprob_pass(models, cfg, fresh, need_old=False)  # on-policy: the update's forward is pi_old
    assert fresh.old_logprobs is None and fresh.ref_logprobs is not None


class FakeEngine:
    """Streams 2 prompts x 2 samples, finishing prompt 1's group first; before the last
    completion it waits (up to 60 s, a deadlock guard, not a timing) until a group has been graded."""

    tokenizer = None

    def __init__(self):
        self.graded = threading.Event()
        self.waited = None

    def stream(self, prompts, params):
        order = [(1, 1), (1, 0), (0, 1), (0, 0)]
        for k, (p, s) in enumerate(order):
            if k == len(order) - 1:
                self.waited = self.graded.wait(timeout=60)
            yield Completion([1], [2, 3], f"\\boxed{{{p + s}}}", torch.zeros(2), "stop", p, s)


def test_groups_are_graded_while_the_rest_decode_and_come_back_in_order(monkeypatch):
    engine = FakeEngine()
    real = collect.score_batch

    def scoring(problems, completions, cfg, pool=None):
        out = real(problems, completions, cfg, pool=pool)
        engine.graded.set()
        return out

    monkeypatch.setattr(collect, "render_prompt", lambda problem, template, tokenizer: problem.question)
    monkeypatch.setattr(collect, "score_batch", scoring)
    cfg = C.resolve(C.TrainConfig, overrides=["group_size=2"])
    problems = [Problem(id=str(i), question=f"q{i}", answer="1") for i in range(2)]
    samples, gen_seconds, grade_seconds = collect.generate_and_score(engine, problems, cfg, 0, None)
    assert engine.waited  # prompt 1's group was graded before the last completion came out
    # Rows prompt-major, samples in order; the answer p + s is right (= 1) for (0, 1) and (1, 0).
    assert [(s.completion.prompt_index, s.completion.sample_index) for s in samples] == [(0, 0), (0, 1), (1, 0),
                                                                                           (1, 1)]
    assert [bool(s.reward.correct) for s in samples] == [False, True, True, False]
    assert gen_seconds >= 0 and grade_seconds >= 0


def test_step_time_breakdown_and_its_report_table(tmp_path):
    times = step_times({"time_update": 0.5}, 2.0, 0.25, 0.75, start=0.0)
    # other = step - (2 + 0.25 + 0.75 + 0.5) = step - 3.5; step = perf_counter() - 0 here
    assert times["time_other"] == pytest.approx(times["step_time"] - 3.5)
    rows = [{"step": 1, "time_generate": 2.0, "time_grade": 0.0, "time_logprobs": 1.0, "time_update": 1.0,
             "time_other": 0.0},
            {"step": 2, "time_generate": 4.0, "time_grade": 1.0, "time_logprobs": 1.0, "time_update": 3.0,
             "time_other": 0.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(__import__("json").dumps(r) for r in rows) + "\n")
    report = write_report(tmp_path).read_text()
    # means: generate 3, grade 0.5, log-probs 1, update 2, other 0 -> step 6.5; generate 3/6.5 = 46%
    assert "## Where the step time goes" in report
    assert "| generate (grading beside it) | 3 | 46% |" in report and "| step | 6.5 | 100% |" in report


def test_the_step_lays_out_each_micro_batch_once_for_the_no_grad_pass_and_the_update(tiny_checkpoint, monkeypatch):
    """The split and the packed layouts are made once per set of rows and step: with one
    mini-batch the update reuses the no-grad pass's micro-batches (7 rows, 4 a micro-batch:
    layouts of 4 and 3 rows, nothing more), with two the update lays out its own (rows 0-3 and
    4-6 again, as other micro-batches), and a second epoch reuses the first's."""
    from pillion.train import schedule

    built = []
    real = schedule.packed_layout
    monkeypatch.setattr(schedule, "packed_layout", lambda seqs, share: built.append(len(seqs.input_ids)) or real(
        seqs, share))
    for minis, epochs, expected in ((1, 1, [4, 3]), (2, 2, [4, 3, 4, 3])):
        built.clear()
        cfg = C.resolve(C.TrainConfig, overrides=["micro_batch=4", f"mini_batches={minis}", f"ppo_epochs={epochs}"])
        models = M.Models(load_model(tiny_checkpoint()), [], ref=load_model(tiny_checkpoint(seed=1)).eval())
        batch = _train_batch(1, n=7)
        logprob_pass(models, cfg, batch, need_old=minis > 1)
        stats = update(models, M.Optimizers(torch.optim.SGD(models.policy.parameters(), lr=1e-3)), cfg, batch, World())
        assert built == expected and stats["skipped_updates"] == 0


def test_a_rollout_draws_one_prompt_batch_per_generation_batch(monkeypatch):
    """DAPO's dynamic sampling takes a further batch of prompts each time the kept groups fall
    short, and no more: here the first two batches' groups are all right (filtered out), the
    third's mixed, so three batches are drawn, and a mixture's position moves by them alone."""
    from pillion.data.mixture import Mixture
    from pillion.rewards import RewardResult
    from pillion.train.batch import Sample

    drawn = []

    def batches():
        for k in range(100):
            drawn.append(k)
            yield [Problem(id=f"{k}.{i}", question="q", answer="1") for i in range(2)]

    def scored(engine, problems, cfg, seed, pool, row_offset=0):
        mixed = int(problems[0].id.split(".")[0]) >= 2  # sample 0 of each group right; from batch 2 on the others wrong
        return [Sample(p, Completion([1], [2], "", torch.zeros(1), "stop"),
                       RewardResult(float(j == 0 or not mixed), j == 0 or not mixed, {}))
                for p in problems for j in range(cfg.group_size)], 0.0, 0.0

    monkeypatch.setattr(collect, "generate_and_score", scored)
    cfg = C.resolve(C.TrainConfig, overrides=["algo=dapo", "group_size=2", "prompts_per_step=2",
                                              "filter.max_gen_batches=5"])
    ro = collect.rollout(None, batches(), cfg, 0, None, World())
    assert ro.gen_batches == 3 and drawn == [0, 1, 2] and len(ro.samples) == 4 and len(ro.generated) == 12
    mixture = Mixture({"a": [Problem(id=str(i), question="q", answer="1") for i in range(10)]})
    prompts = collect.prompt_batches(mixture, 3)
    assert mixture.draws == 0  # nothing drawn before the rollout takes a batch
    assert len(next(prompts)) == 3 and mixture.draws == 3


@pytest.mark.parametrize("budget", [0, 40])
def test_rows_without_gradient_take_a_forward_only_and_change_nothing(tiny_checkpoint, monkeypatch, budget):
    """Rows with advantage 0 on every token (no KL, entropy or NLL term) add nothing to the
    gradient: they run without autograd, and the gradient (SGD at lr 1: the weights move by it)
    and every logged statistic are those of the update that backpropagates every row."""
    from pillion.train import update as U

    batch = _train_batch(3, n=8)
    batch.advantages[[1, 2, 5]] = 0.0  # three rows with nothing to learn
    real = U.packed_logprobs
    results = []
    for skip in (False, True):
        grad = []  # autograd on or off, per policy forward
        with monkeypatch.context() as m:
            m.setattr(U, "packed_logprobs", lambda *a, g=grad, **k: g.append(torch.is_grad_enabled()) or real(*a, **k))
            if not skip:
                m.setattr(U, "grad_free_rows", lambda *a: None)
            cfg = C.resolve(C.TrainConfig, overrides=["loss.kl_coef=0", "lr=1", "grad_clip=1e9",
                                                      f"micro_batch_tokens={budget}"])
            policy = load_model(tiny_checkpoint())
            optimizer = torch.optim.SGD(policy.parameters(), lr=cfg.lr)
            stats = update(M.Models(policy, []), M.Optimizers(optimizer), cfg, batch, World())
        results.append((torch.cat([p.detach().flatten() for p in policy.parameters()]), stats, grad))
    (before, full, every), (after, skipped, split) = results
    assert all(every) and False in split and True in split  # free rows without autograd, the rest with it
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-5)
    assert skipped.keys() == full.keys()
    for k, v in full.items():
        if k != "time_update":
            assert skipped[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k


def test_a_mini_batch_with_no_gradient_at_all_still_steps_adamw(tiny_checkpoint):
    """All advantages 0: AdamW must see zero gradients (its moments still move the weights), so
    the usual path runs; the weights move exactly as they do with every row backpropagated."""
    batch = _train_batch(4, n=4)
    batch.advantages.zero_()
    policy = load_model(tiny_checkpoint())
    start = torch.cat([p.detach().flatten() for p in policy.parameters()])
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2, weight_decay=0.1)
    cfg = C.resolve(C.TrainConfig, overrides=["loss.kl_coef=0", "lr=1e-2"])
    update(M.Models(policy, []), M.Optimizers(optimizer), cfg, batch, World())
    assert all(p.grad is None for p in policy.parameters())  # zeroed after the step as always
    assert optimizer.state[next(policy.parameters())]["step"] == 1  # zero gradients were stepped
    moved = torch.cat([p.detach().flatten() for p in policy.parameters()])
    assert not torch.equal(moved, start)  # weight decay 0.1 x lr 1e-2 shrinks every weight
