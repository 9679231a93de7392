"""``fgm tune``: search the run configuration with Optuna (optional extra ``fgm[tune]``).

A search file (TOML) gives the space and the objective::

    [tune]
    trials = 20                       # finished trials wanted in the study (resuming tops up)
    report_every = 1000               # steps between intermediate evaluations (pruning)
    objective = { high_quality = 1.0, modes = 1.0 }   # weighted sum of metrics, maximised

    [space]
    "optim.lr" = { low = 1e-4, high = 3e-3, log = true }      # float range
    "critic.n_critic" = { low = 1, high = 4 }                  # int range (both bounds ints)
    "divergence.name" = { choices = ["js", "kl"] }             # categorical

Metrics (all from the held-out evaluation of each trial): ``modes`` (share of mixture
modes captured), ``high_quality``, ``kl_to_uniform``, ``log_likelihood`` (held-out, nats),
``likelihood_gap`` (to -H of the data, mixtures), ``estimator_error`` (mean |l(x) - log
p_D(x)| on held-out mixture points). Give errors a negative weight. Each trial trains from
the base configuration plus the sampled values; every ``report_every`` steps the same
objective is measured on a smaller evaluation and reported, and the median pruner stops
trials that fall behind. The study lives in SQLite (``--storage``/``--study-name``) and
resumes where it stopped. Output: ``best.toml`` (the best trial's full configuration, ready
for ``fgm train -c``), ``history.png`` (optimisation history) and ``trials.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fgm_core.api import resolve_config
from fgm_core.config import FGMConfig, deep_merge, dump_toml, load_toml, validate
from fgm_core.errors import FGMError
from fgm_core.run import Run
from fgm_core.trainer import Trainer
from fgm_report.metrics import data_mixture, estimator_fidelity, mixture_log_density, mixture_metrics
from fgm_report.plots import _plt, _save

#: what an objective may weigh (see the module docstring)
METRICS = ("modes", "high_quality", "kl_to_uniform", "log_likelihood", "likelihood_gap", "estimator_error")
TUNE_KEYS = ("trials", "report_every", "objective", "seed", "pruner_startup_trials", "pruner_warmup_steps")


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise FGMError(
            "fgm tune needs Optuna, which is not installed", "pip install 'fgm[tune]' (or pip install optuna)"
        ) from None
    return optuna


@dataclass
class Dimension:
    """One searched key: a float or int range, or categorical choices."""

    key: str
    kind: str  # float, int, categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list[Any] = field(default_factory=list)

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)


@dataclass
class SearchSpec:
    dims: list[Dimension]
    objective: dict[str, float]
    trials: int = 20
    report_every: int = 1000
    seed: int = 0
    pruner_startup_trials: int = 3
    pruner_warmup_steps: int = 0


def _bad(path: Path, what: str, fix: str) -> FGMError:
    return FGMError(f"search file {path}: {what}", fix)


def parse_search(path: Path) -> SearchSpec:
    """Read and check a search file (see the module docstring)."""
    data = load_toml(path)
    unknown = [k for k in data if k not in ("tune", "space")]
    if unknown:
        raise _bad(path, f"unknown table {unknown[0]!r}", "use [tune] and [space]")
    tune = data.get("tune", {})
    bad = [k for k in tune if k not in TUNE_KEYS]
    if bad:
        raise _bad(path, f"unknown key tune.{bad[0]}", f"allowed: {', '.join(TUNE_KEYS)}")
    space = data.get("space")
    if not isinstance(space, dict) or not space:
        raise _bad(path, "no [space] table", 'add e.g. [space] "optim.lr" = { low = 1e-4, high = 3e-3, log = true }')
    dims = [_dimension(path, k, v) for k, v in space.items()]
    objective = tune.get("objective", {"high_quality": 1.0, "modes": 1.0})
    if not isinstance(objective, dict) or not objective:
        raise _bad(path, "tune.objective must be a table of metric = weight", f"metrics: {', '.join(METRICS)}")
    for name, w in objective.items():
        if name not in METRICS:
            raise _bad(path, f"unknown objective metric {name!r}", f"choose from {', '.join(METRICS)}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise _bad(path, f"weight of {name!r} must be a number", "e.g. objective = { high_quality = 1.0 }")
    spec = SearchSpec(dims, {k: float(v) for k, v in objective.items()})
    for key in ("trials", "report_every", "seed", "pruner_startup_trials", "pruner_warmup_steps"):
        if key in tune:
            v = tune[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key in ("trials", "report_every") else 0):
                raise _bad(
                    path,
                    f"tune.{key} must be a whole number >= {1 if key in ('trials', 'report_every') else 0}",
                    "fix the value",
                )
            setattr(spec, key, v)
    return spec


def _dimension(path: Path, key: str, v: Any) -> Dimension:
    if not isinstance(v, dict):
        raise _bad(path, f"space.{key!r} must be a table", "{ low = ..., high = ... } or { choices = [...] }")
    extra = [k for k in v if k not in ("low", "high", "log", "step", "choices")]
    if extra:
        raise _bad(path, f"space.{key!r} has unknown field {extra[0]!r}", "allowed: low, high, log, step, choices")
    if "choices" in v:
        if not isinstance(v["choices"], list) or not v["choices"] or len(v) > 1:
            raise _bad(path, f"space.{key!r}: choices must be a non-empty list, alone", "e.g. { choices = [1, 2, 4] }")
        return Dimension(key, "categorical", choices=list(v["choices"]))
    lo, hi = v.get("low"), v.get("high")
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in (lo, hi)):
        raise _bad(path, f"space.{key!r} needs numeric low and high (or choices)", "e.g. { low = 1, high = 4 }")
    if not lo < hi:
        raise _bad(path, f"space.{key!r}: low must be below high", "swap or fix the bounds")
    log = bool(v.get("log", False))
    if log and lo <= 0:
        raise _bad(path, f"space.{key!r}: a log range needs low > 0", "raise low or drop log")
    kind = "int" if isinstance(lo, int) and isinstance(hi, int) and not isinstance(v.get("step", 1), float) else "float"
    return Dimension(key, kind, lo, hi, log, v.get("step"))


def trial_config(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The base configuration with the sampled ``key = value`` pairs set."""
    out = base
    for key, value in values.items():
        over: dict[str, Any] = {}
        node = over
        *parents, last = [p for p in key.split(".") if p]
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
        out = deep_merge(out, over)
    return out


