"""Fingerprints of the reference bundles: the hash of every program file and the manifest's memory prediction.

    PYTHONPATH=<checkout> python benchmarks/bundle_identity.py --out fingerprints.json
    python benchmarks/bundle_identity.py --compare before.json after.json  (--models mlp small_cnn: fewer)

A refactoring of the export path (issue 14: the technique registry) must leave every bundle as it was: run this
with the old checkout and the new one on ``PYTHONPATH`` and compare. Each reference model (tests/conftest.py) is
exported with each plan of ``benchmarks/verify_cost.py`` plus LoRA + freeze + int8 with the speed routes (the
CLI's combination), without verification (it does not change the files; only the manifest's ``verification``).
The manifests are compared whole except ``verification`` and ``created_by``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from exporters import ModelSpec
from exporters.bundle import MANIFEST_NAME
from exporters.plan import TrainingPlan, export_plan
from exporters.techniques import FreezeConfig, Int8WeightsConfig, LoraConfig
from exporters.techniques.speed_routes import SpeedConfig
from tests.conftest import BATCH, REFERENCE_CASES, make_model

sys.path.insert(0, str(Path(__file__).parent))
from verify_cost import KINDS, SGD  # a sibling script, not a package

PLANS: dict[str, tuple[str, TrainingPlan]] = {
    **KINDS,
    "LoRA r2 + head + int8, speed routes": (
        "executorch",
        TrainingPlan(
            FreezeConfig(("classifier.*",)),
            SGD,
            lora=LoraConfig(2),
            int8_frozen=Int8WeightsConfig(),  # the old keyword: the script also runs on the code before the registry
            speed=SpeedConfig(),
        ),
    ),
}
IGNORED = ("verification", "created_by")


def fingerprints(models: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="memwall-identity-") as tmp:
        for model_name in models:
            kwargs, shape = REFERENCE_CASES[model_name]
            for kind, (backend, plan) in PLANS.items():
                key = f"{model_name} | {kind}"
                out = Path(tmp) / str(len(found))
                try:
                    export_plan(
                        make_model(model_name), out, plan, sample_shape=shape, batch_size=BATCH, backend=backend,
                        model_spec=ModelSpec(model_name, kwargs), verify=False,
                    )  # fmt: skip
                except ValueError as exc:  # a technique this model cannot take (LoRA without 1x1 convs...)
                    found[key] = {"refused": str(exc)}
                    continue
                manifest = json.loads((out / MANIFEST_NAME).read_text())
                files = {
                    p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                    for p in sorted(out.iterdir())
                    if p.name != MANIFEST_NAME
                }
                found[key] = {"files": files, "manifest": {k: v for k, v in manifest.items() if k not in IGNORED}}
                print(key, "ok", file=sys.stderr, flush=True)
    return found


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    differences = []
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            differences.append(key)
    return differences


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path)
    parser.add_argument("--models", nargs="+", default=list(REFERENCE_CASES), choices=list(REFERENCE_CASES))
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(p.read_text()) for p in args.compare)
        differences = compare(before, after)
        for key in differences:
            print(f"differs: {key}")
        print(f"{len(before)} bundles before, {len(after)} after, {len(differences)} differ")
        return 1 if differences else 0
    args.out.write_text(json.dumps(fingerprints(args.models), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
