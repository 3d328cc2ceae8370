"""Typed run configuration: dataclasses, YAML loading, `--set` overrides and validation.

Key names (`model.d_model`, `train.batch_size`, `optim.lr`, ...) are a public interface: sweep files and
users' scripts address them. Every error names the key and the fix, and is raised before anything is written.

Longer than the other modules (about 500 lines) on purpose: it is the schema, and a key's type, default, one-line
comment and validation are meant to be read in one place; most of the length is the fields themselves.
"""

from __future__ import annotations

import dataclasses
import hashlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed import companions
from testbed.parametrization import OPTIMIZERS, PARAMETRIZATIONS, ROLES


class ConfigError(ValueError):
    """A bad config value; the CLI turns it into a message and exit code 2."""


@dataclass
class ModelConfig:
    d_model: int = 128  # width (residual stream); n_heads must divide it unless head_dim is set
    n_layers: int = 2  # depth: transformer blocks
    n_heads: int = 4  # attention heads
    head_dim: int | None = None  # default d_model // n_heads
    d_ff: int | None = None  # default 4 * d_model
    vocab_size: int = 256  # token vocabulary (the synthetic source uses it as its alphabet)
    norm: str = "rmsnorm"  # rmsnorm | layernorm
    pos: str = "rope"  # rope | learned
    mlp: str = "gelu"  # gelu | swiglu
    qk_norm: bool = False  # RMS-normalize queries and keys before the attention logits
    tie_embeddings: bool = False  # readout reuses the embedding matrix
    use_bias: bool = False  # biases in linear layers
    rope_base: float = 10000.0  # RoPE frequency base
    z_loss: float = 0.0  # coefficient of log(Z)^2 added to the loss (PaLM uses 1e-4)
    init_std: float = 0.02  # sigma_base: std of hidden matrices at the base width
    emb_std: float = 0.02  # std of token / position embeddings (constant in width)
    zero_init_readout: bool = False  # start the readout at zero (muP's recommendation)
    zero_init_query: bool = False  # zero the query third of the fused QKV kernel (optional under muP)
    norm_eps: float = 1e-6  # epsilon of RMSNorm / LayerNorm

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def resolved_d_ff(self) -> int:
        return self.d_ff if self.d_ff is not None else 4 * self.d_model


def _perlayer_c() -> dict[str, float]:
    return {"embedding": 0.0, "hidden": 1.0, "readout": 1.0, "vector": 0.0}


@dataclass
class ParamConfig:
    """Parametrization: which row of the table in parametrization.py scales init, LR, WD and eps per role.

    Every rule reduces to SP exactly at d_model = base_width and n_layers = base_depth.
    """

    name: str = "sp"  # sp | mup | depth_mup (alpha 0.5) | completep (alpha 1) | sp_perlayer
    base_width: int = 128  # d_base: width multiplier m = d_model / base_width
    base_depth: int = 2  # L_base: depth multiplier m_L = n_layers / base_depth
    base_head_dim: int | None = None  # head size at the base width (null: the model's, i.e. heads grow with width)
    alpha_in: float = 1.0  # embedding output multiplier
    alpha_out: float = 1.0  # readout multiplier (muP: alpha_out / m)
    alpha_attn: float = 1.0  # attention-logit multiplier (SP: / sqrt(d_head); muP: * sqrt(d_base) / d_head)
    sp_init: str = "constant"  # sp, sp_perlayer hidden init: constant sigma_base (GPT-2) | fan_in (sigma / sqrt(m))
    perlayer_c: dict[str, float] = field(default_factory=_perlayer_c)  # sp_perlayer LR exponents c_g per role


