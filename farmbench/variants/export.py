"""Keras model -> TFLite and ONNX files in every quantisation mode.

Imported only inside build workers (TensorFlow, tf2onnx and ONNX Runtime's quantiser are heavy).

TFLite: the model is exported once as a SavedModel and each mode converts from it with ``from_saved_model``,
which is ~2.5x faster than ``from_keras_model`` per mode. (``from_concrete_functions`` and an unfrozen
``tf.saved_model.save`` give models with variable ops that output NaN; don't go there.)

ONNX: tf2onnx converts the Keras model to fp32; the other modes derive from that file:

* fp16         -- onnxconverter-common, float16 weights and compute, float32 input/output kept
* dynamic-int8 -- ``quantize_dynamic`` (int8 weights, activations quantised at run time). It exists because users
                  ask for it; on CPU it ran 6-21x slower than fp32 in our probes. Static QDQ is the useful int8.
* int8         -- ``quantize_static``, QDQ format, per-channel int8 weights, int8 activations (S8S8), calibrated
                  on the same images as TFLite; float input/output
* int8-io      -- the int8 model with its input QuantizeLinear and output DequantizeLinear removed, so the graph
                  takes and gives int8 tensors; the removed scale/zero point are the tensors' quantisation
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from farmbench.errors import BuildError

ONNX_OPSET = 17  # new enough for every op MobileNets use, old enough for ORT builds on older boards


def export_saved_model(model: Any, directory: Path) -> None:
    import tensorflow as tf

    # Keras' export makes the batch dimension dynamic unless given a signature, and a dynamic batch adds
    # SHAPE/STRIDED_SLICE/PACK ops before every Reshape/Flatten (V1, V3): keep the model's fixed batch of 1.
    signature = [tf.TensorSpec(tuple(model.inputs[0].shape), tf.float32, name="input")]
    model.export(str(directory), format="tf_saved_model", verbose=False, input_signature=signature)


def convert_tflite(saved_model_dir: Path, quant: str, calibration: np.ndarray) -> bytes:
    """Convert a SavedModel to TFLite bytes. ``calibration``: preprocessed float32 inputs (N, H, W, 3)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    if quant == "fp32":
        pass
    elif quant == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quant == "dynamic-int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quant in ("int8", "int8-io"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]

        def representative() -> Iterator[list[np.ndarray]]:
            for sample in calibration:
                yield [sample[None, ...].astype(np.float32)]

        converter.representative_dataset = representative
        # Fail instead of silently keeping float ops the int8 kernels cannot take.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if quant == "int8-io":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    else:
        raise BuildError(f"unknown quantisation mode {quant!r}")
    return bytes(converter.convert())


def convert_onnx_fp32(model: Any, resolution: int, out_path: Path) -> None:
    import tensorflow as tf
    import tf2onnx

    spec = [tf.TensorSpec((1, resolution, resolution, 3), tf.float32, name="input")]
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=ONNX_OPSET, output_path=str(out_path))


def onnx_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxconverter_common import float16

    model = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def onnx_dynamic_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)


def onnx_static_int8(src: Path, dst: Path, calibration: np.ndarray, work_dir: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = work_dir / "prepared.onnx"
    # Shape inference and graph optimisation before quantising, as ONNX Runtime's docs recommend.
    quant_pre_process(str(src), str(prepared))
    input_name = _single_input_name(prepared)

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._samples = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            sample = next(self._samples, None)
            return None if sample is None else {input_name: sample[None, ...].astype(np.float32)}

    quantize_static(
        str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
    )


def _single_input_name(path: Path) -> str:
    import onnx

    model = onnx.load(str(path))
    initializers = {init.name for init in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    if len(names) != 1:
        raise BuildError(f"{path}: expected one graph input, found {names}")
    return str(names[0])


# Ops that only move int8 data around; QDQ leaves tf2onnx's NHWC->NCHW Transpose in float before the first Q.
_LAYOUT_OPS = {"Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze"}


def onnx_int8_io(src: Path, dst: Path) -> None:
    """Turn a QDQ int8 model's float I/O into int8 I/O by removing the boundary Quantize/DequantizeLinear."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(src))
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    graph_inputs = [i for i in graph.input if i.name not in initializers]
    if len(graph_inputs) != 1 or len(graph.output) != 1:
        raise BuildError(f"{src}: int8-io needs one input and one output")

    def consumers(tensor: str) -> list[Any]:
        return [node for node in graph.node if tensor in node.input]

    # Input side: follow layout-only ops to the first QuantizeLinear, drop it, make the path int8.
    tensor = graph_inputs[0].name
    path_tensors = [tensor]
    while True:
        users = consumers(tensor)
        if len(users) != 1:
            raise BuildError(f"{src}: input {tensor} has {len(users)} consumers; cannot make int8-io")
        node = users[0]
        if node.op_type == "QuantizeLinear":
            quantize = node
            break
        if node.op_type not in _LAYOUT_OPS:
            raise BuildError(f"{src}: no QuantizeLinear after the input (found {node.op_type})")
        tensor = node.output[0]
        path_tensors.append(tensor)
    q_out = quantize.output[0]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == q_out:
                node.input[i] = quantize.input[0]
    graph.node.remove(quantize)
    graph_inputs[0].type.tensor_type.elem_type = TensorProto.INT8
    stale = [vi for vi in graph.value_info if vi.name in path_tensors]
    for vi in stale:
        graph.value_info.remove(vi)
    # Record the scale/zero point in the model's metadata for readers that do not follow the graph.
    scale_name, zero_name = quantize.input[1], quantize.input[2]

    # Output side: the last node is a DequantizeLinear of the quantised softmax; output its int8 input instead.
    output = graph.output[0]
    producer = next((n for n in graph.node if output.name in n.output), None)
    if producer is None or producer.op_type != "DequantizeLinear":
        raise BuildError(f"{src}: the output is not produced by DequantizeLinear; cannot make int8-io")
    int8_tensor = producer.input[0]
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == int8_tensor:
                node.output[i] = output.name
    graph.node.remove(producer)
    output.type.tensor_type.elem_type = TensorProto.INT8
    for vi in [vi for vi in graph.value_info if vi.name in (int8_tensor, output.name)]:
        graph.value_info.remove(vi)
    _set_metadata(model, "farmbench.input_scale_initializer", scale_name)
    _set_metadata(model, "farmbench.input_zero_point_initializer", zero_name)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def _set_metadata(model: Any, key: str, value: str) -> None:
    entry = model.metadata_props.add()
    entry.key = key
    entry.value = value
