"""``memwall`` command line: a thin layer over the Python API (each command maps to one call)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from exporters.bundle import Bundle, BundleError
from sdk_tools.lab.cli import add_lab_parser
from sdk_tools.lab.client import LabClientError
from sdk_tools.quiet import quiet_library_chatter


def _print_json(data: Any) -> None:
    # allow_nan=False: NaN is not JSON (the apps' and the lab's parsers refuse it); non-finite figures are null.
    print(json.dumps(data, indent=2, default=str, allow_nan=False))


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"shape must be comma-separated integers like 3,32,32, got {text!r}") from exc
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"shape dimensions must be positive, got {text!r}")
    return shape


def _positive(text: str) -> int:
    return _integer(text, 1, "a positive integer")


def _non_negative(text: str) -> int:
    return _integer(text, 0, "an integer >= 0")


def _integer(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _load_state_dict(path: str, flag: str) -> Any:
    """A state dict from ``torch.load`` (weights only: a .pt can hold pickled code), or one clear error."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ValueError(
            f"{flag} {path} is not a torch.save file of tensors only ({type(exc).__name__}); save one with "
            "torch.save(model.state_dict(), path)"
        ) from exc
    if not isinstance(state, dict):
        raise ValueError(f"{flag} {path} holds a {type(state).__name__}, not a state dict; save model.state_dict()")
    return state


