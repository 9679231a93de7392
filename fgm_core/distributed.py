"""Multi-process training over ``torch.distributed`` (gloo on CPU, NCCL on CUDA).

``fgm train --nproc N`` re-runs its own command line under ``torchrun --standalone``;
``torchrun ... -m fgm_core.cli train ...`` (one or several machines) works directly. Each
process reads the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``); with ``WORLD_SIZE`` unset or 1 nothing here does anything.

Gradients are averaged by one all-reduce of all of a step's gradients (flattened) after
``backward()`` and before the optimiser step: what DistributedDataParallel does, without
wrapping the networks (the f-GM losses call encoder, decoder and critic several times
per step and toggle the critic's ``requires_grad``, which DDP's reducer does not expect,
and a wrapper would rename the state-dict keys).

Every process draws the same seeded permutation and the same seeded noise for the whole
global batch and keeps its slice, so N processes train what one process would, up to float
rounding, and a checkpoint does not depend on the number of processes.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import torch
from torch import Tensor
from torch import distributed as dist

from fgm_core import env
from fgm_core.errors import FGMError


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``argv`` (an ``fgm ... train ...`` command line, minus ``--nproc N``) in ``nproc``
    processes under ``torch.distributed.run --standalone``; returns its exit status."""
    args, skip = [], False
    for a in argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "fgm_core.cli",
        *args,
    ]
    proc = subprocess.Popen(cmd)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:  # the workers got the Ctrl-C too: let them checkpoint and stop
            continue


def check_batch(batch_size: int, world: int) -> None:
    """Every process takes ``batch_size / world`` rows of each global batch."""
    if batch_size % world:
        raise FGMError(
            f"optim.batch_size {batch_size} is not divisible by the {world} training processes",
            f"use a batch size that is a multiple of {world}",
        )


def is_distributed() -> bool:
    """True in a process that torchrun started with a world size above 1."""
    return env.integer("WORLD_SIZE", 1, 1) > 1


def rank() -> int:
    return env.integer("RANK", 0) if is_distributed() else 0


def world_size() -> int:
    return env.integer("WORLD_SIZE", 1, 1)


def setup(device: torch.device) -> torch.device:
    """Join the process group (NCCL for CUDA, else gloo); returns this process's device."""
    if device.type == "cuda":
        local = env.integer("LOCAL_RANK", 0)
        if local >= torch.cuda.device_count():
            raise FGMError(
                f"process {local} on this machine has no GPU (there are {torch.cuda.device_count()})",
                "start at most one process per GPU (--nproc / --nproc-per-node)",
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        try:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        except (ValueError, RuntimeError) as e:  # WORLD_SIZE set without the rest of torchrun's variables
            raise FGMError(
                f"cannot join the torch.distributed group ({' '.join(str(e).split())[:200]})",
                "start with `fgm train --nproc N` or torchrun, or unset WORLD_SIZE",
            ) from None
    return device


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(tensors: list[Tensor]) -> list[Tensor]:
    """The mean of each tensor over all processes (one collective for all of them)."""
    if not tensors:
        return []
    flat = torch.cat([t.detach().float().reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world_size()
    out, i = [], 0
    for t in tensors:
        out.append(flat[i : i + t.numel()].view_as(t).to(t.dtype))
        i += t.numel()
    return out


def average_gradients(params: list[torch.nn.Parameter], loss: Tensor) -> bool:
    """Replace every gradient by its mean over all processes; False when any process's
    loss is not finite (the loss rides along in the same all-reduce, so all agree)."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().float().reshape(1)])
    dist.all_reduce(flat)
    flat /= world_size()
    i = 0
    for g in grads:
        g.copy_(flat[i : i + g.numel()].view_as(g))
        i += g.numel()
    return bool(torch.isfinite(flat[-1]))


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every process when ``flag`` is true on any (a stop request, say)."""
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from process ``src`` on every process (picklable objects)."""
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy parameters and buffers from process ``src`` into every process's module."""
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=src)
