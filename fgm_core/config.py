"""Run configuration: one pydantic model per concern, loadable from TOML, overridable from the
command line (``--set section.key=value``), written resolved into every run directory.

Unknown keys and invalid values are errors that name the key.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from fgm_core.errors import FGMError
from fgm_core.storage import MAX_JSON_BYTES, read_input

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


#: seeds are integers 0 .. 2**63 - 1: what TOML, JSON readers and every RNG fgm uses can hold.
MAX_SEED = 2**63 - 1


def check_device(name: str) -> str:
    """The one rule for device names (config, command line, loading): auto, cpu, cuda, cuda:N."""
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit() and name[5:].isascii()):
        return name
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")


def check_file_name(name: str) -> str:
    """A single file-system name: no separator, NUL or control character, not . or .., at most
    255 bytes (what every common file system accepts)."""
    bad = next((c for c in name if c in "/\\" or ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ValueError(f"must be a plain file name; {bad!r} is not allowed in it")
    if name.strip() in ("", ".", ".."):
        raise ValueError(f"must be a plain file name, not {name!r}")
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        raise ValueError("must be at most 255 bytes long")
    return name


def _finite(v: Any, where: str = "") -> Any:
    """Reject NaN and inf anywhere in an option table: JSON cannot record them, and a run's
    records must say what it ran with."""
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"{where or 'value'} must be a finite number, got {v}")
    if isinstance(v, dict):
        for k, x in v.items():
            _finite(x, f"{where}.{k}" if where else str(k))
    elif isinstance(v, (list, tuple)):
        for i, x in enumerate(v):
            _finite(x, f"{where}[{i}]")
    return v


class _Section(BaseModel):
    # allow_inf_nan=False: lr = inf is "not a finite number", never a value written as null
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("options", "params", "prior_options", mode="after", check_fields=False)
    @classmethod
    def _finite_options(cls, v: Any) -> Any:
        return _finite(v)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true/false as 1/0; ``steps = true`` is a mistake, not 1 step
        if isinstance(v, bool) and _is_number_type(cls.model_fields[info.field_name].annotation):  # type: ignore[index]
            raise ValueError("expected a number, not true/false")
        return v


def _is_number_type(annotation: Any) -> bool:
    args = [a for a in get_args(annotation) if a is not type(None)] if get_args(annotation) else [annotation]
    return bool(args) and all(a in (int, float) for a in args)


class DataConfig(_Section):
    """Which dataset, with its own options (see ``fgm plugins`` for names)."""

    dataset: str = "ring8"
    options: dict[str, Any] = Field(default_factory=dict)
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)


class ModelConfig(_Section):
    """Networks and the latent/observation model."""

    architecture: str = "mlp"
    options: dict[str, Any] = Field(default_factory=dict)
    latent_dim: int = Field(2, ge=1, le=4096)
    #: gaussian: N(mu(z), sigma^2) with sigma learned (``learn_sigma``) or fixed;
    #: deterministic: x = G(z) (free critics only).
    generator: Literal["gaussian", "deterministic"] = "gaussian"
    sigma: float = Field(0.02, gt=0.0, description="initial (or fixed) generator noise scale, model units")
    learn_sigma: bool = True
    sigma_per_dim: bool = True
    min_sigma: float = Field(1e-3, gt=0.0)
    #: the latent prior p(z): ``normal`` (N(0, I), the core's) or a registered prior (``mixture``).
    prior: str = "normal"
    prior_options: dict[str, Any] = Field(default_factory=dict)


class DivergenceConfig(_Section):
    """The f-divergence: a registered name and its parameters."""

    name: str = "js"
    params: dict[str, Any] = Field(default_factory=dict)
    #: bound on the argument of every exponential (float32 overflows near 88).
    max_exp: float = Field(40.0, gt=0.0, le=80.0)
    #: the first ``warmup_steps`` steps train with ``kl`` (density critic: the VAE update), then
    #: this divergence takes over: kl covers every mode and brings the log ratio s near 0, where
    #: divergences with exponential tails have a gradient.
    warmup_steps: int = Field(0, ge=0)


class CriticConfig(_Section):
    """How the discriminator side is parameterised and regularised."""

    form: Literal["density", "joint", "marginal"] = "density"
    n_critic: int = Field(1, ge=0, le=100)
    #: ``auto``: ``saddle`` where ``non_saturating`` would be heavy-tailed (density critic and a T
    #: growing exponentially as s -> -inf), else ``non_saturating`` (see build.resolve_generator_loss).
    generator_loss: Literal["auto", "saddle", "non_saturating"] = "auto"
    gradient_penalty: float = Field(0.0, ge=0.0)
    spectral_norm: bool = False
    #: density critic: the divergence whose variational bound trains the density estimator
    #: (None: the run's). Its optimum is l = log p_D for every f, so the model's divergence
    #: (say kl) and a well-conditioned estimator (js) can be chosen apart.
    divergence: str | None = None
    #: density critic: where every sample's weight in J's gradient under- or overflows (a
    #: saturated divergence far from the data, e.g. hellinger on images at the start), step
    #: along the same direction rescaled in log space (model.FGMModel._rescaled); false: the
    #: raw gradient, exactly zero there.
    rescale: bool = True


class OptimConfig(_Section):
    """Optimisers (one for encoder+generator, one for the critic) and the schedule."""

    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    critic_lr: float | None = Field(None, gt=0.0)
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = Field(0.0, ge=0.0)
    schedule: Literal["constant", "cosine", "linear", "step"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(None, gt=0.0)
    #: learning-rate multiplier for the generator's noise scale (a log-space parameter).
    sigma_lr_scale: float = Field(10.0, gt=0.0)
    batch_size: int = Field(256, ge=1)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("each beta must be in [0, 1)")
        return v


class RunConfig(_Section):
    """Length, seed, device, output and logging of a run."""

    steps: int = Field(8000, ge=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] | str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    out_dir: str = "runs"
    name: str | None = None
    checkpoint_every: int = Field(1000, ge=1)
    log_every: int = Field(50, ge=1)
    eval_samples: int = Field(2500, ge=1)
    threads: int | None = Field(None, ge=1)
    progress: bool = True
    tensorboard: bool = True

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_device(v)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else check_file_name(v)

    @field_validator("out_dir")
    @classmethod
    def _out_dir(cls, v: str) -> str:
        if "\0" in v or not v:
            raise ValueError("must be a non-empty path without NUL characters")
        return v


class FGMConfig(_Section):
    """A whole f-GM run."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    divergence: DivergenceConfig = Field(default_factory=DivergenceConfig)
    critic: CriticConfig = Field(default_factory=CriticConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    #: plugins that contributed presets to this run (``--plugin``), for the record.
    plugins: list[str] = Field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())


