"""Coverage-guided fuzzing (atheris, libFuzzer) of the readers of untrusted files: manifest, checkpoint, data file.

    pip install -e '.[fuzz]'
    python benchmarks/fuzz_readers.py --seconds 300          # each target 300 s; writes benchmarks/RESULTS-fuzz.md

Each target (tests/fuzz_targets.py) runs in its own child process for a bounded time, starting from valid seed
files. An input is a finding when the reader lets anything escape but its documented refusal (or breaks a promise
about what it returns, or crashes the process): it is saved as ``tests/fuzz_findings/<target>-<sha256>.bin``,
which tests/test_reader_properties.py replays from then on, and the run goes on. The results file says how long
each target ran, how many inputs it tried and what it found.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = ROOT / "tests" / "fuzz_findings"
TARGETS = ("manifest", "checkpoint", "npz")


def run_target(name: str, seconds: int, stats_path: Path) -> None:
    """The child: fuzz one target until libFuzzer's time limit ends the process."""
    import atheris

    sys.path.insert(0, str(ROOT / "tests"))
    with atheris.instrument_imports(include=["exporters", "sdk_tools", "fuzz_targets", "safetensors", "numpy"]):
        from fuzz_targets import Refused, make_targets
    workdir = Path(tempfile.mkdtemp(prefix=f"memwall-fuzz-{name}-"))
    targets = make_targets(workdir)
    target = targets.by_name()[name]
    corpus = workdir / "corpus"
    corpus.mkdir()
    for index, seed in enumerate(targets.seeds(name)):
        (corpus / f"seed-{index}").write_bytes(seed)
    stats = {"target": name, "inputs": 0, "refused": 0, "accepted": 0, "finding_inputs": 0, "findings": []}
    stats["started"] = time.time()
    seen: set[str] = set()

    def write_stats() -> None:
        stats["seconds"] = round(time.time() - stats["started"], 1)
        stats_path.write_text(json.dumps(stats))

    last_write = [0.0]

    def one_input(data: bytes) -> None:
        stats["inputs"] += 1
        try:
            target(data)
            stats["accepted"] += 1
        except Refused:
            stats["refused"] += 1
        except Exception as exc:  # a finding: the first input of each kind is kept, and fuzzing goes on
            where = traceback.extract_tb(exc.__traceback__)[-1]
            kind = f"{type(exc).__name__} at {Path(where.filename).name}:{where.lineno}"
            stats["finding_inputs"] += 1
            if kind not in seen:
                seen.add(kind)
                digest = hashlib.sha256(data).hexdigest()[:16]
                FINDINGS.mkdir(parents=True, exist_ok=True)
                (FINDINGS / f"{name}-{digest}.bin").write_bytes(data)
                stats["findings"].append(
                    {"input": f"{name}-{digest}.bin", "error": f"{type(exc).__name__}: {exc}"[:300], "at": kind}
                )
            write_stats()
        if time.time() - last_write[0] > 1.0:
            last_write[0] = time.time()
            write_stats()

    write_stats()
    # -timeout: an input that takes over 10 s is a finding too (libFuzzer reports it and stops).
    atheris.Setup(
        [sys.argv[0], f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=4096", str(corpus)],
        one_input,
    )
    atheris.Fuzz()


def fuzz(name: str, seconds: int) -> dict:
    """Run one target in a child; a crash of the child (a signal) is a finding too."""
    with tempfile.TemporaryDirectory(prefix="memwall-fuzz-") as tmp:
        stats_path = Path(tmp, "stats.json")
        started = time.time()
        proc = subprocess.run(
            [sys.executable, "-P", __file__, "--child", name, "--seconds", str(seconds), "--stats", str(stats_path)],
            cwd=tmp,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))},
            capture_output=True,
            text=True,
        )
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {"inputs": 0, "findings": []}
        stats.update(target=name, seconds=round(time.time() - started, 1), exit=proc.returncode)
        if proc.returncode not in (0,):
            tail = [line for line in proc.stderr.splitlines() if "ERROR" in line or "Error" in line][-3:]
            stats["findings"].append({"input": "(libFuzzer crash/timeout artifact)", "error": " / ".join(tail)[:300]})
        return stats


def write_results(rows: list[dict], path: Path, seconds: int) -> None:
    lines = [
        "# Fuzzing the readers of untrusted files",
        "",
        f"`python benchmarks/fuzz_readers.py --seconds {seconds}` on {datetime.now(UTC):%Y-%m-%d} (atheris/libFuzzer, "
        "coverage-guided, seeded with valid files; run time includes the child's imports; a shared 2-core VM). "
        "A finding is any exception but the reader's "
        "documented refusal, a broken promise about what it returned, or a crash; findings are kept in "
        "`tests/fuzz_findings/` and replayed by `tests/test_reader_properties.py`.",
        "",
        "| target | reader | run time (s) | inputs tried | refused | accepted | inputs with a finding | kinds |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    readers = {
        "manifest": "`exporters.bundle.load_bundle`",
        "checkpoint": "`sdk_tools.runner.checkpoint.load_checkpoint`",
        "npz": "`sdk_tools.data.loading.load_npz`",
    }
    for row in rows:
        lines.append(
            f"| {row['target']} | {readers[row['target']]} | {row['seconds']} | {row['inputs']:,} | "
            f"{row.get('refused', 0):,} | {row.get('accepted', 0):,} | {row.get('finding_inputs', 0):,} | "
            f"{len(row['findings'])} |"
        )
    findings = [(row["target"], f) for row in rows for f in row["findings"]]
    lines += ["", "## Findings", ""]
    lines += [f"- {target}: `{f['input']}` {f['error']} ({f.get('at', '')})" for target, f in findings] or ["None."]
    lines += ["", "Each kept input stays in `tests/fuzz_findings/` as a regression test once the reader is fixed."]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=300, help="fuzzing time per target")
    parser.add_argument("--targets", nargs="*", default=list(TARGETS), choices=TARGETS)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS-fuzz.md"))
    parser.add_argument("--child", choices=TARGETS, help=argparse.SUPPRESS)
    parser.add_argument("--stats", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_target(args.child, args.seconds, Path(args.stats))
        return 0
    rows = []
    for name in args.targets:
        row = fuzz(name, args.seconds)
        rows.append(row)
        print(f"{name:<11} {row['seconds']:>7.1f} s {row['inputs']:>10,} inputs {len(row['findings'])} findings")
    write_results(rows, Path(args.out), args.seconds)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