def _parse_kwargs(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(  # noqa: B904  (argparse prints only the message)
            f"--model-kwargs must be a JSON object, e.g. '{{\"width_mult\": 0.5}}': {exc}"
        )
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--model-kwargs must be a JSON object")
    return value


def _load_model(args: argparse.Namespace) -> Any:
    import torch

    from sdk_tools.models import build_model

    # A fixed seed: the same command exports the same initial weights (reproducible bundles; the planner's
    # cache is keyed by the weights).
    torch.manual_seed(args.init_seed)
    model = build_model(args.model, **args.model_kwargs)
    if args.weights:
        try:
            model.load_state_dict(_load_state_dict(args.weights, "--weights"))
        except RuntimeError as exc:  # missing/unexpected keys, shape mismatches
            raise ValueError(f"--weights {args.weights} does not fit {args.model}: {exc}") from exc
    return model


def _optimizer(args: argparse.Namespace) -> Any:
    from exporters import OptimizerConfig

    return OptimizerConfig(kind=args.optimizer, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def _plan(args: argparse.Namespace) -> Any:
    from exporters.plan import TrainingPlan
    from exporters.techniques import FreezeConfig, FusedUpdateConfig, Int8WeightsConfig, LoraConfig, RecomputeConfig

    configs: list[Any] = [FreezeConfig(tuple(args.trainable), args.last_blocks, args.bias_only), _speed(args)]
    if args.recompute:
        configs.append(RecomputeConfig(int(args.recompute) if args.recompute.isdigit() else args.recompute))
    if args.lora_rank:
        configs.append(LoraConfig(args.lora_rank, args.lora_alpha, tuple(args.lora_target or ("*",))))
    if args.int8_weights:
        configs.append(Int8WeightsConfig(tuple(args.int8_target or ("*",)), not args.int8_per_tensor))
    if args.fused_update:
        configs.append(FusedUpdateConfig(args.fused_update))
    return TrainingPlan(*configs, *args.technique, optimizer=_optimizer(args), micro_batches=args.micro_batches)


def _parse_technique(text: str) -> Any:
    """``--technique NAME`` or ``NAME=JSON``: any registered technique's config (its defaults, or from JSON)."""
    from exporters.technique import from_record

    name, _, config = text.partition("=")
    try:
        return from_record(name, json.loads(config) if config else {})
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--technique {name}=JSON: the config is not JSON ({exc})") from exc
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise argparse.ArgumentTypeError(f"--technique {text}: {_one_line(exc)} (see 'memwall techniques')") from exc


def _speed(args: argparse.Namespace) -> Any:
    """ExecuTorch speed routes: on by default for ExecuTorch (each where it applies), off for ONNX Runtime."""
    from exporters.techniques.speed_routes import default_speed_routes

    return default_speed_routes(args.backend, args.speed_routes)


def _export_model(args: argparse.Namespace, out: str | Path) -> Bundle:
    from exporters import ModelSpec
    from exporters.plan import export_plan

    return export_plan(
        _load_model(args),
        out,
        _plan(args),
        sample_shape=args.input_shape,
        batch_size=args.batch,
        backend=args.backend,
        loss=args.loss,
        name=getattr(args, "name", None),
        model_spec=ModelSpec(args.model, args.model_kwargs),
        overwrite=getattr(args, "force", False),
        verify=getattr(args, "verify", True),
    )


def _planner(args: argparse.Namespace) -> Any:
    from exporters import ModelSpec
    from sdk_tools.planner import Planner

    return Planner(
        _load_model(args),
        args.input_shape,
        args.batch,
        args.backend,
        _optimizer(args),
        Path(args.work_dir),
        model_spec=ModelSpec(args.model, args.model_kwargs),
        loss=args.loss,
        speed=_speed(args),
        lossless=args.lossless,
        workers=getattr(args, "workers", 1),
    )


def cmd_export(args: argparse.Namespace) -> int:
    if args.budget is None:
        bundle = _export_model(args, args.out)
    else:
        from sdk_tools.api import export_within_budget

        bundle, plan = export_within_budget(
            _planner(args), Path(args.out), args.budget, margin=args.margin, overwrite=args.force
        )
        print(f"plan for {args.budget / 2**20:.1f} MiB: {plan.describe()}", file=sys.stderr)
    if args.json:
        _print_json({"bundle": str(bundle.directory), "manifest": bundle.manifest.to_json()})
    else:
        print(describe_bundle(bundle))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from sdk_tools.planner import format_report

    report = _planner(args).search(args.budget, margin=args.margin, top=args.top)
    if args.json:
        _print_json(report.to_json())
    else:
        print(format_report(report))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    import tempfile

    from exporters.bundle import load_bundle
    from sdk_tools.analyze import analyze_bundle, format_analysis, plot_analysis

    with tempfile.TemporaryDirectory(prefix="memwall-analyze-") as tmp:
        if args.bundle:
            bundle = load_bundle(args.bundle)
        elif args.model and args.input_shape:
            bundle = _export_model(args, Path(tmp) / "bundle")
        else:
            raise ValueError("analyze a bundle (memwall analyze BUNDLE) or a model (--model M --input-shape S)")
        analysis = analyze_bundle(bundle)
        plot = plot_analysis(analysis, Path(args.plot)) if args.plot else None
    if args.json:
        _print_json({**analysis.to_json(), "plot": str(plot) if plot else None})
    else:
        print(format_analysis(analysis))
        if plot:
            print(f"plot: {plot}")
    return 0


def describe_bundle(bundle: Bundle) -> str:
    m = bundle.manifest
    mem = m.memory
    trainable = sum(p.numel for p in m.trainable)
    lines = [
        f"bundle      {bundle.directory}  (schema v{m.schema_version}, manifest sha256 {bundle.manifest_sha256[:12]})",
        f"name        {m.name}   backend {m.backend}   by {m.created_by}",
        f"model       {m.model.get('spec')} {json.dumps(m.model.get('kwargs', {}))}",
        f"input       {m.inputs[0].name} {m.inputs[0].shape} {m.inputs[0].dtype}; "
        f"label {m.labels.shape} {m.labels.dtype}; loss {m.loss}",
        f"classes     {len(m.classes)}: {', '.join(m.classes[:10])}{' ...' if len(m.classes) > 10 else ''}",
        f"training    batch {m.training['batch_size']} in {m.training['micro_batches']} micro-batch(es); "
        f"optimizer {json.dumps(m.optimizer)}",
        f"parameters  {trainable:,} trainable in {len(m.trainable)} tensors, {m.frozen_parameter_count:,} frozen",
        f"techniques  {', '.join(t['name'] for t in m.techniques) or 'none'}",
        "files",
        *(
            f"  {role:<16} {f.path:<28} {f.bytes / 2**20:8.2f} MiB  sha256 {f.sha256[:12]}"
            for role, f in m.files.items()
        ),
        "memory (predicted)",
        *(
            f"  {label:<28} {value / 2**20:8.2f} MiB"
            for label, value in (
                ("planned arena", mem.planned_arena_bytes),
                ("program files", mem.program_bytes),
                ("gradients (runner copies)", mem.gradient_bytes),
                ("optimizer state", mem.optimizer_state_bytes),
                ("runtime overhead", mem.runtime_overhead_bytes),
                ("predicted peak", mem.predicted_peak_bytes),
                ("all parameters + buffers", mem.parameter_bytes),
                ("trainable parameters", mem.trainable_parameter_bytes),
            )
        ),
    ]
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    from exporters.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    if args.json:
        _print_json({"manifest_sha256": bundle.manifest_sha256, "manifest": bundle.manifest.to_json()})
    else:
        print(describe_bundle(bundle))
    return 0


def _train_config(args: argparse.Namespace, **overrides: Any) -> Any:
    from sdk_tools.runner import TrainConfig

    return TrainConfig(
        steps=args.steps,
        data=args.data,
        split=args.split,
        eval_split=args.eval_split or None,
        eval_samples=args.eval_samples,
        seed=args.seed,
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        **overrides,
    )


def cmd_train(args: argparse.Namespace) -> int:
    from exporters.bundle import load_bundle
    from sdk_tools.runner import train

    bundle = load_bundle(args.bundle)
    result = train(bundle, _train_config(args, resume=args.resume, checkpoint_every=args.checkpoint_every))
    if args.json:
        _print_json(result.to_json())
    else:
        before = "-" if result.accuracy_before is None else f"{result.accuracy_before:.1%}"
        after = "-" if result.accuracy_after is None else f"{result.accuracy_after:.1%}"
        print(
            f"trained {result.steps_run} steps ({result.total_steps} in total), loss {_loss(result.losses[0])} -> "
            f"{_loss(result.losses[-1])}, {result.steps_per_second:.2f} steps/s\n"
            f"accuracy on {args.eval_split}: {before} -> {after}\ncheckpoint {result.checkpoint}"
        )
    return _diverged(args, result.diverged_at_step, result.checkpoint)


def _loss(value: float | None) -> str:
    return "not finite" if value is None else f"{value:.4f}"


def _diverged(args: argparse.Namespace, step: int | None, checkpoint: str | None) -> int:
    """Exit status 2 with one line when training stopped on a non-finite loss or weight, else 0."""
    if step is None:
        return 0
    kept = f"the checkpoint {checkpoint} is the last good one" if checkpoint else "no checkpoint was written"
    print(
        f"memwall {args.command}: error: training diverged at step {step} (loss or weights not finite); {kept}. "
        "Lower the learning rate (re-export with a smaller --lr) or check the data for extreme values",
        file=sys.stderr,
    )
    return 2


def cmd_pull(args: argparse.Namespace) -> int:
    import torch

    from exporters.bundle import load_bundle
    from exporters.training_graph import strip_prefix
    from sdk_tools.runner.checkpoint import default_checkpoint_path, load_checkpoint

    if not (args.out or args.onnx):
        raise ValueError("say what to write: --out state.pt (PyTorch) and/or --onnx model.onnx (ONNX Runtime bundles)")
    bundle = load_bundle(args.bundle)
    # Every argument is checked before the checkpoint is read.
    if args.onnx and bundle.manifest.backend != "onnxruntime":
        raise ValueError("--onnx needs an onnxruntime bundle; for ExecuTorch use --out and export from PyTorch")
    from exporters.technique import foldable

    transformed = foldable(bundle.manifest.techniques)
    if args.out and transformed and not args.base:
        # Adapters must be merged into (and int8 weights restored from) the weights the bundle was made from.
        raise ValueError(
            f"this bundle was exported with {', '.join(sorted(transformed))}: pass --base WEIGHTS.pt (the "
            "state dict it was exported from) so pull can fold the trained tensors into the full model"
        )
    base = _load_state_dict(args.base, "--base") if args.base else None
    ckpt = load_checkpoint(Path(args.checkpoint) if args.checkpoint else default_checkpoint_path(bundle), bundle)
    summary: dict[str, Any] = {"steps": ckpt.steps}
    if args.out and transformed:
        from sdk_tools.runner.train import rebuild_trained_model

        checkpoint = Path(args.checkpoint) if args.checkpoint else None
        state = rebuild_trained_model(bundle, base, checkpoint, args.trust_bundle_code).state_dict()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, args.out)
        summary.update(out=args.out, trained_tensors=len(bundle.manifest.trainable), total_tensors=len(state))
    elif args.out:
        trained = {strip_prefix(p.name): ckpt.tensors[p.name] for p in bundle.manifest.trainable}
        state = {**base, **trained} if base else trained
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, args.out)
        summary.update(out=args.out, trained_tensors=len(trained), total_tensors=len(state))
    if args.onnx:
        from sdk_tools.runner.onnxruntime_session import OnnxRuntimeSession, export_inference_model

        session = OnnxRuntimeSession(bundle)
        session.load_state_tensors(ckpt.steps, ckpt.tensors)
        summary["onnx"] = str(export_inference_model(session, args.onnx))
    if args.json:
        _print_json(summary)
    else:
        if args.out:
            print(f"wrote {args.out}: {summary['trained_tensors']} trained tensors after {ckpt.steps} steps;")
            print("load with model.load_state_dict(torch.load(path), strict=False)")
        if args.onnx:
            print(f"wrote {args.onnx}: an inference model (input -> logits) with the trained weights")
    return 0


