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

from fgm_core.errors import FGMError, Interrupted
from fgm_core.storage import read_json, remove_run_dir

#: (key, header, format, scale) of the table columns, in order; missing keys are skipped.
COLUMNS = [
    ("modes_captured", "modes captured", "{:.2f}", 1.0),
    ("high_quality", "high-quality %", "{:.1f}", 100.0),
    ("kl_to_uniform", "KL(modes‖unif)", "{:.3f}", 1.0),
    ("modes_captured_means", "modes (G means)", "{:.2f}", 1.0),
    ("high_quality_means", "HQ % (G means)", "{:.1f}", 100.0),
    ("kl_to_uniform_means", "KL (G means)", "{:.3f}", 1.0),
    ("modes_collapsed", "collapsed modes", "{:.2f}", 1.0),
    ("test_log_likelihood", "test log-lik (nats)", "{:.2f}", 1.0),
    ("likelihood_gap_to_optimum", "gap to -H (nats)", "{:.2f}", 1.0),
    ("test_log_density", "log p_D (nats)", "{:.2f}", 1.0),
    ("test_bits_per_dim", "bits/dim", "{:.3f}", 1.0),
    ("reconstruction_mse", "recon MSE", "{:.4g}", 1.0),
    ("sharpness", "sharpness", "{:.4f}", 1.0),
    ("sharpness_means", "sharpness (G means)", "{:.4f}", 1.0),
    ("classifier_accuracy", "clf acc %", "{:.1f}", 100.0),
    ("class_kl", "class KL", "{:.3f}", 1.0),
    ("frechet_distance", "Fréchet", "{:.3f}", 1.0),
    ("train_seconds", "train s", "{:.1f}", 1.0),
    ("wall_seconds", "wall s", "{:.1f}", 1.0),
]


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


def compare(divergences: list[str], critics: list[str] | None = None, seeds: int = 3, out_dir: str | Path = "report",
            base: dict[str, Any] | str | Path | None = None, overrides: list[str] | None = None, k: int = 100,
            n_samples: int = 2500, progress: bool = True, threads: int | None = None,
            runs_dir: str | Path | None = None) -> dict[str, Any]:
    """Train ``divergences`` x ``critics`` x ``seeds`` runs (seed 0..seeds-1) from the same base
    config and write ``report.md``, ``report.html``, ``results.json`` and figures to ``out_dir``."""
    from fgm_core.api import resolve_config, train
    from fgm_core.evaluate import evaluate, load_test_bundle

    critics = critics or ["density"]
    if not divergences:
        raise FGMError("no divergences to compare", "give --divergences kl,js,...")
    if seeds < 1:
        raise FGMError(f"--seeds must be positive, got {seeds}", "use --seeds 1 or more")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs_dir = Path(runs_dir) if runs_dir else out / "runs"
    jobs = [(d, c, s) for c in critics for d in divergences for s in range(seeds)]
    base_cfg, plugins = resolve_config(base, overrides)
    for d in divergences:  # fail early on unknown names
        plugins.get("divergences", d)
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
            name = f"{d}-{c}-s{s}"
            if bar is not None:
                bar.set_postfix_str(f"{name} training")
            ov = [f"divergence.name={json.dumps(d)}", f"critic.form={json.dumps(c)}", f"run.seed={s}",
                  f"run.out_dir={json.dumps(str(runs_dir))}", f"run.name={json.dumps(name)}",
                  "run.progress=false", "run.tensorboard=false"]
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
                row.update(incomplete=True, steps_trained=done, steps_planned=planned,
                           error=f"interrupted ({signal.Signals(signum).name}) {what}; not evaluated")
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
    summary = {"divergences": divergences, "critics": critics, "seeds": seeds, "config": base_cfg.to_dict(),
               "total_seconds": time.perf_counter() - t_all, "runs": results}
    if stop is not None:
        finished = sum("error" not in r for r in results)
        summary["interrupted"] = {"signal": signal.Signals(stop[0]).name, "where": stop[1], "runs_planned": len(jobs),
                                  "runs_finished": finished,
                                  "not_run": [f"{d}-{c}-s{s}" for d, c, s in jobs[len(results):]]}
    (out / "results.json").write_text(json.dumps(summary, default=str))
    (out / "results.partial.json").unlink(missing_ok=True)
    write_report(summary, out)
    if stop is not None:
        raise Interrupted(f"compare interrupted ({signal.Signals(stop[0]).name}) {stop[1]}; {finished} of {len(jobs)} "
                          f"runs finished, the report covers those: {out / 'report.md'}", stop[0])
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


def _figures(summary: dict[str, Any], out: Path) -> list[tuple[str, Path]]:
    from fgm_core.plots import curves_figure, density_figure, samples_figure
    from fgm_core.run import Run

    critics = summary["critics"]
    first: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[Path]] = {}
    for r in summary["runs"]:
        if "error" in r:
            continue
        label = _label(r["divergence"], r["critic"], critics)
        first.setdefault(label, r)
        groups.setdefault(label, []).append(Path(r["run"]))
    figs: list[tuple[str, Path]] = []
    if not first:
        return figs
    models = {label: Run.load(r["run"]) for label, r in first.items()}
    panels = [(f"{label} (seed {first[label]['seed']})", models[label].sample(2500, seed=1).numpy(), models[label].info)
              for label in models]
    figs.append(("Samples (first seed of each; red x: true modes)", samples_figure(panels, out / "samples.png")))
    info = next(iter(models.values())).info
    if len(info.shape) == 1 and info.shape[0] == 2:
        figs.append(("Log densities: density estimator (left) and model (right), first seed",
                     density_figure(list(models.items()), out / "density.png")))
    figs.append(("Training curves (mean over seeds)", curves_figure(groups, out / "curves.png")))
    return figs