# --------------------------------------------------------------------------- building
#: The component-specific tables. Given empty (``options = {}``), one clears what the layers
#: below set there instead of merging nothing into it.
CLEARABLE_TABLES = ("options", "params")


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Nested dict merge; ``over`` wins. Tables merge key by key, except that an empty
    ``options`` or ``params`` table in ``over`` replaces (clears) the one in ``base``."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and (v or k not in CLEARABLE_TABLES):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def apply_override(data: dict[str, Any], item: str) -> dict[str, Any]:
    """``data`` with one ``section.key=value`` override applied. The value *replaces* what is
    at that key, a table included (``--set 'model.options={}'`` clears a preset's options);
    ``--set model.options.hidden=64`` changes one entry and keeps the others."""
    value: Any = parse_override(item)
    parts = [p for p in item.partition("=")[0].strip().split(".") if p]
    for p in parts:
        value = value[p]
    out = dict(data)
    cur = out
    for p in parts[:-1]:
        below = cur.get(p)
        cur[p] = dict(below) if isinstance(below, dict) else {}
        cur = cur[p]
    cur[parts[-1]] = value
    return out


def parse_value(text: str) -> Any:
    """A command-line value: TOML scalar/array/inline-table syntax, else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_override(item: str) -> dict[str, Any]:
    """``section.key=value`` -> nested dict."""
    if "=" not in item:
        raise FGMError(f"override {item!r} has no '='", "write --set section.key=value, e.g. --set run.steps=500")
    key, _, value = item.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise FGMError(f"override {item!r} has an empty key", "write --set section.key=value")
    node: dict[str, Any] = {}
    cur = node
    for p in parts[:-1]:
        cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = parse_value(value.strip())
    return node


def load_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(read_input(Path(path), "config file", MAX_JSON_BYTES).decode())
    except FileNotFoundError:
        raise FGMError(f"config file {path} not found", "check the path given to --config") from None
    except (OSError, UnicodeDecodeError) as e:
        raise FGMError(f"cannot read config file {path}: {e}", "check the file and its permissions") from None
    except tomllib.TOMLDecodeError as e:
        raise FGMError(f"config file {path} is not valid TOML: {e}", "fix the syntax") from None


def validate(data: dict[str, Any], where: str = "config") -> FGMConfig:
    """Validate a nested dict into an :class:`FGMConfig`; the first problem becomes one line."""
    try:
        return FGMConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        if err["type"] == "extra_forbidden":
            section = FGMConfig
            for p in err["loc"][:-1]:
                section = section.model_fields[str(p)].annotation  # type: ignore[assignment]
            allowed = ", ".join(getattr(section, "model_fields", {}))
            raise FGMError(f"{where}: unknown key {key!r}", f"allowed here: {allowed}") from None
        value = err.get("input")
        raise FGMError(
            f"{where}: invalid value for {key!r}: {err['msg']} (got {value!r})",
            "fix the value in the config file or --set",
        ) from None


def merge_layers(
    config: dict[str, Any] | Path | None = None,
    overrides: list[str] | None = None,
    presets: list[dict[str, Any]] | None = None,
    defaults: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The settings the layers give, merged but not yet validated: data-kind ``defaults`` <
    plugin presets < config (TOML path or nested dict) < command-line overrides."""
    data: dict[str, Any] = dict(defaults or {})
    for p in presets or []:
        data = deep_merge(data, p)
    if isinstance(config, Path):
        data = deep_merge(data, load_toml(config))
    elif config is not None:
        data = deep_merge(data, config)
    for item in overrides or []:
        data = apply_override(data, item)
    return data


