"""Output tensors from a phone for drift: raw input files in, --output_filepath out, over real ADB (adb-shell) to
the emulator, whose benchmark_model stand-in runs LiteRT for real. The phone's outputs must be the host
interpreter's on the same inputs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from farmbench.devices.config import DeviceConfig
from farmbench.errors import RunnerError
from farmbench.runners.phone import PhoneSession
from farmbench.runners.tensor_io import input_bytes, split_outputs, tensor_nbytes
from farmbench.transports.adb import AdbTarget, AdbTransport, load_or_create_key
from farmbench.variants.hostrun import HostModel
from farmbench.variants.images import evaluation_images
from farmbench.variants.inspect import TensorInfo, inspect_model
from farmbench.variants.models import preprocess
from tests.conftest import GRID_FAMILY, GRID_RESOLUTION, BuiltGrid
from tests.peers.adb_emulator import AdbEmulator
from tests.peers.benchmark_model_standin import install as install_benchmark_model

pytestmark = pytest.mark.slow


def artifact(built_grid: BuiltGrid, quant: str) -> Path:
    for variant, result in zip(built_grid.variants, built_grid.results):
        if variant.quant == quant and variant.format == "tflite":
            assert result.entry is not None
            return Path(result.entry.model_path)
    raise AssertionError(f"no {quant} tflite artifact in the grid")


@pytest.fixture
def session(adb_emulator: object, tmp_path: Path) -> Iterator[PhoneSession]:
    key = tmp_path / "adbkey"
    load_or_create_key(key)
    emulator: AdbEmulator = adb_emulator(auth="accept", authorized_keys=[Path(f"{key}.pub")])  # type: ignore[operator]
    binary = install_benchmark_model(tmp_path / "tools" / "benchmark_model")
    device = DeviceConfig("phone", "adb", "test", {"benchmark_model": str(binary)})
    transport = AdbTransport(AdbTarget(host="127.0.0.1", port=emulator.port, key_path=key), device="phone")
    phone = PhoneSession(device, transport)
    phone.prepare()
    yield phone
    phone.close()


@pytest.mark.parametrize("quant", ["fp32", "int8-io"])
def test_phone_outputs_are_the_host_interpreters(session: PhoneSession, built_grid: BuiltGrid, quant: str) -> None:
    model = artifact(built_grid, quant)
    facts = inspect_model(model)
    samples = preprocess(GRID_FAMILY, evaluation_images(GRID_RESOLUTION, 6).astype(np.float32))
    remote = session.ensure_model(model, facts.sha256)
    outputs = session.output_tensors(remote, facts, samples, timeout_s=120)
    assert len(outputs) == 1 and outputs[0].shape[0] == 6 and outputs[0].dtype == np.float32
    expected = HostModel(model).run(samples)
    np.testing.assert_allclose(outputs[0].reshape(expected.shape), expected, atol=1e-6)
    # The outputs depend on the input (or drift numbers would mean nothing).
    assert np.ptp(outputs[0], axis=0).max() > 0
    # The evaluation inputs went over once each, by hash: a second pass uploads nothing new.
    inputs_dir = session.device_dir + "/inputs"
    listed = session.transport.run(["sh", "-c", f"ls {inputs_dir} | wc -l"], timeout_s=30).check().stdout
    again = session.output_tensors(remote, facts, samples[:2], timeout_s=120)
    assert session.transport.run(["sh", "-c", f"ls {inputs_dir} | wc -l"], timeout_s=30).check().stdout == listed
    np.testing.assert_array_equal(again[0], outputs[0][:2])


def test_int8_input_is_quantised_with_the_tensors_parameters() -> None:
    info = TensorInfo("x", (1, 2), "int8", (0.5,), (-3,))
    raw = input_bytes(np.array([[1.0, -100.0]]), info)
    assert np.frombuffer(raw, dtype=np.int8).tolist() == [-1, -128]  # round(1/0.5)-3 = -1; clipped at -128


def test_output_bytes_are_split_and_dequantised_per_output() -> None:
    first = TensorInfo("probs", (1, 3), "uint8", (1 / 256,), (0,))
    second = TensorInfo("embedding", (1, 2), "float32", None, None)
    raw = bytes([0, 128, 255]) + np.array([1.5, -2.0], dtype="<f4").tobytes()
    probs, embedding = split_outputs(raw, [first, second])
    assert probs.tolist() == [[0.0, 0.5, 255 / 256]] and embedding.tolist() == [[1.5, -2.0]]
    assert tensor_nbytes(first) + tensor_nbytes(second) == len(raw)
    with pytest.raises(RunnerError, match="holds 10 bytes, the model's outputs take 11"):
        split_outputs(raw[:-1], [first, second])
