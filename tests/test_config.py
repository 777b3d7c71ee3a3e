"""The typed config: presets, overrides, errors that name the key, and the flag surface."""

import dataclasses

import pytest

from pillion import config as C

PRESETS = ["grpo", "dr_grpo", "dapo", "ppo", "vapo", "rloo", "reinforce_pp", "gspo", "raft", "raft_pp",
           "reinforce_rej", "srpo", "tool", "concise"]


def test_every_preset_ships_and_resolves():
    assert sorted(p.stem for p in C.PRESET_DIR.glob("*.yaml")) == sorted(PRESETS)
    for name in PRESETS:
        cfg = C.resolve(C.TrainConfig, overrides=[f"algo={name}"])
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


def test_flag_surface_is_guarded():
    """Adding a knob is a decision: update this list (and the docs) on purpose (STYLE rule 9)."""
    assert len(_keys(C.TrainConfig())) == 118, sorted(_keys(C.TrainConfig()))


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
