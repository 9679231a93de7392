"""``spiral``: a 2-D two-arm spiral, each point labelled with its arm (mode 0 or 1).

Arm k in {0, 1}: for t ~ U(0, 1), angle a = turns * 2 pi t + k pi and radius r = 0.1 + 0.9 t;
the point is r (cos a, sin a) plus isotropic Gaussian noise of std ``noise``. Values lie in
about [-1, 1]^2, so the data units are the model units (identity :class:`Scaling`).

Options (``[data.options]``): ``n_train`` (default 20000), ``n_test`` (default 2000),
``noise`` (default 0.03). The number of turns comes from the plugin's settings
(``[settings.example] turns = 1.5`` in plugins.toml). The draw is a pure function of
``request.seed`` (train and test use independent streams), never of the global RNG.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fgm_core.components import DataBundle, DataRequest, Scaling
from fgm_core.errors import FGMError

DEFAULTS: dict[str, Any] = {"n_train": 20_000, "n_test": 2_000, "noise": 0.03}


def parse_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """``data.options`` over the defaults; FGMError naming an unknown key or a bad value."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise FGMError(f"dataset 'spiral': data.options must be a table, got {type(options).__name__}",
                       f"accepted options: {', '.join(DEFAULTS)}")
    out = dict(DEFAULTS)
    for key, value in options.items():
        if key not in DEFAULTS:
            raise FGMError(f"dataset 'spiral': unknown option {key!r}",
                           f"accepted options: {', '.join(f'{k}={v!r}' for k, v in DEFAULTS.items())}")
        if key in ("n_train", "n_test"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FGMError(f"dataset 'spiral': option {key} = {value!r} is invalid",
                               f"{key} must be an integer >= 1")
        elif key == "noise":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise FGMError(f"dataset 'spiral': option noise = {value!r} is invalid",
                               "noise must be a number >= 0")
            value = float(value)
        out[key] = value
    return out


def spiral(request: DataRequest, turns: float = 1.5) -> DataBundle:
    """The dataset factory: ``factory(request) -> DataBundle`` (see the module docstring)."""
    if isinstance(request.seed, bool) or not isinstance(request.seed, (int, np.integer)):
        raise FGMError(f"dataset 'spiral': seed must be an integer, got {request.seed!r}", "set run.seed = 0")
    opts = parse_options(request.options)

    def sample(n: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        g = np.random.default_rng([int(request.seed) & 0xFFFFFFFF, stream])
        arm = g.integers(0, 2, size=n)
        t = g.random(n)
        a = turns * 2 * math.pi * t + math.pi * arm
        r = 0.1 + 0.9 * t
        x = np.stack([r * np.cos(a), r * np.sin(a)], axis=1) + opts["noise"] * g.standard_normal((n, 2))
        return x.astype(np.float32), arm.astype(np.int64)

    xtr, ytr = sample(opts["n_train"], 0)
    xte, yte = sample(opts["n_test"], 1)
    return DataBundle(
        name="spiral",
        train=torch.from_numpy(xtr),
        test=torch.from_numpy(xte),
        kind="vector",
        scaling=Scaling(),
        train_labels=torch.from_numpy(ytr),
        test_labels=torch.from_numpy(yte),
        label_names=["arm-0", "arm-1"],
        info={"seed": int(request.seed), "turns": turns, **opts},
    )