@dataclass
class DataConfig:
    source: str = "synthetic"  # synthetic | text
    seq_len: int = 128  # tokens per training sequence (context length)
    eval_sequences: int = 256  # size of the fixed held-out eval set, in sequences
    # synthetic: a Zipf-weighted mixture of sparse Markov "skills" (see testbed/data/synthetic.py)
    n_skills: int = 16384
    zipf_exponent: float = 1.3  # synthetic: Zipf exponent of the skill frequencies
    branching: int = 4  # synthetic: next-token choices per state of a skill
    skill_order: int = 1  # synthetic: Markov order of each skill
    # text: HF datasets from local files (text/json/jsonl/parquet) or a hub name (streaming)
    path: str | None = None
    format: str = "auto"  # auto | text | json | parquet | hub
    text_field: str = "text"  # text: the record field holding the text (json/parquet/hub)
    tokenizer: str = "byte"  # byte | bpe (trained here on the training split) | pretrained (see tokenizer_name)
    bpe_vocab_size: int = 1024  # tokenizer bpe: vocabulary of the locally trained BPE
    tokenizer_name: str | None = None  # tokenizer pretrained: a tokenizer.json path, or a hub name (e.g. gpt2; online)
    hub_max_bytes: int = 64 << 20  # text streamed from a hub dataset (64 MiB; more only if max_unique_tokens needs)
    val_fraction: float = 0.05  # text: fraction of documents held out for eval (chosen by content hash)
    max_unique_tokens: int | None = None  # cap on distinct training tokens; repeats are counted as epochs
    cache_dir: str | None = None  # where BPE tokenizers and token arrays are cached (default ~/.cache/testbed)


@dataclass
class OptimConfig:
    # the update rule (testbed/optim.py): adamw | lion (sign of interpolated momentum) | muon (orthogonalized
    # momentum for hidden matrices, Adam for embeddings, gains and the readout) | schedule_free_adamw (iterate
    # averaging in place of LR decay; evaluated at its averaged weights; needs schedule: constant)
    name: str = "adamw"
    lr: float = 3e-3  # peak learning rate
    beta1: float = 0.9  # Adam first-moment decay
    beta2: float = 0.95  # Adam second-moment decay
    eps: float = 1e-8  # Adam epsilon (scaled per group by eps_rule)
    eps_rule: str = "fixed"  # fixed | scaled (CompleteP: eps / m_in, x m_L^-alpha in blocks) | atan2 (no eps)
    atan2_a: float = 1.2732395447351628  # Adam-atan2: update = a * atan2(m_hat, b * sqrt(v_hat)); a = 4 / pi
    atan2_b: float = 1.0  # Adam-atan2's b (see atan2_a)
    weight_decay: float = 0.0  # lambda, in the wd_convention's units (scaled per width by wd_rule)
    wd_convention: str = "coupled"  # coupled (optax/PyTorch: eta_t*lambda) | independent (s_t*lambda_ind)
    wd_rule: str = "none"  # how lambda scales with width: none | constant_tau | sqrt | timescale
    tau_frac: float | None = None  # wd_rule=timescale: tau_iter = 1 / (eta * lambda) as a fraction of the steps
    decay_embeddings: bool = True  # apply weight decay to the embedding
    decay_vectors: bool = False  # apply weight decay to gains and biases
    grad_clip: float | None = 1.0  # global-norm clip; null disables
    schedule: str = "cosine"  # constant | cosine | linear | inverse_sqrt | wsd
    warmup_steps: int = 0  # linear warmup from lr / warmup_steps to lr
    final_lr_frac: float = 0.1  # cosine/linear/wsd end at final_lr_frac * lr
    cooldown_frac: float = 0.2  # wsd: fraction of steps spent cooling down
    cooldown_shape: str = "linear"  # wsd: linear | cosine | 1-sqrt
    lr_mult: dict[str, float] = field(default_factory=dict)  # per-role LR multipliers
    wd_mult: dict[str, float] = field(default_factory=dict)  # per-role weight-decay multipliers
    muon_momentum: float = 0.95  # muon: momentum of the hidden matrices' Nesterov update
    ns_steps: int = 5  # muon: Newton-Schulz iterations that orthogonalize the hidden matrices' update


