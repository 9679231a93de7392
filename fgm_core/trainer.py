"""The trainer owns the loop: optimisers, devices, precision, checkpoints, logging, progress.

Models compute losses (:mod:`fgm_core.model`); this module alternates the critic and the
encoder/generator updates, and makes runs reproducible and resumable bit for bit on CPU.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fgm_core import distributed as dist
from fgm_core import env
from fgm_core.build import DataInfo, heavy_tailed_generator_loss, load_data, make_model, resolve_device
from fgm_core.components import DataBundle
from fgm_core.config import FGMConfig, dump_toml, resume_changes, validate
from fgm_core.divspec import config_label, slug
from fgm_core.errors import PLUGIN_FAILURES, FGMError, FGMWarning, Interrupted, PluginError, os_error_text
from fgm_core.model import FGMModel
from fgm_core.plugins import PluginSet
from fgm_core.run import Run
from fgm_core.storage import (
    FORMAT_VERSION,
    LOCK_FILE,
    RunLock,
    append_line,
    atomic_write_text,
    checkpoint_files,
    join_state,
    load_tensors,
    lock_run_dir,
    naming,
    never_checkpointed,
    read_json,
    read_record,
    refuse_links,
    save_tensors,
    split_state,
    truncate_rows,
    write_json,
)
from fgm_core.version import __version__


def make_optimizer(
    name: str, params: list, lr: float, betas: tuple[float, float], wd: float, fused: bool = False
) -> torch.optim.Optimizer:
    """``fused``: Adam/AdamW update every tensor in one kernel (CPU and CUDA), several times
    faster than the per-op update for small networks, where it is a large part of a step."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=wd, fused=fused or None)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=wd, fused=fused or None)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, momentum=betas[0], weight_decay=wd)


