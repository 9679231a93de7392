"""fgm: the f-divergence generative model (f-GM) core.

Public API::

    import fgm_core as fgm
    run = fgm.train({"divergence": {"name": "js"}, "run": {"steps": 2000}})
    x = run.sample(1000)                 # data units
    mu, logvar = run.encode(x)           # q(z|x)
    ll = run.log_likelihood(x, k=100)    # importance-sampled log p(x), nats
    ld = run.log_density(x)              # the density estimator's log p_D(x)
    run = fgm.load_run("runs/...")       # later, from disk
    fgm.export(run, "export/")           # ONNX graphs (exporter plugin)
"""

from fgm_core.api import export, latest_run, load_run, open_export, train  # noqa: E402
from fgm_core.config import FGMConfig  # noqa: E402
from fgm_core.errors import FGMError  # noqa: E402
from fgm_core.run import Run  # noqa: E402
from fgm_core.version import __version__

__all__ = ["FGMConfig", "FGMError", "Run", "__version__", "export", "latest_run", "load_run", "open_export", "train"]
