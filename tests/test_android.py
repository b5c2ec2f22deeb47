"""The Android demo (android_demo/) as far as this machine can check it without the Android Gradle Plugin, an
emulator or a phone: its setup script builds the pure Kotlin core and runs its JUnit tests (golden vectors shared
with the Python runner), the core's lab client posts to a real ``memwall lab serve`` (offline queue, crash
recovery), checkpoints move between the Kotlin and Python runners, and the app module compiles against the real
Android and runtime APIs into a signed debug APK that apksigner and aapt2 accept.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from exporters.bundle import ParameterSpec
from exporters.config import OptimizerConfig
from sdk_tools.lab.client import bundle_section, get_json
from sdk_tools.runner.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from sdk_tools.runner.optim import Optimizer

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "android_demo"
BUILD = DEMO / "build"
GOLDEN = REPO / "tests" / "golden"
TOOLS = Path(os.environ.get("MEMWALL_ANDROID_HOME", "/opt/memwall/android"))
STDLIB = TOOLS / "kotlinc" / "lib" / "kotlin-stdlib.jar"
JUNIT = "/usr/share/java/junit4.jar:/usr/share/java/hamcrest.jar"
TOOL_TIMEOUT_S = 120
# runtime/ (the native helper's C++ core); MEMWALL_RUNTIME_DIR points at another checkout's.
RUNTIME = Path(os.environ.get("MEMWALL_RUNTIME_DIR", REPO / "runtime"))
KOTLIN_FLAGS = ["-Werror", "-jvm-target", "1.8", "-no-reflect"]


def _lab_server_class() -> Any:
    """tests/lab/conftest.py's LabServer: the lab as a user starts it (a subprocess on loopback)."""
    spec = importlib.util.spec_from_file_location("lab_conftest", REPO / "tests" / "lab" / "conftest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module.LabServer


@pytest.fixture(scope="module")
def built() -> Path:
    """android_demo/setup.sh: the toolchain once per machine, then only what changed (seconds when up to date)."""
    env = {**os.environ, "MEMWALL_PYTHON": sys.executable}
    result = subprocess.run([str(DEMO / "setup.sh")], env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"setup.sh failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return BUILD


def kotlin(built: Path, *args: str, check: bool = True) -> str:
    """Runs the core's HostTools (android_demo/core/src/test/.../HostTools.kt) on the JVM."""
    classpath = f"{built / 'core.jar'}:{built / 'core-tests.jar'}:{STDLIB}"
    command = ["java", "-cp", classpath, f"-Dmemwall.golden={GOLDEN}", "dev.memwall.core.HostTools", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    if check:
        assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_core_junit_tests_pass(built: Path) -> None:
    test_dir = DEMO / "core" / "src" / "test" / "kotlin"
    classes = sorted(str(p.relative_to(test_dir).with_suffix("")).replace("/", ".") for p in test_dir.rglob("*Test.kt"))
    classpath = f"{built / 'core.jar'}:{built / 'core-tests.jar'}:{STDLIB}:{JUNIT}"
    result = subprocess.run(
        ["java", "-cp", classpath, f"-Dmemwall.golden={GOLDEN}", "org.junit.runner.JUnitCore", *classes],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    passed = int(re.search(r"OK \((\d+) tests\)", result.stdout).group(1))  # type: ignore[union-attr]
    assert passed >= 20


@pytest.mark.parametrize("name", sorted(p.name for p in GOLDEN.glob("manifest-*.json") if "bad" not in p.name))
def test_kotlin_report_bundle_section_equals_the_python_one(built: Path, name: str) -> None:
    assert json.loads(kotlin(built, "bundle-section", str(GOLDEN / name))) == bundle_section(GOLDEN / name)


def with_native_prediction(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with memory.by_runtime as the exporter writes it: the host's pair is the top-level one."""
    memory = manifest["memory"]
    host = {k: memory[k] for k in ("runtime_overhead_bytes", "predicted_peak_bytes")}
    shared = host["predicted_peak_bytes"] - host["runtime_overhead_bytes"]
    native = {"runtime_overhead_bytes": 1 << 20, "predicted_peak_bytes": shared + (1 << 20)}
    memory["by_runtime"] = {"python_host": host, "memwall_native": native}
    return manifest


@pytest.mark.parametrize("runtime", [None, "python_host", "memwall_native", "executorch_training_module"])
def test_kotlin_report_carries_the_prediction_for_its_runtime(built: Path, tmp_path: Path, runtime: str | None) -> None:
    """A manifest with memory.by_runtime: the run's runtime picks its pair; one it has none for gets the top-level."""
    golden = GOLDEN / "manifest-executorch.json"
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(with_native_prediction(json.loads(golden.read_text()))))
    section = json.loads(kotlin(built, "bundle-section", str(manifest), *([runtime] if runtime else [])))
    assert section == bundle_section(manifest, runtime)
    top_level = json.loads(manifest.read_text())["memory"]["predicted_peak_bytes"]
    assert (section["predicted_peak_bytes"] == top_level) == (runtime != "memwall_native")
    # A manifest written before by_runtime: the top-level pair, whatever the runtime.
    assert json.loads(kotlin(built, "bundle-section", str(golden), "memwall_native")) == bundle_section(golden)


def test_kotlin_refuses_an_unknown_schema_version(built: Path) -> None:
    out = subprocess.run(
        [
            "java",
            "-cp",
            f"{built / 'core.jar'}:{built / 'core-tests.jar'}:{STDLIB}",
            "dev.memwall.core.HostTools",
            "bundle-section",
            str(GOLDEN / "manifest-bad-schema-version.json"),
        ],
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
    )
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "schema_version 2" in out.stderr and "update the app" in out.stderr


def _fc_manifest(tmp_path: Path, optimizer: OptimizerConfig) -> Path:
    """A manifest whose trainable parameters are the golden checkpoint's (model.fc.weight [2, 3], model.fc.bias)."""
    manifest = json.loads((GOLDEN / "manifest-executorch.json").read_text())
    manifest["trainable"] = [
        {"name": "model.fc.weight", "shape": [2, 3], "dtype": "float32", "numel": 6},
        {"name": "model.fc.bias", "shape": [2], "dtype": "float32", "numel": 2},
    ]
    manifest["optimizer"] = optimizer.to_json()
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path


def test_checkpoints_move_between_the_python_and_kotlin_runners(built: Path, tmp_path: Path) -> None:
    config = OptimizerConfig(kind="adamw", lr=3e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05)
    manifest = _fc_manifest(tmp_path, config)
    sha = hashlib.sha256(manifest.read_bytes()).hexdigest()
    # load_checkpoint checks the tensors by name, shape and dtype against the bundle's trainable parameters.
    trainable = [ParameterSpec(**spec) for spec in json.loads(manifest.read_text())["trainable"]]
    bundle = SimpleNamespace(manifest_sha256=sha, manifest=SimpleNamespace(trainable=trainable))
    # Python trains 2 steps and saves; Kotlin resumes that file, takes 3 more steps, saves; Python resumes Kotlin's.
    gen = torch.Generator().manual_seed(5)
    params = {"model.fc.weight": torch.randn(2, 3, generator=gen), "model.fc.bias": torch.randn(2, generator=gen)}
    grads = [{k: torch.randn(v.shape, generator=gen) for k, v in params.items()} for _ in range(5)]
    python = Optimizer(config, params)
    for g in grads[:2]:
        python.step(g)
    state = {f"optimizer/{k}": v for k, v in python.state.items()}
    save_checkpoint(tmp_path / "python.safetensors", Checkpoint(2, 7, {**params, **state}, sha))
    steps_json = [
        {k: {"shape": list(v.shape), "values": v.reshape(-1).tolist()} for k, v in g.items()} for g in grads[2:]
    ]
    (tmp_path / "grads.json").write_text(json.dumps(steps_json))
    kotlin(
        built,
        "checkpoint-continue",
        str(manifest),
        str(tmp_path / "python.safetensors"),
        str(tmp_path / "kotlin.safetensors"),
        str(tmp_path / "grads.json"),
    )
    for g in grads[2:]:
        python.step(g)
    resumed = load_checkpoint(tmp_path / "kotlin.safetensors", bundle)  # type: ignore[arg-type]
    assert (resumed.steps, resumed.data_position) == (5, 10)
    expected = {**params, **{f"optimizer/{k}": v for k, v in python.state.items()}}
    assert sorted(resumed.tensors) == sorted(expected)
    for name, value in expected.items():
        torch.testing.assert_close(resumed.tensors[name], value, atol=1e-6, rtol=1e-5, msg=name)


def test_a_killed_run_and_an_offline_report_reach_a_real_lab_exactly_once(built: Path, tmp_path: Path) -> None:
    server = _lab_server_class()(f"sqlite:///{tmp_path / 'lab.db'}", tmp_path / "lab.log").start()
    try:
        device = json.loads(kotlin(built, "lab-register", server.url, "android-core-test"))
        # A training run that the kernel kills (as Android's low-memory killer would): no handler runs.
        journal, queue = tmp_path / "journal", tmp_path / "queue"
        run = subprocess.Popen(
            [
                "java",
                "-cp",
                f"{built / 'core.jar'}:{built / 'core-tests.jar'}:{STDLIB}",
                f"-Dmemwall.golden={GOLDEN}",
                "dev.memwall.core.HostTools",
                "run-until-killed",
                str(journal),
                device["device_id"],
                str(GOLDEN / "manifest-executorch.json"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert run.stdout is not None and run.stdout.readline().strip() == "started"
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
        server.stop()  # the phone is offline when it next starts
        limit = str(1 << 40)  # far above what the run used: a crash, not an out-of-memory kill
        args = (str(journal), str(queue), server.url, device["token"], limit)
        assert kotlin(built, "recover", *args) == "crash"
        assert kotlin(built, "recover", *args) == "none"  # found once
        assert json.loads(kotlin(built, "lab-flush", str(queue))) == {"sent": 0, "kept": 1, "rejected": 0}
        queued = next(queue.glob("*.json"))
        lost_ack = queued.read_bytes()
        server.start()
        assert json.loads(kotlin(built, "lab-flush", str(queue))) == {"sent": 1, "kept": 0, "rejected": 0}
        assert json.loads(kotlin(built, "lab-flush", str(queue))) == {"sent": 0, "kept": 0, "rejected": 0}
        # The app died after the lab stored the report but before deleting the file: the re-post is stored once.
        queued.write_bytes(lost_ack)
        assert json.loads(kotlin(built, "lab-flush", str(queue))) == {"sent": 1, "kept": 0, "rejected": 0}
        items = get_json(server.url, "/api/v1/reports", {"device": device["device_id"]})["items"]
        assert len(items) == 1
        assert items[0]["status"] == "crash"
        stored = get_json(server.url, f"/api/v1/reports/{items[0]['id']}")
        report = stored["report"]
        assert report["run"]["steps"] >= 3 and report["memory"]["peak_rss_bytes"] > report["memory"]["baseline_bytes"]
    finally:
        if server.alive():
            server.stop()


def _dex_class_names(dex: bytes) -> list[str]:
    """Type descriptors of a classes.dex (header: string_ids and type_ids tables; strings are ULEB128-prefixed)."""
    assert dex[:4] == b"dex\n"
    string_ids_off = struct.unpack_from("<I", dex, 0x3C)[0]
    type_ids_size, type_ids_off = struct.unpack_from("<II", dex, 0x40)
    names = []
    for i in range(type_ids_size):
        string_index = struct.unpack_from("<I", dex, type_ids_off + 4 * i)[0]
        offset = struct.unpack_from("<I", dex, string_ids_off + 4 * string_index)[0]
        while dex[offset] & 0x80:  # skip the ULEB128 length
            offset += 1
        offset += 1
        end = dex.index(b"\0", offset)
        names.append(dex[offset:end].decode("utf-8", "replace"))
    return names


def test_the_signed_debug_apk_is_accepted_by_apksigner_and_aapt2(built: Path, tmp_path: Path) -> None:
    apk = built / "memwall-demo-debug.apk"
    verify = subprocess.run(["apksigner", "verify", "--print-certs", str(apk)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert "CN=Android Debug" in verify.stdout
    badging = subprocess.run(["aapt2", "dump", "badging", str(apk)], capture_output=True, text=True).stdout
    assert "package: name='dev.memwall.demo'" in badging
    assert "sdkVersion:'26'" in badging
    assert "launchable-activity: name='dev.memwall.demo.MainActivity'" in badging
    assert "uses-permission: name='android.permission.INTERNET'" in badging
    shutil.unpack_archive(apk, tmp_path / "apk", format="zip")
    classes = set(_dex_class_names((tmp_path / "apk" / "classes.dex").read_bytes()))
    for own in ("MainActivity", "ExecuTorchFusedBackend", "OnnxRuntimeBackend", "NativeBackend", "DemoRun"):
        assert f"Ldev/memwall/demo/{own};" in classes
    assert "Ldev/memwall/core/Trainer;" in classes and "Lkotlin/Unit;" in classes
    # Compiled against the runtimes' real Java APIs, which the APK references but does not carry: see README.
    assert "Lorg/pytorch/executorch/training/TrainingModule;" in classes
    defined = _defined_classes((tmp_path / "apk" / "classes.dex").read_bytes())
    assert "Lorg/pytorch/executorch/training/TrainingModule;" not in defined
    assert "Ldev/memwall/demo/MainActivity;" in defined
    assert not list((tmp_path / "apk").glob("lib/**/*.so"))


def _defined_classes(dex: bytes) -> set[str]:
    """Classes the dex defines (class_defs), as opposed to the types it only references."""
    names = _dex_class_names(dex)
    class_defs_size, class_defs_off = struct.unpack_from("<II", dex, 0x60)
    return {names[struct.unpack_from("<I", dex, class_defs_off + 32 * i)[0]] for i in range(class_defs_size)}


@pytest.fixture(scope="module")
def jni_host(built: Path) -> Path:
    """libmemwall_jni.so built on the host from the app's own memwall_jni.cpp + runtime/, and the Kotlin side."""
    if not (RUNTIME / "include" / "memwall.h").is_file():
        pytest.skip(f"no native runtime at {RUNTIME} (runtime/include/memwall.h): the JNI path needs it")
    env = {**os.environ, "MEMWALL_PYTHON": sys.executable}
    # runtime/setup.sh: CMake >= 3.28 and ninja in the venv, nlohmann-json; returns at once when up to date.
    subprocess.run([str(RUNTIME / "setup.sh")], env=env, check=True, capture_output=True, timeout=1800)
    bin_dir = Path(sys.executable).parent
    build = built / "jni-host"
    import executorch

    # Configured every time (seconds): the cache must follow RUNTIME if it moved.
    subprocess.run(
        [str(bin_dir / "cmake"), "-S", str(DEMO / "app/src/main/cpp"), "-B", str(build), "-G", "Ninja",
         f"-DCMAKE_MAKE_PROGRAM={bin_dir / 'ninja'}", f"-DCMAKE_PREFIX_PATH={next(iter(executorch.__path__))}",
         f"-DMEMWALL_RUNTIME_DIR={RUNTIME}", "-DCMAKE_BUILD_TYPE=Release"],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    ninja = subprocess.run([str(bin_dir / "ninja"), "-C", str(build), "memwall_jni"], capture_output=True, text=True)
    assert ninja.returncode == 0, ninja.stdout[-4000:]
    jar = built / "jni-host.jar"
    sources = [
        DEMO / "app/src/main/kotlin/dev/memwall/demo/NativeBackend.kt",
        DEMO / "app/src/test/kotlin/dev/memwall/demo/JniHostTraining.kt",
    ]
    inputs = [*sources, built / "core.jar", built / "core-tests.jar"]
    if not jar.is_file() or jar.stat().st_mtime < max(p.stat().st_mtime for p in inputs):
        classpath = f"{built / 'core.jar'}:{built / 'core-tests.jar'}"
        kotlinc = [str(TOOLS / "kotlinc/bin/kotlinc"), *KOTLIN_FLAGS, "-cp", classpath, "-d", str(jar)]
        result = subprocess.run([*kotlinc, *map(str, sources)], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
    return build


def _samples(split: str, count: int) -> list[dict[str, Any]]:
    from sdk_tools.data.digits import load_digits_split

    data = load_digits_split(split)
    return [{"x": data.images[i].reshape(-1).tolist(), "y": int(data.labels[i])} for i in range(count)]


def test_kotlin_trains_through_jni_and_the_cpp_core(built: Path, jni_host: Path, tmp_path: Path) -> None:
    from exporters import ModelSpec, export_bundle, load_bundle
    from sdk_tools.lab.schema import validate_report
    from sdk_tools.models import build_model
    from sdk_tools.runner import TrainConfig, train

    config = OptimizerConfig(kind="adamw", lr=1e-2)
    torch.manual_seed(0)
    export_bundle(
        build_model("mlp"),
        tmp_path / "mlp",
        sample_shape=(1, 8, 8),
        batch_size=8,
        micro_batches=2,
        optimizer=config,
        model_spec=ModelSpec("mlp"),
    )
    (tmp_path / "samples.json").write_text(
        json.dumps({"train": (train_set := _samples("personal", 256)), "test": _samples("personal_test", 128)})
    )
    checkpoint = tmp_path / "mlp" / "checkpoint.safetensors"
    classpath = f"{built / 'jni-host.jar'}:{built / 'core.jar'}:{built / 'core-tests.jar'}:{STDLIB}"
    command = ["java", f"-Djava.library.path={jni_host}", "-cp", classpath, "dev.memwall.demo.JniHostTraining"]
    command += [str(tmp_path / "mlp"), str(tmp_path / "samples.json"), "30", str(checkpoint), str(uuid.uuid4())]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout)
    run = out["report"]["run"]
    losses = run["loss_curve"]
    # Eager PyTorch on the same batches (the Trainer cycles the samples in order, 4 per call, 2 calls per step).
    torch.manual_seed(0)
    eager = build_model("mlp")
    opt = torch.optim.AdamW(eager.parameters(), lr=config.lr, betas=config.betas, eps=config.eps,
                            weight_decay=config.weight_decay)  # fmt: skip
    expected = []
    for step in range(30):
        step_loss = 0.0
        for call in (2 * step, 2 * step + 1):
            batch = [train_set[(4 * call + i) % len(train_set)] for i in range(4)]
            x = torch.tensor([s["x"] for s in batch]).reshape(4, 1, 8, 8)
            loss = torch.nn.functional.cross_entropy(eager(x), torch.tensor([s["y"] for s in batch]))
            (loss / 2).backward()
            step_loss += loss.item() / 2
        opt.step()
        opt.zero_grad()
        expected.append(step_loss)
    assert losses == pytest.approx(expected, abs=1e-4), (losses, expected)
    assert sum(losses[-5:]) < sum(losses[:5])
    assert run["accuracy_after"] > run["accuracy_before"]
    assert out["data_position"] == out["resumed_data_position"] == 60  # 30 steps x 2 micro-batches
    assert out["resumed_predicts_the_same"]
    validate_report(out["report"])
    assert run["runtime"] == "memwall_native"
    native = json.loads((tmp_path / "mlp" / "manifest.json").read_text())["memory"]["by_runtime"]["memwall_native"]
    assert out["report"]["bundle"]["predicted_peak_bytes"] == native["predicted_peak_bytes"]
    # The Python host runner resumes the checkpoint the app's native path wrote.
    bundle = load_bundle(tmp_path / "mlp")
    resumed = train(bundle, TrainConfig(steps=2, resume=True, checkpoint=checkpoint, eval_split=None, progress=False))
    assert resumed.total_steps == 30 + resumed.steps_run
