"""Property tests of the readers of untrusted files: manifest, checkpoint, data file (docs/security.md).

For every input hypothesis makes, a reader either refuses it with its documented error or returns something that
keeps its promises (tests/fuzz_targets.py says which); no other exception escapes. The inputs are random bytes,
seed files with bytes changed, and valid documents with one field replaced by any JSON value. The inputs the
fuzzer (benchmarks/fuzz_readers.py) once found are replayed from tests/fuzz_findings/.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fuzz_targets import CLASSES, SAMPLE_SHAPE, Refused, Targets, check_split, make_targets, replay
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sdk_tools.data.loading import DataError, load_npz

FINDINGS = Path(__file__).parent / "fuzz_findings"
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Targets:
    return make_targets(tmp_path_factory.mktemp("readers"))


def flipped(seed: bytes) -> st.SearchStrategy[bytes]:
    """``seed`` with a few bytes overwritten, cut short, or with bytes appended."""
    edits = st.lists(st.tuples(st.integers(0, len(seed) - 1), st.integers(0, 255)), min_size=1, max_size=8)

    def apply(args: tuple[list[tuple[int, int]], int, bytes]) -> bytes:
        changes, cut, tail = args
        data = bytearray(seed)
        for index, value in changes:
            data[index] = value
        return bytes(data[: max(cut, 1)]) + tail

    return st.tuples(edits, st.integers(0, len(seed)), st.binary(max_size=16)).map(apply)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def replaced_field(seed: bytes) -> st.SearchStrategy[bytes]:
    """The seed document with one value (at any depth) replaced by any JSON value."""
    document = json.loads(seed)

    def paths(node: Any, prefix: tuple) -> list[tuple]:
        found = [prefix]
        if isinstance(node, dict):
            for key, value in node.items():
                found += paths(value, (*prefix, key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                found += paths(value, (*prefix, index))
        return found

    def apply(args: tuple[tuple, Any]) -> bytes:
        path, value = args
        copy = json.loads(seed)
        if not path:
            return json.dumps(value).encode()
        node = copy
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return json.dumps(copy).encode()

    return st.tuples(st.sampled_from(paths(document, ())), JSON).map(apply)


def accepted_or_refused(target: Any, data: bytes) -> None:
    try:
        target(data)
    except Refused as exc:
        assert "\n" not in str(exc)  # one line, for a user


@PROPERTY
@given(data=st.data())
def test_manifest_reader_refuses_or_accepts_consistently(targets: Targets, data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(targets.manifest_seeds))
    raw = data.draw(st.one_of(st.binary(max_size=256), flipped(seed), replaced_field(seed)))
    accepted_or_refused(targets.manifest, raw)


@PROPERTY
@given(data=st.data())
def test_checkpoint_reader_refuses_or_accepts_consistently(targets: Targets, data: st.DataObject) -> None:
    seed = targets.checkpoint_seed
    header_end = 8 + int.from_bytes(seed[:8], "little")
    # Most mutations land in the header (where the reader's decisions are); some in the tensor bytes.
    head = flipped(seed[:header_end]).map(lambda head: head + seed[header_end:])
    raw = data.draw(st.one_of(st.binary(max_size=64), head, flipped(seed)))
    accepted_or_refused(targets.checkpoint, raw)


SAMPLE_DTYPES = st.sampled_from(["float32", "float64", "float16", "int64", "uint8", "bool", "complex64", "U3"])
LABEL_DTYPES = st.sampled_from(["int64", "int32", "uint8", "float32", "bool", "int8"])


@PROPERTY
@given(
    x=SAMPLE_DTYPES.flatmap(
        lambda dtype: hnp.arrays(dtype, st.sampled_from([(3, *SAMPLE_SHAPE), (3, 2, 8, 8), (0, *SAMPLE_SHAPE), (3,)]))
    ),
    y=LABEL_DTYPES.flatmap(lambda dtype: hnp.arrays(dtype, st.sampled_from([(3,), (2,), (3, 1), ()]))),
)
def test_data_reader_refuses_or_returns_clean_batches(x: np.ndarray, y: np.ndarray) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "data.npz")
        np.savez(path, x=x, y=y)
        try:
            split = load_npz(path, SAMPLE_SHAPE, CLASSES)
        except DataError as exc:
            assert "\n" not in str(exc)
            return
    check_split(split.images, split.labels)


@PROPERTY
@given(data=st.data())
def test_data_reader_on_corrupted_files(targets: Targets, data: st.DataObject) -> None:
    raw = data.draw(st.one_of(st.binary(max_size=128), flipped(targets.npz_seed)))
    accepted_or_refused(targets.npz, raw)


@pytest.mark.parametrize(
    "finding", sorted(FINDINGS.glob("*.bin")) if FINDINGS.is_dir() else [], ids=lambda path: path.name
)
def test_fuzzer_findings_stay_fixed(targets: Targets, finding: Path) -> None:
    """Each input the fuzzer once found (``<target>-<sha256 prefix>.bin``) is now refused or accepted cleanly."""
    replay(targets, finding.name.split("-", 1)[0], finding.read_bytes())
