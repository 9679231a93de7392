"""``fgm compare``: train the same networks with several divergences (critics, seeds), evaluate
each run, and write a report (report.md, self-contained report.html, PNG figures)."""

from __future__ import annotations

import base64
import html
import json
import math
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fgm_core import divspec
from fgm_core.api import resolve_config, train
from fgm_core.errors import FGMError, Interrupted
from fgm_core.run import Run
from fgm_core.storage import read_json, remove_run_dir
from fgm_report.evaluate import evaluate, load_test_bundle
from fgm_report.plots import curves_figure, density_figure, samples_figure

#: (key, header, format, scale) of the table columns, in order; missing keys are skipped.
COLUMNS = [
    ("modes_captured", "modes captured", "{:.2f}", 1.0),
    ("high_quality", "high-quality %", "{:.1f}", 100.0),
    ("kl_to_uniform", "KL(modes‖unif) ↓", "{:.3f}", 1.0),
    ("modes_captured_means", "modes (G means)", "{:.2f}", 1.0),
    ("high_quality_means", "HQ % (G means)", "{:.1f}", 100.0),
    ("kl_to_uniform_means", "KL (G means)", "{:.3f}", 1.0),
    ("modes_collapsed", "collapsed modes ↓", "{:.2f}", 1.0),
    ("test_log_likelihood", "test log-lik (nats) ↑", "{:.2f}", 1.0),
    ("likelihood_gap_to_optimum", "gap to -H (nats) ↓", "{:.2f}", 1.0),
    ("test_log_density", "log p_D (nats)", "{:.2f}", 1.0),
    ("test_bits_per_dim", "bits/dim ↓", "{:.3f}", 1.0),
    ("reconstruction_mse", "recon MSE ↓", "{:.4g}", 1.0),
    ("sharpness", "sharpness", "{:.4f}", 1.0),
    ("sharpness_means", "sharpness (G means)", "{:.4f}", 1.0),
    ("classifier_accuracy", "classifier acc %", "{:.1f}", 100.0),
    ("class_kl", "class KL ↓", "{:.3f}", 1.0),
    ("frechet_distance", "Fréchet ↓", "{:.3f}", 1.0),
    ("train_seconds", "train s", "{:.1f}", 1.0),
    ("wall_seconds", "wall s", "{:.1f}", 1.0),
]


#: key -> (unit, best value or direction, what it measures): the legend under the table.
NOTES: dict[str, tuple[str, str, str]] = {
    "modes_captured": ("modes", "all modes", "mixture components with at least one high-quality sample (PacGAN)"),
    "high_quality": ("%", "100", "samples within 3 standard deviations of a mode"),
    "kl_to_uniform": ("nats", "0", "KL of the sample histogram over modes to the uniform one"),
    "modes_collapsed": ("modes or classes", "0", "modes or classes the collapse detector names"),
    "test_log_likelihood": (
        "nats per datum",
        "higher; the optimum -H where known",
        "importance-sampled log p_theta(x) of held-out data",
    ),
    "likelihood_gap_to_optimum": ("nats", "0", "-H(data) minus the test log-likelihood"),
    "test_log_density": (
        "nats per datum",
        "near the log-likelihood",
        "the density estimator's log p_D(x) of held-out data (see the note below)",
    ),
    "test_bits_per_dim": ("bits per pixel", "lower", "-log p_theta(x) / (D log 2), pixels in 0..255 units"),
    "reconstruction_mse": ("per pixel, [0, 1] units", "0", "mean squared error of x against G(mu_q(x))"),
    "sharpness": ("Laplacian variance", "the data's value", "pixel-noise included; see the G-means column"),
    "sharpness_means": ("Laplacian variance", "the data's value", "of the generator means G(z), noise off"),
    "classifier_accuracy": ("%", "100", "the local classifier's accuracy on held-out data (a check on it)"),
    "class_kl": ("nats", "0", "KL(class histogram of samples || of held-out data): mode coverage"),
    "frechet_distance": (
        "unitless",
        "0",
        "Fréchet distance of Gaussian fits to the local classifier's features of samples and held-out data",
    ),
    "train_seconds": ("s", "lower", "training wall time per run"),
    "wall_seconds": ("s", "lower", "training and evaluation wall time per run"),
}


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); 0 for one value)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), 0.0
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))


