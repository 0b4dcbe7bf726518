"""inspect_model against real files: a tiny Keras model converted here to TFLite (fp32, int8, fp16) and ONNX.

The models are built in the session, not read from the repo, so the facts are checked against what the
converters installed here actually write.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from farmbench.errors import BuildError, UsageError
from farmbench.variants.inspect import ModelFacts, inspect_model, sha256_file

INPUT_SHAPE = (1, 32, 32, 3)
CONV_FILTERS = 8
KERNEL_SIZE = 3
DENSE_UNITS = 10

# Hand count for Conv2D(8, 3) -> DepthwiseConv2D(3) -> GlobalAveragePooling2D -> Dense(10) on 1x32x32x3, no padding.
CONV_OUT_HW = 32 - KERNEL_SIZE + 1  # 30
DW_OUT_HW = CONV_OUT_HW - KERNEL_SIZE + 1  # 28
CONV_MACS = CONV_OUT_HW * CONV_OUT_HW * CONV_FILTERS * KERNEL_SIZE * KERNEL_SIZE * 3  # 194_400
DW_MACS = DW_OUT_HW * DW_OUT_HW * CONV_FILTERS * KERNEL_SIZE * KERNEL_SIZE  # 56_448
DENSE_MACS = CONV_FILTERS * DENSE_UNITS  # 80
EXPECTED_MACS = CONV_MACS + DW_MACS + DENSE_MACS  # 250_928
# Kernels only (no biases): conv 216, depthwise 72, dense 80.
KERNEL_PARAMS = 3 * 3 * 3 * CONV_FILTERS + 3 * 3 * CONV_FILTERS + CONV_FILTERS * DENSE_UNITS
BIAS_PARAMS = CONV_FILTERS + CONV_FILTERS + DENSE_UNITS


@dataclass(frozen=True)
class Built:
    keras_param_count: int
    fp32_tflite: Path
    int8_tflite: Path
    fp16_tflite: Path
    fp32_onnx: Path


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    import keras
    import tensorflow as tf
    import tf2onnx

    out_dir = tmp_path_factory.mktemp("models")
    inputs = keras.Input(shape=INPUT_SHAPE[1:], batch_size=INPUT_SHAPE[0])
    x = keras.layers.Conv2D(CONV_FILTERS, KERNEL_SIZE)(inputs)
    x = keras.layers.DepthwiseConv2D(KERNEL_SIZE)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(DENSE_UNITS)(x))
    # Non-zero biases: converters drop all-zero biases (tf2onnx removes the Add, the TFLite int8 converter omits
    # the FULLY_CONNECTED bias, the fp16 one shares one zero tensor between both convs), which would make the
    # file's param count differ from Keras' for reasons that are not inspect's.
    rng = np.random.default_rng(0)
    model.set_weights([rng.standard_normal(w.shape).astype(np.float32) for w in model.get_weights()])

    def write(name: str, data: bytes) -> Path:
        path = out_dir / name
        path.write_bytes(data)
        return path

    fp32_tflite = write("fp32.tflite", tf.lite.TFLiteConverter.from_keras_model(model).convert())

    def representative() -> Iterator[list[np.ndarray]]:
        for _ in range(8):
            yield [rng.standard_normal(INPUT_SHAPE).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    int8_tflite = write("int8.tflite", converter.convert())

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    fp16_tflite = write("fp16.tflite", converter.convert())

    # tf2onnx 1.17's from_keras accepts a Keras 3 model: it falls back to tracing a tf.function itself.
    fp32_onnx = out_dir / "fp32.onnx"
    tf2onnx.convert.from_keras(
        model,
        input_signature=[tf.TensorSpec(INPUT_SHAPE, tf.float32, name="input")],
        opset=17,
        output_path=str(fp32_onnx),
    )
    return Built(model.count_params(), fp32_tflite, int8_tflite, fp16_tflite, fp32_onnx)


def _assert_io_shapes(facts: ModelFacts, dtype: str) -> None:
    assert len(facts.inputs) == 1 and len(facts.outputs) == 1
    assert facts.inputs[0].shape == INPUT_SHAPE
    assert facts.outputs[0].shape == (1, DENSE_UNITS)
    assert facts.inputs[0].dtype == dtype
    assert facts.outputs[0].dtype == dtype


def test_fp32_tflite(built: Built) -> None:
    facts = inspect_model(built.fp32_tflite)
    assert facts.format == "tflite"
    _assert_io_shapes(facts, "float32")
    assert facts.inputs[0].quant_scale is None and facts.inputs[0].quant_zero_point is None
    assert built.keras_param_count == KERNEL_PARAMS + BIAS_PARAMS
    assert facts.param_count == built.keras_param_count
    assert facts.weight_dtypes == {"float32": built.keras_param_count}
    assert facts.macs == EXPECTED_MACS
    assert facts.op_counts == {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "MEAN": 1, "FULLY_CONNECTED": 1}
    assert facts.size_bytes == built.fp32_tflite.stat().st_size


def test_int8_tflite(built: Built) -> None:
    facts = inspect_model(built.int8_tflite)
    _assert_io_shapes(facts, "int8")
    for tensor in (facts.inputs[0], facts.outputs[0]):
        assert tensor.quant_scale is not None and len(tensor.quant_scale) == 1 and tensor.quant_scale[0] > 0
        assert tensor.quant_zero_point is not None and len(tensor.quant_zero_point) == 1
    # Kernels are int8; biases are int32 (TFLite's int8 scheme), so "mostly int8" is exactly 368 of 394.
    assert facts.weight_dtypes == {"int8": KERNEL_PARAMS, "int32": BIAS_PARAMS}
    assert facts.weight_dtypes["int8"] / facts.param_count > 0.9
    assert facts.param_count == built.keras_param_count
    assert facts.macs == EXPECTED_MACS


def test_fp16_tflite(built: Built) -> None:
    facts = inspect_model(built.fp16_tflite)
    _assert_io_shapes(facts, "float32")
    assert facts.weight_dtypes == {"float16": built.keras_param_count}
    # One DEQUANTIZE per stored fp16 tensor (3 kernels, 3 biases): the runtime widens them to float32.
    assert facts.op_counts["DEQUANTIZE"] == 6
    # MACs read the filter shapes through the DEQUANTIZE ops.
    assert facts.macs == EXPECTED_MACS


def test_fp32_onnx(built: Built) -> None:
    facts = inspect_model(built.fp32_onnx)
    assert facts.format == "onnx"
    _assert_io_shapes(facts, "float32")
    assert facts.inputs[0].name == "input"
    assert facts.inputs[0].quant_scale is None
    # The int64 Squeeze axes initializer is not a weight; the rest are exactly Keras' weights.
    assert facts.param_count == built.keras_param_count
    assert facts.weight_dtypes == {"float32": built.keras_param_count}
    assert facts.macs == EXPECTED_MACS
    assert facts.op_counts["Conv"] == 2


def test_qdq_onnx_io_quant_and_weights(tmp_path: Path) -> None:
    """int8 in -> DQ -> Conv(DQ(int8 W), DQ(int32 b)) -> Q -> int8 out, written with onnx.helper.

    tf2onnx does not write this layout from Keras; onnxruntime's quantizer does, so check it on a hand-made graph.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, values: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(values, name)

    initializers = [
        const("x_scale", np.array(0.5, np.float32)),
        const("x_zp", np.array(-3, np.int8)),
        const("w_q", np.ones((4, 3, 3, 3), np.int8)),
        const("w_scale", np.full((4,), 0.01, np.float32)),
        const("w_zp", np.zeros((4,), np.int8)),
        const("b_q", np.arange(4, dtype=np.int32)),
        const("b_scale", np.full((4,), 0.005, np.float32)),
        const("y_scale", np.array(0.25, np.float32)),
        const("y_zp", np.array(7, np.int8)),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "x_scale", "x_zp"], ["x_f"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_f"], axis=0),
        helper.make_node("DequantizeLinear", ["b_q", "b_scale"], ["b_f"], axis=0),
        helper.make_node("Conv", ["x_f", "w_f", "b_f"], ["y_f"], kernel_shape=[3, 3]),
        helper.make_node("QuantizeLinear", ["y_f", "y_scale", "y_zp"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.INT8, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, None)],
        initializers,
    )
    path = tmp_path / "qdq.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))

    facts = inspect_model(path)
    assert facts.inputs[0].shape == (-1, 3, 8, 8)  # the dynamic batch is reported as -1
    assert facts.inputs[0].dtype == "int8"
    assert facts.inputs[0].quant_scale == (0.5,) and facts.inputs[0].quant_zero_point == (-3,)
    assert facts.outputs[0].dtype == "int8"
    assert facts.outputs[0].quant_scale == (0.25,) and facts.outputs[0].quant_zero_point == (7,)
    # Scales and zero points are not weights; the int32 bias is, because it feeds the Conv's bias slot.
    assert facts.weight_dtypes == {"int8": 4 * 3 * 3 * 3, "int32": 4}
    assert facts.param_count == 4 * 3 * 3 * 3 + 4
    # The dynamic batch counts as 1: 6x6 output x 4 channels x (3 in-channels x 3 x 3) products each.
    assert facts.macs == 6 * 6 * 4 * 3 * 3 * 3


