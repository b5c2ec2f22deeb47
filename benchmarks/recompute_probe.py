"""Activation recomputation on MobileNetV2 (full fine-tune): planned arena, step time, gradients.

For each input size, exports a bundle without recomputation and one per policy, then on the same batch
compares loss and every gradient to the bundle without recomputation (bitwise) and to eager PyTorch, and
times ``ExecuTorchSession.train_step`` with the sessions interleaved step by step, so load from other jobs
on the machine hits every variant alike.

    /work/venv/bin/python benchmarks/recompute_probe.py --sizes 96 128 --policies blocks auto sqrt
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from exporters import ModelSpec, OptimizerConfig, export_bundle
from exporters.techniques.recompute import RecomputeConfig
from exporters.training_graph import prepare_for_training_export, strip_prefix
from sdk_tools.models import build_model
from sdk_tools.runner.executorch_session import ExecuTorchSession

BASELINE = "none"


def parse_policy(text: str) -> RecomputeConfig:
    return RecomputeConfig(int(text) if text.isdigit() else text)


def export(model: nn.Module, out: Path, size: int, batch: int, policy: str) -> ExecuTorchSession:
    kwargs = {
        "sample_shape": (3, size, size),
        "batch_size": batch,
        "optimizer": OptimizerConfig(kind="sgd", lr=0.01),
        "model_spec": ModelSpec("mobilenet_v2", {"width_mult": 1.0}),
    }
    recompute = None if policy == BASELINE else parse_policy(policy)
    bundle = export_bundle(model, out, recompute=recompute, **kwargs)
    return ExecuTorchSession(bundle)


def eager_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    eager = prepare_for_training_export(model)
    loss = F.cross_entropy(eager(x), y)
    loss.backward()
    return loss.item(), {n: p.grad for n, p in eager.named_parameters()}


def probe(size: int, batch: int, policies: list[str], steps: int, root: Path) -> list[dict]:
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", width_mult=1.0)
    variants = [BASELINE, *policies]
    sessions = {v: export(model, root / f"{size}-{v}", size, batch, v) for v in variants}
    gen = torch.Generator().manual_seed(size)
    x, y = torch.rand((batch, 3, size, size), generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    eager_loss, eager_grads = eager_gradients(model, x, y)
    results = {v: s.forward_backward(x, y) for v, s in sessions.items()}
    _, _, base_grads = results[BASELINE]
    rows = []
    for v in variants:
        loss, _, grads = results[v]
        rows.append(
            {
                "size": size,
                "variant": v,
                "arena_mib": sessions[v].manifest.memory.planned_arena_bytes / 2**20,
                "bitwise": all(torch.equal(g, base_grads[n]) for n, g in grads.items()),
                "max_diff_eager": max((g - eager_grads[strip_prefix(n)]).abs().max().item() for n, g in grads.items()),
                "loss_diff_eager": abs(loss - eager_loss),
                "times": [],
            }
        )
    for step in range(steps + 1):  # the first round warms up
        for row in rows:
            start = time.perf_counter()
            sessions[row["variant"]].train_step([(x, y)])
            if step:
                row["times"].append(time.perf_counter() - start)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 128])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--policies", nargs="+", default=["blocks", "auto", "sqrt"])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    for policy in args.policies:
        parse_policy(policy)  # fail before minutes of export
    print("| input | variant | arena MiB | vs none | step s (median) | vs none | grads bitwise | max |g - eager| |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            rows = probe(size, args.batch, args.policies, args.steps, Path(tmp))
            base = rows[0]
            for row in rows:
                median = statistics.median(row["times"])
                print(
                    f"| {size}x{size} | {row['variant']} | {row['arena_mib']:.1f} | "
                    f"{row['arena_mib'] / base['arena_mib'] - 1:+.1%} | {median:.2f} | "
                    f"{median / statistics.median(base['times']):.2f}x | {row['bitwise']} | "
                    f"{row['max_diff_eager']:.1e} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
