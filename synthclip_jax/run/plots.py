"""WORKDIR/curves.png: training loss and evaluation metrics against steps."""
import matplotlib

matplotlib.use("Agg")  # no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from etils import epath  # noqa: E402

from synthclip_jax.run.files import read_jsonl  # noqa: E402

EVAL_KEYS = ("zeroshot/top1", "zeroshot/top5", "retrieval/i2t_R@1", "retrieval/t2i_R@1")


def rows_of(path) -> list[dict]:
    path = epath.Path(path)
    return list(read_jsonl(path)) if path.exists() else []


def plot_curves(workdir) -> epath.Path | None:
    workdir = epath.Path(workdir)
    train, evals = rows_of(workdir / "metrics.jsonl"), rows_of(workdir / "eval.jsonl")
    if not train:
        return None
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(11 if evals else 5.5, 4),
                             squeeze=False)
    ax = axes[0, 0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train])
    ax.set(xlabel="step", ylabel="training loss", title="loss")
    ax.grid(alpha=0.3)
    if evals:
        ax = axes[0, 1]
        # a classifier's sets (train.task=classify): classify/NAME/top1
        named = sorted({k for r in evals for k in r
                        if k.startswith("classify/") and k.endswith("/top1")})
        for key in (*EVAL_KEYS, *named):
            rows = [r for r in evals if key in r]
            if rows:
                ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", label=key)
        chance = next((r["zeroshot/chance_top1"] for r in evals if "zeroshot/chance_top1" in r),
                      None)
        if chance is not None:
            ax.axhline(chance, color="gray", linestyle="--", label="zero-shot chance")
        ax.set(xlabel="step", ylabel="accuracy / recall", ylim=(0, 1.02), title="evaluation")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = workdir / "curves.png"
    with out.open("wb") as f:
        fig.savefig(f, dpi=110)
    plt.close(fig)
    return out