def test_sha256_matches_hashlib(built: Built) -> None:
    expected = hashlib.sha256(built.fp32_onnx.read_bytes()).hexdigest()
    assert sha256_file(built.fp32_onnx, chunk_bytes=7) == expected  # small chunks exercise the loop
    assert inspect_model(built.fp32_onnx).sha256 == expected


def test_to_json_is_serialisable(built: Built) -> None:
    document = inspect_model(built.int8_tflite).to_json()
    assert json.loads(json.dumps(document)) == document
    assert document["inputs"][0]["shape"] == list(INPUT_SHAPE)


def test_inspect_does_not_import_tensorflow(built: Built) -> None:
    # The test process has TensorFlow loaded by the fixture, so check in a fresh interpreter.
    code = (
        "import sys; from farmbench.variants.inspect import inspect_model; "
        f"inspect_model({str(built.fp32_tflite)!r}); inspect_model({str(built.fp32_onnx)!r}); "
        "sys.exit(1 if any(m == 'tensorflow' or m.startswith('tensorflow.') for m in sys.modules) else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert result.returncode == 0


@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_text_file_with_model_suffix_is_build_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"notes{suffix}"
    path.write_text("this is not a model\n")
    with pytest.raises(BuildError) as info:
        inspect_model(path)
    assert str(path) in str(info.value)


def test_empty_onnx_is_build_error(tmp_path: Path) -> None:
    # protobuf parses zero bytes as an empty ModelProto without complaint.
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(BuildError):
        inspect_model(path)


def test_other_suffix_is_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "model.txt"
    path.write_text("hello\n")
    with pytest.raises(UsageError) as info:
        inspect_model(path)
    message = str(info.value)
    assert str(path) in message and ".tflite" in message and ".onnx" in message


def test_missing_file_is_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "missing.tflite"
    with pytest.raises(UsageError) as info:
        inspect_model(path)
    assert str(path) in str(info.value)
