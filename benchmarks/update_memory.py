"""Peak memory and time of one GRPO update: pillion's memory options beside TRL's GRPOTrainer.

    python benchmarks/update_memory.py                                 # CPU, float32 (peak RSS)
    python benchmarks/update_memory.py --trl-python PATH/TO/venv-trl/bin/python   # TRL's side (its own interpreter)
    python benchmarks/update_memory.py --precision                     # + bf16: masters vs autocast
    python benchmarks/update_memory.py --device cuda                   # bf16, torch.cuda.max_memory_allocated
    python benchmarks/update_memory.py --layers 4 --settings full,lora # a quick look
    python benchmarks/update_memory.py --smoke --json memory.json      # a tiny model: checks the script

The model is Qwen2.5-0.5B's configuration (hidden 896, 24 layers, 14 heads, 2 KV heads,
intermediate 4864, vocabulary 151,936, tied embeddings), initialised at random by
`transformers` and saved once to --model-dir (reused by later runs). The batch is one GRPO
group: 8 sequences of a 16-token prompt and a 256-token response, random rewards.

Every setting runs in its own fresh process, so one setting's peak cannot carry into the
next; a process reports its peak resident memory (`ru_maxrss`; on CUDA
`torch.cuda.max_memory_allocated`), its memory just after imports (so the difference is the
model, optimizer and update), and the wall and CPU seconds of the update (on a shared CPU the
process's CPU seconds are the steadier measure; the ratios use them).

pillion's update is `pillion.train.update.update` on the models `build_models` makes: full
fine-tuning (fused AdamW, float32), with activation checkpointing of every block, and LoRA
rank 16 (alpha 32) on all seven projections, with and without checkpointing. TRL's is one
`GRPOTrainer` step on the same folder, batch shape and optimizer settings; no reference model
on either side (TRL's default beta 0, pillion with loss.kl_coef=0), gradient checkpointing as
the row says, LoRA through `peft`. A TRL step also generates its 8 completions
(min_new_tokens 256, so every row is full length); that time is measured apart and excluded
from the update's. TRL runs under --trl-python (or $PILLION_TRL_PYTHON), a separate
environment, and is skipped when that interpreter cannot import trl, peft and datasets.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trl_env import trl_python  # benchmarks/trl_env.py (the script's folder is on sys.path)

ROOT = Path(__file__).resolve().parent.parent
QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, architectures=["Qwen2ForCausalLM"])
SMOKE = dict(QWEN25_05B, vocab_size=320, hidden_size=64, intermediate_size=128, num_attention_heads=4)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ROWS, PROMPT, RESPONSE, RANK, ALPHA, LR = 8, 16, 256, 16, 32, 1e-6
# name -> (LoRA, activation checkpointing); the TRL rows use the same names.
SETTINGS = {"full": (False, False), "full+ckpt": (False, True), "lora": (True, False), "lora+ckpt": (True, True)}
PRECISION = ("bf16-masters", "bf16-autocast")  # pillion only: the two ways to compute in bf16


def rss_now() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def make_model(folder: Path, layers: int, shape: dict) -> None:
    """A random-init Qwen2.5-0.5B-shaped folder (float32) with pillion's byte-level tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from pillion.model.tiny import make_tokenizer

    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    config = Qwen2Config(**{**shape, "num_hidden_layers": layers}, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # seconds on a GPU, not a minute
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))


