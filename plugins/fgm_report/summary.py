"""The after-training summary the report plugin adds through the ``run_finished`` hook."""

from __future__ import annotations

import math
from typing import Any

import torch

from fgm_core.components import DataBundle
from fgm_core.run import Run
from fgm_report.metrics import mixture_metrics
from fgm_report.plots import save_samples


def quick_evaluation(run: Run, bundle: DataBundle | None = None) -> dict[str, Any]:
    """Mixture metrics on data with a known mixture, held-out likelihood, and ``samples.png``."""
    out: dict[str, Any] = {}
    samples = run.sample(run.config.run.eval_samples, seed=run.config.run.seed + 1)
    if run.info.mixture is not None:
        out.update(
            mixture_metrics(samples, torch.tensor(run.info.mixture["means"]), torch.tensor(run.info.mixture["stds"]))
        )
    images = len(run.info.shape) > 1
    if bundle is not None and run.model.generator == "gaussian":
        test = bundle.test[: 256 if images else 2000]  # keep the after-training look cheap for conv nets
        k = 16 if images else 50
        ll = run.log_likelihood(test, k=k)
        out["test_log_likelihood_k"] = k
        out["test_log_likelihood"] = float(ll.mean())
        if images:
            out["test_bits_per_dim"] = float(-ll.mean() / (run.info.dims * math.log(2)))
    try:
        if images:  # pixel noise hides image samples: show generator means
            samples = run.sample(64, seed=run.config.run.seed + 1, noise=False)
        out["samples_plot"] = str(save_samples(run, samples, run.path / "samples.png"))
    except Exception as e:  # noqa: BLE001 - a plot failure must not lose a finished run
        out["samples_plot_error"] = str(e)
    return out
