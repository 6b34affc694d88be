"""Per-step metrics: one JSONL line per step (rank 0), TensorBoard when installed, a tqdm bar, and
a PNG of the reward curves (matplotlib, Agg)."""
from __future__ import annotations

import json
from pathlib import Path

try:
    from torch.utils.tensorboard import SummaryWriter

    HAVE_TENSORBOARD = True
except Exception:  # tensorboard not installed
    HAVE_TENSORBOARD = False


class MetricsLogger:
    def __init__(self, output_dir, is_main: bool, total_steps: int, start_step: int = 0,
                 tensorboard: bool = True, progress_bar: bool = True):
        self.is_main = is_main
        self.path = Path(output_dir) / "metrics.jsonl"
        self.tb = self.bar = None
        if not is_main:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # a resumed run: drop the steps it will redo, keep the history before
            lines = [ln for ln in self.path.read_text().splitlines()
                     if ln.strip() and json.loads(ln).get("step", 0) <= start_step]
            self.path.write_text("".join(ln + "\n" for ln in lines))
        if tensorboard and HAVE_TENSORBOARD:
            self.tb = SummaryWriter(str(Path(output_dir) / "tb"))
        if progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="grpo", dynamic_ncols=True)

    def log(self, step: int, metrics: dict) -> None:
        if not self.is_main:
            return
        row = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(reward=f"{metrics.get('reward/total', 0):.3f}",
                                 tag=f"{metrics.get('reward/tag_pass', 0):.2f}",
                                 len=f"{metrics.get('response_length', 0):.0f}")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.bar is not None:
            self.bar.close()


def read_metrics(path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def plot_rewards(metrics_path, png_path, title: str = "OP-GRPO") -> Path:
    """Reward total and components per step → PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("reward/total", "reward/format", "reward/uniqueness", "reward/coverage"):
        if rows and key in rows[0]:
            axes[0].plot(steps, [r[key] for r in rows], label=key.split("/")[1])
    axes[0].set(xlabel="step", ylabel="mean reward", title=f"{title}: reward")
    axes[0].legend()
    for key in ("reward/tag_pass", "reward/coverage_rate", "reward/uniqueness_rate"):
        if rows and key in rows[0]:
            axes[1].plot(steps, [r[key] for r in rows], label=key.split("/")[1])
    axes[1].set(xlabel="step", ylabel="rate", title="rates", ylim=(0, 1.05))
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return Path(png_path)