def pillion_child(setting: str, model_dir: str, device_name: str) -> dict:
    """One update with pillion; returns the measures (run in a fresh process)."""
    import contextlib

    import torch

    from pillion import config as C
    from pillion.model.sequences import pack
    from pillion.ranks import World
    from pillion.train.batch import TrainBatch
    from pillion.train.models import Optimizers, attach_optimizers, build_models
    from pillion.train.objective import advantages
    from pillion.train.optim import make_optimizer
    from pillion.train.update import update

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    after_imports = rss_now()
    lora, ckpt = SETTINGS.get(setting, (False, False))
    # On CUDA every pillion row computes in bf16 over float32 masters, except the autocast row
    # (a float32 model under torch.autocast); on CPU only the bf16-masters row.
    bf16 = setting == "bf16-masters" or (cuda and setting != "bf16-autocast")
    # kl_coef 0: no reference model, as TRL's default beta 0 (the GRPO preset's 0.04 would load one).
    overrides = ["micro_batch=8", f"lr={LR}", f"group_size={ROWS}", f"max_new_tokens={RESPONSE}", "loss.kl_coef=0",
                 f"dtype={'bfloat16' if bf16 else 'float32'}",
                 f"activation_checkpointing={'blocks' if ckpt else 'none'}"]
    if lora:
        overrides += [f"lora.rank={RANK}", f"lora.alpha={ALPHA}"]
    cfg = C.resolve(C.TrainConfig, overrides=overrides)
    start = time.perf_counter()
    models = build_models(cfg, Path(model_dir), device)
    load_seconds = time.perf_counter() - start
    optimizers = Optimizers(make_optimizer(models.policy_params, cfg.optim, cfg.lr, cfg.weight_decay))
    attach_optimizers(models, optimizers)

    gen = torch.Generator().manual_seed(0)
    vocab = models.policy.cfg.vocab_size
    prompts = [torch.randint(0, vocab, (PROMPT,), generator=gen).tolist()] * ROWS  # one group
    responses = [torch.randint(0, vocab, (RESPONSE,), generator=gen).tolist() for _ in range(ROWS)]
    batch = pack(prompts, responses, pad_id=0, device=device)
    mask = batch.response_mask.float()  # [8, 256]
    scores = torch.rand(ROWS, generator=gen).to(device)
    adv, _ = advantages(cfg, scores, mask)  # [8, 256] GRPO
    no = torch.zeros(ROWS, dtype=torch.bool, device=device)
    train_batch = TrainBatch(batch, mask, scores, no, no, torch.zeros_like(mask), advantages=adv, loss_mask=mask)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if setting == "bf16-autocast" else None
    start, cpu_start = time.perf_counter(), time.process_time()
    with autocast or contextlib.nullcontext():
        stats = update(models, optimizers, cfg, train_batch, World())
    if cuda:
        torch.cuda.synchronize()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    out = {"peak": peak_rss(), "after_imports": after_imports, "seconds": seconds, "cpu_seconds": cpu_seconds,
           "load_seconds": load_seconds,
           "grad_norm": stats.get("grad_norm"), "trainable": sum(p.numel() for p in models.policy_params)}
    if cuda:
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    return out


def trl_child(setting: str, model_dir: str, device_name: str) -> dict:
    """One GRPOTrainer step (generation timed apart); run under TRL's interpreter."""
    import random

    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    cuda = device_name.startswith("cuda")
    after_imports = rss_now()
    lora, ckpt = SETTINGS[setting]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rng = random.Random(0)

    def reward(completions, **kwargs):
        return [rng.random() for _ in completions]

    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0,
                                 task_type="CAUSAL_LM")
    with tempfile.TemporaryDirectory() as out_dir:
        args = GRPOConfig(output_dir=out_dir, per_device_train_batch_size=ROWS, num_generations=ROWS,
                          max_completion_length=RESPONSE, max_steps=1, learning_rate=LR, beta=0.0,
                          gradient_checkpointing=ckpt, bf16=cuda, use_cpu=not cuda, report_to="none",
                          save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
                          model_init_kwargs={"dtype": torch.float32},
                          generation_kwargs={"min_new_tokens": RESPONSE})
        dataset = Dataset.from_dict({"prompt": ["Compute 12 + 35."[:PROMPT].ljust(PROMPT)] * ROWS})
        trainer = GRPOTrainer(model=model_dir, reward_funcs=reward, args=args, train_dataset=dataset,
                              processing_class=tokenizer, peft_config=peft_config)
        generation = {"seconds": 0.0, "cpu_seconds": 0.0}
        real = trainer._generate_and_score_completions

        def timed(*a, **k):
            start, cpu_start = time.perf_counter(), time.process_time()
            result = real(*a, **k)
            if cuda:
                torch.cuda.synchronize()
            generation["seconds"] += time.perf_counter() - start
            generation["cpu_seconds"] += time.process_time() - cpu_start
            return result

        trainer._generate_and_score_completions = timed
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.train()
        if cuda:
            torch.cuda.synchronize()
        total, cpu_total = time.perf_counter() - start, time.process_time() - cpu_start
    logged = {k: v for row in trainer.state.log_history for k, v in row.items()}
    out = {"peak": peak_rss(), "after_imports": after_imports, "seconds": total - generation["seconds"],
           "cpu_seconds": cpu_total - generation["cpu_seconds"], "generation_seconds": generation["seconds"],
           "completion_length": logged.get("completions/mean_length"),
           "grad_norm": logged.get("grad_norm"),
           "trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)}
    if cuda:
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    return out


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}


