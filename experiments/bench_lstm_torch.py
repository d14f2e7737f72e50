"""PyTorch eager reference for the RNN benchmark (docs/rnn.md): the same 2-layer LSTM classifier as
configs/seqmnist_lstm.py (28 steps of 28 features, hidden 128, dense head on the last state, batch 128,
AdamW with global-norm clipping 1.0), one process on the CPU, random data. Prints one JSON line.

    python experiments/bench_lstm_torch.py [--steps 20 --warmup 3 --threads 0 --hidden 128 --layers 2]
    python experiments/bench_lstm_torch.py --steps 2 --warmup 1 --batch 8 --hidden 8   # tiny (tests)

Timing matches jaxdist.bench: each timed step ends with the update applied (eager torch is synchronous),
median and minimum over the timed steps.
"""
import argparse
import json
import statistics
import sys
import time

try:
    import torch
    from torch import nn
except ImportError:  # not a jaxdist dependency: one line that says what to install, not a traceback
    sys.exit("bench_lstm_torch.py needs PyTorch, which is not installed: pip install torch "
             "--index-url https://download.pytorch.org/whl/cpu")


class LSTMClassifier(nn.Module):
    def __init__(self, features, hidden, layers, classes):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        _, (h, _) = self.lstm(x)
        return self.head(h[-1])  # top layer's last state


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--time", type=int, default=28)
    p.add_argument("--features", type=int, default=28)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0 = torch's default")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LSTMClassifier(args.features, args.hidden, args.layers, 10)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    x = torch.randn(args.batch, args.time, args.features)
    y = torch.randint(0, 10, (args.batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t)
    p50 = statistics.median(times)
    print(json.dumps({
        "framework": "torch", "mode": "eager", "model": f"nn.LSTM {args.layers}x{args.hidden}",
        "data_shape": [args.time, args.features], "global_batch": args.batch,
        "sequences_per_s": args.batch / p50, "step_ms_p50": round(p50 * 1e3, 3),
        "step_ms_min": round(min(times) * 1e3, 3), "steps": args.steps, "warmup": args.warmup,
        "threads": torch.get_num_threads(), "loss": float(loss.detach()), "torch": torch.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()
