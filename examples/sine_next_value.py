"""Next-value prediction on a sine wave, trained twice side by side: with rnnkern.RNN, and with the
plain NumPy forward pass and backpropagation through time of rnnkern/reference.py.

Each training window holds 20 samples of sin(t); at every step the network reads sin(t) and
predicts sin(t + dt) through a linear head on its state (tanh, hidden_size 16). Both trainings start
from the same weights and take the same SGD steps in float64, so their losses agree step for step
and their weights stay equal to rounding: the fused kernels compute the same gradients as the
textbook BPTT written out in NumPy. Prints both losses, the largest weight difference, and a
prediction on a window never trained on; a few seconds on a CPU.

    python examples/sine_next_value.py [--steps 400]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

import rnnkern
from rnnkern import reference

HIDDEN = 16
STEPS_PER_WINDOW = 20
DT = 0.3
LR = 0.1


def windows(first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` windows from window ``first`` on: inputs sin(t), targets sin(t + DT), (T, B, 1)."""
    starts = (first + np.arange(count)) * STEPS_PER_WINDOW * DT * 0.37  # overlapping, irregular
    t = starts[None, :] + DT * np.arange(STEPS_PER_WINDOW)[:, None]
    return np.sin(t)[..., None], np.sin(t + DT)[..., None]


class NextValue(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = rnnkern.RNN(1, HIDDEN, dtype=torch.float64)
        self.head = nn.Linear(HIDDEN, 1, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.rnn(x)
        return self.head(states)


class NumPyNextValue:
    """The same network in NumPy: reference.rnn_forward / rnn_backward and a linear head."""

    def __init__(self, model: NextValue):
        self.rnn_weights = [w.detach().numpy().copy() for w in model.rnn._flat_weights]
        self.head_weight = model.head.weight.detach().numpy().copy()
        self.head_bias = model.head.bias.detach().numpy().copy()

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One SGD step on the mean squared error; returns the loss before it."""
        h0 = np.zeros((1, x.shape[1], HIDDEN))
        states, _, cache = reference.rnn_forward(x, h0, self.rnn_weights)
        prediction = states @ self.head_weight.T + self.head_bias
        error = prediction - y
        loss = float(np.mean(error**2))
        d_prediction = 2 * error / error.size
        d_head_weight = np.einsum("tbo,tbh->oh", d_prediction, states)
        d_head_bias = d_prediction.sum(axis=(0, 1))
        d_states = d_prediction @ self.head_weight
        grads = reference.rnn_backward(d_states, np.zeros_like(h0), cache)
        for w, g in zip(self.rnn_weights, grads["d_flat_weights"]):
            w -= LR * g
        self.head_weight -= LR * d_head_weight
        self.head_bias -= LR * d_head_bias
        return loss

    def parameters(self) -> list[np.ndarray]:
        return [*self.rnn_weights, self.head_weight, self.head_bias]


def train_both(steps: int, log_every: int = 0) -> tuple[list[float], list[float], float, NextValue]:
    """Trains rnnkern and NumPy side by side; returns both loss curves, the largest difference
    between their final weights, and the rnnkern model."""
    torch.manual_seed(0)
    model = NextValue()
    twin = NumPyNextValue(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    ours, numpy_losses = [], []
    for step in range(steps):
        x, y = windows(step * 8, 8)
        loss = nn.functional.mse_loss(model(torch.from_numpy(x)), torch.from_numpy(y))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ours.append(loss.item())
        numpy_losses.append(twin.step(x, y))
        if log_every and step % log_every == 0:
            print(f"step {step:4d}  loss rnnkern {ours[-1]:.6f}  NumPy BPTT {numpy_losses[-1]:.6f}")
    params = [p.detach().numpy() for p in (*model.rnn._flat_weights, *model.head.parameters())]
    difference = max(float(np.abs(a - b).max()) for a, b in zip(params, twin.parameters()))
    return ours, numpy_losses, difference, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="SGD steps (default 400)")
    args = parser.parse_args()

    start = time.perf_counter()
    ours, numpy_losses, difference, model = train_both(args.steps, log_every=50)
    print(
        f"after {args.steps} steps ({time.perf_counter() - start:.1f} s): loss rnnkern "
        f"{ours[-1]:.6f}, NumPy BPTT {numpy_losses[-1]:.6f}; largest weight difference "
        f"{difference:.1e}"
    )
    x, y = windows(10_000, 1)  # far from every training window
    with torch.no_grad():
        prediction = model(torch.from_numpy(x)).numpy()
    print("a window never trained on, last 5 steps: target, prediction")
    for target, guess in zip(y[-5:, 0, 0], prediction[-5:, 0, 0]):
        print(f"  {target:+.4f}  {guess:+.4f}")


if __name__ == "__main__":
    main()