# --------------------------------------------------------------------------- scoring
def measure(
    run: Any, bundle: Any, *, k: int, n_samples: int, n_test: int, seed: int = 0, need_density: bool = False
) -> dict[str, float]:
    """The objective's metrics for a run on held-out data (what the objective may weigh)."""
    out: dict[str, float] = {}
    test = bundle.test[:n_test].float()
    mix = bundle.mixture
    if mix is not None:
        kept = bundle.info.get("kept_modes")
        means, stds, w = data_mixture(mix, kept)
        mm = mixture_metrics(
            run.sample(n_samples, seed=seed + 1), torch.as_tensor(mix["means"]), torch.as_tensor(mix["stds"])
        )
        out.update(
            modes=mm["modes_captured"] / mm["modes_total"],
            high_quality=mm["high_quality"],
            kl_to_uniform=mm["kl_to_uniform"],
        )
        truth = mixture_log_density(test, means, stds, w)
        if need_density and run.model.density_estimator:
            out["estimator_error"] = estimator_fidelity(run.log_density(test), truth)["estimator_mae"]
    if run.model.generator == "gaussian":
        ll = run.log_likelihood(test, k=k, seed=seed)
        out["log_likelihood"] = float(ll.mean())
        if mix is not None:
            out["likelihood_gap"] = float(truth.mean()) - out["log_likelihood"]
    return out


def score(metrics: dict[str, float], objective: dict[str, float]) -> float:
    """Weighted sum of the metrics; a metric the run cannot give is an error."""
    missing = [m for m in objective if m not in metrics]
    if missing:
        raise FGMError(
            f"objective metric {missing[0]!r} is not available for this run",
            "mixture metrics need a 2-D mixture dataset, likelihoods a gaussian generator, "
            "estimator_error the density critic",
        )
    total = sum(w * metrics[m] for m, w in objective.items())
    return total if math.isfinite(total) else -math.inf


