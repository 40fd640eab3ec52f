"""The CPU kernel timings behind the compact model's padding choices (docs/measurements.md).

    .venv/bin/python scripts/measure-kernels.py

Prints, with torch.utils.benchmark (median of blocked runs, all threads torch uses):
- sgemm [4096, 384] @ [384, N] for N around multiples of 8 (why matmul widths are padded to 8:
  `grain.models.compact.kernels.round_up`);
- the batched attention scores of 12 heads at QK widths 1, 2, 3, 4 (why the CPU plan gives a QK width
  of 1 a slot of 2: `plan_head_groups`).
"""

from __future__ import annotations

import torch
from torch.utils import benchmark


def median_ms(stmt: str, **values) -> float:
    timer = benchmark.Timer(stmt=stmt, globals=values, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=1.0).median * 1e3


def main() -> None:
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    x = torch.randn(4096, 384)
    print("sgemm [4096, 384] @ [384, N] (a MiniLM projection of 32 x 128 tokens):")
    for n in (16, 23, 24, 25, 31, 32):
        w = torch.randn(384, n)
        print(f"  N={n:3}: {median_ms('x @ w', x=x, w=w):.3f} ms")
    print("attention scores of 12 heads, [384, 128, d] @ [384, d, 128] (batch 32, length 128):")
    for d in (1, 2, 3, 4):
        q, k = torch.randn(32 * 12, 128, d), torch.randn(32 * 12, d, 128)
        print(f"  QK width {d}: {median_ms('torch.bmm(q, k)', torch=torch, q=q, k=k):.3f} ms")


if __name__ == "__main__":
    main()