def cmd_techniques(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from exporters.technique import listing

    rows = listing()
    if args.json:
        _print_json([asdict(row) for row in rows])
        return 0
    for row in rows:
        old = f" (was: {', '.join(row.aliases)})" if row.aliases else ""
        print(f"{row.name:<14} {row.stage:<16} {'+'.join(row.backends):<23} v{row.version}  {row.summary}{old}")
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from sdk_tools.measure import measure_training
    from sdk_tools.memory import mib

    _check_lab_args(args)
    result = measure_training(
        args.bundle, _train_config(args, checkpoint_every=0), threads=args.threads, cap_bytes=args.cap
    )
    _report_to_lab(args, result)
    if args.json:
        _print_json(result.to_json())
    else:
        print(
            f"predicted peak {mib(result.predicted_peak_bytes)}, measured {mib(result.peak_delta_bytes)}"
            f" over a {mib(result.baseline_rss_bytes)} idle baseline "
            f"(error {result.prediction_error:+.1%}); {result.train['steps_per_second']:.2f} steps/s"
        )
        phases = ", ".join(f"{name} {mib(value)}" for name, value in result.phase_peak_delta_bytes.items())
        print(f"peak by phase: {phases}")
    return _diverged(args, result.train.get("diverged_at_step"), result.train.get("checkpoint"))


def cmd_demo(args: argparse.Namespace) -> int:
    from sdk_tools.demo import DemoConfig, format_report, run_demo

    _check_lab_args(args)
    config = DemoConfig(backend=args.backend, out_dir=Path(args.out), steps=args.steps)
    report = run_demo(config)
    _report_to_lab(args, report.measurement)
    if args.json:
        _print_json(report.to_json())
    else:
        print(format_report(report))
    return 0


def _report_to_lab(args: argparse.Namespace, measurement: Any) -> None:
    """Post to ``--lab`` when given; otherwise ``--local-lab`` records into the embedded SQLite lab."""
    from sdk_tools import host_report

    if args.lab:
        answer = host_report.post_to_lab(measurement, args.lab, args.token, args.device_id)
        print(f"[memwall] report posted to {args.lab} (id {answer.get('id')})", file=sys.stderr)
    elif args.local_lab:
        row = host_report.record_locally(measurement, Path(args.local_lab))
        print(
            f"[memwall] report {row} recorded in the local lab {args.local_lab} ('memwall lab serve')", file=sys.stderr
        )


def _check_lab_args(args: argparse.Namespace) -> None:
    """Before the run, not after it: a measurement must not be lost to a missing flag."""
    if args.lab and not (args.token and args.device_id):
        raise ValueError("--lab needs --token and --device-id (from 'memwall lab register')")


def _add_lab_args(parser: argparse.ArgumentParser, local_default: str | None) -> None:
    parser.add_argument("--lab", help="lab server URL to post the measurement to")
    parser.add_argument("--token", help="device token from 'memwall lab register'")
    parser.add_argument("--device-id", help="device id from 'memwall lab register'")
    parser.add_argument(
        "--local-lab", default=local_default, help=f"record into the embedded lab in this directory ({local_default})"
    )


def _add_train_args(parser: argparse.ArgumentParser, steps: int) -> None:
    parser.add_argument("bundle", help="bundle directory made by 'memwall export'")
    parser.add_argument("--data", default="digits", help="'digits', 'random' or a .npz with arrays x, y")
    parser.add_argument("--split", default="personal", help="training split of the digits data")
    parser.add_argument("--eval-split", default="personal_test", help="evaluation split ('' to skip)")
    parser.add_argument("--eval-samples", type=_positive, help="evaluate on the first N samples only (default: all)")
    parser.add_argument("--steps", type=_positive, default=steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", help="checkpoint file (default: BUNDLE/checkpoint.safetensors)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _parse_size(text: str) -> int:
    from sdk_tools.memory_cap import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_model_args(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--model", required=required, help="mlp | small_cnn | mobilenet_v2 | pkg.module:factory")
    parser.add_argument("--model-kwargs", type=_parse_kwargs, default={}, help="JSON kwargs for the factory")
    parser.add_argument("--weights", help="state dict (.pt) to load before export")
    parser.add_argument("--init-seed", type=int, default=0, help="seed of the initial weights (without --weights)")
    parser.add_argument("--input-shape", type=_parse_shape, required=required, help="one sample's shape, e.g. 3,32,32")
    parser.add_argument("--batch", type=_positive, default=8, help="samples per optimizer step")
    parser.add_argument("--backend", choices=("executorch", "onnxruntime"), default="executorch")
    parser.add_argument("--loss", default="cross_entropy", help="cross_entropy | mse | bce_with_logits | pkg.mod:fn")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.0)
    parser.add_argument("--weight-decay", type=float, default=0.0)


def _add_plan_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trainable", action="append", default=[], help="fnmatch pattern of parameters to train")
    parser.add_argument("--last-blocks", type=_non_negative, help="train the last K numbered blocks + head (0: head)")
    parser.add_argument("--bias-only", action="store_true", help="train every bias (TinyTL; add --trainable HEAD)")
    parser.add_argument("--recompute", help="recompute activations in backward: auto | blocks | sqrt | N segments")
    parser.add_argument("--micro-batches", type=_positive, default=1, help="split each step into this many calls")
    parser.add_argument(
        "--fused-update",
        nargs="?",
        const="input",
        choices=("input", "constant"),
        help="ExecuTorch: the optimizer step runs inside the training program (gradients die right after use); "
        "the learning rate is an input of each call (default) or a constant",
    )
    parser.add_argument("--lora-rank", type=_positive, help="LoRA adapters of this rank (the adapted layers freeze)")
    parser.add_argument("--lora-alpha", type=float, default=8.0, help="LoRA scaling numerator (alpha / rank)")
    parser.add_argument("--lora-target", action="append", help="fnmatch over module names (default: every fit)")
    parser.add_argument(
        "--int8-weights", "--int8-frozen", action="store_true", help="store frozen Linear/Conv weights as int8"
    )
    parser.add_argument("--int8-target", action="append", help="fnmatch over module names for --int8-weights")
    parser.add_argument("--int8-per-tensor", action="store_true", help="one int8 scale per tensor, not per channel")
    parser.add_argument(
        "--speed-routes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ExecuTorch: trainable convs as matmuls (1x1, KxK), frozen part on XNNPACK (default: on for executorch)",
    )
    parser.add_argument(
        "--technique",
        action="append",
        default=[],
        type=_parse_technique,
        help="any registered technique as NAME or NAME=JSON config (repeatable; list them: memwall techniques)",
    )


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a mistake prints one line (problem, then where the fix is), not the whole usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="memwall", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export a model as an on-device training bundle")
    _add_model_args(p, required=True)
    _add_plan_args(p)
    p.add_argument("--budget", type=_parse_size, help="export the best plan that fits this memory, e.g. 48MB")
    p.add_argument("--margin", type=float, default=0.1, help="with --budget: headroom for prediction error")
    p.add_argument("--work-dir", default="memwall_runs/plans", help="with --budget: cache of candidate bundles")
    p.add_argument("--lossless", action="store_true", help="with --budget: never store frozen weights as int8")
    p.add_argument("--name", help="bundle name (default: model-backend)")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument(
        "--force", action="store_true", help="replace an existing bundle (only a bundle, once the new one is complete)"
    )
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip running one training step in the runtime against eager PyTorch (README: Verified export)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("analyze", help="predicted training memory by component, layer and over the step")
    p.add_argument("bundle", nargs="?", help="a bundle directory (or describe a model with --model ...)")
    _add_model_args(p, required=False)
    _add_plan_args(p)
    p.add_argument("--plot", help="write a PNG of memory over the training step and per layer")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("plan", help="find the plans that fit a memory budget (most of the model trained first)")
    _add_model_args(p, required=True)
    p.add_argument("--budget", type=_parse_size, required=True, help="memory the app may use, e.g. 48MB")
    p.add_argument("--margin", type=float, default=0.1, help="headroom for prediction error (fraction of budget)")
    p.add_argument("--top", type=_positive, default=3, help="how many plans to show")
    p.add_argument(
        "--workers",
        type=_positive,
        default=min(2, os.cpu_count() or 1),
        help="processes searching trainable sets side by side (default: 2 where the machine has 2 cores)",
    )
    p.add_argument(
        "--speed-routes",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="export every candidate with the ExecuTorch speed routes (default: on for executorch)",
    )
    p.add_argument("--work-dir", default="memwall_runs/plans", help="cache of candidate bundles")
    p.add_argument(
        "--lossless", action="store_true", help="never store frozen weights as int8 (the planner's one lossy step)"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("inspect", help="verify a bundle and print its manifest")
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("train", help="train a bundle in its real runtime")
    _add_train_args(p, steps=100)
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    p.add_argument("--checkpoint-every", type=_non_negative, default=50, help="0: only at the end")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("pull", help="write the trained weights as a PyTorch state dict")
    p.add_argument("bundle")
    p.add_argument("--out", help="state dict file to write (.pt)")
    p.add_argument("--base", help="full state dict to overlay the trained tensors on")
    p.add_argument(
        "--trust-bundle-code",
        action="store_true",
        help="with --base: let the manifest's model spec (pkg.module:factory) be imported; only for bundles whose "
        "origin you trust (docs/security.md)",
    )
    p.add_argument("--onnx", help="ONNX Runtime bundles: write an inference model with the trained weights")
    p.add_argument("--checkpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("measure", help="train in a child process and measure peak memory")
    _add_train_args(p, steps=20)
    p.add_argument("--threads", type=_positive, default=None)
    p.add_argument("--cap", type=_parse_size, help="hard memory cap over the idle baseline, e.g. 48MB: OOM past it")
    _add_lab_args(p, local_default=None)
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("demo", help="pretrain, export, personalize on device, report (the main job)")
    p.add_argument("--backend", choices=("executorch", "onnxruntime"), default="executorch")
    p.add_argument("--steps", type=_positive, default=150)
    p.add_argument("--out", default="memwall_runs/demo")
    p.add_argument("--json", action="store_true")
    _add_lab_args(p, local_default="memwall_lab")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("techniques", help="list the registered techniques: stage, backends, version")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_techniques)

    add_lab_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    quiet_library_chatter()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (BundleError, LabClientError, ValueError, OSError, KeyError, RuntimeError) as exc:
        print(f"memwall {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"memwall {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user mistake: still one line, and the way to the traceback
        if os.environ.get("MEMWALL_DEBUG"):
            raise
        print(
            f"memwall {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} (a bug: please report "
            "it with the traceback MEMWALL_DEBUG=1 prints)",
            file=sys.stderr,
        )
        return 1


def _one_line(exc: BaseException) -> str:
    """The message on one line (KeyError quotes its key; runtimes put newlines in theirs)."""
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