def build_config(
    config: dict[str, Any] | Path | None = None,
    overrides: list[str] | None = None,
    presets: list[dict[str, Any]] | None = None,
    defaults: dict[str, Any] | None = None,
) -> FGMConfig:
    """defaults (the schema's, then ``defaults``: see :func:`kind_defaults`) < plugin presets
    < config (TOML path or nested dict) < command-line overrides.

    Tables merge key by key (see :func:`deep_merge`); an override replaces the value at its
    key (see :func:`apply_override`)."""
    data = merge_layers(config, overrides, presets, defaults)
    return validate(data, str(config) if isinstance(config, Path) else "config")


#: What ``fgm train`` uses for image data unless a preset, the config or ``--set`` says
#: otherwise: DCGAN conv nets, the kl update (the VAE, which learns recognisable images
#: fastest on a CPU; the density critic still trains, for log p_D and collapse detection),
#: latent 16, noise scale 0.1 in [-1, 1] units. On Fashion-MNIST (1,500 steps) latent 16 with
#: lr 1e-3 gave a Frechet distance of 124 where latent 32 with lr 5e-4 gave 161. The schema's own defaults are tuned for 2-D
#: mixtures (latent 2, sigma 0.02, js), which do not learn images.
IMAGE_DEFAULTS: dict[str, Any] = {
    "model": {"architecture": "dcgan", "options": {"channels": 32}, "latent_dim": 16, "sigma": 0.1},
    "divergence": {"name": "kl"},
    "optim": {"batch_size": 64, "lr": 1e-3},
    "run": {"steps": 4000, "checkpoint_every": 500},
}
#: What ``fgm train`` uses for vector data when the ``mixture`` prior is loaded: a learnable
#: mixture of 8 Gaussians in z (a generator fed by one Gaussian must put mass between
#: disconnected modes), the kl update for the model (mode covering: every mode on every seed
#: measured) and js's bound for the density estimator (same optimum l = log p_D, better
#: conditioned than kl's). Measurements in benchmarks/README.md ("Density-estimator fidelity").
VECTOR_DEFAULTS: dict[str, Any] = {
    "model": {"prior": "mixture"},
    "divergence": {"name": "kl"},
    "critic": {"divergence": "js"},
}
#: The same for images the conv nets cannot take (sides other than 28, 32 or 64 pixels): MLPs.
IMAGE_MLP_DEFAULTS: dict[str, Any] = {
    **IMAGE_DEFAULTS,
    "model": {"architecture": "mlp", "options": {"hidden": 512, "depth": 2}, "latent_dim": 16, "sigma": 0.1},
}


