"""The typed config: presets, overrides, errors that name the key, declared ranges, and the flag surface."""

import dataclasses
import re
import sys
import typing
from pathlib import Path

import pytest
import yaml

from pillion import config as C
from pillion import fields
from pillion.cli import main
from pillion.train import parallel

PRESETS = ["grpo", "dr_grpo", "dapo", "ppo", "vapo", "rloo", "reinforce_pp", "gspo", "raft", "raft_pp",
           "reinforce_rej", "srpo", "tool", "concise", "dpo", "pairwise"]


def test_every_preset_ships_and_resolves():
    assert sorted(p.stem for p in C.PRESET_DIR.glob("*.yaml")) == sorted(PRESETS)
    for name in PRESETS:
        judge = ["reward.judge.model=JUDGE"] if name == "pairwise" else []  # its judge is the user's model
        cfg = C.resolve(C.TrainConfig, overrides=[f"algo={name}", *judge])
        assert cfg.algo == name


def test_preset_values_follow_algorithms_md():
    dapo = C.resolve(C.TrainConfig, overrides=["algo=dapo"])
    assert (dapo.loss.clip_low, dapo.loss.clip_high, dapo.loss.agg) == (0.2, 0.28, "token_mean")
    assert dapo.filter.dynamic_sampling and dapo.reward.incorrect == -1.0 and dapo.reward.overlong.enable
    grpo = C.resolve(C.TrainConfig)
    assert (grpo.adv.name, grpo.loss.kl_kind, grpo.loss.kl_coef, grpo.loss.agg) == (
        "grpo",
        "k3",
        0.04,
        "seq_mean_token_mean",
    )
    rej = C.resolve(C.TrainConfig, overrides=["algo=reinforce_rej"])
    assert (rej.adv.name, rej.filter.reject, rej.loss.kl_kind) == ("raw", "all_equal", "low_var")
    srpo = C.resolve(C.TrainConfig, overrides=["algo=srpo"])
    assert set(srpo.data.sources) == {"arith", "code"}  # replaced whole, not merged with the default
    assert srpo.data.history_resampling and len(srpo.data.stages) == 2


