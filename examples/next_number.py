"""The next number of a sequence, many-to-one: [10 20 30] -> 40, and then [70 80 90] -> about 100.

A small rnnkern.RNN (input_size 1, hidden_size 2) reads three numbers one step at a time; a linear
layer on its three hidden states (concatenated) gives the next number. The numbers are scaled to
[0, 1] (divided by 100) before training, as networks want inputs of that size. Trained on the runs
of three tens below 90, it is then asked for the sequence it has not seen. Prints the loss and the
predictions; a second or two on a CPU.

    python examples/next_number.py [--epochs 1500] [--torch]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import rnnkern

SCALE = 100.0
HIDDEN = 2


class NextNumber(nn.Module):
    def __init__(self, rnn_cls: type[nn.Module] = rnnkern.RNN):
        super().__init__()
        self.rnn = rnn_cls(input_size=1, hidden_size=HIDDEN, batch_first=True)
        self.head = nn.Linear(3 * HIDDEN, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, 3) scaled numbers -> (batch,) the scaled next number."""
        states, _ = self.rnn(x.unsqueeze(-1))  # (batch, 3, HIDDEN): one state per number read
        return self.head(states.flatten(1)).squeeze(-1)


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    """[10 20 30] -> 40, [20 30 40] -> 50, ..., [50 60 70] -> 80: five runs, scaled."""
    starts = torch.arange(10, 60, 10, dtype=torch.float32)
    x = torch.stack([starts, starts + 10, starts + 20], dim=1)
    return x / SCALE, (starts + 30) / SCALE


def train(model: NextNumber, epochs: int, log_every: int = 0) -> list[float]:
    """Full-batch Adam on the five runs; returns the loss of every epoch."""
    x, y = dataset()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for epoch in range(epochs):
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if log_every and epoch % log_every == 0:
            print(f"epoch {epoch:5d}  loss {loss.item():.6f}")
    return losses


def predict(model: NextNumber, numbers: list[float]) -> float:
    with torch.no_grad():
        return model(torch.tensor([numbers]) / SCALE).item() * SCALE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=1500, help="training epochs (default 1500)")
    parser.add_argument("--torch", action="store_true", help="use torch.nn.RNN instead, to compare")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = NextNumber(nn.RNN if args.torch else rnnkern.RNN)
    print(f"training {type(model.rnn).__module__}.{type(model.rnn).__name__} on [10 20 30] -> 40")
    start = time.perf_counter()
    losses = train(model, args.epochs, log_every=300)
    print(f"final loss {losses[-1]:.2e} ({time.perf_counter() - start:.2f} s)")
    for numbers in ([10, 20, 30], [40, 50, 60], [70, 80, 90]):
        seen = "trained on" if numbers[0] < 60 else "never seen"
        print(f"{numbers} -> {predict(model, numbers):6.1f}   ({seen})")


if __name__ == "__main__":
    main()