def lr_factor(kind: str, warmup: int, total: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        if kind == "linear":
            return max(0.0, 1.0 - t)
        if kind == "step":
            return 0.1 ** int(3 * min(t, 0.999))
        return 1.0

    return f


class Trainer:
    """Train one f-GM run into a run directory (see :meth:`fit`)."""

    def __init__(
        self,
        cfg: FGMConfig,
        plugins: PluginSet,
        run_dir: Path | None = None,
        resume: bool = False,
        bundle: DataBundle | None = None,
    ) -> None:
        self.cfg = cfg
        self.plugins = plugins
        #: what this resume changes, {key: (old, new)}; checked before any work (allowlist in config.py)
        self.changes = {}
        if resume:
            if run_dir is None:
                raise ValueError("resume needs the run directory")
            where = Path(run_dir) / "config.json"
            self.changes = resume_changes(validate(read_json(where), str(where)), cfg, Path(run_dir))
        self.device = resolve_device(cfg.run.device)
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        # several processes (torchrun): each takes batch_size // world rows of every global batch
        self.rank, self.world = dist.rank(), dist.world_size()
        if self.world > 1:
            dist.check_batch(cfg.optim.batch_size, self.world)
            self.device = dist.setup(self.device)
            if self.rank != 0:
                dist.barrier()  # rank 0 loads (and downloads) the data first
        self.bundle = bundle or load_data(cfg, plugins)
        if self.world > 1 and self.rank == 0:
            dist.barrier()
        self.info = DataInfo.from_bundle(self.bundle)
        self.model: FGMModel = make_model(cfg, plugins, self.info).to(self.device)
        why = heavy_tailed_generator_loss(cfg, self.model.divergence)
        if why and self.rank == 0:
            warnings.warn(why, FGMWarning, stacklevel=2)
        if self.world > 1:
            dist.broadcast_module(self.model)  # identical start (the init is seeded, this makes it certain)
        self.run_dir = Path(run_dir) if run_dir else self._new_run_dir()
        self.resume = resume
        m = self.model
        gen_params = [p for n, p in m.named_parameters() if not n.startswith("critic.") and n != "rho"]
        o = cfg.optim
        groups: list[dict[str, Any]] = [{"params": gen_params}]
        if isinstance(m.rho, torch.nn.Parameter):  # the noise scale moves in log space, faster
            groups.append({"params": [m.rho], "lr": o.lr * o.sigma_lr_scale, "weight_decay": 0.0})
        fused = self.device.type in ("cpu", "cuda")
        self.opt_g = make_optimizer(o.optimizer, groups, o.lr, o.betas, o.weight_decay, fused)
        self.gen_params = [p for grp in groups for p in grp["params"]]
        self.opt_c = make_optimizer(
            o.optimizer, list(m.critic.parameters()), o.critic_lr or o.lr, o.betas, o.weight_decay, fused
        )
        factor = lr_factor(o.schedule, o.warmup_steps, cfg.run.steps)
        constant = o.schedule == "constant" and not o.warmup_steps  # nothing to schedule: skip the work
        self.sched = (
            [] if constant else [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in (self.opt_g, self.opt_c)]
        )
        # all training noise comes from one generator, so its state makes resume exact
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.run.seed)
        self.train_x = self.info.scaling.to_model(self.bundle.train).to(self.device)
        if self.train_rows() % self.world:
            raise FGMError(
                f"the batch of {self.train_rows()} rows (the whole training set) is not divisible by "
                f"the {self.world} training processes",
                "use a larger training set or fewer processes",
            )
        self.step = 0
        self.epoch = 0
        self.pos = 0
        self._perm: Tensor | None = None
        self._stop = 0  # the number of the signal that asked to stop (0: none)
        self.last_checkpoint: int | None = None
        self._created = False  # this call created (or took over) the run directory
        self._lock: RunLock | None = None
        self._stalled = 0  # consecutive checked generator steps with an all-zero gradient

    # ------------------------------------------------------------------ the training step
    def train_step(self) -> dict[str, Tensor]:
        """One generator step after ``n_critic`` critic steps (the whole f-GM update)."""
        model, cfg = self.model, self.cfg
        model.use_warmup(self.step < cfg.divergence.warmup_steps)
        for _ in range(cfg.critic.n_critic):
            with self._autocast():
                c = model.critic_loss(self.next_batch(), self.noise())
            self._update(self.opt_c, c.loss, model.critic.parameters(), "critic")
        model.critic.requires_grad_(False)  # the critic is held fixed: no grads, no work
        with self._autocast():
            g = model.generator_loss(self.next_batch(), self.noise(model.generator_uses_model_side))
        model.critic.requires_grad_(True)
        self._update(self.opt_g, g.loss, self.gen_params, "generator")
        for s, opt in zip(self.sched, (self.opt_g, self.opt_c)):
            if opt is not self.opt_c or cfg.critic.n_critic:  # a critic never stepped keeps its schedule still
                s.step()
        self.step += 1
        if not cfg.critic.n_critic:  # the plain VAE: no critic step, no estimate of J
            return {"loss_generator": g.loss.detach(), "critic_data": g.critic_data}
        return {
            "loss_critic": c.loss.detach(),
            "loss_generator": g.loss.detach(),
            "divergence": c.objective,  # type: ignore[dict-item]
            "critic_data": c.critic_data,
            "critic_model": c.critic_model,  # type: ignore[dict-item]
        }

    def _update(self, opt: torch.optim.Optimizer, loss: Tensor, params, who: str) -> None:
        params = list(params)
        if self.world == 1 and not torch.isfinite(loss):
            raise NonFiniteLoss(who, self.step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.world > 1 and not dist.average_gradients(params, loss):  # what DDP does, plus a shared NaN check
            raise NonFiniteLoss(who, self.step)
        if who == "generator" and (self.step < STALL_WATCH or self.step % self.cfg.run.log_every == 0):
            self._watch_stall(params)
        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        opt.step()

    def _watch_stall(self, params: list[Tensor]) -> None:
        """A generator whose gradient is exactly zero never moves (saturated T(s): exp under- or
        overflow where |s| is thousands of nats): stop with :class:`Stalled` rather than train nothing."""
        grads = [p.grad for p in params if p.grad is not None]
        zero = not grads or not bool(torch.stack([g.detach().abs().max() for g in grads]).max() > 0)
        self._stalled = self._stalled + 1 if zero else 0
        if self._stalled >= STALL_STEPS:
            d = self.cfg.divergence
            given = ", ".join(f"{k}={v}" for k, v in d.params.items())
            raise Stalled(self.step, f"{d.name} ({given})" if given else d.name)

    # ------------------------------------------------------------------ data and noise
    def train_rows(self) -> int:
        """Rows of one global batch (all processes together)."""
        return min(self.cfg.optim.batch_size, self.train_x.shape[0])

    def next_batch(self) -> Tensor:
        """The next minibatch of an epoch-wise permutation seeded by (seed, epoch); with
        several processes, every process draws the same global batch and takes its slice."""
        n, b = self.train_x.shape[0], self.train_rows()
        if self._perm is None or self.pos + b > n:
            if self._perm is not None:
                self.epoch, self.pos = self.epoch + 1, 0
            self._perm = self._epoch_perm()
        idx = self._perm[self.pos : self.pos + b]
        self.pos += b
        if self.world > 1:
            idx = idx.view(self.world, -1)[self.rank]
        return self.train_x[idx]

    def _epoch_perm(self) -> Tensor:
        """The row order of epoch ``self.epoch``, a function of (seed, epoch) only: a checkpoint
        stores (epoch, pos) and resume regenerates it (not 8 bytes per training row)."""
        # modulo 2**64: the generator's seed range, so any valid run.seed works at any epoch
        g = torch.Generator().manual_seed((self.cfg.run.seed * 1_000_003 + self.epoch) % 2**64)
        return torch.randperm(self.train_x.shape[0], generator=g).to(self.device)

    def noise(self, model_side: bool = True) -> dict[str, Tensor]:
        """The noise of one global batch; with several processes, every process draws it all
        (same generator, same state) and keeps its rows, as for the data. ``model_side =
        False``: only the posterior noise (a step that samples nothing from the model)."""
        b, d = self.train_rows(), self.cfg.model.latent_dim
        kw: dict[str, Any] = {"generator": self.gen, "device": self.device}
        if not model_side:
            out = {"z_eps": torch.randn(b, d, **kw)}
        else:
            out = {"z": torch.randn(b, d, **kw), "z_eps": torch.randn(b, d, **kw)}
            if self.cfg.model.generator == "gaussian":
                out["x_eps"] = torch.randn(b, *self.info.shape, **kw)
            if self.cfg.critic.gradient_penalty > 0:
                out["gp"] = torch.rand(b, **kw)
            if self.model.prior.needs_uniform:  # a mixture's component choice; N(0, I) draws none
                out["z_u"] = torch.rand(b, **kw)
        if self.world > 1:
            out = {k: v.view(self.world, -1, *v.shape[1:])[self.rank] for k, v in out.items()}
        return out

    def _autocast(self):
        if self.cfg.run.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    # ------------------------------------------------------------------ the loop
    def fit(self, progress: bool | None = None, on_step: Callable[[Trainer], None] | None = None) -> Path:
        """Train to ``run.steps``, checkpointing atomically; returns the run directory.

        ``on_step(trainer)`` runs after every step (e.g. ``fgm tune``'s periodic evaluation
        and pruning); an exception it raises stops training like any other.
        The run directory is locked while this runs. SIGINT (Ctrl-C) or SIGTERM finishes the
        current step, writes a checkpoint and raises :class:`Interrupted`; a second one aborts.
        A failure before the first checkpoint removes a run directory this call created."""
        cfg = self.cfg
        logger: MetricsLogger | None = None
        bar: Progress | None = None
        old = _install_stop(self)
        try:
            self._open_run()
            logger, bar = self._reporters(progress)
            window = _StatsWindow()
            t0 = time.perf_counter()
            while self.step < cfg.run.steps and not self._stopping():
                window.add(self._step_naming_plugin())
                if self.step % cfg.run.log_every == 0 or self.step == cfg.run.steps:
                    row = self._log_row(window, time.perf_counter() - t0)
                    logger.log(row)
                    bar.update(self.step, row)
                if self.step % cfg.run.checkpoint_every == 0:
                    self.save_checkpoint()
                if on_step is not None:
                    on_step(self)
            bar.close()
            logger.close()
            return self._close_run()
        except BaseException as e:
            self._cleanup_failed()
            error = self._failure_error(e)
            if error is None:
                raise
            raise error from None
        finally:
            for b in (bar, logger):
                if b is not None:
                    b.close()
            _restore_signals(old)
            self._unlock()

    def _open_run(self) -> None:
        """Lock and load the run directory to resume, or create a new one."""
        if self.resume:
            refuse_links(self.run_dir)
            self._on_rank0(self._lock_run_dir)
            self.load_checkpoint()
            self._apply_optim_settings()
            self._on_rank0(self._record_resume)
        else:
            self._on_rank0(self._start_run_dir)

    def _reporters(self, progress: bool | None) -> tuple[MetricsLogger, Progress]:
        """The metrics log (appending after the resumed step) and the progress bar; both only on process 0."""
        cfg = self.cfg
        logger = MetricsLogger(
            self.run_dir, cfg.run.tensorboard, enabled=self.rank == 0, upto=self.step if self.resume else None
        )
        bar = Progress(
            cfg.run.steps, self.step, enabled=(cfg.run.progress if progress is None else progress) and self.rank == 0
        )
        return logger, bar

    def _step_naming_plugin(self) -> dict[str, Tensor]:
        """:meth:`train_step`, turning an exception raised inside a plugin into a :class:`PluginError`."""
        try:
            return self.train_step()
        except (FGMError, NonFiniteLoss, Stalled):
            raise
        except PLUGIN_FAILURES as e:  # raised in a plugin's network or divergence: name it, keep the checkpoint
            who = self._blame(e)
            if not who:
                raise  # not from a plugin: an internal error, with its traceback under --debug
            kept = (
                f"the last checkpoint (step {self.last_checkpoint}) is intact: fix the plugin, then "
                f"`fgm train --resume {self.run_dir}`"
                if self.last_checkpoint
                else "no checkpoint was written"
            )
            raise PluginError(
                f"training step {self.step + 1} failed in {' / '.join(who)}: "
                f"{type(e).__name__}: {' '.join(str(e).split())}; {kept}",
                "fix or update the plugin, or report it to its author",
            ) from e

    def _blame(self, e: BaseException) -> list[str]:
        """The plugins (architecture, divergence) whose files appear in ``e``'s traceback."""
        files = [Path(fr.filename).resolve() for fr in traceback.extract_tb(e.__traceback__)]
        who = []
        for kind, name in (("architectures", self.cfg.model.architecture), ("divergences", self.cfg.divergence.name)):
            plugin = self.plugins.plugin_of(kind, name)
            mod = self.plugins.pm.get_plugin(plugin)
            home = Path(getattr(mod, "__file__", None) or "/nonexistent").resolve()
            if home.name == "__init__.py" or "." in getattr(mod, "__name__", ""):
                home = home.parent  # a package (or a module in one): any of its files
            if any(f == home or home in f.parents for f in files):
                who.append(f"{kind[:-1]} {name!r} (plugin {plugin!r})")
        return who

    def _log_row(self, window: _StatsWindow, elapsed: float) -> dict[str, Any]:
        """The metrics row of the steps since the last one (means), and empties ``window``."""
        totals, count = window.take()
        clamped = self.model.divergence.pop_clamped()
        if self.world > 1:  # averaged over the processes too (clamped entries: summed)
            totals, clamped = self._reduce_stats(totals, clamped)
        row: dict[str, Any] = {k: float(v) / count for k, v in totals.items()}
        row.update(
            step=self.step,
            time=round(elapsed, 3),
            f_prime_at_1=self.model.divergence.f_prime_at_1,
            clamped=clamped,
            rescaled=self.model.pop_rescaled(),
            sigma=float(torch.exp(self.model.log_sigma.detach()).mean()),
            lr=self.opt_g.param_groups[0]["lr"],
        )
        return row

    def _close_run(self) -> Path:
        """The last checkpoint, then :class:`Interrupted` after a stop request, or the final files."""
        self.model.use_warmup(False)  # the trained model is the run's divergence's, whatever the step
        if self.step != self.last_checkpoint:
            self.save_checkpoint()
        if self._stop:
            name = signal.Signals(self._stop).name
            raise Interrupted(
                f"interrupted ({name}) at step {self.step}; checkpoint written: continue with "
                f"`fgm train --resume {self.run_dir}`",
                self._stop,
                self.step,
            )
        if self.rank == 0:
            self.finish()
        dist.barrier()
        return self.run_dir

    def _failure_error(self, e: BaseException) -> FGMError | None:
        """The one-line error that replaces ``e`` (a NaN loss, a disk or permission error), or None: re-raise ``e``."""
        if isinstance(e, NonFiniteLoss):
            return FGMError(
                f"non-finite {e.who} loss at step {e.step + 1}; {self._kept()}",
                "lower optim.lr, add critic.gradient_penalty or critic.spectral_norm, or lower divergence.max_exp",
            )
        if isinstance(e, Stalled):
            return FGMError(
                f"the generator got an exactly zero gradient on {STALL_STEPS} checked steps in a row (up to step "
                f"{e.step + 1}): divergence {e.divergence} saturates, its T(s) and f*(T(s)) are flat where the "
                f"log ratio s is far from 0 (thousands of nats on images at the start); {self._kept()}",
                "keep critic.rescale = true (the default; it steps along the exact gradient, rescaled), use a "
                "divergence with a closed-form log_T_prime or linear tails (kl, js, reverse_kl), or start the model "
                "closer to the data (a larger model.sigma)",
            )
        if isinstance(e, OSError) and (self._created or self.resume):  # disk full, permissions: name the file
            return FGMError(
                f"{os_error_text(e)}; {self._kept()}", "free disk space or fix the permissions, then run it again"
            )
        return None  # without a run directory yet (e.g. --out is a file) the CLI names the path of an OSError

    def _kept(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint was written"
        return (
            f"the last good checkpoint is step {self.last_checkpoint} (`fgm train --resume {self.run_dir}` "
            "continues from it)"
        )

    def _cleanup_failed(self) -> None:
        """A run directory this call created and never checkpointed holds nothing worth keeping."""
        if self.last_checkpoint is None and self._created and self.rank == 0:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _stopping(self) -> bool:
        """A stop request (SIGINT or SIGTERM); with several processes, all stop after the same step."""
        if self.world > 1:
            if dist.any_true(bool(self._stop), self.device) and not self._stop:
                self._stop = int(signal.SIGINT)  # another process got the signal
        return bool(self._stop)

    def _reduce_stats(self, totals: dict[str, Tensor], clamped: int) -> tuple[dict[str, Tensor], int]:
        keys = list(totals)
        stats, n = dist.all_reduce_mean(
            [torch.stack([totals[k] for k in keys]).float(), torch.tensor([float(clamped)], device=self.device)]
        )
        return dict(zip(keys, stats)), round(float(n) * self.world)

    def finish(self) -> None:
        """Final weights at the top of the run directory, plus ``summary.json`` (the fields plugins
        add through the ``run_finished`` hook)."""
        # fgm.json records the weights' sha256; until both are written it records none, so a
        # crash in between leaves a run that loads from its (identical) last checkpoint
        write_json(self.run_dir / "fgm.json", self._identity())
        sha = save_tensors(
            self.run_dir / "model.safetensors",
            self.model.state_dict(),
            metadata={"format_version": str(FORMAT_VERSION), "step": str(self.step)},
        )
        write_json(self.run_dir / "fgm.json", {**self._identity(), "sha256": {"model.safetensors": sha}})
        # the after-training look runs the trained model as a loaded run would: in eval mode, so
        # batch-norm layers neither use batch statistics nor move their running ones past the saved weights
        self.model.eval()
        run = Run(self.run_dir, self.cfg, self.model, self.info, self.plugins.resolved())
        t0 = time.perf_counter()
        summary: dict[str, Any] = {"step": None, **self.plugins.run_finished(run, self.bundle)}
        summary["eval_seconds"] = round(time.perf_counter() - t0, 2)
        write_json(self.run_dir / "summary.json", summary)

    # ------------------------------------------------------------------ run directory
    def _on_rank0(self, work) -> None:
        """Process 0 does ``work`` (prepares the run directory); the others get its path."""
        error: BaseException | None = None
        if self.rank == 0:
            try:
                work()
            except Exception as e:  # noqa: BLE001 - raised below, once the others know
                error = e
        if self.world > 1:
            self.run_dir, failed = dist.broadcast_object((self.run_dir, error is not None))
            if failed and self.rank != 0:
                raise SystemExit(1)  # process 0 reports it
        if error is not None:
            raise error

    def _start_run_dir(self) -> None:
        """Create (or take over a never-checkpointed) run directory, lock it, write its files."""
        self._claim_run_dir()
        self._write_run_files()

    def _lock_run_dir(self) -> None:
        self._lock = lock_run_dir(self.run_dir)

    def _record_resume(self) -> None:
        """Record this resume (and any allowed change) in the run, once its checkpoint loaded;
        a run that never wrote a checkpoint starts again from step 0 with its files rewritten."""
        if not (self.run_dir / "checkpoint.json").exists():
            self._write_run_files()
        elif self.changes:
            self._write_config()
        entry = {
            "time": datetime.now().isoformat(timespec="seconds"),
            "fgm_version": __version__,
            "from_step": self.step,
            "changed": {k: list(v) for k, v in self.changes.items()},
        }
        append_line(self.run_dir / "resumes.jsonl", json.dumps(entry))

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _new_run_dir(self) -> Path:
        c = self.cfg
        div = slug(config_label(c, self.plugins))  # alpha-0.5: the parameters name the run too
        name = c.run.name or f"{datetime.now():%Y%m%d-%H%M%S}-{c.data.dataset}-{div}-{c.critic.form}"
        return Path(c.run.out_dir) / name

    def _claim_run_dir(self) -> None:
        """Create the run directory and lock it; auto-named runs take the next free suffix
        (race-free). A named directory that holds only what an interrupted start of fgm left
        (no checkpoint) is taken over: its files are removed and it starts afresh."""
        base, i = self.run_dir, 1
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                self.run_dir.mkdir()
                self._lock = lock_run_dir(self.run_dir)  # another start may have taken it over first
                self._created = True
                return
            except FileExistsError:
                if self.cfg.run.name is not None:
                    if never_checkpointed(self.run_dir):
                        self._lock = lock_run_dir(self.run_dir)
                        if never_checkpointed(self.run_dir):  # still so, now that no one else writes it
                            for p in self.run_dir.iterdir():
                                if p.is_dir() and not p.is_symlink():
                                    shutil.rmtree(p)
                                elif p.name != LOCK_FILE:
                                    p.unlink()
                            self._created = True
                            return
                        self._unlock()
                    raise FGMError(
                        f"run directory {self.run_dir} already exists",
                        "pass --resume to continue it, or another --name",
                    ) from None
                self.run_dir = base.with_name(f"{base.name}-{i}")
                i += 1

    @staticmethod
    def _identity() -> dict[str, Any]:
        """What ``fgm.json`` says about every run directory (the weights' sha256 comes on top)."""
        return {"format_version": FORMAT_VERSION, "fgm_version": __version__, "kind": "run"}

    def _write_run_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "fgm.json", self._identity())
        self._write_config()
        write_json(self.run_dir / "plugins.json", self.plugins.resolved())
        write_json(self.run_dir / "data.json", self.info.to_dict())

    def _write_config(self) -> None:
        atomic_write_text(self.run_dir / "config.toml", dump_toml(self.cfg))
        write_json(self.run_dir / "config.json", self.cfg.to_dict())

    def save_checkpoint(self) -> None:
        """Write step files, then atomically point ``checkpoint.json`` at them. With several
        processes, process 0 writes (all processes hold the same state) between barriers."""
        dist.barrier()
        if self.rank == 0:
            self._write_checkpoint()
        dist.barrier()
        self.last_checkpoint = self.step

    def _write_checkpoint(self) -> None:
        ck = self.run_dir / "checkpoints"
        tag = f"step-{self.step:08d}"
        prev = self.last_checkpoint
        try:
            sha = {"model.safetensors": save_tensors(ck / f"{tag}.model.safetensors", self.model.state_dict())}
            tensors: dict[str, Tensor] = {}
            skeleton = split_state(
                {
                    "opt_g": self.opt_g.state_dict(),
                    "opt_c": self.opt_c.state_dict(),
                    "sched": [s.state_dict() for s in self.sched],
                    "gen": self.gen.get_state(),
                },
                "s",
                tensors,
            )
            sha["state.safetensors"] = save_tensors(ck / f"{tag}.state.safetensors", tensors)
            sha["state.json"] = write_json(
                ck / f"{tag}.state.json",
                {"skeleton": skeleton, "step": self.step, "epoch": self.epoch, "pos": self.pos},
            )
            write_json(
                self.run_dir / "checkpoint.json",
                {"step": self.step, "tag": tag, "format_version": FORMAT_VERSION, "sha256": sha},
            )
        except BaseException:  # the pointer still names the previous checkpoint: drop this one's files
            if prev != self.step:
                for f in ck.glob(f"{tag}.*"):
                    f.unlink(missing_ok=True)
            raise
        if prev is not None and prev != self.step:  # keep only the newest complete checkpoint
            for f in ck.glob(f"step-{prev:08d}.*"):
                f.unlink(missing_ok=True)

    def load_checkpoint(self) -> None:
        """Restore the newest checkpoint (a run that never wrote one starts at step 0)."""
        if not (self.run_dir / "checkpoint.json").exists():
            return
        (weights, model_sha), (state_file, state_sha), (where, meta_sha) = checkpoint_files(self.run_dir).values()
        try:
            self.model.load_state_dict(load_tensors(weights, self.device, sha256=model_sha))
        except RuntimeError as e:
            raise FGMError(
                f"{weights} does not match the run's networks ({' '.join(str(e).split())[:200]})",
                "the checkpoint is damaged: restore it from a copy of the run, or retrain",
            ) from None
        meta = read_record(where, CheckpointState, read_json(where, sha256=meta_sha))
        tensors = load_tensors(state_file, sha256=state_sha)
        try:
            state = join_state(meta.skeleton, tensors)
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_c.load_state_dict(state["opt_c"])
            if len(state["sched"]) == len(self.sched):
                for s, sd in zip(self.sched, state["sched"]):
                    s.load_state_dict(sd)
            elif not {"optim.schedule", "optim.warmup_steps"} & set(self.changes):  # a changed schedule starts afresh
                raise ValueError(f"{len(state['sched'])} schedules stored, the run has {len(self.sched)}")
            self.gen.set_state(state["gen"].cpu())
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
            raise FGMError(
                f"{where} does not fit this run ({type(e).__name__}: {' '.join(str(e).split())[:200]})",
                "the checkpoint is damaged: restore it from a copy of the run, or retrain",
            ) from None
        self.step, self.epoch, self.pos = meta.step, meta.epoch, meta.pos
        # the epoch's row order is regenerated from (seed, epoch); pos 0: none was drawn yet
        self._perm = self._epoch_perm() if self.pos > 0 else None
        self.last_checkpoint = self.step
        if self.cfg.run.steps < self.step:
            raise FGMError(
                f"run.steps={self.cfg.run.steps} is below the checkpoint's step {self.step}",
                f"resume with --steps {self.step} or more",
            )

    def _apply_optim_settings(self) -> None:
        """Put the configured learning rates and schedule position into the optimisers: their
        loaded state carries the old ones, so without this a changed ``optim.lr`` on resume
        would be ignored. With nothing changed, this sets exactly the values loaded."""
        o = self.cfg.optim
        bases = [(self.opt_g, [o.lr, o.lr * o.sigma_lr_scale]), (self.opt_c, [o.critic_lr or o.lr])]
        factor = lr_factor(o.schedule, o.warmup_steps, self.cfg.run.steps)(self.step) if self.sched else 1.0
        for opt, lrs in bases:
            for group, base in zip(opt.param_groups, lrs):
                group["lr"] = base * factor
                if self.sched:
                    group["initial_lr"] = base
        for sched, (opt, _) in zip(self.sched, bases):
            sched.base_lrs = [g["initial_lr"] for g in opt.param_groups]
            sched.last_epoch = self.step
            sched._last_lr = [g["lr"] for g in opt.param_groups]


class CheckpointState(BaseModel):
    """``checkpoints/step-N.state.json``: the optimiser/RNG skeleton and the data position."""

    model_config = ConfigDict(extra="allow")
    skeleton: dict[str, Any]
    step: int = Field(ge=0)
    epoch: int = Field(ge=0)
    pos: int = Field(ge=0)


class _StatsWindow:
    """Sums of the training statistics of the steps since the last metrics row."""

    def __init__(self) -> None:
        self.totals: dict[str, Tensor] = {}
        self.count = 0

    def add(self, stats: dict[str, Tensor]) -> None:
        for k, v in stats.items():
            self.totals[k] = self.totals.get(k, 0) + v
        self.count += 1

    def take(self) -> tuple[dict[str, Tensor], int]:
        """The sums and the number of steps, and start a new window."""
        out = self.totals, self.count
        self.totals, self.count = {}, 0
        return out


class NonFiniteLoss(Exception):
    def __init__(self, who: str, step: int) -> None:
        super().__init__(f"non-finite {who} loss at step {step}")
        self.who, self.step = who, step


#: the generator's gradient is checked on every one of the first STALL_WATCH steps, then on log
#: steps; STALL_STEPS checked steps in a row with an all-zero gradient stop the run.
STALL_WATCH = 1000
STALL_STEPS = 50


class Stalled(Exception):
    """The generator received an exactly zero gradient on STALL_STEPS checked steps in a row."""

    def __init__(self, step: int, divergence: str) -> None:
        super().__init__(f"zero generator gradient up to step {step}")
        self.step, self.divergence = step, divergence


STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM") if hasattr(signal, n))


def _install_stop(trainer: Trainer) -> dict[int, Any]:
    """SIGINT (Ctrl-C) and SIGTERM ask the trainer to finish the current step, checkpoint and
    stop; a second one aborts at once (:class:`Interrupted` with no step). Returns the
    handlers it replaced (none outside the main thread, where Python cannot set them)."""
    if not _is_main_thread():
        return {}

    def handler(signum, frame):  # noqa: ARG001
        if trainer._stop:  # the second request: stop now
            raise Interrupted(
                f"aborted ({signal.Signals(signum).name}) before the checkpoint at the stop; {trainer._kept()}", signum
            )
        trainer._stop = signum

    return {s: signal.signal(s, handler) for s in STOP_SIGNALS}


def _restore_signals(old: dict[int, Any]) -> None:
    for s, h in old.items():
        signal.signal(s, h if h is not None else signal.SIG_DFL)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class MetricsLogger:
    """metrics.jsonl, plus TensorBoard when it is installed and enabled."""

    def __init__(self, run_dir: Path, tensorboard: bool, enabled: bool = True, upto: int | None = None) -> None:
        """``upto``: a resumed run's checkpoint step; rows after it (which the resumed run
        writes again) and any partial line a killed process left are dropped first."""
        self.path = run_dir / "metrics.jsonl"
        if enabled and upto is not None:
            truncate_rows(self.path, upto)
        self.f = open(self.path, "a") if enabled else None
        self.tb = None
        if tensorboard and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self.tb = None

    def log(self, row: dict[str, Any]) -> None:
        if self.f is None:
            return
        with naming(self.path):  # a full disk names the file; a partial line goes on resume
            self.f.write(json.dumps(row) + "\n")
            self.f.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


class Progress:
    """A one-line progress display on stderr with live loss and divergence estimate."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=start,
                file=sys.stderr,
                unit="step",
                dynamic_ncols=True,
                disable=not enabled or env.flag("FGM_NO_PROGRESS"),
            )

    def update(self, step: int, row: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.n = step
            shown = {"D": "divergence", "critic": "loss_critic", "gen": "loss_generator"}
            self.bar.set_postfix({k: f"{row[v]:.4g}" for k, v in shown.items() if v in row}, refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