def _label(div: str, critic: str, critics: list[str]) -> str:
    return div if len(critics) == 1 else f"{div} / {critic}"


def compare(
    divergences: list[str],
    critics: list[str] | None = None,
    seeds: int = 3,
    out_dir: str | Path = "report",
    base: dict[str, Any] | str | Path | None = None,
    overrides: list[str] | None = None,
    k: int = 100,
    n_samples: int = 2500,
    progress: bool = True,
    threads: int | None = None,
    runs_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``divergences`` x ``critics`` x ``seeds`` runs (seed 0..seeds-1) from the same base
    config and write ``report.md``, ``report.html``, ``results.json`` and figures to ``out_dir``.
    Divergences are specs (:mod:`fgm_core.divspec`: ``kl``, ``alpha:0.5``); rows and runs are
    named by their labels."""
    critics = critics or ["density"]
    if not divergences:
        raise FGMError("no divergences to compare", "give --divergences kl,js,...")
    if seeds < 1:
        raise FGMError(f"--seeds must be positive, got {seeds}", "use --seeds 1 or more")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(runs_dir) if runs_dir else out / "runs"
    base_cfg, plugins = resolve_config(base, overrides)
    labels = {}  # spec as given -> its label (alpha:0.5); unknown names and bad specs fail here
    for d in divergences:
        name, params = divspec.resolve(d, {}, plugins)
        plugins.get("divergences", name)
        labels[d] = divspec.label(name, params, divspec.main_param(plugins.get("divergences", name).factory))
    if len(set(labels.values())) < len(labels):
        twice = next(v for v in labels.values() if list(labels.values()).count(v) > 1)
        raise FGMError(f"divergence {twice!r} is given twice in --divergences", "give each divergence once")
    jobs = [(labels[d], c, s) for c in critics for d in divergences for s in range(seeds)]
    results: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), file=sys.stderr, unit="run", dynamic_ncols=True, desc="compare")
    bundles: dict[int, Any] = {}
    t_all = time.perf_counter()
    stop: tuple[int, str] | None = None  # (signal, what happened) once interrupted
    old = signal.signal(signal.SIGTERM, _sigterm) if _main_thread() else None
    try:
        for d, c, s in jobs:
            name = f"{divspec.slug(d)}-{c}-s{s}"
            if bar is not None:
                bar.set_postfix_str(f"{name} training")
            ov = [
                f"divergence.name={json.dumps(d)}",
                "divergence.params={}",
                f"critic.form={json.dumps(c)}",
                f"run.seed={s}",
                f"run.out_dir={json.dumps(str(runs_dir))}",
                f"run.name={json.dumps(name)}",
                "run.progress=false",
                "run.tensorboard=false",
            ]
            if threads is not None:
                ov.append(f"run.threads={threads}")
            row: dict[str, Any] = {"divergence": d, "critic": c, "seed": s, "run": str(runs_dir / name)}
            t0 = time.perf_counter()
            trained, planned = False, base_cfg.run.steps
            try:
                if (runs_dir / name).exists():
                    remove_run_dir(runs_dir / name)  # our earlier run of this name; nothing else
                cfg, _ = resolve_config(base_cfg.to_dict(), ov, plugins=plugins)
                planned = cfg.run.steps
                run = train(cfg, plugins=plugins, progress=False)
                trained = True
                row["train_seconds"] = time.perf_counter() - t0
                if bar is not None:
                    bar.set_postfix_str(f"{name} evaluating")
                if s not in bundles:  # the test split depends on the seed
                    bundles[s] = load_test_bundle(run)
                res = evaluate(run, bundles[s], k=k, n_samples=n_samples, seed=0)
                row.update(res)
                row["steps"] = cfg.run.steps
            except FGMError as e:
                row["error"] = str(e)
            except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: this run is incomplete, no further runs
                signum = e.signum if isinstance(e, Interrupted) else int(signal.SIGINT)
                done = planned if trained else _checkpoint_step(runs_dir / name)
                what = "during evaluation" if trained else f"after {done} of {planned} steps"
                row.update(
                    incomplete=True,
                    steps_trained=done,
                    steps_planned=planned,
                    error=f"interrupted ({signal.Signals(signum).name}) {what}; not evaluated",
                )
                stop = (signum, f"in run {name} {what}")
            row["wall_seconds"] = time.perf_counter() - t0
            results.append(row)
            (out / "results.partial.json").write_text(json.dumps(results, indent=1, default=str))
            if bar is not None:
                bar.update(1)
            if stop is not None:
                break
    finally:
        if bar is not None:
            bar.close()
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    summary = {
        "divergences": list(labels.values()),
        "critics": critics,
        "seeds": seeds,
        "config": base_cfg.to_dict(),
        "total_seconds": time.perf_counter() - t_all,
        "runs": results,
    }
    if stop is not None:
        finished = sum("error" not in r for r in results)
        summary["interrupted"] = {
            "signal": signal.Signals(stop[0]).name,
            "where": stop[1],
            "runs_planned": len(jobs),
            "runs_finished": finished,
            "not_run": [f"{divspec.slug(d)}-{c}-s{s}" for d, c, s in jobs[len(results) :]],
        }
    (out / "results.json").write_text(json.dumps(summary, default=str))
    (out / "results.partial.json").unlink(missing_ok=True)
    write_report(summary, out)
    if stop is not None:
        raise Interrupted(
            f"compare interrupted ({signal.Signals(stop[0]).name}) {stop[1]}; {finished} of {len(jobs)} "
            f"runs finished, the report covers those: {out / 'report.md'}",
            stop[0],
        )
    return summary


def _sigterm(signum, frame) -> None:  # noqa: ARG001
    """Outside training (which checkpoints first), SIGTERM stops a compare like Ctrl-C."""
    raise Interrupted("terminated (SIGTERM)", signum)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _checkpoint_step(run: Path) -> int:
    """The steps an interrupted run really trained: its last checkpoint (0 without one)."""
    try:
        return int(read_json(run / "checkpoint.json")["step"])
    except (FGMError, OSError, ValueError, KeyError, TypeError):
        return 0


def aggregate(summary: dict[str, Any]) -> tuple[list[str], list[tuple[str, str, str]], list[list[str]]]:
    """(row labels, used columns, cells 'mean ± se')."""
    critics = summary["critics"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in summary["runs"]:
        groups.setdefault(_label(r["divergence"], r["critic"], critics), []).append(r)
    used = [c for c in COLUMNS if any(c[0] in r for r in summary["runs"])]
    labels, cells = [], []
    for label, rows in groups.items():
        ok = [r for r in rows if "error" not in r]
        failed = sum("error" in r and not r.get("incomplete") for r in rows)
        cut = sum(bool(r.get("incomplete")) for r in rows)
        notes = [f"{n} {w}" for n, w in ((failed, "failed"), (cut, "incomplete")) if n]
        labels.append(f"{label} ({', '.join(notes)})" if notes else label)
        line = []
        for key, _, fmt, scale in used:
            vals = [r[key] * scale for r in ok if r.get(key) is not None and math.isfinite(float(r[key]))]
            if not vals:
                line.append("–")
                continue
            m, se = mean_se(vals)
            line.append(f"{fmt.format(m)} ± {fmt.format(se)}")
        cells.append(line)
    return labels, [(c[0], c[1], c[2]) for c in used], cells


def markdown_table(summary: dict[str, Any]) -> str:
    labels, cols, cells = aggregate(summary)
    head = "| divergence | " + " | ".join(c[1] for c in cols) + " |"
    sep = "|---|" + "---|" * len(cols)
    body = [f"| {lab} | " + " | ".join(row) + " |" for lab, row in zip(labels, cells)]
    return "\n".join([head, sep, *body])


def _figures(summary: dict[str, Any], out: Path) -> list[tuple[str, Path, str]]:
    critics = summary["critics"]
    first: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[Path]] = {}
    for r in summary["runs"]:
        if "error" in r:
            continue
        label = _label(r["divergence"], r["critic"], critics)
        first.setdefault(label, r)
        groups.setdefault(label, []).append(Path(r["run"]))
    figs: list[tuple[str, Path, str]] = []
    if not first:
        return figs
    if not all(Path(r["run"]).is_dir() for r in first.values()):  # runs moved (another machine): keep the figures
        kept = [("Samples", "samples.png"), ("Log densities", "density.png"), ("Training curves", "curves.png")]
        return [
            (name, out / f, "Drawn when the runs were trained (they are not on this machine).")
            for name, f in kept
            if (out / f).is_file()
        ]
    models = {label: Run.load(r["run"]) for label, r in first.items()}
    panels = [
        (f"{label} (seed {first[label]['seed']})", models[label].sample(2500, seed=1).numpy(), models[label].info)
        for label in models
    ]
    info = next(iter(models.values())).info
    image = len(info.shape) == 3
    figs.append(
        (
            "Samples",
            samples_figure(panels, out / "samples.png"),
            "64 samples of each row's first seed, noise included (pixel values 0..255)."
            if image
            else "2,500 samples of each row's first seed; red crosses: the true modes.",
        )
    )
    if len(info.shape) == 1 and info.shape[0] == 2:
        figs.append(
            (
                "Log densities",
                density_figure(list(models.items()), out / "density.png"),
                "Left: the density estimator's log p_D(x); right: the model's log p_theta(x), in nats, "
                "first seed. Colours span the 2nd to 99.5th percentile of each map, at most 12 nats: a "
                "few extreme values do not darken the rest; values outside take the end colours.",
            )
        )
    figs.append(
        (
            "Training curves",
            curves_figure(groups, out / "curves.png"),
            "Mean over seeds, per logged step: the divergence estimate J, the critic and generator "
            "losses, and the generator's noise scale sigma (model units, log axis).",
        )
    )
    return figs


def write_report(summary: dict[str, Any], out: Path, extra: list[str] | None = None, title: str | None = None) -> None:
    """Write report.md, report.html (figures inlined) and the figures; ``extra`` markdown lines
    go after the tables, before the figures; ``title`` replaces the default heading."""
    out = Path(out)
    cfg = summary["config"]
    figs = _figures(summary, out)
    table = markdown_table(summary)
    ok = [r for r in summary["runs"] if "error" not in r]
    errors = [r for r in summary["runs"] if "error" in r]
    dopt = f" {json.dumps(cfg['data']['options'])}" if cfg["data"]["options"] else ""
    mopt = f" {json.dumps(cfg['model']['options'])}" if cfg["model"]["options"] else ""
    budget = (
        f"dataset `{cfg['data']['dataset']}`{dopt}, "
        f"{cfg['run']['steps']} steps x batch {cfg['optim']['batch_size']}, architecture "
        f"`{cfg['model']['architecture']}`{mopt}, "
        f"latent {cfg['model']['latent_dim']}, lr {cfg['optim']['lr']}; seeds 0..{summary['seeds'] - 1}; "
        f"total wall time {summary['total_seconds']:.0f} s"
    )
    n_samples = ok[0]["n_samples"] if ok else "?"
    k = ok[0]["k"] if ok else "?"
    title = title or f"fgm compare: {', '.join(summary['divergences'])} ({', '.join(summary['critics'])} critic)"
    md = [
        f"# {title}",
        "",
        f"Budget: {budget}.",
        "",
        f"Each cell: mean ± standard error over seeds. {n_samples} samples per run; held-out likelihood "
        f"importance-sampled with K={k}. Metric definitions: `plugins/fgm_report/evaluate.py`.",
        "",
        table,
        "",
        *legend(summary),
        *extreme_note(summary),
    ]
    collapsed = {}
    for r in ok:
        mc = r.get("mode_collapse") or {}
        if mc.get("collapsed_names"):
            names = mc["collapsed_names"]
            total = len(mc.get("modes", [])) or "?"
            what = ", ".join(names) if len(names) <= 8 else f"{len(names)} of {total}"
            collapsed.setdefault(_label(r["divergence"], r["critic"], summary["critics"]), []).append(
                f"seed {r['seed']}: {what}"
            )
    if collapsed:
        md += ["## Collapsed modes (detector)", ""] + [f"- {k_}: " + "; ".join(v) for k_, v in collapsed.items()] + [""]
    stopped = summary.get("interrupted")
    if stopped:
        md[2:2] = [
            f"**Interrupted ({stopped['signal']}) {stopped['where']}: {stopped['runs_finished']} of "
            f"{stopped['runs_planned']} planned runs finished; only those have numbers in the table.**",
            "",
        ]
    if errors:
        md += (
            ["## Failed or incomplete runs", ""]
            + [
                f"- {r['divergence']} / {r['critic']} seed {r['seed']}: {r['error']}"
                + (f" (trained {r['steps_trained']} of {r['steps_planned']} steps)" if r.get("incomplete") else "")
                for r in errors
            ]
            + [""]
        )
    if stopped and stopped["not_run"]:
        md += ["## Not run (interrupted before they started)", "", *[f"- {n}" for n in stopped["not_run"]], ""]
    md += list(extra or [])
    for title, p, caption in figs:
        md += [f"## {title}", "", f"![{title}]({p.name})", "", f"> {caption}", ""]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(_html("\n".join(md), out))


def legend(summary: dict[str, Any]) -> list[str]:
    """Markdown lines: each used column's unit, best value and meaning, with the data's reference
    values where the runs measured them."""
    ok = [r for r in summary["runs"] if "error" not in r]
    ref: dict[str, str] = {}
    for key, src, fmt in (
        ("sharpness", "data_sharpness", "{:.4f}"),
        ("sharpness_means", "data_sharpness", "{:.4f}"),
        ("test_log_likelihood", "optimum_log_likelihood", "{:.2f}"),
    ):
        vals = [r[src] for r in ok if isinstance(r.get(src), (int, float))]
        if vals:
            ref[key] = ("held-out data: " if src.startswith("data") else "-H: ") + fmt.format(float(np.mean(vals)))
    lines = ["**Columns** (unit; best value; what it measures):", ""]
    for key, header, _ in aggregate(summary)[1]:
        if key in NOTES:
            unit, best, what = NOTES[key]
            best = f"{best} ({ref[key]})" if key in ref else best
            lines.append(f"- **{header}**: {unit}; best: {best}; {what}.")
    return lines + [""]


def extreme_note(summary: dict[str, Any], limit: float = 20.0) -> list[str]:
    """A note when a row's log p_D lies far (more than ``limit`` nats) from its log-likelihood:
    what such a value means for each kind of critic."""
    far = {}
    for r in summary["runs"]:
        ld, ll = r.get("test_log_density"), r.get("test_log_likelihood")
        if isinstance(ld, (int, float)) and isinstance(ll, (int, float)) and abs(ld - ll) > limit:
            lab = _label(r["divergence"], r["critic"], summary["critics"])
            far.setdefault(lab, (r["critic"], ld - ll))
    if not far:
        return []
    rows = ", ".join(f"{k} ({d:+.0f} nats, first seed)" for k, (_, d) in far.items())
    free = any(c != "density" for c, _ in far.values())
    text = [
        f"**Note on extreme log p_D values.** In {rows}, log p_D differs from the model's "
        f"log-likelihood by more than {limit:.0f} nats."
    ]
    if free:
        text.append(
            "For the joint and marginal critics, log p_D is not a trained density: it is the log "
            "density ratio the critic implies, log (f')^-1(g_f(V)), added to the model's "
            "log-likelihood. That ratio is exact only at the critic's optimum; a critic that separates "
            "data from samples confidently (a GAN critic usually does) implies ratios up to e^60 "
            "per point, so log p_D can lie hundreds of nats from any density (for example -873 "
            "nats). Such a value says how confident the critic is, not how probable the data is."
        )
    if any(c == "density" for c, _ in far.values()):
        text.append(
            "For the density critic, l(x) is trained towards log p_D(x) but is normalised only at "
            "its optimum; a large positive gap on held-out data usually means the estimator is not "
            "converged (or the model misses that data: see the collapse detector)."
        )
    return [" ".join(text), ""]


#: The report's style sheet (embedded: report.html is one self-contained file).
CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;background:#fafbfc;
 max-width:1280px;margin:0 auto;padding:1.5em 2em 4em}
h1{font-size:1.6em;margin:.6em 0 .3em;border-bottom:3px solid #3b6ea8;padding-bottom:.2em}
h2{font-size:1.25em;margin:1.6em 0 .4em;color:#244a75}
p,li{max-width:75em}
code{background:#eef1f5;padding:0 .25em;border-radius:3px;font-size:.92em}
.table{overflow-x:auto;margin:.8em 0}
table{border-collapse:collapse;font-size:13px;background:#fff;box-shadow:0 1px 3px rgba(0,0,0,.08)}
th{background:#244a75;color:#fff;font-weight:600;padding:6px 8px;text-align:center;position:sticky;top:0}
td{border-top:1px solid #e3e7ee;padding:5px 8px;text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
td:first-child{text-align:left;font-weight:600}
tr:nth-child(even) td{background:#f5f7fa}
figure{margin:1em 0;background:#fff;padding:.8em;box-shadow:0 1px 3px rgba(0,0,0,.08);display:inline-block;max-width:100%}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:.9em;color:#4a5568;margin-top:.5em;max-width:60em}
ul{padding-left:1.4em}
"""


def _inline(text: str) -> str:
    """Code, bold and links; a link to a report's ``.md`` points at its ``.html`` twin."""
    text = html.escape(text)
    text = re.sub(r"`([^`]*)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(
        r"\[([^\]]+)\]\(([^)\s]+)\)",
        lambda m: f'<a href="{re.sub(r"report[.]md$", "report.html", m.group(2))}">{m.group(1)}</a>',
        text,
    )


def _html(md: str, out: Path) -> str:
    """A tiny markdown-to-HTML for the report's own constructs (headings, tables, lists, images
    with a ``> caption`` line after them), images inlined as data URIs, styled by :data:`CSS`."""
    body = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            head, rest = rows[0], rows[2:]
            t = ['<div class="table"><table>', "<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"]
            t += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rest]
            body.append("\n".join(t + ["</table></div>"]))
            continue
        if line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
            continue
        m = re.match(r"!\[(.*)\]\((.*)\)", line)
        if line.startswith("# "):
            body.append(f"<h1>{_inline(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{_inline(line[3:])}</h2>")
        elif m:
            data = base64.b64encode((out / m.group(2)).read_bytes()).decode()
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            caption = ""
            if j < len(lines) and lines[j].startswith("> "):
                caption = f"<figcaption>{_inline(lines[j][2:])}</figcaption>"
                i = j
            body.append(
                f'<figure><img alt="{html.escape(m.group(1))}" src="data:image/png;base64,{data}">{caption}</figure>'
            )
        elif line.startswith("> "):
            body.append(f"<p><em>{_inline(line[2:])}</em></p>")
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
        i += 1
    title = next((ln[2:] for ln in lines if ln.startswith("# ")), "fgm report")
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def reevaluate(out_dir: str | Path, k: int = 100, n_samples: int = 2500, progress: bool = True) -> dict[str, Any]:
    """Evaluate the runs of an existing report again (current metrics) and rewrite the report."""
    out = Path(out_dir)
    summary = read_json(out / "results.json")
    bundles: dict[int, Any] = {}
    runs = summary["runs"]
    it = runs
    if progress:
        from tqdm import tqdm

        it = tqdm(runs, file=sys.stderr, unit="run", desc="re-evaluate")
    for i, r in enumerate(it):
        if "error" in r:
            continue
        run = Run.load(r["run"])
        if r["seed"] not in bundles:
            bundles[r["seed"]] = load_test_bundle(run)
        keep = {
            key: r[key]
            for key in ("divergence", "critic", "seed", "run", "train_seconds", "wall_seconds", "steps")
            if key in r
        }
        runs[i] = {**keep, **evaluate(run, bundles[r["seed"]], k=k, n_samples=n_samples, seed=0)}
    (out / "results.json").write_text(json.dumps(summary, default=str))
    write_report(summary, out)
    return summary


def merge(out_dir: str | Path, parts: list[str | Path], write: bool = True) -> dict[str, Any]:
    """One report from several compare directories (e.g. different critics on the same data)."""
    summaries = [read_json(Path(p) / "results.json") for p in parts]
    s0 = summaries[0]
    summary = {
        "divergences": list(dict.fromkeys(d for s in summaries for d in s["divergences"])),
        "critics": list(dict.fromkeys(c for s in summaries for c in s["critics"])),
        "seeds": max(s["seeds"] for s in summaries),
        "config": s0["config"],
        "total_seconds": sum(s["total_seconds"] for s in summaries),
        "runs": [r for s in summaries for r in s["runs"]],
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, default=str))
    if write:
        write_report(summary, out)
    return summary