@dataclass
class TrainConfig:
    batch_size: int = 16  # sequences per optimizer step (global)
    steps: int | None = None  # optimizer steps (or set tokens)
    tokens: int | None = None  # alternative to steps: steps = ceil(tokens / (batch_size * seq_len))
    grad_accum: int = 1  # microbatches per step; batch_size must divide evenly
    compute_dtype: str = "float32"  # float32 | bfloat16 (master weights stay float32)
    eval_every: int = 100  # evaluate on the held-out set every k steps (and at the end)
    log_every: int = 1  # write every k-th step's row to metrics.jsonl (evals and the last step always)
    checkpoint_every: int = 200  # save a checkpoint every k steps (and at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept (checkpoint_steps are kept too)
    checkpoint_steps: list[int] = field(default_factory=list)  # also saved (and evaluated) here, never deleted
    # branching (testbed/branch.py): a fresh run starts from another run's checkpoint at branch_step, copying its
    # metrics rows up to there; the parent is a run directory, relative to this run's folder's parent (in a sweep
    # directory: the parent's run id) or absolute. The schedules must agree before branch_step.
    branch_from: str | None = None
    branch_step: int | None = None  # the parent's step to branch from (a checkpoint the parent kept)
    sigma_every: int | None = None  # top singular value of every matrix every k steps (null: at evals; 0: never)
    # placement (PLACEMENT_KEYS: not part of a run's identity; testbed/sharding.py)
    mesh: dict[str, int] = field(default_factory=dict)  # {} one device | {data: -1} DP | {data: 2, fsdp: 4} FSDP
    # jax.distributed.initialize(): null detects (SLURM ntasks > 1, JAX_COORDINATOR_ADDRESS, TPU workers); true; false
    distributed: bool | None = None
    platform: str = "auto"  # auto (JAX's default) | cpu | gpu | tpu: anything else is refused, never a silent CPU run
    # auto: blocked einsums on CPU, jax.nn.dot_product_attention elsewhere (cuDNN flash attention for bfloat16 on
    # GPU); einsum | xla | cudnn force one (float-level differences only: placement, not identity)
    attention: str = "auto"
    # live views (TRACKING_KEYS: not part of a run's identity; testbed/trackers.py): metrics.jsonl is always
    # written and is the source of truth; tensorboard (RUN/tensorboard, pip install 'scaling-testbed[tensorboard]') and
    # wandb (pip install 'scaling-testbed[wandb]'; a sweep is one wandb group) mirror it from process 0
    trackers: list[str] = field(default_factory=lambda: ["jsonl"])
    wandb_project: str = "testbed"  # wandb project the runs go to
    wandb_mode: str | None = None  # online | offline | disabled; null: wandb's own default (WANDB_MODE, else online)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    param: ParamConfig = field(default_factory=ParamConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0  # seed of the init and of the data stream

    @property
    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.data.seq_len

    @property
    def total_steps(self) -> int:
        if self.train.steps is not None:
            return self.train.steps
        assert self.train.tokens is not None
        return -(-self.train.tokens // self.tokens_per_step)


CHOICES = {
    "model.norm": ("rmsnorm", "layernorm"),
    "model.pos": ("rope", "learned"),
    "model.mlp": ("gelu", "swiglu"),
    "param.name": PARAMETRIZATIONS,
    "optim.name": OPTIMIZERS,
    "param.sp_init": ("constant", "fan_in"),
    "optim.eps_rule": ("fixed", "scaled", "atan2"),
    "optim.wd_rule": ("none", "constant_tau", "sqrt", "timescale"),
    "data.source": ("synthetic", "text"),
    "data.format": ("auto", "text", "json", "parquet", "hub"),
    "data.tokenizer": ("byte", "bpe", "pretrained"),
    "optim.wd_convention": ("coupled", "independent"),
    "optim.schedule": ("constant", "cosine", "linear", "inverse_sqrt", "wsd"),
    "optim.cooldown_shape": ("linear", "cosine", "1-sqrt"),
    "train.compute_dtype": ("float32", "bfloat16"),
    "train.platform": ("auto", "cpu", "gpu", "tpu"),
    "train.attention": ("auto", "einsum", "xla", "cudnn"),
    "train.wandb_mode": (None, "online", "offline", "disabled"),
}
MESH_AXES = ("data", "fsdp")  # train.mesh axis names (testbed/sharding.py)
# How a run is laid out on devices, not what it computes: left out of run ids and of the resume check, so a run
# saved on one mesh resumes on another.
PLACEMENT_KEYS = ("train.mesh", "train.distributed", "train.platform", "train.attention")
# Where a run's metrics are mirrored, not what it computes: also left out of run ids and the resume check.
TRACKING_KEYS = ("train.trackers", "train.wandb_project", "train.wandb_mode")
TRACKERS = ("jsonl", "tensorboard", "wandb")
# Keys added after run ids were in use: left out of a run's identity while at these defaults, so the ids of runs
# that do not use them stay what they were.
LATER_DEFAULTS = {"train.checkpoint_steps": [], "train.branch_from": None, "train.branch_step": None,
                  "optim.name": "adamw", "optim.muon_momentum": 0.95, "optim.ns_steps": 5}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Checks `value` against the annotated type, converting only where it is lossless (int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (et,) = typing.get_args(tp)
        return [_coerce(v, et, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type, raw: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = ", ".join(sorted(names))
            raise ConfigError(f"unknown key '{full}': valid keys under '{prefix.rstrip('.') or 'top level'}' "
                              f"are {close}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a section (mapping), got {value!r}")
            kwargs[key] = _build(tp, value, f"{full}.")
        else:
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    """Parses an override value with YAML rules, so `--set optim.lr=1e-3` gives a float."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:  # YAML 1.1 reads "1e-3" as a string; accept it as a number.
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Applies `section.key=value` strings to a raw config mapping (a copy)."""
    raw = _deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set optim.lr=1e-3")
        key, text = item.split("=", 1)
        put(raw, key.strip(), _parse_scalar(text), source="--set ")
    return raw


def put(raw: dict, key: str, value: Any, source: str = "") -> None:
    """Sets a dotted key (`optim.lr`) in a raw config mapping, creating sections; `source` prefixes the error."""
    node, parts = raw, key.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}{key}: '{'.'.join(parts[:i + 1])}' is not a section")
    node[parts[-1]] = value


def _deepcopy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deepcopy(v) for k, v in raw.items()}
    return raw


def from_dict(raw: dict | None, notes: list[str] | None = None) -> Config:
    """A validated Config from a raw mapping; muP's companions are filled in where unset (testbed.companions),
    and the line saying so is appended to `notes` when given."""
    raw = raw or {}
    implied = companions.implied(raw, {"param.name": ParamConfig.name, "param.base_width": ParamConfig.base_width,
                                       "model.n_heads": ModelConfig.n_heads})
    if implied:
        raw = _deepcopy(raw)
        for key, value in implied.items():
            put(raw, key, value)
    cfg = _build(Config, raw, "")
    validate(cfg)
    if implied and notes is not None:
        notes.append(companions.note(cfg.param.name, implied))
    return cfg


def load(path: str | Path | None, overrides: list[str] | None = None, notes: list[str] | None = None) -> Config:
    """Loads a YAML config (or defaults when path is None), applies overrides, validates (notes: see from_dict)."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist: pass a path to a YAML file such as "
                              "configs/tiny.yaml")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {str(p)!r} must be a mapping of sections (model:, data:, ...)")
    return from_dict(apply_overrides(raw, overrides or []), notes)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def identity(cfg: Config) -> dict:
    """The config minus PLACEMENT_KEYS: what a run computes, so run ids and resumes ignore the mesh."""
    d = to_dict(cfg)
    for key in (*PLACEMENT_KEYS, *TRACKING_KEYS):
        section, name = key.split(".")
        d[section].pop(name, None)
    for key, default in LATER_DEFAULTS.items():
        section, name = key.split(".")
        if d[section].get(name) == default:
            d[section].pop(name, None)
    return d


def identity_yaml(cfg: Config) -> str:
    """What run ids hash: the YAML of `identity` (equal to the pre-placement dump, so old ids are kept)."""
    return yaml.safe_dump(identity(cfg), sort_keys=False)


def run_id(cfg: Config) -> str:
    """A run's id: the first 12 hex digits of the sha256 of `identity_yaml` (placement such as train.mesh left out)."""
    return hashlib.sha256(identity_yaml(cfg).encode()).hexdigest()[:12]


def _get(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for p in key.split("."):
        node = getattr(node, p)
    return node


def validate(cfg: Config) -> None:
    """Checks choices, ranges and shape consistency; raises ConfigError naming the key."""
    for key, allowed in CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key}: {_get(cfg, key)!r} is not one of {', '.join(map(str, allowed))}")
    bad = [t for t in cfg.train.trackers if t not in TRACKERS]
    if bad:
        raise ConfigError(f"train.trackers: {bad[0]!r} is not one of {', '.join(TRACKERS)} (jsonl is always on)")
    _validate_ranges(cfg)
    _validate_optim(cfg)
    _validate_mesh(cfg.train.mesh)
    _validate_branch(cfg)
    _validate_data(cfg)


def _validate_ranges(cfg: Config) -> None:
    """Sizes positive, steps xor tokens, shapes that divide."""
    m, d, t = cfg.model, cfg.data, cfg.train
    positive = {
        "model.d_model": m.d_model, "model.n_layers": m.n_layers, "model.n_heads": m.n_heads,
        "model.vocab_size": m.vocab_size, "data.seq_len": d.seq_len, "data.eval_sequences": d.eval_sequences,
        "train.batch_size": t.batch_size, "train.grad_accum": t.grad_accum, "train.eval_every": t.eval_every,
        "train.log_every": t.log_every, "train.checkpoint_every": t.checkpoint_every,
        "train.keep_checkpoints": t.keep_checkpoints, "param.base_width": cfg.param.base_width,
        "param.base_depth": cfg.param.base_depth, "data.n_skills": d.n_skills, "data.branching": d.branching,
        "data.skill_order": d.skill_order, "data.bpe_vocab_size": d.bpe_vocab_size,
    }
    for key, v in positive.items():
        if v <= 0:
            raise ConfigError(f"{key}: must be positive, got {v}")
    for key, v in {"model.head_dim": m.head_dim, "model.d_ff": m.d_ff, "train.steps": t.steps,
                   "train.tokens": t.tokens, "data.max_unique_tokens": d.max_unique_tokens}.items():
        if v is not None and v <= 0:
            raise ConfigError(f"{key}: must be positive (or null), got {v}")
    if m.head_dim is None and m.d_model % m.n_heads:
        raise ConfigError(f"model.n_heads: d_model={m.d_model} is not divisible by n_heads={m.n_heads}; "
                          "pick n_heads dividing d_model or set model.head_dim")
    if m.resolved_head_dim % 2 and m.pos == "rope":
        raise ConfigError(f"model.head_dim: RoPE needs an even head dim, got {m.resolved_head_dim}")
    if (t.steps is None) == (t.tokens is None):
        raise ConfigError("train.steps / train.tokens: set exactly one of them (the other to null)")
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.grad_accum: batch_size={t.batch_size} is not divisible by "
                          f"grad_accum={t.grad_accum}")
    if cfg.param.base_head_dim is not None and cfg.param.base_head_dim <= 0:
        raise ConfigError(f"param.base_head_dim: must be positive (or null), got {cfg.param.base_head_dim}")
    if t.sigma_every is not None and t.sigma_every < 0:
        raise ConfigError(f"train.sigma_every: must be >= 0 (0 disables) or null, got {t.sigma_every}")
    if m.z_loss < 0:
        raise ConfigError(f"model.z_loss: must be >= 0, got {m.z_loss}")


def _validate_optim(cfg: Config) -> None:
    """The optimizer's ranges, per-role multipliers, and the weight-decay rule's own keys."""
    o = cfg.optim
    if o.lr <= 0:
        raise ConfigError(f"optim.lr: must be positive, got {o.lr}")
    if o.weight_decay < 0:
        raise ConfigError(f"optim.weight_decay: must be >= 0, got {o.weight_decay}")
    if o.eps < 0:
        raise ConfigError(f"optim.eps: must be >= 0, got {o.eps}")
    if o.grad_clip is not None and o.grad_clip <= 0:
        raise ConfigError(f"optim.grad_clip: must be positive or null, got {o.grad_clip}")
    for key, v in {"optim.beta1": o.beta1, "optim.beta2": o.beta2}.items():
        if not 0 <= v < 1:
            raise ConfigError(f"{key}: must be in [0, 1), got {v}")
    for key, v in {"optim.final_lr_frac": o.final_lr_frac, "optim.cooldown_frac": o.cooldown_frac,
                   "data.val_fraction": cfg.data.val_fraction}.items():
        if not 0 <= v <= 1:
            raise ConfigError(f"{key}: must be in [0, 1], got {v}")
    if o.warmup_steps < 0:
        raise ConfigError(f"optim.warmup_steps: must be >= 0, got {o.warmup_steps}")
    if o.warmup_steps > cfg.total_steps:
        raise ConfigError(f"optim.warmup_steps: {o.warmup_steps} exceeds the run's {cfg.total_steps} steps")
    for key, mults in {"optim.lr_mult": o.lr_mult, "optim.wd_mult": o.wd_mult}.items():
        for role, v in mults.items():
            if role not in ROLES:
                raise ConfigError(f"{key}.{role}: unknown role; roles are {', '.join(ROLES)}")
            if v < 0:
                raise ConfigError(f"{key}.{role}: must be >= 0, got {v}")
    for role in cfg.param.perlayer_c:
        if role not in ROLES:
            raise ConfigError(f"param.perlayer_c.{role}: unknown role; roles are {', '.join(ROLES)}")
    if o.wd_rule == "timescale":
        if o.tau_frac is None or o.tau_frac <= 0:
            raise ConfigError("optim.tau_frac: optim.wd_rule=timescale sets lambda = 1 / (eta * tau_frac * steps); "
                              f"set tau_frac > 0 (e.g. 0.2), got {o.tau_frac}")
        if o.weight_decay:
            raise ConfigError("optim.weight_decay: with optim.wd_rule=timescale lambda comes from optim.tau_frac; "
                              "set weight_decay to 0")
    elif o.tau_frac is not None:
        raise ConfigError(f"optim.tau_frac: only used with optim.wd_rule=timescale (wd_rule is {o.wd_rule!r}); "
                          "set it to null or set wd_rule: timescale")
    if o.eps_rule == "atan2" and (o.atan2_a <= 0 or o.atan2_b <= 0):
        raise ConfigError("optim.atan2_a / optim.atan2_b: must be positive")
    _validate_update_rule(cfg)


def _validate_update_rule(cfg: Config) -> None:
    """Settings that have no meaning for the chosen optim.name are refused, with the reason, not ignored."""
    o = cfg.optim
    if o.name == "lion" and o.eps_rule != "fixed":
        raise ConfigError(f"optim.eps_rule: {o.eps_rule!r} rescales Adam's eps, but Lion's update is a sign and has "
                          "no eps; set optim.eps_rule: fixed")
    if o.name == "muon":
        if o.wd_rule == "sqrt":
            raise ConfigError("optim.wd_rule: sqrt (lambda ~ sqrt(width)) is derived for Adam's hidden LR ~ 1/width;"
                              " Muon's hidden LR does not change with width, so the rule does not apply; use none, "
                              "constant_tau or timescale")
        if not 0 <= o.muon_momentum < 1:
            raise ConfigError(f"optim.muon_momentum: must be in [0, 1), got {o.muon_momentum}")
        if o.ns_steps < 1:
            raise ConfigError(f"optim.ns_steps: must be >= 1, got {o.ns_steps}")
    if o.name == "schedule_free_adamw":
        if o.schedule != "constant":
            raise ConfigError(f"optim.schedule: {o.schedule!r} decays the LR, which schedule-free replaces by "
                              "averaging its iterates; set optim.schedule: constant (optim.warmup_steps applies)")
        if o.beta1 <= 0:
            raise ConfigError("optim.beta1: schedule-free interpolates with beta1, which must be > 0 (e.g. 0.9)")


def _validate_data(cfg: Config) -> None:
    """The data source's keys against the model's vocabulary."""
    m, d = cfg.model, cfg.data
    if d.source == "text" and not d.path:
        raise ConfigError("data.path: data.source=text needs a path (a file, a folder or a hub dataset name)")
    if d.source == "synthetic" and d.branching > m.vocab_size:
        raise ConfigError(f"data.branching: {d.branching} exceeds model.vocab_size={m.vocab_size}")
    if d.source == "text" and d.tokenizer == "pretrained" and not d.tokenizer_name:
        raise ConfigError("data.tokenizer_name: data.tokenizer=pretrained needs a tokenizer.json path or a hub name")
    if d.hub_max_bytes < 1:
        raise ConfigError(f"data.hub_max_bytes: must be positive, got {d.hub_max_bytes}")
    if d.source == "text" and d.tokenizer != "pretrained":  # a pretrained one's size is checked when it loads
        need = 256 if d.tokenizer == "byte" else d.bpe_vocab_size
        if m.vocab_size < need:
            raise ConfigError(f"model.vocab_size: {m.vocab_size} is smaller than the {d.tokenizer} tokenizer's "
                              f"vocabulary ({need}); set model.vocab_size >= {need}")


def _validate_mesh(mesh: dict[str, int]) -> None:
    """train.mesh: known axes, sizes >= 1 or -1 (the devices left) on at most one axis."""
    for axis, size in mesh.items():
        if axis not in MESH_AXES:
            raise ConfigError(f"train.mesh.{axis}: unknown axis; axes are {', '.join(MESH_AXES)} "
                              "(e.g. train.mesh: {data: -1} or {data: 2, fsdp: 4})")
        if size != -1 and size < 1:
            raise ConfigError(f"train.mesh.{axis}: must be >= 1, or -1 for every device left, got {size}")
    if list(mesh.values()).count(-1) > 1:
        raise ConfigError(f"train.mesh: at most one axis may be -1, got {mesh}")


def _validate_branch(cfg: Config) -> None:
    """train.checkpoint_steps inside the run; branch_from and branch_step together, the branch before the end."""
    t, total = cfg.train, cfg.total_steps
    for s in t.checkpoint_steps:
        if not 1 <= s <= total:
            raise ConfigError(f"train.checkpoint_steps: {s} is outside the run's steps 1..{total}")
    if (t.branch_from is None) != (t.branch_step is None):
        raise ConfigError("train.branch_from / train.branch_step: set both (the parent run directory and the step "
                          "of its checkpoint to start from) or neither")
    if t.branch_from is None:
        return
    if not t.branch_from.strip():
        raise ConfigError("train.branch_from: empty; give the parent run directory (in a sweep: its run id)")
    if not 1 <= t.branch_step < total:
        raise ConfigError(f"train.branch_step: {t.branch_step} must be in 1..{total - 1} (the run has {total} "
                          "steps and must train at least one past the branch)")
    if cfg.optim.wd_rule == "timescale":
        raise ConfigError("optim.wd_rule: timescale ties lambda to train.steps, so a branched run (train.branch_from)"
                          " would decay differently from its parent before the branch; use none, constant_tau "
                          "or sqrt")
