"""The report plugin's commands: ``fgm evaluate``, ``plot``, ``compare`` and ``tune``.

Added to the ``fgm`` group through the ``register_commands`` hook (see :func:`fgm_report.register_commands`).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from fgm_core.cli import PATH, SEED, Ctx, _overrides
from fgm_core.config import parse_value
from fgm_core.divspec import split_list
from fgm_core.errors import FGMError
from fgm_core.storage import write_json
from fgm_report.compare import compare, markdown_table
from fgm_report.evaluate import GAP_THRESHOLD, evaluate, format_report, load_test_bundle, open_model
from fgm_report.plots import plot_run
from fgm_report.tune import tune


@click.command("evaluate")
@click.argument("path", type=PATH)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("-k", "k", type=int, default=100, show_default=True, help="Importance samples per held-out row.")
@click.option("--samples", "n_samples", type=int, default=2500, show_default=True, help="Generated samples.")
@click.option("--test", "n_test", type=int, default=2000, show_default=True, help="Held-out rows scored.")
@click.option("--threshold", type=float, default=None, help="Gap threshold in nats (default log 10).")
@click.option(
    "--full-data", "full", is_flag=True, help="Evaluate against the full dataset (drop data.options.modes and classes)."
)
@click.option(
    "--set-data",
    "data_sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a data option for the held-out data, e.g. --set-data limit=500.",
)
@click.option(
    "--reference",
    type=PATH,
    help="A run or export trained on all the data: the collapse detector reads the likelihood deficit "
    "log p_ref - log p_theta (the model's gap minus the reference's, over one density estimate).",
)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--no-classifier", is_flag=True, help="Skip the classifier-based image metrics.")
@click.option("-o", "--out", type=PATH, help="Also write the JSON result here.")
@click.option("--threads", type=int, default=None, help="Threads for an export's onnxruntime session or a run's torch.")
@click.pass_obj
def evaluate_cmd(
    obj: Ctx,
    path: Path,
    as_json: bool,
    k: int,
    n_samples: int,
    n_test: int,
    threshold: float | None,
    full: bool,
    data_sets,
    reference: Path | None,
    seed: int,
    no_classifier: bool,
    out: Path | None,
    threads: int | None,
) -> None:
    """Evaluate a run or an export directory on held-out data: mixture metrics, likelihood,
    image scores and per-mode collapse detection."""

    if k < 1 or n_samples < 1 or n_test < 1:
        raise FGMError("-k, --samples and --test must be positive", "use values of 1 or more")
    obj.plugins()
    if threads is not None and threads < 1:
        raise FGMError(f"--threads must be at least 1, got {threads}", "use --threads 1 or more")
    model = open_model(path, device="cpu", threads=threads)
    options = {}
    for item in data_sets:
        if "=" not in item:
            raise FGMError(f"--set-data {item!r} has no '='", "write --set-data key=value")
        key, _, val = item.partition("=")
        options[key.strip()] = parse_value(val.strip())
    bundle = load_test_bundle(model, options, ("modes", "classes") if full else ())
    res = evaluate(
        model,
        bundle,
        k=k,
        n_samples=n_samples,
        n_test=n_test,
        seed=seed,
        threshold=GAP_THRESHOLD if threshold is None else threshold,
        classifier=not no_classifier,
        reference=open_model(reference, device="cpu", threads=threads) if reference is not None else None,
    )
    res["path"] = str(path)
    if out is not None:
        write_json(out, res)
    click.echo(json.dumps(res, indent=2) if as_json else format_report(res))


@click.command("plot")
@click.argument("run_dir", type=PATH)
@click.option("-o", "--out", type=PATH, help="Output directory (default RUN_DIR/plots).")
@click.pass_obj
def plot_cmd(obj: Ctx, run_dir: Path, out: Path | None) -> None:
    """Draw samples, 2-D density heatmaps and training curves of RUN_DIR as PNGs."""

    obj.plugins()
    for p in plot_run(run_dir, out):
        click.echo(f"wrote {p}")


@click.command("compare")
@click.option(
    "--divergences",
    required=True,
    help="Comma-separated divergences, with parameters as name:value, e.g. kl,alpha:0.5,alpha:2,"
    'custom:"(u-1)**2/(u+1)".',
)
@click.option(
    "--critic",
    "critics",
    default="density",
    show_default=True,
    help="Critic form(s), comma-separated: density, joint, marginal.",
)
@click.option("--config", "-c", "config", type=PATH, help="Base run configuration (TOML).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a base config key (repeatable).")
@click.option("--dataset", help="Shortcut for --set data.dataset=...")
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds 0..N-1 per divergence.")
@click.option("--steps", type=int, help="Training steps per run.")
@click.option("-k", "k", type=int, default=100, show_default=True, help="Importance samples for the likelihood.")
@click.option("--samples", "n_samples", type=int, default=2500, show_default=True)
@click.option(
    "--threads", type=int, default=None, help="Torch threads per run (1 is fastest for small MLPs on busy CPUs)."
)
@click.option("-o", "--out", "out", type=PATH, default=Path("report"), show_default=True, help="Report directory.")
@click.option("--runs-dir", type=PATH, help="Where the runs go (default REPORT_DIR/runs).")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@click.pass_obj
def compare_cmd(
    obj: Ctx,
    divergences: str,
    critics: str,
    config,
    sets,
    dataset,
    seeds: int,
    steps: int | None,
    k: int,
    n_samples: int,
    threads: int | None,
    out: Path,
    runs_dir: Path | None,
    quiet: bool,
) -> None:
    """Train the same networks with each divergence (and seed) and write a report."""

    divs = split_list(divergences)
    crits = [c.strip() for c in critics.split(",") if c.strip()]
    bad = [c for c in crits if c not in ("density", "joint", "marginal")]
    if bad:
        raise FGMError(f"unknown critic form {bad[0]!r}", "use density, joint or marginal")
    overrides = _overrides(sets, dataset, None, None, None, steps, None, None, None, None)
    obj.plugins()
    summary = compare(
        divs,
        crits,
        seeds,
        out,
        base=config,
        overrides=overrides,
        k=k,
        n_samples=n_samples,
        progress=not quiet,
        threads=threads,
        runs_dir=runs_dir,
    )
    click.echo(markdown_table(summary))
    click.echo(f"report: {out / 'report.md'} and {out / 'report.html'}")


@click.command("tune")
@click.argument("search", type=click.Path(path_type=Path))
@click.option("--config", "-c", "config", type=click.Path(path_type=Path), help="Base run configuration (TOML).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a base config key (repeatable).")
@click.option("--trials", type=int, default=None, help="Finished trials wanted in the study (default: tune.trials).")
@click.option("--storage", default=None, help="Optuna storage URL (default sqlite:///OUT/study.db).")
@click.option("--study-name", default=None, help="Study name (default: the search file's name); reuse it to resume.")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=Path("tune"),
    show_default=True,
    help="Output directory: best.toml, history.png, trials.json, runs/.",
)
@click.pass_obj
def tune_cmd(
    obj: Ctx, search: Path, config, sets, trials: int | None, storage: str | None, study_name: str | None, out: Path
) -> None:
    """Search the run configuration with Optuna over the space in SEARCH (TOML); resumable."""

    if trials is not None and trials < 1:
        raise FGMError(f"--trials must be at least 1, got {trials}", "use --trials 1 or more")
    obj.plugins()
    res = tune(
        search,
        out,
        config=config,
        overrides=list(sets),
        storage=storage,
        study_name=study_name,
        trials=trials,
        echo=click.echo,
    )
    click.echo(
        f"best trial {res['best_trial']}: objective {res['best_value']:.4g} with {res['best_params']} "
        f"({res['complete']} complete, {res['pruned']} pruned of {res['trials']})"
    )
    click.echo(f"wrote {res['best_toml']} (train it: fgm train -c {res['best_toml']}) and {res['history_png']}")


COMMANDS = (evaluate_cmd, plot_cmd, compare_cmd, tune_cmd)
