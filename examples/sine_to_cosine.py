"""A first task for rnnkern.RNN: read a window of sin(x), predict the matching window of cos(x).

input_size 1, hidden_size 32, windows of 10 points, SGD with lr 0.01, the hidden state carried
(detached) from one window to the next, as one would with nn.RNN. Prints the loss as it falls
and writes a plot of the prediction against the target.

    python examples/sine_to_cosine.py [--steps 1000] [--plot sine_to_cosine.png] [--torch]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from torch import nn

import rnnkern

TIME_STEP = 10
HIDDEN = 32
LR = 0.01


class SineToCosine(nn.Module):
    def __init__(self, rnn_cls: type[nn.Module] = rnnkern.RNN):
        super().__init__()
        self.rnn = rnn_cls(input_size=1, hidden_size=HIDDEN, num_layers=1, batch_first=True)
        self.out = nn.Linear(HIDDEN, 1)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        r_out, h = self.rnn(x, h)
        return self.out(r_out), h


def window(step: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The step-th window: sin values in, cos values out, shaped (batch 1, TIME_STEP, 1)."""
    xs = np.linspace(step * math.pi, (step + 1) * math.pi, TIME_STEP, dtype=np.float32)
    x = torch.from_numpy(np.sin(xs)[None, :, None])
    y = torch.from_numpy(np.cos(xs)[None, :, None])
    return x, y, xs


def train(model: SineToCosine, steps: int, log_every: int = 0) -> list[float]:
    """Trains in place and returns the loss of every step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = nn.MSELoss()
    h = None
    losses = []
    for step in range(steps):
        x, y, _ = window(step)
        prediction, h = model(x, h)
        h = h.detach()
        loss = loss_fn(prediction, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if log_every and step % log_every == 0:
            print(f"step {step:5d}  loss {loss.item():.6f}")
    model.last_state = h
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="training windows (default 1000)")
    parser.add_argument("--plot", default="sine_to_cosine.png", help="where to write the plot")
    parser.add_argument("--torch", action="store_true", help="use torch.nn.RNN instead, to compare")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = SineToCosine(nn.RNN if args.torch else rnnkern.RNN)
    print(f"training {type(model.rnn).__module__}.{type(model.rnn).__name__} on sin -> cos")
    start = time.perf_counter()
    losses = train(model, args.steps, log_every=100)
    print(
        f"final loss {losses[-1]:.6f} after {args.steps} steps ({time.perf_counter() - start:.2f} s)"
    )

    x, y, xs = window(args.steps)
    with torch.no_grad():
        prediction, _ = model(x, model.last_state)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_pred) = plt.subplots(1, 2, figsize=(11, 4))
    # Each window's loss swings with where it falls on the wave (a thin, wide band): its running
    # mean shows the trend.
    ax_loss.semilogy(losses, lw=0.5, alpha=0.5, label="each window")
    span = 50
    running = np.convolve(losses, np.ones(span) / span, mode="valid")
    ax_loss.semilogy(np.arange(span - 1, len(losses)), running, label=f"mean of {span} windows")
    ax_loss.set(title="training loss (MSE)", xlabel="training step (window)", ylabel="loss")
    ax_loss.legend()
    offset = xs - xs[0]  # the window's own x, from 0 to pi
    ax_pred.plot(offset, x.flatten(), label="input sin(x)")
    ax_pred.plot(offset, y.flatten(), label="target cos(x)")
    ax_pred.plot(offset, prediction.flatten(), "o--", label="prediction")
    ax_pred.set(
        title=f"window {args.steps}, never trained on",
        xlabel=f"x - {xs[0]:.1f} (radians)",
        ylabel="value",
    )
    ax_pred.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=100)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
