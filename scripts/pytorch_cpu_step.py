"""PyTorch's CPU time for one training step of the MNIST Inception net (batch 50, Adam), for comparison with
`cargo bench --bench train_step` on the same machine. Prints the median of N steps after warm-up.

    python3 -m pip install torch==2.11.0
    python3 scripts/pytorch_cpu_step.py [STEPS]
"""
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "golden"))
from inception_mnist import InceptionMnist  # noqa: E402

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
torch.manual_seed(0)
net = InceptionMnist()
opt = torch.optim.Adam(net.parameters(), lr=1e-4)
x, y = torch.rand(50, 1, 28, 28), torch.randint(0, 10, (50,))


def step():
    opt.zero_grad(set_to_none=False)
    F.cross_entropy(net(x), y).backward()
    opt.step()


for _ in range(2):
    step()
times = []
for _ in range(steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: train step batch 50 median "
      f"{statistics.median(times):.3f} s (min {min(times):.3f}, max {max(times):.3f}, {steps} steps)")