def run_child(python: str, kind: str, setting: str, args) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--child", kind, "--settings", setting,
           "--model-dir", str(args.model_dir), "--device", args.device]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (float32, peak RSS) or cuda (bf16, max_memory_allocated)")
    p.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "pillion-qwen2.5-0.5b-random")
    p.add_argument("--layers", type=int, default=24, help="transformer blocks (24 = Qwen2.5-0.5B)")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated among {', '.join(SETTINGS)}")
    p.add_argument("--precision", action="store_true", help=f"also pillion {' and '.join(PRECISION)}")
    p.add_argument("--trl-python", help="python of an environment with trl + peft (or $PILLION_TRL_PYTHON)")
    p.add_argument("--json", type=Path, help="also write every setting's measures to this JSON file")
    p.add_argument("--smoke", action="store_true", help="a 2-layer model with hidden size 64: checks the script")
    p.add_argument("--child", choices=["pillion", "trl", "make"], help=argparse.SUPPRESS)
    args = p.parse_args()
    settings = args.settings.split(",")
    if args.smoke:
        args.model_dir, args.layers = Path(tempfile.gettempdir()) / "pillion-update-memory-smoke", 2

    if args.child == "make":
        make_model(args.model_dir, args.layers, SMOKE if args.smoke else QWEN25_05B)
        return 0
    if args.child:
        fn = pillion_child if args.child == "pillion" else trl_child
        print(json.dumps(fn(settings[0], str(args.model_dir), args.device)), flush=True)
        return 0

    import torch  # the parent only checks the device; children do the work

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("update_memory: CUDA is not available; skipping the CUDA benchmark")
        return 0
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        p.error(f"unknown setting(s) {unknown}; choose among {', '.join(SETTINGS)}")
    marker = args.model_dir / "config.json"
    if not marker.exists() or json.loads(marker.read_text())["num_hidden_layers"] != args.layers:
        print(f"writing a random-init Qwen2.5-0.5B-shaped model ({args.layers} layers) to {args.model_dir} ...",
              flush=True)
        # In a process of its own: building the model takes memory this process should not keep.
        subprocess.run([sys.executable, __file__, "--child", "make", "--model-dir", str(args.model_dir),
                        "--layers", str(args.layers), *(["--smoke"] if args.smoke else [])], check=True,
                       env=child_env())
    trl = trl_python(args, ("trl", "peft", "datasets"))
    cuda = args.device.startswith("cuda")
    metric = "torch.cuda.max_memory_allocated" if cuda else "peak RSS"
    print(f"one GRPO update, {ROWS} x ({PROMPT} + {RESPONSE}) tokens, {args.layers} layers, "
          f"{'bf16' if cuda else 'float32'} on {args.device}; memory: {metric} (GiB), each setting a fresh process")
    if not trl:
        print("TRL: skipped (pass --trl-python or set PILLION_TRL_PYTHON to a python that imports trl, peft, datasets)")

    rows = []
    names = settings + (list(PRECISION) if args.precision else [])
    for name in names:
        ours = run_child(sys.executable, "pillion", name, args)
        theirs = run_child(trl, "trl", name, args) if trl and name in SETTINGS else None
        rows.append((name, ours, theirs))
        print(f"  measured {name}: pillion {json.dumps(ours)}" + (f"; TRL {json.dumps(theirs)}" if theirs else ""),
              flush=True)

    # Memory: the peak (and, on CPU, the peak above the process after imports: model, optimizer,
    # update). Time: on CPU the process's CPU seconds (user + system, all threads), which other
    # programs on a busy machine disturb far less than wall seconds; on CUDA wall seconds.
    key = "cuda_peak" if cuda else "peak"
    clock = "seconds" if cuda else "cpu_seconds"

    def cells(r):
        if r is None:
            return ["", "", "", ""]
        if "error" in r:
            return ["failed", "", "", ""]
        plus = r[key] - (0 if cuda else r["after_imports"])
        return [gib(r[key]), gib(plus), f"{r['seconds']:.0f}", f"{r['cpu_seconds']:.0f}"]

    print()
    head = ["setting", "pillion GiB", "+model", "wall s", "cpu s", "TRL GiB", "+model", "wall s", "cpu s",
            "TRL gen s", "memory p/TRL", f"{'time' if cuda else 'cpu'} p/TRL"]
    table = [head]
    for name, ours, theirs in rows:
        line = [name, *cells(ours), *cells(theirs), "", "", ""]
        if theirs and "error" not in theirs and "error" not in ours:
            line[-3:] = [f"{theirs['generation_seconds']:.0f}", f"{ours[key] / theirs[key]:.2f}",
                         f"{ours[clock] / theirs[clock]:.2f}"]
        table.append(line)
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for name, ours, theirs in rows:
        for who, r in (("pillion", ours), ("TRL", theirs)):
            if r and "error" in r:
                print(f"{name}: {who} failed: {r['error']}")
    if args.json:
        args.json.write_text(json.dumps({name: {"pillion": ours, "trl": theirs} for name, ours, theirs in rows},
                                        indent=1))
    measured = {name: ours for name, ours, _ in rows if "error" not in ours}
    if "full" in measured:
        for name in ("full+ckpt", "lora", "lora+ckpt", *PRECISION):
            if name in measured:
                print(f"{name} / full: memory {measured[name][key] / measured['full'][key]:.2f}, "
                      f"time {measured[name][clock] / measured['full'][clock]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
