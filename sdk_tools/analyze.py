"""``memwall analyze``: a bundle's predicted training memory, by component, by layer and over the step.

Reads only the bundle: the manifest's memory estimate (what is resident besides the step's workspace) and the
exporter's memory profile (tensor lifetimes of the training step, from either backend's allocation plan).
The components add up to the manifest's predicted peak.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from exporters.bundle import Bundle
from exporters.memory_profile import MemoryProfile
from sdk_tools.memory import mib

PROFILE_ROLE = "memory_profile"
# Display order and labels; the arena's components come from the profile at its peak op.
LABELS = {
    "frozen_weights": "frozen weights (program file)",
    "program": "program file (code, initial trainable weights)",
    "trainable_weights": "trainable weights",
    "gradients": "gradients",
    "optimizer_state": "optimizer state",
    "optimizer_workspace": "optimizer workspace (app-side update)",
    "saved_activations": "saved activations",
    "workspace": "transient workspace (incl. batch, fragmentation)",
    "evaluation": "evaluation workspace (predict method)",
    "accumulation": "gradient accumulation (micro-batches)",
    "delegate": "XNNPACK workspace (outside the arena)",
    "runtime_overhead": "runtime overhead (calibrated)",
}


# Arena components the profile's timeline splits out at its peak op; the arena's rest is workspace.
ARENA_PROFILED = ("trainable_weights", "gradients", "optimizer_state", "saved_activations")


@dataclass(frozen=True)
class Analysis:
    bundle: Bundle
    components: dict[str, int]  # LABELS keys -> bytes; they sum to the predicted peak
    profile: MemoryProfile | None
    arena: dict[str, int]  # the part of each component inside the planned arena (the profile's timeline)

    @property
    def predicted_peak_bytes(self) -> int:
        return sum(self.components.values())

    def to_json(self) -> dict:
        return {
            "bundle": str(self.bundle.directory),
            "backend": self.bundle.manifest.backend,
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "components": self.components,
            "layers": [vars(layer) for layer in self.profile.layers] if self.profile else None,
        }


def load_profile(bundle: Bundle) -> MemoryProfile | None:
    if PROFILE_ROLE not in bundle.manifest.files:
        return None
    return MemoryProfile.from_json(json.loads(bundle.path(PROFILE_ROLE).read_text()))


def analyze_bundle(bundle: Bundle) -> Analysis:
    mem = bundle.manifest.memory
    profile = load_profile(bundle)
    if profile is not None:
        at_peak = profile.peak_components()
        arena = {key: at_peak.get(key, 0) for key in ARENA_PROFILED}
        arena["workspace"] = mem.planned_arena_bytes - sum(arena.values())
    else:
        # A bundle exported before profiles existed: the arena is one figure with no split by component.
        arena = {"workspace": mem.planned_arena_bytes}
    frozen = min(mem.frozen_parameter_bytes, mem.program_bytes)
    components = {
        "frozen_weights": frozen,
        "program": mem.program_bytes - frozen,
        **arena,
        # App-side state (the manifest's) plus, with the fused update, the state buffers in the arena.
        "optimizer_state": mem.optimizer_state_bytes + arena.get("optimizer_state", 0),
        "optimizer_workspace": mem.optimizer_workspace_bytes,
        "evaluation": mem.evaluation_arena_bytes,
        "accumulation": mem.gradient_accumulation_bytes,
        "delegate": mem.delegate_bytes,
        "runtime_overhead": mem.runtime_overhead_bytes,
    }
    ordered = {key: components.get(key, 0) for key in LABELS}
    return Analysis(bundle, ordered, profile, arena)


def format_analysis(analysis: Analysis) -> str:
    m = analysis.bundle.manifest
    total = analysis.predicted_peak_bytes
    lines = [
        f"{m.name}: {m.backend}, batch {m.training['batch_size']} in {m.training['micro_batches']} micro-batch(es), "
        f"{sum(p.numel for p in m.trainable):,} trainable / {m.frozen_parameter_count:,} frozen parameters, "
        f"techniques: {', '.join(t['name'] for t in m.techniques) or 'none'}",
        f"{'component':<50} {'MiB':>9} {'share':>7}",
    ]
    for key, value in analysis.components.items():
        if value:
            lines.append(f"{LABELS[key]:<50} {value / 2**20:9.2f} {value / total:7.1%}")
    lines.append(f"{'predicted peak':<50} {total / 2**20:9.2f}")
    profile = analysis.profile
    if profile is None:
        lines.append(
            "(no per-layer breakdown or timeline: the bundle carries no memory profile; re-export it to get one)"
        )
        return "\n".join(lines)
    lines += [
        "",
        f"training step: {len(profile.ops)} ops, backward from op {profile.backward_start}; arena "
        f"{mib(profile.arena_bytes)} (peak of live tensors {mib(profile.peak_live_bytes)} at op {profile.peak_op}, "
        f"{profile.ops[profile.peak_op]})",
    ]
    # Optimizer state lives in the arena only with the fused update: a column only where some layer has it.
    state = any(layer.optimizer_state_bytes for layer in profile.layers)
    header = f"{'layer':<22} {'trainable':>10} {'frozen':>10} {'gradients':>10} {'saved act.':>10}"
    lines.append(header + (f" {'opt. state':>10}" if state else "") + "   (MiB)")
    for layer in profile.layers:
        row = f"{layer.name:<22}" + "".join(
            f" {value / 2**20:10.3f}"
            for value in (
                layer.trainable_weight_bytes,
                layer.frozen_weight_bytes,
                layer.gradient_bytes,
                layer.saved_activation_bytes,
                *((layer.optimizer_state_bytes,) if state else ()),
            )
        )
        lines.append(row)
    return "\n".join(lines)


def plot_analysis(analysis: Analysis, path: Path) -> Path:
    """A PNG: memory over the training step (stacked by component) and saved activations per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profile = analysis.profile
    fig, axes = plt.subplots(2 if profile else 1, 1, figsize=(11, 8 if profile else 4), squeeze=False)
    ax = axes[0][0]
    resident = {
        k: v - analysis.arena.get(k, 0) for k, v in analysis.components.items() if v - analysis.arena.get(k, 0) > 0
    }
    if profile:
        steps = range(len(profile.ops))
        base = sum(resident.values())
        layers = [[v / 2**20 for v in [base] * len(profile.ops)]]
        labels = ["resident: " + ", ".join(LABELS[k].split(" (")[0] for k in resident)]
        for component in (*ARENA_PROFILED, "inputs", "workspace"):
            layers.append([v / 2**20 for v in profile.timeline.get(component, [0] * len(profile.ops))])
            labels.append(component.replace("_", " "))
        ax.stackplot(steps, layers, labels=labels, alpha=0.85)
        ax.axvline(profile.backward_start, color="black", linestyle=":", label="backward starts")
        ax.axhline(analysis.predicted_peak_bytes / 2**20, color="red", linestyle="--", label="predicted peak")
        ax.set_xlabel("op in the training step")
        ax.set_ylabel("MiB")
        ax.set_title(f"{analysis.bundle.manifest.name}: predicted memory over one training step")
        ax.legend(loc="upper left", fontsize=8)
        bars = axes[1][0]
        names = [layer.name for layer in profile.layers]
        saved = [layer.saved_activation_bytes / 2**20 for layer in profile.layers]
        weights = [layer.trainable_weight_bytes / 2**20 for layer in profile.layers]
        bars.bar(names, saved, label="saved activations")
        bars.bar(names, weights, bottom=saved, label="trainable weights")
        bars.set_ylabel("MiB")
        bars.set_title("per layer")
        bars.tick_params(axis="x", rotation=60, labelsize=7)
        bars.legend(fontsize=8)
    else:
        keys = [k for k, v in analysis.components.items() if v]
        ax.barh([LABELS[k] for k in keys], [analysis.components[k] / 2**20 for k in keys])
        ax.set_xlabel("MiB")
        ax.set_title(f"{analysis.bundle.manifest.name}: predicted peak {mib(analysis.predicted_peak_bytes)}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