def kind_defaults(
    kind: str | None,
    shape: tuple[int, ...] | None,
    layers: dict[str, Any],
    conv_available: bool = True,
    mixture_available: bool = False,
) -> dict[str, Any]:
    """The defaults layer for data of ``kind`` and item ``shape`` (None: unknown), given what the
    other ``layers`` set. Vectors: ``VECTOR_DEFAULTS`` when the mixture prior is loaded
    (``mixture_available``), else nothing; its kl model with a js-trained estimator only when the
    layers choose neither the divergence nor the critic form. Images: MLPs when the conv architecture is not loaded (``conv_available``) or
    cannot take the shape. The defaults' architecture and its options go together: when the
    layers set ``model.architecture`` or ``model.options``, neither applies."""
    if kind != "image":
        if not mixture_available:
            return {}
        out = json.loads(json.dumps(VECTOR_DEFAULTS))
        div, crit = layers.get("divergence"), layers.get("critic")
        if (isinstance(div, dict) and "name" in div) or (isinstance(crit, dict) and "form" in crit):
            del out["divergence"], out["critic"]  # a chosen divergence or critic plays its own game
        return out
    conv = conv_available and (shape is None or (len(shape) == 3 and shape[1] == shape[2] and shape[1] in (28, 32, 64)))
    out = json.loads(json.dumps(IMAGE_DEFAULTS if conv else IMAGE_MLP_DEFAULTS))
    model = layers.get("model")
    model = model if isinstance(model, dict) else {}
    if "architecture" in model or "options" in model:
        del out["model"]["architecture"], out["model"]["options"]
    return out


def dump_toml(cfg: FGMConfig) -> str:
    """Resolved configuration as TOML (the format users write)."""
    return _to_toml(cfg.to_dict())


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_fmt(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_str(s: str) -> str:
    """A TOML basic string, ASCII only (json.dumps would write characters beyond U+FFFF as
    surrogate pairs, which TOML rejects)."""
    out = []
    for ch in s:
        o = ord(ch)
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif 0x20 <= o < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\u{o:04X}" if o <= 0xFFFF else f"\\U{o:08X}")
    return '"' + "".join(out) + '"'


def _key(k: str) -> str:
    bare = k and all(c.isascii() and (c.isalnum() or c in "_-") for c in k)  # TOML bare keys are ASCII
    return k if bare else _toml_str(k)


def _to_toml(d: dict[str, Any], prefix: str = "") -> str:
    scalars = [(k, v) for k, v in d.items() if not (isinstance(v, dict) and k not in ("options", "params"))]
    tables = [(k, v) for k, v in d.items() if isinstance(v, dict) and k not in ("options", "params")]
    lines = [f"{_key(k)} = {_fmt(v)}" for k, v in scalars if v is not None]
    out = ""
    if prefix and (lines or not tables):
        out += f"[{prefix}]\n"
    if lines:
        out += "\n".join(lines) + "\n"
    for k, v in tables:
        sub = _to_toml(v, f"{prefix}.{k}" if prefix else k)
        out += ("\n" if out else "") + sub
    return out


# --------------------------------------------------------------------------- resuming
#: What ``fgm train --resume RUN --set KEY=VALUE`` may change: the length of the run, the
#: learning rates and their schedule, how often it logs and checkpoints, and where and how
#: fast it computes. Everything else (data, networks, latent size, divergence, critic,
#: optimiser type, batch size, seed) defines what the checkpoint holds and is refused.
RESUMABLE = frozenset(
    {
        "run.steps",
        "run.checkpoint_every",
        "run.log_every",
        "run.eval_samples",
        "run.threads",
        "run.progress",
        "run.tensorboard",
        "run.device",
        "optim.lr",
        "optim.critic_lr",
        "optim.sigma_lr_scale",
        "optim.schedule",
        "optim.warmup_steps",
        "optim.grad_clip",
    }
)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_changes(old: FGMConfig, new: FGMConfig, run_dir: Path) -> dict[str, tuple[Any, Any]]:
    """The settings a resume of ``run_dir`` changes, ``{key: (old, new)}``; an
    :class:`FGMError` naming the first key outside :data:`RESUMABLE` that differs.
    ``run.out_dir`` and ``run.name`` may change only to name ``run_dir`` itself (a run that
    was moved or copied: the record then says where it is)."""
    a, b = _flat(old.to_dict()), _flat(new.to_dict())
    changed = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    here = Path(run_dir).resolve()
    located = Path(new.run.out_dir).resolve() == here.parent and new.run.name in (None, here.name)
    for key, (was, now) in changed.items():
        if key not in RESUMABLE and not (key in ("run.out_dir", "run.name") and located):
            raise FGMError(
                f"cannot change {key} when resuming (the run has {was!r}, the command line {now!r})",
                f"a resume may change only {', '.join(sorted(RESUMABLE))}; start a new run for the rest",
            )
    return changed
