"""Every figure of the paper (docs/paper.md section 4) and the regime map, drawn from the analysis JSON
files (selm.report.analyze) into PNGs. Matplotlib's Agg backend: no display needed. Each function
returns the path it wrote."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from selm.report.report_text import bin_width_text  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    # fixed metadata: the same data gives the same bytes (no creation date in the file)
    fig.savefig(tmp, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _bar(ci: float | None) -> float:
    """An error bar's half-width; none (NaN: matplotlib draws no bar) without an interval (one seed)."""
    return float("nan") if ci is None else float(ci)


def figure1_concept(out: Path, seed: int = 0) -> tuple[Path, dict]:
    """The concept: on a 1-D toy reward, a reward model fitted to data that covers only part of the
    input range (vanilla: the ensemble mean), and an optimistic one (mean + 2 sd of a bootstrap
    ensemble of polynomial fits). The vanilla argmax stays where the data are; the optimistic one
    points at the unexplored region where the true maximum lies."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, 400)
    true = 0.6 * np.exp(-((x - 0.3) / 0.12) ** 2) + 1.0 * np.exp(-((x - 0.8) / 0.08) ** 2)
    xs = rng.uniform(0.0, 0.6, 40)  # the data the model has seen: responses near its own mode
    ys = np.interp(xs, x, true) + rng.normal(0, 0.05, xs.size)
    fits = []
    for _ in range(200):
        idx = rng.integers(0, xs.size, xs.size)
        coef = np.polyfit(xs[idx], ys[idx], 3)
        fits.append(np.polyval(coef, x))
    fits = np.array(fits)
    mean, sd = fits.mean(0), fits.std(0)
    optimistic = mean + 2 * sd
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(x, true, "k-", lw=2, label="true reward")
    ax.scatter(xs, ys, s=10, c="grey", label="observed responses")
    ax.plot(x, mean, "b--", label="vanilla reward model (fit)")
    ax.fill_between(x, mean - 2 * sd, mean + 2 * sd, color="b", alpha=0.12, label="uncertainty (±2 sd)")
    ax.plot(x, optimistic, "r-", label="optimistic reward model")
    for curve, color in ((mean, "b"), (optimistic, "r")):
        ax.axvline(x[np.argmax(np.where(x <= 1, curve, -np.inf))], color=color, ls=":", lw=1)
    ax.set_ylim(-0.4, 2.0)
    ax.set_xlabel("response space (1-D toy)")
    ax.set_ylabel("reward")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Figure 1: optimism steers exploration to unseen high-reward responses", fontsize=9)
    facts = {"vanilla_argmax": float(x[np.argmax(mean)]), "optimistic_argmax": float(x[np.argmax(optimistic)]),
             "true_argmax": float(x[np.argmax(true)])}
    return _save(fig, out / "figure1_concept.png"), facts


def figure2_heatmaps(data: dict, out: Path) -> list[Path]:
    paths = []
    for base, h in data.items():
        m = np.array(h["matrix"])
        fig, ax = plt.subplots(figsize=(6.2, 5.2))
        im = ax.imshow(m, cmap="RdBu_r", vmin=max(0, 100 - m.max()), vmax=min(100, m.max()))
        ax.set_xticks(range(len(h["models"])), h["models"], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(h["models"])), h["models"], fontsize=8)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.1f}", ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=ax, label="LC win rate of row vs column (%)")
        ax.set_title(f"Figure 2: pairwise AlpacaEval LC, {base} (mean of {len(h['seeds'])} seeds)", fontsize=9)
        paths.append(_save(fig, out / f"figure2_heatmap_{base}.png"))
    return paths


def _alpha_selection_panel(ax, sel: dict) -> None:
    """The paper's alpha selection: mean external reward of the final iteration per alpha (and r* where
    measured), mean ± 95% CI over seeds, the selected alpha starred."""
    alphas = sorted(sel["alphas"], key=float)
    xs = np.arange(len(alphas))
    for key, label, marker, dx in (("external_reward", "external reward (ranker)", "o", -0.08),
                                   ("r_star", "true reward r*", "s", 0.08)):
        if all(key in sel["alphas"][a] for a in alphas):
            ax.errorbar(xs + dx, [sel["alphas"][a][key]["mean"] for a in alphas],
                        yerr=[_bar(sel["alphas"][a][key]["ci95"]) for a in alphas], marker=marker, capsize=3,
                        ls="none", label=label)
    chosen = alphas.index(next(a for a in alphas if float(a) == sel["selected"]))
    ax.plot([xs[chosen] - 0.08], [sel["alphas"][alphas[chosen]]["external_reward"]["mean"]], marker="*", ms=14, color="gold",
            mec="k", ls="none", label=f"selected: alpha {sel['selected']:g}")
    ax.set_xticks(xs, [f"{float(a):g}" for a in alphas], fontsize=8)
    ax.set_xlabel("alpha (0 = iterative DPO, not searched)", fontsize=8)
    ax.set_ylabel("mean reward, final iteration")
    ax.set_title("alpha selection (the paper's rule), mean ± 95% CI", fontsize=9)
    ax.legend(fontsize=7)


def figure3(data: dict, out: Path) -> list[Path]:
    fig, axes = plt.subplots(1, 4, figsize=(20, 3.8))
    ax = axes[0]
    for alpha, c in sorted(data["curves"].items(), key=lambda kv: float(kv[0])):
        its = sorted(c["lc"], key=int)
        ys = [c["lc"][t]["mean"] for t in its]
        es = [_bar(c["lc"][t]["ci95"]) for t in its]
        ax.errorbar([int(t) for t in its], ys, yerr=es, marker="o", capsize=3,
                    label=f"alpha={float(alpha):g}" + (" (DPO)" if float(alpha) == 0 else ""))
    ax.set_xlabel("iteration")
    ax.set_ylabel("AlpacaEval LC win rate (%)")
    ax.set_title("Figure 3: alpha ablation, mean ± 95% CI", fontsize=9)
    ax.legend(fontsize=7)
    centers = (np.array(data["bins"][:-1]) + np.array(data["bins"][1:])) / 2
    for alpha, hist in sorted(data["hist_by_alpha_iter2"].items(), key=lambda kv: float(kv[0])):
        axes[1].plot(centers, hist, marker=".", label=f"alpha={float(alpha):g}")
    axes[1].set_title("ranker reward of greedy test answers, iteration 2", fontsize=9)
    for t, h in sorted(data["hist_by_iteration"].items(), key=lambda kv: int(kv[0])):
        axes[2].plot(centers, h["hist"], marker=".", label=f"iteration {t} (mean {h['mean']:.3f})")
    axes[2].set_title(f"reward shift over iterations ({data['shift_cell']})", fontsize=9)
    for a in axes[1:3]:
        a.set_xlabel(f"ranker reward of the greedy answer\n({bin_width_text(data['bins'])}; outliers in the edge bins)",
                     fontsize=8)
        a.set_ylabel("fraction of prompts")
        a.legend(fontsize=7)
    _alpha_selection_panel(axes[3], data["selection"])
    return [_save(fig, out / "figure3_alpha.png")]


def figure4(data: dict, out: Path) -> list[Path]:
    fig, axes = plt.subplots(1, len(data), figsize=(6 * len(data), 3.6), squeeze=False)
    for ax, (base, d) in zip(axes[0], data.items()):
        ax.plot(d["chosen_sorted"], label=f"test chosen (mean {d['mean_chosen']:+.4f})")
        ax.plot(d["rejected_sorted"], label=f"test rejected (mean {d['mean_rejected']:+.4f})")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("test prompts, sorted")
        ax.set_ylabel("r_SELM - r_DPO")
        ax.set_title(f"Figure 4: implicit reward difference, {base}, iteration {d['iteration']}", fontsize=9)
        ax.legend(fontsize=7)
    return [_save(fig, out / "figure4_ird.png")]


def figure5(data: dict, out: Path) -> list[Path]:
    fig, axes = plt.subplots(1, len(data), figsize=(6 * len(data), 3.6), squeeze=False)
    for ax, (base, d) in zip(axes[0], data.items()):
        ax.plot(d["sorted"], color="purple")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("test prompts, sorted")
        ax.set_ylabel("own-sample implicit reward, SELM - DPO")
        ax.set_title(f"Figure 5: {base}, iteration {d['iteration']}, {d['samples']} samples "
                     f"(mean {d['mean']:+.4f}, {100 * d['frac_positive']:.0f}% > 0)", fontsize=9)
    return [_save(fig, out / "figure5_own_samples.png")]


def figure6(data: dict, out: Path) -> list[Path]:
    keys = ["mt_bench"] + (["r_star"] if all("r_star" in p for s in data.values() for p in s["points"]) else [])
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 4), squeeze=False)
    axes = axes[0]
    for label, s in data.items():
        xs = [p["pairs_k"] for p in s["points"]]
        for ax, key in zip(axes, keys):
            ax.errorbar(xs, [p[key]["mean"] for p in s["points"]], yerr=[_bar(p[key]["ci95"]) for p in s["points"]],
                        marker="o", capsize=3, label=label)
    axes[0].set_ylabel("MT-Bench")
    if len(axes) > 1:
        axes[1].set_ylabel("true reward r*")
    for ax in axes:
        ax.set_xlabel("training pairs seen (k)")
        ax.legend(fontsize=7)
    fig.suptitle("Figure 6: iterative-DPO ablations (alpha 0), mean ± 95% CI over seeds", fontsize=10)
    return [_save(fig, out / "figure6_ablations.png")]


def regime_map(data: dict, verdicts: dict, out: Path) -> list[Path]:
    """The regime map; `verdicts`: claims.json's `regimes` (regime -> alpha -> verdict) colour the cells."""
    labels, means, lows, highs, colors = [], [], [], [], []
    palette = {"helps": "tab:green", "hurts": "tab:red", "inconclusive": "tab:grey"}
    for regime, entry in data.items():
        for alpha, s in sorted(entry["selm"].items(), key=lambda kv: float(kv[0])):
            labels.append(f"{regime}, alpha={float(alpha):g}")
            d = s["diff"]
            means.append(d["mean_diff"])
            no_interval = d.get("ci_low") is None  # zero spread over seeds: no t-test, no bar
            lows.append(0.0 if no_interval else d["mean_diff"] - d["ci_low"])
            highs.append(0.0 if no_interval else d["ci_high"] - d["mean_diff"])
            colors.append(palette[verdicts[regime][alpha]["verdict"]])
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(labels) + 1.2))
    y = np.arange(len(labels))
    ax.errorbar(means, y, xerr=[lows, highs], fmt="none", ecolor="k", capsize=3)
    ax.scatter(means, y, c=colors, zorder=3)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("final-iteration r*: SELM - iterative DPO (paired by seed, 95% CI)")
    ax.set_title("Regime map: where optimism helps (green), hurts (red) or is inconclusive (grey)", fontsize=9)
    return [_save(fig, out / "regime_map.png")]