def test_override_order_file_then_cli(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("algo: dapo\nlr: 5.0e-5\nloss:\n  clip_high: 0.3\n")
    cfg = C.resolve(C.TrainConfig, str(path), ["loss.clip_high=0.25", "adv=rloo", "lr=3e-4"])
    assert cfg.algo == "dapo" and cfg.loss.agg == "token_mean"  # preset from the file's algo
    assert cfg.loss.clip_high == 0.25  # CLI beats file beats preset
    assert cfg.adv.name == "rloo"  # a scalar on a group sets its name
    assert cfg.lr == 3e-4  # "3e-4" is a float even though YAML 1.1 reads it as a string


@pytest.mark.parametrize(
    "override,message",
    [
        ("loss.clip_hihg=0.3", r"unknown config key 'loss.clip_hihg' \(did you mean loss.clip_high"),
        ("stepz=3", r"unknown config key 'stepz'"),
        ("steps=many", r"config key 'steps': expected int"),
        ("filter.dynamic_sampling=3", r"config key 'filter.dynamic_sampling': expected true/false"),
        ("group_size=2.5", r"config key 'group_size': expected int"),
        ("algo=nope", r"unknown preset algo='nope'"),
        ("ppo", r"expected key=value"),
        # choices are Literals: a typo never silently changes the algorithm
        ("filter.reject=al_equal", r"config key 'filter.reject': 'al_equal' is not one of none, all_equal"),
        ("loss.kl_in=rewards", r"config key 'loss.kl_in': 'rewards' is not one of loss, reward"),
        ("loss.agg=mean", r"config key 'loss.agg': 'mean' is not one of token_mean, seq_mean_token_mean"),
        ("loss.kl_kind=k4", r"config key 'loss.kl_kind': 'k4' is not one of k1, k2, k3, low_var"),
        ("loss.ratio_level=seq", r"config key 'loss.ratio_level'"),
        ("adv=gpro", r"config key 'adv': 'gpro' is not one of grpo, dr_grpo"),  # the group key, not 'name'
        ("loss=3", r"config key 'loss': 3 is not one of ppo_clip, nll, reinforce"),
        ("lr_schedule=step", r"config key 'lr_schedule': 'step' is not one of constant, cosine, linear"),
        ("dtype=float16", r"config key 'dtype': 'float16' is not one of float32, bfloat16"),
        ("data.on_error=ignore", r"config key 'data.on_error'"),
        # ranges, with the allowed range in the message
        ("steps=0", r"config key 'steps': 0 is out of range; expected >= 1"),
        ("group_size=0", r"config key 'group_size': 0 is out of range; expected >= 1"),
        ("prompts_per_step=0", r"config key 'prompts_per_step': 0 is out of range; expected >= 1"),
        ("lr=0", r"config key 'lr': 0.0 is out of range; expected > 0"),
        ("lr=-1e-4", r"config key 'lr': -0.0001 is out of range; expected > 0"),
        ("temperature=0", r"config key 'temperature': 0.0 is out of range; expected > 0"),
        ("top_p=0", r"config key 'top_p': 0.0 is out of range; expected a value in \(0, 1\]"),
        ("top_p=1.5", r"config key 'top_p': 1.5 is out of range"),
        ("max_new_tokens=0", r"config key 'max_new_tokens': 0 is out of range; expected >= 1"),
        ("eval.k=0", r"config key 'eval.k': 0 is out of range; expected >= 1"),
        ("loss.dual_clip=0.5", r"config key 'loss.dual_clip': 0.5 is out of range; expected null or a value > 1"),
        ("device=gpu", r"config key 'device': 'gpu' is not a device; expected auto, cpu, cuda or cuda:N"),
        ("reward.answer_style=last", r"config key 'reward.answer_style': 'last' is not an answer style"),
        ("data.format=csv", r"config key 'data.format': 'csv' is not a format"),
        ("data.template=oops", r"config key 'data.template': unknown template 'oops'"),
        ("filter.dynamic_sampling=true group_size=1", r"dynamic sampling .* needs group_size >= 2"),
    ],
)
def test_bad_keys_and_types_are_named(override, message):
    with pytest.raises(C.ConfigError, match=message):
        C.resolve(C.TrainConfig, overrides=override.split(" "))


def test_good_values_pass_and_group_size_1_warns():
    good = ["device=cuda:1", "top_p=1", "loss.dual_clip=3", "data.template=Q {question}"]
    cfg = C.resolve(C.TrainConfig, overrides=good)
    assert cfg.device == "cuda:1" and cfg.loss.dual_clip == 3.0
    with pytest.warns(UserWarning, match=r"group_size=1 with adv=grpo: every advantage is 0"):
        C.resolve(C.TrainConfig, overrides=["group_size=1"])


def test_malformed_yaml_names_file_line_and_column(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 3\nloss:\n  clip_high: [0.2\n")
    with pytest.raises(C.ConfigError, match=r"run.yaml:4:1: malformed YAML"):
        C.resolve(C.TrainConfig, str(path))
    path.write_bytes(b"steps: \xff\n")
    with pytest.raises(C.ConfigError, match=r"run.yaml: not a UTF-8 text file"):
        C.resolve(C.TrainConfig, str(path))


def test_saved_config_round_trips(tmp_path):
    cfg = C.resolve(C.TrainConfig, overrides=["algo=vapo", "steps=7", "loss.dual_clip=3.0"])
    C.save(cfg, tmp_path / "config.yaml")
    again = C.from_dict(C.TrainConfig, C.load_yaml(tmp_path / "config.yaml"))
    assert again == cfg


def _keys(node, prefix=""):
    out = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        out += _keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]
    return out


TRAIN_KEYS = [
    'activation_checkpointing.k', 'activation_checkpointing.name', 'adv.eps', 'adv.name', 'adv.std_normalize',
    'adv.whiten', 'algo', 'behaviour.kl_probe_every', 'behaviour.kl_probe_rows', 'behaviour.phrases', 'compile',
    'critic.device', 'critic.replicate', 'data.format', 'data.heldout', 'data.heldout_size', 'data.history_resampling',
    'data.level_weights', 'data.max_prompt_tokens', 'data.on_error', 'data.select.k', 'data.select.max_candidates',
    'data.select.max_pass', 'data.select.min_pass', 'data.select.size', 'data.sources', 'data.stages',
    'data.synthetic_size', 'data.template', 'data.weights', 'device', 'dpo.beta', 'dpo.kind',
    'dpo.ref_update_every', 'dtype', 'eval.batch_prompts', 'eval.k', 'eval.max_new_tokens', 'eval.seed',
    'eval.temperature', 'eval.top_p', 'eval_every', 'filter.dynamic_sampling', 'filter.max_gen_batches',
    'filter.overlong_mask', 'filter.reject', 'fsdp.cpu_offload', 'fsdp.timeout_s', 'grad_clip', 'grading_workers',
    'group_size', 'log.tensorboard', 'log.wandb.mode', 'log.wandb.project', 'lora.alpha', 'lora.rank',
    'lora.targets', 'loss.agg', 'loss.clip_high', 'loss.clip_low', 'loss.dual_clip', 'loss.entropy_coef',
    'loss.kl_coef', 'loss.kl_in', 'loss.kl_kind', 'loss.name', 'loss.nll_coef', 'loss.norm_len', 'loss.ratio_level',
    'loss.tis_cap', 'lr', 'lr_schedule', 'max_bad_steps', 'max_new_tokens', 'micro_batch', 'micro_batch_tokens',
    'mini_batches', 'model', 'optim.lr_scale', 'optim.momentum', 'optim.name', 'optim.rank_fraction', 'out',
    'ppo.critic_lr', 'ppo.gamma', 'ppo.lam', 'ppo.lam_critic', 'ppo.value_clip', 'ppo.value_pretrain_steps',
    'ppo.vapo_alpha', 'ppo.vf_coef', 'ppo_epochs', 'prompts_per_step', 'ref.offload', 'reward.answer_style',
    'reward.code_reward', 'reward.correct', 'reward.format_weight', 'reward.incorrect', 'reward.judge.model',
    'reward.judge.opponents', 'reward.judge.principle', 'reward.judge.template', 'reward.judge.weight',
    'reward.length_weight', 'reward.overlong.enable', 'reward.overlong.factor', 'reward.overlong.l_cache',
    'reward.overlong.l_max', 'reward.think_tags', 'reward.timeout', 'save_every', 'seed', 'share_prompts', 'steps',
    'temperature', 'threads', 'tool.end', 'tool.max_calls', 'tool.max_output_tokens', 'tool.output', 'tool.start',
    'tool.timeout', 'top_k', 'top_p', 'warmup_steps', 'weight_decay',
]
SFT_KEYS = [
    'batch_size', 'data.format', 'data.heldout', 'data.heldout_size', 'data.level_weights', 'data.max_prompt_tokens',
    'data.on_error', 'data.sources', 'data.synthetic_size', 'data.template', 'data.weights', 'device', 'dtype',
    'eval.batch_prompts', 'eval.k', 'eval.max_new_tokens', 'eval.seed', 'eval.temperature', 'eval.top_p',
    'fsdp.cpu_offload', 'fsdp.timeout_s', 'grad_clip', 'init', 'log.tensorboard', 'log.wandb.mode',
    'log.wandb.project', 'lr', 'lr_schedule', 'max_bad_steps', 'model', 'optim.lr_scale', 'optim.momentum',
    'optim.name', 'optim.rank_fraction', 'out', 'save_every', 'seed', 'steps', 'threads', 'tiny.family',
    'tiny.hidden_size', 'tiny.intermediate_size', 'tiny.num_heads', 'tiny.num_kv_heads', 'tiny.num_layers',
    'tiny.tie_word_embeddings', 'warmup_steps', 'weight_decay',
]


def test_flag_surface_is_guarded():
    """Adding a knob is a decision: update these lists (and docs/algorithms.md §0) on purpose, so the
    flag surface stays small and every key is one someone chose."""
    assert len(_keys(C.TrainConfig())) == 127, sorted(_keys(C.TrainConfig()))
    assert sorted(_keys(C.TrainConfig())) == TRAIN_KEYS
    assert sorted(_keys(C.SFTConfig())) == SFT_KEYS


def test_the_key_table_of_algorithms_md_names_only_keys_that_exist():
    """docs/algorithms.md §0 lists the knobs by name; a renamed or removed key fails here."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "algorithms.md").read_text()
    table = text.split("Config keys used in this file", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    keys = []
    for prefix, inner in re.findall(r"([a-z_]+(?:\.[a-z_]+)*)\.\{(.*?)\}(?=\s|$)", table, flags=re.M):
        keys += [f"{prefix}.{name}" for name in re.findall(r"([a-z_]+) \(", inner)]
    table = re.sub(r"[a-z_.]+\.\{.*?\}(?=\s|$)", "", table, flags=re.M)
    keys += re.findall(r"(?<![\w.])([a-z_]+(?:\.[a-z_]+)*) \((?!§)", table)
    assert {"ppo.lam", "reward.overlong.l_cache", "data.select.max_candidates", "eval.max_new_tokens"} <= set(keys)
    assert len(keys) >= 60 and sorted(set(keys) - set(TRAIN_KEYS)) == []


# ---------------------------------------------------------------------------------------------
# Declared ranges: every leaf is checked, from the declarations beside the fields
# ---------------------------------------------------------------------------------------------

CONFIGS = {"train": (C.TrainConfig, "algo"), "sft": (C.SFTConfig, None)}


def _resolve(command, overrides):
    cls, preset_key = CONFIGS[command]
    return C.resolve(cls, overrides=overrides, preset_key=preset_key)


@pytest.mark.parametrize("command", list(CONFIGS))
def test_every_leaf_declares_its_values(command):
    """A leaf's type says every value it takes (a bool, a Literal) or it declares a range, a check
    or free-form beside its default; the walk refuses a config with an undeclared leaf."""
    undeclared = [leaf.key for leaf in fields.leaves(CONFIGS[command][0]())
                  if leaf.spec is None and not fields.declared_by_type(leaf.annotation)]
    assert undeclared == []
    kinds = {leaf.key: ("type" if fields.declared_by_type(leaf.annotation) else "range" if leaf.spec.low is not None
                        or leaf.spec.high is not None else "check" if leaf.spec.check else "free")
             for leaf in fields.leaves(CONFIGS[command][0]())}
    # A choice is a Literal: activation_checkpointing.name is one now (a bad value used to be a traceback).
    if command == "train":
        assert kinds["activation_checkpointing.name"] == "type"
        assert {kinds[k] for k in ("lora.rank", "lora.alpha", "ppo.lam", "ppo.gamma", "reward.overlong.l_max",
                                   "reward.overlong.l_cache", "reward.overlong.factor")} == {"range"}
        assert kinds["critic.device"] == kinds["device"] == "check"
    assert sorted(k for k, kind in kinds.items() if kind == "free") == sorted(
        {"train": ["data.heldout", "eval.seed", "model", "out", "reward.correct", "reward.format_weight",
                   "reward.incorrect", "reward.judge.model", "reward.judge.principle", "seed", "tool.start"],
         "sft": ["data.heldout", "eval.seed", "model", "out", "seed"]}[command])


def test_the_walk_refuses_a_leaf_that_declares_nothing():
    @dataclasses.dataclass
    class Group:
        width: int = 3  # no bounded / checked / free: no one decided what it takes

    @dataclasses.dataclass
    class Tree:
        flag: bool = True
        group: Group = dataclasses.field(default_factory=Group)

    with pytest.raises(TypeError, match=r"config key 'group.width' \(Group.width\) declares no range or check"):
        fields.check_tree(Tree())


def _outside(spec, annotation):
    """Values just outside a declared range: below low, above high (the bound itself when open)."""
    integral = int in typing.get_args(annotation) or annotation is int
    step = 1 if integral else 0.5
    out = []
    if spec.low is not None:
        out.append(spec.low if spec.open in ("low", "both") else spec.low - step)
    if spec.high is not None:
        out.append(spec.high if spec.open in ("high", "both") else spec.high + step)
    return out


def _ranged():
    cases = []
    for command, (cls, _) in CONFIGS.items():
        for leaf in fields.leaves(cls()):
            if leaf.spec is not None and (leaf.spec.low is not None or leaf.spec.high is not None):
                for value in _outside(leaf.spec, leaf.annotation):
                    name = f"{command}-{leaf.key}={value}"
                    cases.append(pytest.param(command, leaf.key, leaf.annotation, value, id=name))
    return cases


@pytest.mark.parametrize("command,key,annotation,value", _ranged())
def test_every_declared_range_is_enforced(command, key, annotation, value):
    """Generated from the declarations: each value just outside a range is one error naming the
    key (a mapping's entry as key.name) and the range allowed."""
    is_mapping = any(typing.get_origin(a) is dict for a in (annotation, *typing.get_args(annotation)))
    text = f"{{1: {value}}}" if is_mapping else str(value)
    named = re.escape(f"{key}.1" if is_mapping else key)
    with pytest.raises(C.ConfigError, match=rf"^config key '{named}': .* is out of range; expected "):
        _resolve(command, [f"{key}={text}"])


def test_ranged_leaves_are_the_numbers_that_have_limits():
    ranged = {leaf.key for leaf in fields.leaves(C.TrainConfig()) if leaf.spec and leaf.spec.low is not None}
    assert {"lora.rank", "lora.alpha", "ppo.lam", "ppo.gamma", "ppo.lam_critic", "ppo.vf_coef", "ppo.critic_lr",
            "ppo.value_clip", "ppo.vapo_alpha", "reward.overlong.l_max", "reward.overlong.l_cache",
            "reward.overlong.factor", "activation_checkpointing.k", "adv.eps", "tool.timeout"} <= ranged
    assert len(_ranged()) >= 70  # every bound of both configs has a case above


@pytest.mark.parametrize(
    "override,message",
    [
        ("activation_checkpointing=foo", r"config key 'activation_checkpointing': 'foo' is not one of none, blocks, "
                                         r"every_k"),
        ("activation_checkpointing.k=0", r"config key 'activation_checkpointing.k': 0 is out of range; expected >= 1"),
        ("lora.rank=-1", r"config key 'lora.rank': -1 is out of range; expected >= 0 \(0: no adapters\)"),
        ("lora.alpha=-1", r"config key 'lora.alpha': -1.0 is out of range; expected > 0"),
        ("lora.targets=[qkv]", r"config key 'lora.targets': \['qkv'\] not among the projections; expected q_proj"),
        ("ppo.lam=2", r"config key 'ppo.lam': 2.0 is out of range; expected a value in \[0, 1\]"),
        ("ppo.gae_lambda=2", r"unknown config key 'ppo.gae_lambda' \(did you mean ppo.lam\?\)"),
        ("ppo.gamma=1.5", r"config key 'ppo.gamma': 1.5 is out of range; expected a value in \[0, 1\]"),
        ("ppo.lam_critic=-0.1", r"config key 'ppo.lam_critic': -0.1 is out of range; expected null or a value in "),
        ("critic.device=banana", r"config key 'critic.device': 'banana' is not a device; expected auto, cpu, cuda"),
        ("reward.overlong.l_max=0", r"config key 'reward.overlong.l_max': 0 is out of range; expected >= 1"),
        ("reward.overlong.l_cache=-1", r"config key 'reward.overlong.l_cache': -1 is out of range; expected >= 0"),
        ("reward.overlong.l_cache=30000", r"config key 'reward.overlong.l_cache': 30000 is longer than "
                                          r"reward.overlong.l_max; expected <= l_max \(20480\)"),
        ("reward.overlong.factor=-1", r"config key 'reward.overlong.factor': -1.0 is out of range; expected >= 0"),
        ("reward.overlong={l_max: 8, l_cache: 16}", r"config key 'reward.overlong.l_cache': 16 is longer than"),
        ("reward.overlong.l_ma=3", r"unknown config key 'reward.overlong.l_ma' \(did you mean reward.overlong.l_max"),
        ("reward.overlong={l_ma: 3}", r"unknown config key 'reward.overlong.l_ma' \(did you mean reward.overlong"),
        ("data.weights={arith: -1}", r"config key 'data.weights.arith': -1.0 is out of range; expected null or a "
                                     r"value >= 0"),
        ("data.weights={math: 1}", r"config key 'data.weights': .* names \['math'\], which are not in data.sources"),
        ("data.sources={}", r"config key 'data.sources': {} names no source"),
        ("data.sources={a: 3}", r"config key 'data.sources.a': expected str, got 3"),
        ("lr=.nan", r"config key 'lr': nan is not a number"),
        ("optim=muon;dtype=bfloat16", r"config key 'optim': muon steps the model's own float32 weights"),
        ("optim=dion;lora.rank=4", r"config key 'optim': dion needs the model's hidden matrices"),
        ("algo=grpo;data.stages=[{preset: nope, steps: 1}]", r"data.stages\[0\].preset: unknown preset"),
    ],
)
def test_named_range_checks(override, message):
    with pytest.raises(C.ConfigError, match=message):
        C.resolve(C.TrainConfig, overrides=override.split(";"))


@pytest.mark.parametrize(
    "command,args,message",
    [
        ("train", ["activation_checkpointing=foo"], "config key 'activation_checkpointing': 'foo' is not one of"),
        ("train", ["lora.rank=-1"], "config key 'lora.rank': -1 is out of range"),
        ("train", ["ppo.lam=2"], "config key 'ppo.lam': 2.0 is out of range"),
        ("train", ["ppo.gae_lambda=2"], "unknown config key 'ppo.gae_lambda' (did you mean ppo.lam?)"),
        ("train", ["critic.device=banana"], "config key 'critic.device': 'banana' is not a device"),
        ("sft", ["data.select.size=4"], "unknown config key 'data.select.size'"),
        ("sft", ["optim=muon", "dtype=bfloat16"], "config key 'optim': muon steps the model's own float32 weights"),
        ("sft", ["init=tiny", "tiny.num_kv_heads=3"], "config key 'tiny.num_kv_heads': 3 does not divide "
                                                      "tiny.num_heads=4"),
        # keys that would do nothing: the other start's
        ("sft", ["init=tiny", "model=some/folder"], "config key 'model': init=tiny starts from a fresh tiny model, "
                                                    "so model='some/folder' would be ignored"),
        ("sft", ["tiny.hidden_size=64", "tiny.num_layers=1"],
         "config key 'tiny.hidden_size': the tiny.* sizes build the fresh model of init=tiny, and this run starts "
         "from model='default'; drop tiny.hidden_size, tiny.num_layers or set init=tiny"),
        # optimizer keys the chosen optimizer does not read
        ("train", ["optim.momentum=0.9"], "config key 'optim.momentum': 0.9 does nothing with optim=adamw (only "
                                         "muon and dion read it); expected optim=muon or optim=dion"),
        ("train", ["optim=muon", "optim.rank_fraction=0.5"], "config key 'optim.rank_fraction': 0.5 does nothing "
                                                              "with optim=muon (only dion reads it)"),
        ("sft", ["optim.lr_scale=paper"], "config key 'optim.lr_scale': 'paper' does nothing with optim=adamw"),
        ("train", ["data.heldout_size=0", "eval_every=2"], "config key 'eval_every': eval_every=2 evaluates the "
                                                           "held-out problems, and data.heldout_size=0 holds none"),
    ],
)
def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys, command, args, message):
    assert main([command, f"out={tmp_path / 'run'}", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"pillion {command}: {message}"), err
    assert not (tmp_path / "run").exists()


def test_a_tracker_that_cannot_be_imported_is_a_config_error(monkeypatch):
    """Before any run folder exists, not as an ImportError traceback after it was created."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(C.ConfigError, match=r"^config key 'log.tensorboard': needs the tensorboard package: "
                                            r"pip install 'pillion\[tensorboard\]'$"):
        C.resolve(C.SFTConfig, overrides=["log.tensorboard=true"], preset_key=None)
    with pytest.raises(C.ConfigError, match=r"^config key 'log.wandb.project': needs the wandb package"):
        C.resolve(C.TrainConfig, overrides=["log.wandb.project=p"])
    off = C.resolve(C.TrainConfig, overrides=["log.tensorboard=false", "log.wandb.project=null"])
    assert off.log.wandb.project is None and not off.log.tensorboard


def test_validate_checks_a_config_changed_in_code():
    cfg = C.resolve(C.TrainConfig)
    cfg.lora.rank = -1
    with pytest.raises(C.ConfigError, match=r"config key 'lora.rank': -1 is out of range"):
        C.validate(cfg)
    cfg = C.resolve(C.TrainConfig)
    cfg.eval.k = "4"
    with pytest.raises(C.ConfigError, match=r"config key 'eval.k': expected int, got '4'"):
        C.validate(cfg)


def test_bounds_and_good_values_pass():
    cfg = C.resolve(C.TrainConfig, overrides=["ppo.lam=0", "ppo.lam=1", "lora.rank=0", "lora.alpha=0.5",
                                              "reward.overlong.l_cache=0", "reward.overlong={l_max: 48, l_cache: 48}",
                                              "data.weights={arith: 0.5}", "data.level_weights={1: 0, null: 2}",
                                              "critic.device=cuda:1", "activation_checkpointing=every_k"])
    assert (cfg.ppo.lam, cfg.lora.alpha, cfg.reward.overlong.l_cache) == (1.0, 0.5, 48)
    assert cfg.data.level_weights == {1: 0.0, None: 2.0} and cfg.activation_checkpointing.name == "every_k"


def test_several_ranks_divide_the_global_batch_and_refuse_no_feature():
    """train/parallel.py `check` reads `ranks=` from the declarations: the global batch must
    divide, in train and sft; every preset and memory option runs at several ranks."""
    split = sorted(leaf.key for leaf in fields.leaves(C.TrainConfig()) if leaf.spec and leaf.spec.ranks == "split")
    assert split == ["prompts_per_step"]
    for override in ["lora.rank=4", "ref.offload=true", "optim=muon", "optim=dion", "critic.device=cpu",
                     "critic.device=cuda:1", "critic.replicate=true", "algo=reinforce_rej", "algo=dapo", "algo=srpo",
                     "algo=tool"]:
        parallel.check(C.resolve(C.TrainConfig, overrides=["prompts_per_step=4", override]), 2)
    with pytest.raises(parallel.ParallelError, match=r"config key 'prompts_per_step': 6 is not divisible by the 4"):
        parallel.check(C.resolve(C.TrainConfig, overrides=["prompts_per_step=6"]), 4)
    sft = C.resolve(C.SFTConfig, overrides=["batch_size=6", "optim=dion"], preset_key=None)
    with pytest.raises(parallel.ParallelError, match=r"config key 'batch_size': 6 is not divisible by the 4 ranks"):
        parallel.check(sft, 4)


# ---------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS)
def test_print_config_round_trips(preset, capsys):
    args = [f"algo={preset}", "data.level_weights={1: 0.5, null: 1}", "data.heldout={a: 'synthetic:1'}",
            *(["reward.judge.model=JUDGE"] if preset == "pairwise" else [])]
    assert main(["train", "--print-config", *args]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert C.from_dict(C.TrainConfig, printed) == C.resolve(C.TrainConfig, overrides=args)
    assert C.dumps(C.from_dict(C.TrainConfig, printed)) == C.dumps(C.resolve(C.TrainConfig, overrides=args))


def test_optim_keys_pass_with_the_optimizers_that_read_them():
    dion = C.resolve(C.TrainConfig, overrides=["optim=dion", "optim.rank_fraction=0.5", "optim.momentum=0.9",
                                               "optim.lr_scale=paper"]).optim
    assert (dion.rank_fraction, dion.momentum, dion.lr_scale) == (0.5, 0.9, "paper")
    assert C.resolve(C.SFTConfig, overrides=["optim=muon", "optim.momentum=0.8"], preset_key=None).optim.momentum == 0.8
    assert C.resolve(C.TrainConfig, overrides=["optim.momentum=0.95"]).optim.name == "adamw"  # the default value


def test_sft_config_round_trips():
    cfg = C.resolve(C.SFTConfig, overrides=["optim=muon", "log.wandb.mode=offline", "data.level_weights={2: 1}"],
                    preset_key=None)
    assert C.from_dict(C.SFTConfig, yaml.safe_load(C.dumps(cfg))) == cfg


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim=sgd", r"config key 'optim': 'sgd' is not one of adamw, muon, dion"),
        ("optim.rank_fraction=0", r"config key 'optim.rank_fraction': 0.0 is out of range"),
        ("optim.momentum=1.0", r"config key 'optim.momentum'"),
        ("log.wandb.mode=cloud", r"config key 'log.wandb.mode': 'cloud' is not one of online, offline, disabled"),
        ("data.level_weights={hard: 1}", r"config key 'data.level_weights': key 'hard' is not a level"),
        ("data.level_weights={1: -1}", r"config key 'data.level_weights.1': -1"),
        ("data.select.min_pass=0.95", r"config key 'data.select.min_pass': 0.95"),
        ("data.select.k=0", r"config key 'data.select.k'"),
        ("behaviour.phrases=[]", r"config key 'behaviour.phrases': expected a non-empty list"),
        ("behaviour.kl_probe_every=-1", r"config key 'behaviour.kl_probe_every'"),
    ],
)
def test_toolbox_keys_are_checked(override, message):
    with pytest.raises(C.ConfigError, match=message):
        C.resolve(C.TrainConfig, overrides=[override])


def test_options_are_range_checked_as_config_keys_are():
    import argparse

    from pillion.eval.samples import EvalConfig

    k, top_p, at_least_one = fields.option_like(EvalConfig, "k"), fields.option_like(EvalConfig, "top_p"), \
        fields.option(low=1)
    assert (k("3"), top_p("0.5"), top_p("1")) == (3, 0.5, 1.0)
    for parse, text, message in [(k, "0", "0 is out of range; expected >= 1"),
                                 (top_p, "1.5", r"1.5 is out of range; expected a value in \(0, 1\]"),
                                 (top_p, "0", r"0.0 is out of range; expected a value in \(0, 1\]"),
                                 (top_p, "nan", "'nan' is not a finite number"),
                                 (at_least_one, "-5", "-5 is out of range; expected >= 1"),
                                 (at_least_one, "2.5", "'2.5' is not an int")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            parse(text)
