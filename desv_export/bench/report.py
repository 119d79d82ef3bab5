"""The deployment table as the paper prints it (Table 6), plus the raw JSON and a plot."""

from __future__ import annotations

import json
from pathlib import Path

COLUMNS = ("Bits", "WM", "RM", "prefill tok/s", "decode tok/s", "% roofline")


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f}G" if nbytes >= 2**28 else f"{nbytes / 2**20:.1f}M"


def _runs(result: dict) -> str:
    rounds = result.get("rounds", 1)
    runs = result["runs"]
    each = f"{runs} run{'s' if runs != 1 else ''} after {result['warmup']} warm-up"
    if rounds == 1:
        return each
    return f"{rounds * result['runs']} runs ({rounds} rounds over every row in turn, each {each})"


def markdown(result: dict) -> str:
    """One row per mode and baseline; every number comes from ``result["rows"]``."""
    env = result["environment"]
    lines = [
        f"# Deployment table: {result['model']}",
        "",
        f"Device: {env['device']}. Prompt {result['prompt_len']} tokens, {result['gen_len']} generated, "
        f"batch 1, median of {_runs(result)}. "
        f"RM: {result['rm_method']}.",
        "",
        "| " + " | ".join(("Mode",) + COLUMNS) + " |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    for r in result["rows"]:
        roof = f"{r['roofline_pct']:.0f}%" if r.get("roofline_pct") is not None else "-"
        wm = gib(r["wm_bytes"]) if r.get("wm_bytes") else "-"
        rm = gib(r["rm_bytes"]) if r.get("rm_bytes") else "-"
        lines.append(
            f"| {r['mode']} | {r['bits']} | {wm} | {rm} | {r['prefill_tok_s']:.1f} | "
            f"{r['decode_tok_s']:.1f} | {roof} |"
        )
    lines += [
        "",
        "WM: bytes of the weight directory's parameters (sum of tensor-cache nbytes). "
        "prefill tok/s = prompt tokens / time to first token; decode tok/s = (generated - 1) / "
        "(finish - first token), as MLC-LLM reports them. % roofline: the decode time-per-token "
        f"floor (weight bytes read per token / measured bandwidth {env['bandwidth_gbs']:.1f} GB/s, "
        f"{env['bandwidth_method']}) over the measured time per token.",
        "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()),
        "",
    ]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Decode tok/s and memory per mode, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [r["mode"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(names, [r["decode_tok_s"] for r in rows], color="tab:blue")
    ax1.set_ylabel("decode tok/s")
    ax1.set_title(f"{result['model']}: decode speed")
    width = 0.4
    xs = range(len(rows))
    ax2.bar([x - width / 2 for x in xs], [(r.get("wm_bytes") or 0) / 2**20 for r in rows], width, label="WM")
    ax2.bar([x + width / 2 for x in xs], [(r.get("rm_bytes") or 0) / 2**20 for r in rows], width, label="RM")
    ax2.set_xticks(list(xs), names)
    ax2.set_ylabel("MiB")
    ax2.set_title("weight / running memory")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.md", out_dir / f"{stem}.json", out_dir / f"{stem}.png"]
    paths[0].write_text(markdown(result))
    paths[1].write_text(json.dumps(result, indent=2))
    plot(result, paths[2])
    return paths
