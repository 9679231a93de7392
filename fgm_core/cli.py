"""The ``fgm`` command. Every failure the user can fix is one line on stderr and exit 1;
tracebacks only with ``--debug``."""

from __future__ import annotations

import json
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import click

from fgm_core import env
from fgm_core.config import MAX_SEED
from fgm_core.errors import FGMError, FGMWarning, Interrupted, os_error_text
from fgm_core.plugins import get_plugins
from fgm_core.version import __version__


class _FilePath(click.Path):
    """Every path option and argument: any text but NUL, which no file name may hold."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, str) and "\0" in value:
            self.fail(f"{value!r} holds a NUL character, which no file name may hold", param, ctx)
        return super().convert(value, param, ctx)


PATH = _FilePath(path_type=Path)


class _Seed(click.ParamType):
    """Every --seed: an integer the config (run.seed) and every random generator accept."""

    name = "seed"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        try:
            seed = int(str(value).strip(), 10)
        except ValueError:
            seed = -1
        if not 0 <= seed <= MAX_SEED:
            self.fail(f"{value!r} is not a seed: use an integer from 0 to {MAX_SEED}", param, ctx)
        return seed


SEED = _Seed()


class Ctx:
    def __init__(self, debug: bool, strict: bool, policy: Path | None) -> None:
        self.debug = debug
        self.strict = strict
        self.policy = policy

    def plugins(self, named: tuple[str, ...] = (), **kw: Any):
        """The plugin set; failures are warnings, except those of ``named`` plugins (the
        command uses them, so their failure is its one error line)."""
        ps = get_plugins(self.policy, strict=self.strict or None, **kw)
        used = {ps.infos[n].error for n in named if n in ps.infos}
        for msg in ps.failures:
            if msg not in used:
                _warn_once(msg)
        return ps


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        click.echo(f"fgm: warning: {msg} (skipped; see `fgm plugins`)", err=True)


class _Stopped(Exception):
    """Carries an :class:`Interrupted` past click, which turns every KeyboardInterrupt into "Abort"."""


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Interrupted as e:
            raise _Stopped(e) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="fgm")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.option("--strict-plugins", is_flag=True, help="Fail when any plugin fails to load (env FGM_STRICT_PLUGINS=1).")
@click.option(
    "--plugins-toml",
    type=PATH,
    envvar="FGM_PLUGINS_TOML",
    help="Plugin policy file (default: ./plugins.toml when present).",
)
@click.pass_context
def cli(ctx: click.Context, debug: bool, strict_plugins: bool, plugins_toml: Path | None) -> None:
    """fgm: train f-divergence generative models (f-GM) that unify VAEs and GANs.

    One trained model samples, infers latents and scores the likelihood of any datum;
    divergences, architectures, latent priors, datasets and exporters are plugins.
    """
    ctx.obj = Ctx(debug, strict_plugins, plugins_toml)


# --------------------------------------------------------------------------- plugins
@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def plugins_cmd(obj: Ctx, as_json: bool) -> None:
    """List loaded plugins: version, origin, hooks, the components they registered with their
    descriptions, and problems (a component name two plugins register, a hook fgm does not know)."""
    ps = obj.plugins()
    infos = [i.as_dict() for i in sorted(ps.infos.values(), key=lambda i: i.name)]
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    for i in infos:
        status = "FAILED" if i["error"] else "ok"
        click.echo(f"{i['name']} {i['version']}  [{i['source']}: {i['origin']}]  {status}")
        if i["hooks"]:
            click.echo(f"    hooks: {', '.join(i['hooks'])}")
        for kind, names in sorted(i["components"].items()):
            click.echo(f"    {kind}: {', '.join(sorted(names))}")
            for name, text in sorted(i["descriptions"].get(kind, {}).items()):
                click.echo(f"      {name}: {text}")
        if i["error"]:
            click.echo(f"    error: {i['error']}")
        for msg in i["clashes"]:
            click.echo(f"    clash: {msg}: unusable until one plugin is blocked in plugins.toml")
        for msg in i["warnings"]:
            click.echo(f"    warning: {msg}")


@cli.group("plugin")
def plugin_group() -> None:
    """Write plugins of your own."""


@plugin_group.command("new")
@click.argument("name")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    help="Directory to create (default ./fgm-plugin-NAME); it must not exist.",
)
@click.pass_obj
def plugin_new(obj: Ctx, name: str, out: Path | None) -> None:
    """Create a plugin package NAME: a divergence, an architecture, a dataset and a preset as
    working examples, with tests and a README. Then: pip install -e DIR && fgm plugins."""
    from fgm_core.scaffold import check_name, new_plugin

    check_name(name)  # a bad name is reported before any plugin loads
    target = new_plugin(name, out, taken=sorted(obj.plugins().infos))
    click.echo(
        f"created {target}: plugin {name!r} with divergence {name}_hellinger, architecture {name}_mlp, "
        f"dataset {name}_blobs and a preset"
    )
    click.echo(f"next: pip install -e {target} && fgm plugins && (cd {target} && pytest)")


# --------------------------------------------------------------------------- train / config
def _train_options(f):
    opts = [
        click.option("--config", "-c", "config", type=PATH, help="Run configuration (TOML)."),
        click.option(
            "--set",
            "sets",
            multiple=True,
            metavar="KEY=VALUE",
            help="Override a config key, e.g. --set optim.lr=3e-4 (repeatable).",
        ),
        click.option(
            "--plugin",
            "presets",
            multiple=True,
            metavar="NAME|PATH",
            help="Use what plugin NAME (or a local module path) contributes (repeatable).",
        ),
        click.option("--dataset", help="Shortcut for --set data.dataset=..."),
        click.option(
            "--divergence",
            "-d",
            help="Divergence, with parameters as name:value (alpha:0.5); shortcut for --set divergence.name=...",
        ),
        click.option("--critic", type=click.Choice(["density", "joint", "marginal"]), help="Critic form."),
        click.option("--architecture", "-a", help="Shortcut for --set model.architecture=..."),
        click.option("--steps", type=int, help="Training steps."),
        click.option("--seed", type=SEED, help="Random seed."),
        click.option("--device", help="auto, cpu, cuda or cuda:N."),
        click.option("--out", "out_dir", help="Parent directory of run directories (default runs/)."),
        click.option("--name", help="Run directory name (default: timestamp-dataset-divergence-critic)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _overrides(sets, dataset, divergence, critic, architecture, steps, seed, device, out_dir, name) -> list[str]:
    out = list(sets)
    for key, val in [
        ("data.dataset", dataset),
        ("divergence.name", divergence),
        ("critic.form", critic),
        ("model.architecture", architecture),
        ("run.steps", steps),
        ("run.seed", seed),
        ("run.device", device),
        ("run.out_dir", out_dir),
        ("run.name", name),
    ]:
        if val is not None:
            out.append(f"{key}={json.dumps(val) if isinstance(val, str) else val}")
    return out


@cli.command("train")
@_train_options
@click.option("--resume", type=PATH, help="Continue a stopped run directory.")
@click.option("--quiet", "-q", is_flag=True, help="No progress display.")
@click.option("--nproc", type=int, default=None, help="Train with N processes (torch.distributed).")
@click.pass_obj
def train_cmd(
    obj: Ctx,
    config,
    sets,
    presets,
    dataset,
    divergence,
    critic,
    architecture,
    steps,
    seed,
    device,
    out_dir,
    name,
    resume,
    quiet,
    nproc,
) -> None:
    """Train a model. With no options: the 2-D ring of 8 Gaussians, MLPs, density critic."""
    from fgm_core.api import resolve_config, train

    overrides = _overrides(sets, dataset, divergence, critic, architecture, steps, seed, device, out_dir, name)
    from fgm_core import distributed

    if nproc is not None and nproc < 1:
        raise FGMError(f"--nproc must be at least 1, got {nproc}", "use --nproc 2 or more for several processes")
    if nproc is not None and nproc > 1 and distributed.is_distributed():
        raise FGMError("--nproc given to a process that torchrun started", "leave out --nproc under torchrun")
    if nproc is not None and nproc > 1:
        if resume is None or (resume / "config.json").exists():  # a bad batch size: one line, before starting
            from fgm_core.storage import read_json

            base = read_json(resume / "config.json") if resume is not None else config
            cfg, _ = resolve_config(base, overrides, None if resume else list(presets), _local_plugins(obj, presets))
            distributed.check_batch(cfg.optim.batch_size, nproc)
        raise SystemExit(distributed.launch(nproc, ["fgm", *(_argv if _argv is not None else sys.argv[1:])]))
    plugins = None
    try:
        if resume is None:
            cfg, plugins = resolve_config(config, overrides, list(presets), _local_plugins(obj, presets))
            run = train(cfg, plugins=plugins, progress=not quiet)
        else:
            run = train(resume=resume, overrides=overrides, progress=not quiet, plugins=_local_plugins(obj, presets))
    finally:
        distributed.cleanup()
    if distributed.rank() != 0:
        return  # process 0 reports
    summary = run.path / "summary.json"
    click.echo(f"run: {run.path}")
    if summary.exists():
        from fgm_core.storage import read_json

        s = read_json(summary)
        parts = []
        if "modes_captured" in s:
            parts.append(f"modes {s['modes_captured']}/{s['modes_total']}, high-quality {100 * s['high_quality']:.1f}%")
        if "test_log_likelihood" in s:
            parts.append(f"test log-likelihood {s['test_log_likelihood']:.3f} nats")
        if parts:
            click.echo("result: " + "; ".join(parts))
        if "samples_plot" in s:
            click.echo(f"samples: {s['samples_plot']}")


def _local_plugins(obj: Ctx, presets) -> Any:
    """The plugin set, with the local modules named by ``--plugin PATH`` loaded too."""
    from fgm_core.plugins import split_presets

    names, local = split_presets(list(presets))
    return obj.plugins(tuple(names), extra_local=local or None)


@cli.group("config")
def config_group() -> None:
    """Inspect configurations."""


@config_group.command("show")
@click.argument("run_dir", required=False, type=PATH)
@_train_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of TOML.")
@click.pass_obj
def config_show(
    obj: Ctx,
    run_dir,
    config,
    sets,
    presets,
    dataset,
    divergence,
    critic,
    architecture,
    steps,
    seed,
    device,
    out_dir,
    name,
    as_json,
) -> None:
    """Print the resolved configuration of a command line, or of RUN_DIR."""
    from fgm_core.api import resolve_config
    from fgm_core.build import make_prior
    from fgm_core.config import dump_toml, validate
    from fgm_core.storage import read_json

    if run_dir is not None:
        cfg = validate(read_json(run_dir / "config.json"), str(run_dir / "config.json"))
    else:
        overrides = _overrides(sets, dataset, divergence, critic, architecture, steps, seed, device, out_dir, name)
        cfg, plugins = resolve_config(config, overrides, list(presets), _local_plugins(obj, presets))
        for kind, component in (
            ("datasets", cfg.data.dataset),
            ("architectures", cfg.model.architecture),
            ("divergences", cfg.divergence.name),
        ):
            plugins.get(kind, component)  # an unknown name is the error `fgm train` gives
        make_prior(cfg, plugins)  # the prior's name and options, as `fgm train` checks them
    click.echo(json.dumps(cfg.to_dict(), indent=2) if as_json else dump_toml(cfg), nl=not as_json)


# --------------------------------------------------------------------------- use a model
_notes: list[str] = []  # stderr lines for a command that succeeded (an error stays the only line)


@cli.result_callback()
def _say_notes(*_: Any, **__: Any) -> None:
    while _notes:
        click.echo(_notes.pop(0), err=True)


def _runtime_options(f):
    """``--device``, ``--threads`` and ``-v``, shared by the commands that run a model."""
    opts = [
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option(
            "--threads",
            type=int,
            default=None,
            help="Threads for an export's onnxruntime session or a run's torch (default: their own).",
        ),
        click.option("--verbose", "-v", is_flag=True, help="Also say when an export runs on the CPU."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _open(path: Path, device: str, threads: int | None = None, verbose: bool = False):
    """A run directory (torch) or an export directory (its exporter's runtime)."""
    if threads is not None and threads < 1:
        raise FGMError(f"--threads must be at least 1, got {threads}", "use --threads 1 or more")
    if (path / "manifest.json").exists():
        from fgm_core.api import open_export

        model = open_export(path, device=device, **({"threads": threads} if threads else {}))
        if device == "auto" and hasattr(model, "settle_device"):
            message = model.settle_device()  # one line, said once the command worked; the CPU only when asked
            if verbose or getattr(model, "provider", None) != "CPUExecutionProvider":
                _notes.append(f"fgm: {message}")
        return model
    if threads:
        import torch

        torch.set_num_threads(threads)
    from fgm_core.run import Run

    return Run.load(path, device="cpu" if device == "auto" else device)


def _read_array(path: Path):
    import io

    import numpy as np

    from fgm_core.storage import MAX_DATA_BYTES, read_input
    from fgm_core.tables import CSV_SUFFIXES, NUMPY_READ_ERRORS, read_csv

    try:
        suffix = path.suffix.lower()
        if suffix not in (".npy", ".npz", *CSV_SUFFIXES):
            raise FGMError(f"unsupported data file {path.name}", "use .npy, .npz or .csv")
        if suffix in CSV_SUFFIXES:  # the reader `fgm train` uses: same header rule
            return read_csv(path)[0]
        raw = io.BytesIO(read_input(path, "data file", MAX_DATA_BYTES))
        if suffix == ".npy":
            return np.load(raw, allow_pickle=False)
        if suffix == ".npz":
            with np.load(raw, allow_pickle=False) as z:
                if not z.files:
                    raise FGMError(f"{path} holds no arrays", "save the data with np.savez(path, x)")
                return z[z.files[0]]
    except FileNotFoundError:
        raise FGMError(f"data file {path} not found", "check the path") from None
    except EOFError:  # np.load of an empty or cut-off file (click would turn it into "aborted")
        raise FGMError(
            f"cannot read {path}: the file is empty or truncated", "give a numeric .npy, .npz or .csv file"
        ) from None
    except NUMPY_READ_ERRORS as e:
        raise FGMError(
            f"cannot read {path}: {type(e).__name__}: {e}", "give a numeric .npy, .npz or .csv file"
        ) from None


def _write_array(arr, out: Path | None, header: str) -> None:
    import numpy as np

    if out is None:
        np.savetxt(sys.stdout, arr, fmt="%.6g", delimiter=",", header=header, comments="")
        return
    from fgm_core.storage import atomic_write_bytes

    if out.suffix == ".npy":
        import io

        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        atomic_write_bytes(out, buf.getvalue())
    elif out.suffix == ".csv":
        import io

        text = io.StringIO()
        np.savetxt(text, arr, fmt="%.8g", delimiter=",", header=header, comments="")
        atomic_write_bytes(out, text.getvalue().encode())
    else:
        raise FGMError(f"unsupported output {out.name}", "use .npy or .csv")


@cli.command("sample")
@click.argument("run_dir", type=PATH)
@click.option("-n", "n", type=int, default=16, show_default=True, help="Number of samples.")
@click.option("-o", "--out", type=PATH, required=True, help="out.npy or out.png.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--mean", is_flag=True, help="Generator means instead of noisy samples.")
@click.option(
    "--clip/--no-clip",
    default=None,
    help="Clip image samples to the data range (an export's default is in its manifest).",
)
@_runtime_options
def sample_cmd(
    run_dir: Path,
    n: int,
    out: Path,
    seed: int,
    mean: bool,
    clip: bool | None,
    device: str,
    threads: int | None,
    verbose: bool,
) -> None:
    """Draw N samples from RUN_DIR (a run or an export directory) into .npy or .png."""
    import numpy as np

    if out.suffix not in (".npy", ".png"):
        raise FGMError(f"unsupported output {out.name}", "use -o samples.npy or -o samples.png")
    from fgm_core.run import check_result_size

    if n < 1:
        raise FGMError(f"number of samples must be positive, got {n}", "use -n 1 or more")
    if clip is not None and not (run_dir / "manifest.json").exists():
        raise FGMError("--clip/--no-clip apply to export directories", "leave it out for a run directory")
    model = _open(run_dir, device, threads, verbose)
    check_result_size(
        n,
        model.info.dims,
        f"-n {n} samples of {model.info.dims} values",
        "use a smaller -n; several calls with different --seed add up",
    )
    x = np.asarray(model.sample(n, seed=seed, noise=not mean, **({} if clip is None else {"clip": clip})))
    if out.suffix == ".npy":
        _write_array(x, out, "")
    elif get_plugins().write_samples(x, model, out) is None:
        raise FGMError(f"no plugin writes {out.suffix} files", "enable the report plugin, or use -o samples.npy")
    click.echo(f"wrote {n} samples to {out}")


@cli.command("encode")
@click.argument("run_dir", type=PATH)
@click.argument("data", type=PATH)
@click.option("-o", "--out", type=PATH, help=".npy or .csv (default: CSV on stdout).")
@_runtime_options
def encode_cmd(run_dir: Path, data: Path, out: Path | None, device: str, threads: int | None, verbose: bool) -> None:
    """Posterior mean of q(z|x) for each row of DATA (.npy/.npz/.csv)."""
    import numpy as np

    model = _open(run_dir, device, threads, verbose)
    mu, _ = model.encode(_read_array(data))
    _write_array(np.asarray(mu), out, "")
    if out:
        click.echo(f"wrote {len(mu)} latent means to {out}")


@cli.command("score")
@click.argument("run_dir", type=PATH)
@click.argument("data", type=PATH)
@click.option("-k", "k", type=int, default=100, show_default=True, help="Importance samples per row.")
@click.option("--density", is_flag=True, help="Also print the density estimator's log p_D(x).")
@click.option("-o", "--out", type=PATH, help=".npy or .csv (default: CSV on stdout).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@_runtime_options
def score_cmd(
    run_dir: Path,
    data: Path,
    k: int,
    density: bool,
    out: Path | None,
    seed: int,
    device: str,
    threads: int | None,
    verbose: bool,
) -> None:
    """Per-row model log-likelihood of DATA, in nats (importance-sampled, K=k)."""
    import numpy as np

    from fgm_core.run import check_k

    check_k(k)
    model = _open(run_dir, device, threads, verbose)
    x = _read_array(data)
    ll = np.asarray(model.log_likelihood(x, k=k, seed=seed))
    cols, header = [ll], "log_likelihood"
    if density:
        cols.append(np.asarray(model.log_density(x)))
        header += ",log_density"
    _write_array(np.stack(cols, 1), out, header)
    if out:
        click.echo(f"wrote {len(ll)} scores to {out} (mean log-likelihood {ll.mean():.4f} nats)")


# --------------------------------------------------------------------------- export
@cli.command("export")
@click.argument("run_dir", required=False, type=PATH)
@click.option("--onnx", "onnx_flag", is_flag=True, help="Export ONNX graphs (the default format).")
@click.option("--format", "fmt", default=None, help="Exporter name (see `fgm plugins`).")
@click.option("-o", "--out", type=PATH, help="Output directory (default RUN_DIR/export-FORMAT).")
@click.option("--opset", type=int, default=None, help="ONNX opset version.")
@click.option(
    "--exporter",
    type=click.Choice(["auto", "torchscript", "dynamo"]),
    default=None,
    help="torch's ONNX exporter (auto: TorchScript-based, dynamo where that fails).",
)
@click.option("--atol", type=float, default=None, help="Parity tolerance floor (absolute), recorded in the manifest.")
@click.option("--rtol", type=float, default=None, help="Parity tolerance (relative), recorded in the manifest.")
@click.option(
    "--clip", is_flag=True, default=None, help="Have the runtime clip image samples to the data range by default."
)
@click.option("--runs", "runs_dir", type=PATH, default="runs", show_default=True, help="Where to find the latest run.")
@click.pass_obj
def export_cmd(
    obj: Ctx,
    run_dir: Path | None,
    onnx_flag: bool,
    fmt: str | None,
    out: Path | None,
    opset: int | None,
    exporter: str | None,
    atol: float | None,
    rtol: float | None,
    clip: bool | None,
    runs_dir: str,
) -> None:
    """Export RUN_DIR (default: the most recent run) for deployment."""
    from fgm_core.api import export, latest_run

    fmt = fmt or "onnx"
    if onnx_flag and fmt != "onnx":
        raise FGMError("--onnx and --format disagree", "give one of them")
    obj.plugins()
    run_dir = run_dir or latest_run(runs_dir)
    given = {"opset": opset, "exporter": exporter, "atol": atol, "rtol": rtol, "clip": clip}
    options = {k: v for k, v in given.items() if v is not None}
    manifest = export(run_dir, out, fmt=fmt, **options)
    where = out or Path(run_dir) / f"export-{fmt}"
    click.echo(f"exported {run_dir} to {where}")
    for g in manifest.get("graphs", []):
        if isinstance(g, dict):
            click.echo(f"  {g.get('file', g.get('role'))}: parity max |diff| {g.get('max_abs_diff', '?')}")


# --------------------------------------------------------------------------- entry point
_argv: list[str] | None = None  # the command line main() runs (what `train --nproc` re-runs)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """fgm's own warnings as one line on stderr; any other warning as Python shows it."""
    if issubclass(category, FGMWarning):
        click.echo(f"fgm: warning: {message}", err=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> None:
    """Console entry point: turn errors into one line and an exit status."""
    global _argv
    warnings.showwarning = _show_warning
    _argv = list(argv) if argv is not None else None
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        env.check()
        _with_plugin_commands()
        cli.main(args=argv, prog_name="fgm", standalone_mode=False)
    except click.exceptions.Exit as e:
        raise SystemExit(e.exit_code) from None
    except click.exceptions.Abort:
        click.echo("fgm: aborted", err=True)
        raise SystemExit(130) from None
    except click.exceptions.NoArgsIsHelpError as e:  # `fgm` or `fgm config` alone: the help
        e.show()
        raise SystemExit(e.exit_code) from None
    except click.ClickException as e:  # a malformed command line: one line too, status 2
        ctx = getattr(e, "ctx", None)  # UsageError carries the command's context, other ClickExceptions none
        hint = f"see `{ctx.command_path if ctx else 'fgm'} --help`"
        _say("error", f"{' '.join(e.format_message().split())} ({hint})")
        raise SystemExit(e.exit_code) from None
    except FGMError as e:
        if debug:
            traceback.print_exc()
        _say("error", str(e))
        raise SystemExit(1) from None
    except _Stopped as s:  # SIGINT / SIGTERM honoured: one line, exit 128 + the signal (130, 143)
        stop = s.args[0]
        click.echo(f"fgm: {stop}", err=True)
        raise SystemExit(128 + stop.signum) from None
    except KeyboardInterrupt:
        click.echo("fgm: interrupted", err=True)
        raise SystemExit(130) from None
    except OSError as e:  # a file where a folder should be, permission denied, disk full: the user can fix these
        if debug:
            traceback.print_exc()
        _say("error", f"{os_error_text(e)} (check the path, its permissions and the free disk space)")
        raise SystemExit(1) from None
    except BaseException as e:  # noqa: BLE001 - anything else, even a plugin's own BaseException, is one line
        if isinstance(e, SystemExit):
            raise
        if hasattr(e, "message") and hasattr(e, "hint"):  # a plugin's user-facing error (duck-typed)
            if debug:
                traceback.print_exc()
            msg = f"{e.message} ({e.hint})" if e.hint else str(e.message)
            _say("error", msg)
            raise SystemExit(1) from None
        if debug:
            traceback.print_exc()
        else:
            _say("internal error", f"{type(e).__name__}: {e} (rerun with --debug for the traceback)")
        raise SystemExit(1) from None


def _say(kind: str, message: str) -> None:
    """``fgm: KIND: MESSAGE`` as exactly one line: control characters (a newline in a file
    name, say) are written as escapes."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)
    click.echo(f"fgm: {kind}: {text}", err=True)


_commands_from: list[Any] = []  # the plugin sets whose commands were added (one per policy in a process)


def _with_plugin_commands() -> None:
    """Add the commands of the current plugin set (again when the policy changed in this process)."""
    if env.flag("FGM_NO_PLUGIN_COMMANDS"):
        return
    try:
        plugins = get_plugins()
    except FGMError:
        return  # reported again by the command that needs plugins
    if not any(p is plugins for p in _commands_from):
        _commands_from.append(plugins)
        plugins.add_commands(cli)


if __name__ == "__main__":  # python -m fgm_core.cli (what torchrun runs)
    main()
