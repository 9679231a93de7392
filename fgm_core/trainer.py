"""The trainer owns the loop: optimisers, devices, precision, checkpoints, logging, progress.

Models compute losses (:mod:`fgm_core.model`); this module alternates the critic and the
encoder/generator updates, and makes runs reproducible and resumable bit for bit on CPU.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from fgm_core import __version__
from fgm_core import distributed as dist
from fgm_core.build import DataInfo, load_data, make_model
from fgm_core.components import DataBundle
from fgm_core.config import FGMConfig, dump_toml
from fgm_core.errors import FGMError, PluginError
from fgm_core.model import FGMModel
from fgm_core.plugins import PluginSet
from fgm_core.storage import (
    FORMAT_VERSION, join_state, load_tensors, read_json, save_tensors, split_state, write_json,
)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU. An explicit ``cuda`` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FGMError(f"device {name!r} requested but CUDA is not available", "use --device cpu or auto")
    return torch.device(name)


def make_optimizer(name: str, params: list, lr: float, betas: tuple[float, float], wd: float,
                   fused: bool = False) -> torch.optim.Optimizer:
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

    def __init__(self, cfg: FGMConfig, plugins: PluginSet, run_dir: Path | None = None,
                 resume: bool = False, bundle: DataBundle | None = None) -> None:
        self.cfg = cfg
        self.plugins = plugins
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
        if self.world > 1:
            dist.broadcast_module(self.model)  # identical start (the init is seeded, this makes it certain)
        self.run_dir = Path(run_dir) if run_dir else self._new_run_dir()
        self.resume = resume
        m = self.model
        gen_params = [p for n, p in m.named_parameters() if not n.startswith("critic.") and n != "rho"]
        o = cfg.optim
        groups = [{"params": gen_params}]
        if isinstance(m.rho, torch.nn.Parameter):  # the noise scale moves in log space, faster
            groups.append({"params": [m.rho], "lr": o.lr * o.sigma_lr_scale, "weight_decay": 0.0})
        fused = self.device.type in ("cpu", "cuda")
        self.opt_g = make_optimizer(o.optimizer, groups, o.lr, o.betas, o.weight_decay, fused)
        self.gen_params = [p for grp in groups for p in grp["params"]]
        self.opt_c = make_optimizer(o.optimizer, list(m.critic.parameters()), o.critic_lr or o.lr, o.betas,
                                    o.weight_decay, fused)
        factor = lr_factor(o.schedule, o.warmup_steps, cfg.run.steps)
        constant = o.schedule == "constant" and not o.warmup_steps  # nothing to schedule: skip the work
        self.sched = [] if constant else [torch.optim.lr_scheduler.LambdaLR(opt, factor)
                                          for opt in (self.opt_g, self.opt_c)]
        # all training noise comes from one generator, so its state makes resume exact
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.run.seed)
        self.train_x = self.info.scaling.to_model(self.bundle.train).to(self.device)
        if self.train_rows() % self.world:
            raise FGMError(f"the batch of {self.train_rows()} rows (the whole training set) is not divisible by "
                           f"the {self.world} training processes", "use a larger training set or fewer processes")
        self.step = 0
        self.epoch = 0
        self.pos = 0
        self._perm: Tensor | None = None
        self._stop = False
        self.last_checkpoint: int | None = None

    # ------------------------------------------------------------------ the training step
    def train_step(self) -> dict[str, Tensor]:
        """One generator step after ``n_critic`` critic steps (the whole f-GM update)."""
        model, cfg = self.model, self.cfg
        for _ in range(cfg.critic.n_critic):
            with self._autocast():
                c = model.critic_loss(self.next_batch(), self.noise())
            self._update(self.opt_c, c.loss, model.critic.parameters(), "critic")
        model.critic.requires_grad_(False)  # the critic is held fixed: no grads, no work
        with self._autocast():
            g = model.generator_loss(self.next_batch(), self.noise(model.generator_uses_model_side))
        model.critic.requires_grad_(True)
        self._update(self.opt_g, g.loss, self.gen_params, "generator")
        for s in self.sched:
            s.step()
        self.step += 1
        if not cfg.critic.n_critic:  # the plain VAE: no critic step, no estimate of J
            return {"loss_generator": g.loss.detach(), "critic_data": g.critic_data}
        return {"loss_critic": c.loss.detach(), "loss_generator": g.loss.detach(), "divergence": c.objective,
                "critic_data": c.critic_data, "critic_model": c.critic_model}

    def _update(self, opt: torch.optim.Optimizer, loss: Tensor, params, who: str) -> None:
        params = list(params)
        if self.world == 1 and not torch.isfinite(loss):
            raise NonFiniteLoss(who, self.step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.world > 1 and not dist.average_gradients(params, loss):  # what DDP does, plus a shared NaN check
            raise NonFiniteLoss(who, self.step)
        if self.cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        opt.step()

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
            g = torch.Generator().manual_seed(self.cfg.run.seed * 1_000_003 + self.epoch)
            self._perm = torch.randperm(n, generator=g).to(self.device)
        idx = self._perm[self.pos:self.pos + b]
        self.pos += b
        if self.world > 1:
            idx = idx.view(self.world, -1)[self.rank]
        return self.train_x[idx]

    def noise(self, model_side: bool = True) -> dict[str, Tensor]:
        """The noise of one global batch; with several processes, every process draws it all
        (same generator, same state) and keeps its rows, as for the data. ``model_side =
        False``: only the posterior noise (a step that samples nothing from the model)."""
        b, d = self.train_rows(), self.cfg.model.latent_dim
        kw = {"generator": self.gen, "device": self.device}
        if not model_side:
            out = {"z_eps": torch.randn(b, d, **kw)}
        else:
            out = {"z": torch.randn(b, d, **kw), "z_eps": torch.randn(b, d, **kw)}
            if self.cfg.model.generator == "gaussian":
                out["x_eps"] = torch.randn(b, *self.info.shape, **kw)
            if self.cfg.critic.gradient_penalty > 0:
                out["gp"] = torch.rand(b, **kw)
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
        and pruning); an exception it raises stops training like any other."""
        cfg = self.cfg
        created = not self.run_dir.exists()
        if self.resume:
            self.load_checkpoint()
        else:
            self._start_run_dir()
        logger = MetricsLogger(self.run_dir, cfg.run.tensorboard, enabled=self.rank == 0)
        bar = Progress(cfg.run.steps, self.step,
                       enabled=(cfg.run.progress if progress is None else progress) and self.rank == 0)
        totals: dict[str, Tensor] = {}
        count = 0
        t0 = time.perf_counter()
        old = _install_sigint(self)
        try:
            while self.step < cfg.run.steps and not self._stopping():
                try:
                    stats = self.train_step()
                except (FGMError, NonFiniteLoss):
                    raise
                except Exception as e:  # raised in a plugin's network or divergence: name it, keep the checkpoint
                    import traceback

                    files = [Path(fr.filename).resolve() for fr in traceback.extract_tb(e.__traceback__)]
                    who = []
                    for kind, name in (("architectures", cfg.model.architecture), ("divergences", cfg.divergence.name)):
                        plugin = self.plugins.plugin_of(kind, name)
                        mod = self.plugins.pm.get_plugin(plugin)
                        home = Path(getattr(mod, "__file__", None) or "/nonexistent").resolve()
                        if home.name == "__init__.py" or "." in getattr(mod, "__name__", ""):
                            home = home.parent  # a package (or a module in one): any of its files
                        if any(f == home or home in f.parents for f in files):
                            who.append(f"{kind[:-1]} {name!r} (plugin {plugin!r})")
                    if not who:
                        raise  # not from a plugin: an internal error, with its traceback under --debug
                    kept = (f"the last checkpoint (step {self.last_checkpoint}) is intact: fix the plugin, then "
                            f"`fgm train --resume {self.run_dir}`" if self.last_checkpoint else "no checkpoint was written")
                    raise PluginError(f"training step {self.step + 1} failed in {' / '.join(who)}: "
                                      f"{type(e).__name__}: {' '.join(str(e).split())}; {kept}",
                                      "fix or update the plugin, or report it to its author") from e
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0) + v
                count += 1
                if self.step % cfg.run.log_every == 0 or self.step == cfg.run.steps:
                    clamped = self.model.divergence.pop_clamped()
                    if self.world > 1:  # averaged over the processes too (clamped entries: summed)
                        totals, clamped = self._reduce_stats(totals, clamped)
                    row = {k: float(v) / count for k, v in totals.items()}
                    row.update(step=self.step, time=round(time.perf_counter() - t0, 3),
                               f_prime_at_1=self.model.divergence.f_prime_at_1,
                               clamped=clamped,
                               sigma=float(torch.exp(self.model.log_sigma.detach()).mean()),
                               lr=self.opt_g.param_groups[0]["lr"])
                    logger.log(row)
                    bar.update(self.step, row)
                    totals, count = {}, 0
                if self.step % cfg.run.checkpoint_every == 0:
                    self.save_checkpoint()
                if on_step is not None:
                    on_step(self)
        except NonFiniteLoss as e:
            bar.close()
            logger.close()
            kept = f"the last good checkpoint is step {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written"
            if self.last_checkpoint is None and created and not self.resume and self.rank == 0:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise FGMError(f"non-finite {e.who} loss at step {e.step + 1}; {kept}",
                           "lower optim.lr, add critic.gradient_penalty or critic.spectral_norm, or lower divergence.max_exp") from None
        except BaseException:
            bar.close()
            logger.close()
            if self.last_checkpoint is None and created and not self.resume and self.rank == 0:
                shutil.rmtree(self.run_dir, ignore_errors=True)
            raise
        finally:
            signal.signal(signal.SIGINT, old) if old is not None else None
        bar.close()
        logger.close()
        if self.step != self.last_checkpoint:
            self.save_checkpoint()
        if not self._stop:
            if self.rank == 0:
                self.finish()
            dist.barrier()
        return self.run_dir

    def _stopping(self) -> bool:
        """A stop request (Ctrl-C); with several processes, all stop after the same step."""
        if self.world > 1:
            self._stop = dist.any_true(self._stop, self.device)
        return self._stop

    def _reduce_stats(self, totals: dict[str, Tensor], clamped: int) -> tuple[dict[str, Tensor], int]:
        keys = list(totals)
        stats, n = dist.all_reduce_mean([torch.stack([totals[k] for k in keys]).float(),
                                         torch.tensor([float(clamped)], device=self.device)])
        return dict(zip(keys, stats)), round(float(n) * self.world)

    def finish(self) -> None:
        """Final weights at the top of the run directory, plus a summary and a sample plot."""
        from fgm_core.run import Run

        save_tensors(self.run_dir / "model.safetensors", self.model.state_dict(),
                     metadata={"format_version": str(FORMAT_VERSION), "step": str(self.step)})
        run = Run(self.run_dir, self.cfg, self.model, self.info, self.plugins.resolved())
        summary = run.quick_evaluation(self.bundle)
        write_json(self.run_dir / "summary.json", summary)

    # ------------------------------------------------------------------ run directory
    def _start_run_dir(self) -> None:
        """Process 0 creates the run directory and its files; the others get its path."""
        error: BaseException | None = None
        if self.rank == 0:
            try:
                self._claim_run_dir()
                self._write_run_files()
            except Exception as e:  # noqa: BLE001 - raised below, once the others know
                error = e
        if self.world > 1:
            self.run_dir, failed = dist.broadcast_object((self.run_dir, error is not None))
            if failed and self.rank != 0:
                raise SystemExit(1)  # process 0 reports it
        if error is not None:
            raise error

    def _new_run_dir(self) -> Path:
        c = self.cfg
        name = c.run.name or f"{datetime.now():%Y%m%d-%H%M%S}-{c.data.dataset}-{c.divergence.name}-{c.critic.form}"
        return Path(c.run.out_dir) / name

    def _claim_run_dir(self) -> None:
        """Create the run directory; auto-named runs take the next free suffix (race-free)."""
        base, i = self.run_dir, 1
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                self.run_dir.mkdir()
                return
            except FileExistsError:
                if self.cfg.run.name is not None:
                    raise FGMError(f"run directory {self.run_dir} already exists",
                                   "pass --resume to continue it, or another --name") from None
                self.run_dir = base.with_name(f"{base.name}-{i}")
                i += 1

    def _write_run_files(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "fgm.json", {"format_version": FORMAT_VERSION, "fgm_version": __version__,
                                               "kind": "run"})
        (self.run_dir / "config.toml").write_text(dump_toml(self.cfg))
        write_json(self.run_dir / "config.json", self.cfg.to_dict())
        write_json(self.run_dir / "plugins.json", self.plugins.resolved())
        write_json(self.run_dir / "data.json", self.info.to_dict())

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
        save_tensors(ck / f"{tag}.model.safetensors", self.model.state_dict())
        tensors: dict[str, Tensor] = {}
        skeleton = split_state({
            "opt_g": self.opt_g.state_dict(), "opt_c": self.opt_c.state_dict(),
            "sched": [s.state_dict() for s in self.sched],
            "gen": self.gen.get_state(), "perm": self._perm,
        }, "s", tensors)
        save_tensors(ck / f"{tag}.state.safetensors", tensors)
        write_json(ck / f"{tag}.state.json", {"skeleton": skeleton, "step": self.step, "epoch": self.epoch,
                                               "pos": self.pos})
        prev = self.last_checkpoint
        write_json(self.run_dir / "checkpoint.json", {"step": self.step, "tag": tag, "format_version": FORMAT_VERSION})
        if prev is not None and prev != self.step:  # keep only the newest complete checkpoint
            for f in ck.glob(f"step-{prev:08d}.*"):
                f.unlink(missing_ok=True)

    def load_checkpoint(self) -> None:
        ptr = read_json(self.run_dir / "checkpoint.json")
        check_format(ptr, self.run_dir / "checkpoint.json")
        ck = self.run_dir / "checkpoints"
        tag = ptr["tag"]
        self.model.load_state_dict(load_tensors(ck / f"{tag}.model.safetensors", self.device))
        meta = read_json(ck / f"{tag}.state.json")
        state = join_state(meta["skeleton"], load_tensors(ck / f"{tag}.state.safetensors"))
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_c.load_state_dict(state["opt_c"])
        for s, sd in zip(self.sched, state["sched"]):
            s.load_state_dict(sd)
        self.gen.set_state(state["gen"].cpu())
        self._perm = state["perm"].to(self.device) if state["perm"] is not None else None
        self.step, self.epoch, self.pos = int(meta["step"]), int(meta["epoch"]), int(meta["pos"])
        self.last_checkpoint = self.step