# --------------------------------------------------------------------------- the study
def tune(
    search: Path,
    out: Path,
    *,
    config: Path | None = None,
    overrides: list[str] | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    trials: int | None = None,
    progress: bool = False,
    echo: Any = print,
) -> dict[str, Any]:
    """Run (or resume) a study; write ``best.toml``, ``history.png`` and ``trials.json`` to ``out``."""
    optuna = require_optuna()
    spec = parse_search(Path(search))
    if trials is not None:
        spec.trials = trials
    base_cfg, plugins = resolve_config(config, overrides)
    base = base_cfg.to_dict()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study_name = study_name or Path(search).stem
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=spec.seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=spec.pruner_startup_trials, n_warmup_steps=spec.pruner_warmup_steps
        ),
    )
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    todo = max(0, spec.trials - len(done))
    if todo:
        echo(f"study {study_name!r} ({storage}): {len(done)} trials done, running {todo} more")
    need_density = "estimator_error" in spec.objective

    def objective(trial: Any) -> float:
        values = {d.key: d.suggest(trial) for d in spec.dims}
        data = trial_config(base, values)
        data["run"] = {
            **data["run"],
            "out_dir": str(out / "runs"),
            "name": f"trial-{trial.number:04d}",
            "progress": False,
            "tensorboard": False,
        }
        cfg = validate(data, f"trial {trial.number}")
        trainer = Trainer(cfg, plugins)
        if trainer.run_dir.exists():  # a trial of an interrupted session, same number: start it afresh
            import shutil

            shutil.rmtree(trainer.run_dir)
        bundle = trainer.bundle

        def on_step(tr: Trainer) -> None:
            if tr.step % spec.report_every or tr.step >= cfg.run.steps:
                return
            run = Run(tr.run_dir, cfg, tr.model, tr.info, plugins.resolved())
            tr.model.eval()
            value = score(
                measure(run, bundle, k=10, n_samples=1000, n_test=500, seed=cfg.run.seed, need_density=need_density),
                spec.objective,
            )
            tr.model.train()
            trial.report(value, tr.step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {tr.step} (objective {value:.4g})")

        try:
            trainer.fit(progress=progress, on_step=on_step)
        except FGMError as e:  # a diverging configuration is a failed trial, not a failed study
            echo(f"trial {trial.number}: failed: {e}")
            return math.nan
        run = Run(trainer.run_dir, cfg, trainer.model.eval(), trainer.info, plugins.resolved())
        metrics = measure(run, bundle, k=100, n_samples=2500, n_test=2000, seed=cfg.run.seed, need_density=need_density)
        value = score(metrics, spec.objective)
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("config", cfg.to_dict())
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        echo(
            f"trial {trial.number}: objective {value:.4g} ({shown}) with "
            + ", ".join(f"{k}={v!r}" for k, v in values.items())
        )
        return value

    if todo:
        study.optimize(objective, n_trials=todo, gc_after_trial=True)
    return write_outputs(study, out, optuna)


def write_outputs(study: Any, out: Path, optuna: Any) -> dict[str, Any]:
    """best.toml, history.png and trials.json of a study."""
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "metrics": t.user_attrs.get("metrics"),
            "last_step": max(t.intermediate_values) if t.intermediate_values else None,
        }
        for t in study.trials
    ]
    (out / "trials.json").write_text(json.dumps(rows, indent=2, default=str))
    plot_history(study, out / "history.png", optuna)
    if not complete:
        raise FGMError(
            f"no trial of study {study.study_name!r} completed (see {out / 'trials.json'})",
            "widen the search space, lower the pruning (tune.pruner_warmup_steps) or check the base config",
        )
    best = study.best_trial
    cfg = FGMConfig.model_validate(best.user_attrs["config"])
    cfg.run.out_dir, cfg.run.name = FGMConfig().run.out_dir, None
    cfg.run.progress, cfg.run.tensorboard = FGMConfig().run.progress, FGMConfig().run.tensorboard
    head = (
        f"# best trial {best.number} of study {study.study_name!r}: objective {best.value:.6g}\n"
        f"# metrics: {json.dumps(best.user_attrs.get('metrics', {}))}\n"
        f"# searched: {json.dumps(best.params)}\n"
    )
    tmp = out / "best.toml.tmp"
    tmp.write_text(head + dump_toml(cfg))
    tmp.replace(out / "best.toml")
    return {
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "metrics": best.user_attrs.get("metrics"),
        "trials": len(study.trials),
        "complete": len(complete),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "best_toml": str(out / "best.toml"),
        "history_png": str(out / "history.png"),
    }


def plot_history(study: Any, path: Path, optuna: Any) -> Path:
    """Objective per trial (completed: dots; pruned: crosses at their last reported value)
    and the best value so far."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    best, best_x, best_y = -math.inf, [], []
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None:
            ax.plot(t.number, t.value, "o", color="tab:blue", ms=4)
            best = max(best, t.value)
            best_x.append(t.number)
            best_y.append(best)
        elif t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values:
            ax.plot(t.number, t.intermediate_values[max(t.intermediate_values)], "x", color="tab:gray", ms=5)
    if best_x:
        ax.step(best_x, best_y, where="post", color="tab:red", label="best so far")
        ax.legend(loc="lower right")
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.set_title(f"study {study.study_name}: {len(study.trials)} trials")
    fig.tight_layout()
    return _save(fig, path)