def write_report(summary: dict[str, Any], out: Path) -> None:
    out = Path(out)
    cfg = summary["config"]
    figs = _figures(summary, out)
    table = markdown_table(summary)
    ok = [r for r in summary["runs"] if "error" not in r]
    errors = [r for r in summary["runs"] if "error" in r]
    dopt = f" {json.dumps(cfg['data']['options'])}" if cfg['data']['options'] else ""
    mopt = f" {json.dumps(cfg['model']['options'])}" if cfg['model']['options'] else ""
    budget = (f"dataset `{cfg['data']['dataset']}`{dopt}, "
              f"{cfg['run']['steps']} steps x batch {cfg['optim']['batch_size']}, architecture "
              f"`{cfg['model']['architecture']}`{mopt}, "
              f"latent {cfg['model']['latent_dim']}, lr {cfg['optim']['lr']}; seeds 0..{summary['seeds'] - 1}; "
              f"total wall time {summary['total_seconds']:.0f} s")
    n_samples = ok[0]["n_samples"] if ok else "?"
    k = ok[0]["k"] if ok else "?"
    md = [f"# fgm compare: {', '.join(summary['divergences'])} ({', '.join(summary['critics'])} critic)", "",
          f"Budget: {budget}.", "",
          f"Each cell: mean ± standard error over seeds. {n_samples} samples per run; held-out likelihood "
          f"importance-sampled with K={k}. Metric definitions: `fgm_core/evaluate.py`.", "", table, ""]
    collapsed = {}
    for r in ok:
        mc = r.get("mode_collapse") or {}
        if mc.get("collapsed_names"):
            names = mc["collapsed_names"]
            total = len(mc.get("modes", [])) or "?"
            what = ", ".join(names) if len(names) <= 8 else f"{len(names)} of {total}"
            collapsed.setdefault(_label(r["divergence"], r["critic"], summary["critics"]), []).append(
                f"seed {r['seed']}: {what}")
    if collapsed:
        md += ["## Collapsed modes (detector)", ""] + [f"- {k_}: " + "; ".join(v) for k_, v in collapsed.items()] + [""]
    stopped = summary.get("interrupted")
    if stopped:
        md[2:2] = [f"**Interrupted ({stopped['signal']}) {stopped['where']}: {stopped['runs_finished']} of "
                   f"{stopped['runs_planned']} planned runs finished; only those have numbers in the table.**", ""]
    if errors:
        md += ["## Failed or incomplete runs", ""] + [
            f"- {r['divergence']} / {r['critic']} seed {r['seed']}: {r['error']}"
            + (f" (trained {r['steps_trained']} of {r['steps_planned']} steps)" if r.get("incomplete") else "")
            for r in errors] + [""]
    if stopped and stopped["not_run"]:
        md += ["## Not run (interrupted before they started)", "", *[f"- {n}" for n in stopped["not_run"]], ""]
    for title, p in figs:
        md += [f"## {title}", "", f"![{title}]({p.name})", ""]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(_html("\n".join(md), out))


def _html(md: str, out: Path) -> str:
    """A tiny markdown-to-HTML for the report's own constructs, images inlined as data URIs."""
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
            t = ["<table>", "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"]
            t += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rest]
            body.append("\n".join(t + ["</table>"]))
            continue
        m = re.match(r"!\[(.*)\]\((.*)\)", line)
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif m:
            data = base64.b64encode((out / m.group(2)).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(m.group(1))}" src="data:image/png;base64,{data}">')
        elif line.strip():
            text = html.escape(line)
            text = re.sub(r"`([^`]*)`", r"<code>\1</code>", text)
            body.append(f"<p>{text}</p>")
        i += 1
    style = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto;}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;"
             "text-align:right}td:first-child{text-align:left}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>fgm compare</title><style>{style}</style>"
            f"</head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def reevaluate(out_dir: str | Path, k: int = 100, n_samples: int = 2500, progress: bool = True) -> dict[str, Any]:
    """Evaluate the runs of an existing report again (current metrics) and rewrite the report."""
    from fgm_core.evaluate import evaluate, load_test_bundle
    from fgm_core.run import Run

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
        keep = {key: r[key] for key in ("divergence", "critic", "seed", "run", "train_seconds", "wall_seconds", "steps")
                if key in r}
        runs[i] = {**keep, **evaluate(run, bundles[r["seed"]], k=k, n_samples=n_samples, seed=0)}
    (out / "results.json").write_text(json.dumps(summary, default=str))
    write_report(summary, out)
    return summary


def merge(out_dir: str | Path, parts: list[str | Path], write: bool = True) -> dict[str, Any]:
    """One report from several compare directories (e.g. different critics on the same data)."""
    summaries = [read_json(Path(p) / "results.json") for p in parts]
    s0 = summaries[0]
    summary = {"divergences": list(dict.fromkeys(d for s in summaries for d in s["divergences"])),
               "critics": list(dict.fromkeys(c for s in summaries for c in s["critics"])),
               "seeds": max(s["seeds"] for s in summaries), "config": s0["config"],
               "total_seconds": sum(s["total_seconds"] for s in summaries),
               "runs": [r for s in summaries for r in s["runs"]]}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, default=str))
    if write:
        write_report(summary, out)
    return summary