def check_format(meta: dict[str, Any], where: Path) -> None:
    v = meta.get("format_version")
    if v != FORMAT_VERSION:
        raise FGMError(f"{where} has format version {v}, this fgm ({__version__}) reads {FORMAT_VERSION}",
                       "use the fgm version that wrote it, or retrain")


class NonFiniteLoss(Exception):
    def __init__(self, who: str, step: int) -> None:
        super().__init__(f"non-finite {who} loss at step {step}")
        self.who, self.step = who, step


def _install_sigint(trainer: Trainer):
    """Ctrl-C finishes the current step, checkpoints, and stops cleanly."""
    if sys.platform == "win32" or not _is_main_thread():
        return None

    def handler(signum, frame):  # noqa: ARG001
        if trainer._stop:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        trainer._stop = True
        if trainer.rank == 0:
            print("\nfgm: interrupted; saving a checkpoint (Ctrl-C again to abort)", file=sys.stderr)

    return signal.signal(signal.SIGINT, handler)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class MetricsLogger:
    """metrics.jsonl, plus TensorBoard when it is installed and enabled."""

    def __init__(self, run_dir: Path, tensorboard: bool, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.f = open(self.path, "a") if enabled else None
        self.tb = None
        if tensorboard and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self.tb = None

    def log(self, row: dict[str, Any]) -> None:
        import json

        if self.f is None:
            return
        self.f.write(json.dumps(row) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
        if self.tb is not None:
            self.tb.close()


class Progress:
    """A one-line progress display on stderr with live loss and divergence estimate."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, file=sys.stderr, unit="step", dynamic_ncols=True,
                            disable=not enabled or os.environ.get("FGM_NO_PROGRESS") == "1")

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
