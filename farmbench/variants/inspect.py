"""Facts read back from a built model file (.tflite or .onnx): I/O tensors, weights, MACs, op counts, hash.

This module never imports TensorFlow: it reads TFLite files with ``ai_edge_litert`` and ONNX files with ``onnx``,
so it also runs where only the runtimes are installed, and the facts come from the artifact itself rather than
from the Keras model it was converted from.

What counts as a weight (``param_count``, ``weight_dtypes``)
-----------------------------------------------------------
A *constant* is a tensor stored in the file: in TFLite, a tensor that some op reads, no op writes, and that is not
a graph input; in ONNX, an initializer (that is not also a graph input) or the output of a ``Constant`` node.
A constant is a *weight* when it has at least 2 elements and either

* its dtype is floating (float16/32/64, bfloat16) or a narrow integer (int4, uint4, int8, uint8, int16), and it
  is read in some slot other than a quantization scale/zero point or a shape-like operand (Resize scales, Pad
  pads, Clip bounds); or
* its dtype is int32/int64 and it is the bias of a conv-like or matmul-like op (quantized biases are int32).

Other int32/int64 constants are shapes, axes, paddings and indices, not weights. Scalars (and 1-element
constants) are left out because converters emit them for activation functions and preprocessing (ReLU6 bounds,
hard-swish's 3 and 1/6, Rescaling's scale and offset) that Keras does not count as parameters; the price is that
a 1-element bias (a Dense(1) layer) is not counted either. A constant that only feeds a DEQUANTIZE /
DequantizeLinear is judged by what the dequantized tensor feeds, so fp16 and QDQ weights count with their stored
dtype. A file's param_count differs from Keras' ``count_params()`` when converters change the weights: they fold
BatchNormalization into the preceding conv (adding a bias where the conv had none), drop all-zero biases, and
store identical constants once (common in freshly initialised models, whose folded biases are all equal).

What counts as a MAC (``macs``)
-------------------------------
Only the multiply-accumulates of conv-like and matmul-like ops, for one inference with the batch stored in the
file (a dynamic dimension counts as 1):

* TFLite: CONV_2D, DEPTHWISE_CONV_2D, CONV_3D, TRANSPOSE_CONV, FULLY_CONNECTED, BATCH_MATMUL.
* ONNX: Conv, ConvInteger, QLinearConv, ConvTranspose, Gemm, MatMul, MatMulInteger, QLinearMatMul.

Elementwise ops, pooling and activations contribute nothing. An op whose shapes cannot be read contributes 0.
Only the main graph is read (TFLite subgraph 0; no ONNX If/Loop bodies).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from farmbench.errors import BuildError, UsageError

if TYPE_CHECKING:
    import onnx

SUPPORTED_SUFFIXES: tuple[str, ...] = (".tflite", ".onnx")

# Loader messages can be long (protobuf dumps); a report needs only their gist.
_MAX_LOADER_MESSAGE_CHARS = 200

_NARROW_WEIGHT_DTYPES = frozenset(
    {"float16", "float32", "float64", "bfloat16", "int4", "uint4", "int8", "uint8", "int16"}
)
_BIAS_ONLY_DTYPES = frozenset({"int32", "int64"})

# Roles a constant can play in the slot that reads it.
_ROLE_DATA = "data"
_ROLE_BIAS = "bias"
_ROLE_AUX = "aux"  # quantization parameter or shape-like operand: never a weight

_TFLITE_BIAS_SLOTS: dict[str, int] = {
    "CONV_2D": 2,
    "DEPTHWISE_CONV_2D": 2,
    "CONV_3D": 2,
    "FULLY_CONNECTED": 2,
    "TRANSPOSE_CONV": 3,
    "CONV_3D_TRANSPOSE": 3,
}

_ONNX_BIAS_SLOTS: dict[str, frozenset[int]] = {
    "Conv": frozenset({2}),
    "ConvTranspose": frozenset({2}),
    "Gemm": frozenset({2}),
    "QLinearConv": frozenset({8}),
}
_ONNX_AUX_SLOTS: dict[str, frozenset[int]] = {
    "QuantizeLinear": frozenset({1, 2}),
    "DequantizeLinear": frozenset({1, 2}),
    "QLinearConv": frozenset({1, 2, 4, 5, 6, 7}),
    "QLinearMatMul": frozenset({1, 2, 4, 5, 6, 7}),
    "ConvInteger": frozenset({2, 3}),
    "MatMulInteger": frozenset({2, 3}),
    "Clip": frozenset({1, 2}),
    "Pad": frozenset({1, 2, 3}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
}
# (op, slot of a quantized tensor) -> (slot of its scale, slot of its zero point)
_ONNX_INPUT_QPARAM_SLOTS: dict[tuple[str, int], tuple[int, int]] = {
    ("DequantizeLinear", 0): (1, 2),
    ("QLinearConv", 0): (1, 2),
    ("QLinearMatMul", 0): (1, 2),
    ("QLinearMatMul", 3): (4, 5),
}
# op -> (slot of its output's scale, slot of its output's zero point)
_ONNX_OUTPUT_QPARAM_SLOTS: dict[str, tuple[int, int]] = {
    "QuantizeLinear": (1, 2),
    "QLinearConv": (6, 7),
    "QLinearMatMul": (6, 7),
}


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output."""

    name: str
    shape: tuple[int, ...]  # -1 for a dynamic dimension
    dtype: str  # numpy dtype name: "float32", "int8", "uint8", "float16", ...
    quant_scale: tuple[float, ...] | None  # None when not quantized; per-tensor = 1 element
    quant_zero_point: tuple[int, ...] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "quant_scale": None if self.quant_scale is None else list(self.quant_scale),
            "quant_zero_point": None if self.quant_zero_point is None else list(self.quant_zero_point),
        }


@dataclass(frozen=True)
class ModelFacts:
    """What a model file holds. See the module docstring for what param_count and macs count."""

    format: str  # "tflite" | "onnx"
    sha256: str
    size_bytes: int  # of the named file only (not of ONNX external data files)
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    param_count: int  # weight elements
    macs: int  # multiply-accumulates of one inference
    op_counts: dict[str, int]  # op type -> count
    weight_dtypes: dict[str, int]  # dtype name -> weight elements of that dtype

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "param_count": self.param_count,
            "macs": self.macs,
            "op_counts": dict(sorted(self.op_counts.items())),
            "weight_dtypes": dict(sorted(self.weight_dtypes.items())),
        }


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large models need not fit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def inspect_model(path: str | Path) -> ModelFacts:
    """Read the facts of a .tflite or .onnx file.

    Raises UsageError for another suffix or a file that cannot be read, BuildError for a file the loader rejects.
    """
    model_path = Path(path)
    suffix = model_path.suffix.lower()
    supported = ", ".join(SUPPORTED_SUFFIXES)
    if suffix not in SUPPORTED_SUFFIXES:
        raise UsageError(
            f"{model_path}: unsupported model format {suffix or '(no suffix)'!r}; supported formats: {supported}",
            hint="pass a .tflite or .onnx file built by farmbench",
        )
    try:
        size_bytes = model_path.stat().st_size
        sha256 = sha256_file(model_path)
    except OSError as err:
        raise UsageError(
            f"cannot read model file {model_path}: {err.strerror or err}; supported formats: {supported}",
            hint="check the path and its permissions",
        ) from err

    if suffix == ".tflite":
        inputs, outputs, param_count, macs, op_counts, weight_dtypes = _inspect_tflite(model_path)
        model_format = "tflite"
    else:
        inputs, outputs, param_count, macs, op_counts, weight_dtypes = _inspect_onnx(model_path)
        model_format = "onnx"
    return ModelFacts(
        format=model_format,
        sha256=sha256,
        size_bytes=size_bytes,
        inputs=inputs,
        outputs=outputs,
        param_count=param_count,
        macs=macs,
        op_counts=op_counts,
        weight_dtypes=weight_dtypes,
    )


_Inspected = tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...], int, int, dict[str, int], dict[str, int]]


# ---------------------------------------------------------------------------------------------------- shared


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else type(err).__name__
    if len(first) > _MAX_LOADER_MESSAGE_CHARS:
        first = first[: _MAX_LOADER_MESSAGE_CHARS - 3] + "..."
    return first


def _element_count(shape: Iterable[int]) -> int:
    # A dynamic (-1) or unknown (0 from an unset ONNX dim) dimension counts as 1: "batch as in the file".
    return math.prod(max(int(d), 1) for d in shape)


def _is_weight(dtype: str, element_count: int, roles: set[str]) -> bool:
    if element_count < 2:
        return False
    if dtype in _NARROW_WEIGHT_DTYPES:
        return _ROLE_DATA in roles or _ROLE_BIAS in roles
    if dtype in _BIAS_ONLY_DTYPES:
        return _ROLE_BIAS in roles
    return False


def _tally_weights(constants: Iterable[tuple[str, int, set[str]]]) -> tuple[int, dict[str, int]]:
    """(dtype, elements, roles) of each constant -> (param_count, elements per dtype)."""
    by_dtype: Counter[str] = Counter()
    for dtype, element_count, roles in constants:
        if _is_weight(dtype, element_count, roles):
            by_dtype[dtype] += element_count
    return sum(by_dtype.values()), dict(sorted(by_dtype.items()))


# ---------------------------------------------------------------------------------------------------- TFLite


def _inspect_tflite(model_path: Path) -> _Inspected:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        # No default delegates: XNNPACK would replace ops with DELEGATE nodes once tensors are allocated, and
        # we want the ops stored in the file. Details and static shapes are readable without allocating.
        interpreter = Interpreter(
            model_path=str(model_path),
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        input_details = interpreter.get_input_details()
        output_details = interpreter.get_output_details()
        tensor_details = {int(t["index"]): t for t in interpreter.get_tensor_details()}
        ops = interpreter._get_ops_details()
    except (ValueError, RuntimeError) as err:
        raise BuildError(
            f"{model_path} is not a readable TFLite model: {_short(err)}",
            hint="rebuild the artifact; the file may be truncated or not a .tflite flatbuffer",
        ) from err

    inputs = tuple(_tflite_tensor_info(d) for d in input_details)
    outputs = tuple(_tflite_tensor_info(d) for d in output_details)
    graph_inputs = {int(d["index"]) for d in input_details}

    producer: dict[int, dict[str, Any]] = {}
    consumers: dict[int, list[tuple[dict[str, Any], int]]] = {}
    for op in ops:
        for out_index in op["outputs"]:
            producer[int(out_index)] = op
        for slot, in_index in enumerate(op["inputs"]):
            if int(in_index) >= 0:  # -1 marks an absent optional input
                consumers.setdefault(int(in_index), []).append((op, slot))

    def shape_of(index: int) -> tuple[int, ...] | None:
        details = tensor_details.get(index)
        if details is None:
            return None
        shape = tuple(int(d) for d in details["shape"])
        # fp16 models read weights through DEQUANTIZE; if its output carries no shape, its input has the same one.
        if not shape and index in producer and producer[index]["op_name"] == "DEQUANTIZE":
            return shape_of(int(producer[index]["inputs"][0]))
        return shape

    def roles_of(index: int) -> set[str]:
        roles: set[str] = set()
        for op, slot in consumers.get(index, []):
            if op["op_name"] == "DEQUANTIZE":
                # Judge an fp16/int8 stored weight by what its dequantized copy feeds.
                for out_index in op["outputs"]:
                    roles |= roles_of(int(out_index))
            elif _TFLITE_BIAS_SLOTS.get(op["op_name"]) == slot:
                roles.add(_ROLE_BIAS)
            else:
                roles.add(_ROLE_DATA)
        return roles

    constants: list[tuple[str, int, set[str]]] = []
    for index in consumers:
        if index in producer or index in graph_inputs or index not in tensor_details:
            continue
        shape = shape_of(index) or ()
        dtype = np.dtype(tensor_details[index]["dtype"]).name
        constants.append((dtype, _element_count(shape), roles_of(index)))
    param_count, weight_dtypes = _tally_weights(constants)

    macs = 0
    for op in ops:
        macs += _tflite_op_macs(op, shape_of)
    op_counts = dict(sorted(Counter(str(op["op_name"]) for op in ops).items()))
    return inputs, outputs, param_count, macs, op_counts, weight_dtypes


def _tflite_tensor_info(details: Mapping[str, Any]) -> TensorInfo:
    # shape_signature keeps -1 for dynamic dims; shape holds the placeholder (1) the interpreter filled in.
    signature = details.get("shape_signature")
    shape = signature if signature is not None and len(signature) else details["shape"]
    qparams = details.get("quantization_parameters") or {}
    scales = np.asarray(qparams.get("scales", []), dtype=np.float64)
    zero_points = np.asarray(qparams.get("zero_points", []), dtype=np.int64)
    quantized = scales.size > 0
    return TensorInfo(
        name=str(details["name"]),
        shape=tuple(int(d) for d in shape),
        dtype=np.dtype(details["dtype"]).name,
        quant_scale=tuple(float(s) for s in scales) if quantized else None,
        quant_zero_point=tuple(int(z) for z in zero_points) if quantized else None,
    )


def _tflite_op_macs(op: Mapping[str, Any], shape_of: Any) -> int:
    name = op["op_name"]
    op_inputs = [int(i) for i in op["inputs"]]
    op_outputs = [int(i) for i in op["outputs"]]
    if not op_outputs:
        return 0
    out_shape = shape_of(op_outputs[0])
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D", "FULLY_CONNECTED", "BATCH_MATMUL"):
        if len(op_inputs) < 2 or out_shape is None:
            return 0
        weight_shape = shape_of(op_inputs[1])
        if not weight_shape:
            return 0
        out_elements = _element_count(out_shape)
        if name == "CONV_2D":  # filter [out_c, kh, kw, in_c / groups]
            return out_elements * _element_count(weight_shape[1:])
        if name == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, out_c]: one tap per output channel
            return out_elements * _element_count(weight_shape[1:3])
        if name == "CONV_3D":  # filter [kd, kh, kw, in_c, out_c]
            return out_elements * _element_count(weight_shape[:-1])
        if name == "FULLY_CONNECTED":  # filter [out_features, in_features]
            return out_elements * max(int(weight_shape[-1]), 1)
        # BATCH_MATMUL: A is [..., M, K] or, with adj_x, [..., K, M]; ops details do not expose adj_x, so
        # find K as the dimension of A that is not the output's M.
        a_shape = shape_of(op_inputs[0])
        if not a_shape or len(out_shape) < 2:
            return 0
        rows = out_shape[-2]
        k = a_shape[-1] if len(a_shape) < 2 or a_shape[-2] == rows else a_shape[-2]
        return out_elements * max(int(k), 1)
    if name in ("TRANSPOSE_CONV", "CONV_3D_TRANSPOSE"):
        # inputs: (output_shape, filter, input[, bias]); every input element meets every tap of every out channel.
        if len(op_inputs) < 3:
            return 0
        weight_shape = shape_of(op_inputs[1])
        in_shape = shape_of(op_inputs[2])
        if not weight_shape or in_shape is None:
            return 0
        if name == "TRANSPOSE_CONV":  # filter [out_c, kh, kw, in_c]
            return _element_count(in_shape) * _element_count(weight_shape[:3])
        return _element_count(in_shape) * _element_count(weight_shape[:-1])  # [kd, kh, kw, out_c, in_c]
    return 0


# ---------------------------------------------------------------------------------------------------- ONNX


def _inspect_onnx(model_path: Path) -> _Inspected:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(model_path))
    except (DecodeError, ValueError, OSError, RuntimeError) as err:
        raise BuildError(
            f"{model_path} is not a readable ONNX model: {_short(err)}",
            hint="rebuild the artifact; the file may be truncated or not an ONNX protobuf",
        ) from err
    # protobuf parses an empty (or lucky) byte string as an empty ModelProto, so check the essentials ourselves.
    # The full onnx.checker is not used: it rejects models that runtimes load, and inspecting should not be
    # stricter than running.
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.output:
        raise BuildError(
            f"{model_path} is not a readable ONNX model: no IR version or no graph outputs",
            hint="rebuild the artifact; the file may be truncated or not an ONNX protobuf",
        )
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as err:  # onnx raises several C++-mapped types here; all mean the same to us
        raise BuildError(
            f"{model_path}: ONNX shape inference failed: {_short(err)}",
            hint="the model is inconsistent; rebuild it or check the converter's output",
        ) from err
    graph = inferred.graph

    constants: dict[str, onnx.TensorProto] = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.type == onnx.AttributeProto.TENSOR:
                    constants[node.output[0]] = attribute.t

    shapes: dict[str, tuple[int, ...]] = {}
    elem_types: dict[str, int] = {}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        tensor_type = value.type.tensor_type
        if value.type.HasField("tensor_type"):
            elem_types[value.name] = tensor_type.elem_type
            if tensor_type.HasField("shape"):
                shapes[value.name] = tuple(
                    d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim
                )
    for name, tensor in constants.items():
        shapes[name] = tuple(int(d) for d in tensor.dims)
        elem_types[name] = tensor.data_type

    producer: dict[str, onnx.NodeProto] = {}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for output_name in node.output:
            if output_name:
                producer[output_name] = node
        for slot, input_name in enumerate(node.input):
            if input_name:  # "" marks an absent optional input
                consumers.setdefault(input_name, []).append((node, slot))

    def shape_of(name: str) -> tuple[int, ...] | None:
        shape = shapes.get(name)
        if shape is None and name in producer and producer[name].op_type == "DequantizeLinear":
            # A weight behind DequantizeLinear has the stored tensor's shape.
            return shape_of(producer[name].input[0])
        return shape

    def roles_of(name: str) -> set[str]:
        roles: set[str] = set()
        for node, slot in consumers.get(name, []):
            if node.op_type == "DequantizeLinear" and slot == 0:
                # Judge a stored int8/int32 tensor by what its dequantized copy feeds (bias or weight).
                for output_name in node.output:
                    roles |= roles_of(output_name)
            elif slot in _ONNX_BIAS_SLOTS.get(node.op_type, frozenset()):
                roles.add(_ROLE_BIAS)
            elif slot in _ONNX_AUX_SLOTS.get(node.op_type, frozenset()):
                roles.add(_ROLE_AUX)
            else:
                roles.add(_ROLE_DATA)
        return roles

    graph_input_names = {value.name for value in graph.input}
    param_count, weight_dtypes = _tally_weights(
        (_onnx_dtype_name(tensor.data_type), _element_count(tensor.dims), roles_of(name))
        for name, tensor in constants.items()
        if name not in graph_input_names  # an initializer listed as an input is overridable: a model input
    )

    def constant_values(name: str) -> np.ndarray | None:
        tensor = constants.get(name)
        return None if tensor is None else onnx.numpy_helper.to_array(tensor)

    def io_info(name: str, qparam_slots: tuple[onnx.NodeProto, tuple[int, int]] | None) -> TensorInfo:
        scale: tuple[float, ...] | None = None
        zero_point: tuple[int, ...] | None = None
        if qparam_slots is not None:
            node, (scale_slot, zero_point_slot) = qparam_slots
            scale_values = constant_values(node.input[scale_slot]) if len(node.input) > scale_slot else None
            if scale_values is not None:
                scale = tuple(float(s) for s in np.ravel(scale_values))
                zp_name = node.input[zero_point_slot] if len(node.input) > zero_point_slot else ""
                zp_values = constant_values(zp_name) if zp_name else None
                # An absent zero point means 0 (ONNX default).
                zero_point = (
                    tuple(int(z) for z in np.ravel(zp_values)) if zp_values is not None else (0,) * len(scale)
                )
        return TensorInfo(
            name=name,
            shape=shapes.get(name, ()),
            dtype=_onnx_dtype_name(elem_types.get(name, 0)),
            quant_scale=scale,
            quant_zero_point=zero_point,
        )

    def input_qparams(name: str) -> tuple[onnx.NodeProto, tuple[int, int]] | None:
        for node, slot in consumers.get(name, []):
            slots = _ONNX_INPUT_QPARAM_SLOTS.get((node.op_type, slot))
            if slots is not None:
                return node, slots
            # tf2onnx puts an NHWC->NCHW Transpose before the first DequantizeLinear of an integer-input graph:
            # data-movement ops keep the quantisation, so follow them.
            if node.op_type in _LAYOUT_OPS and slot == 0:
                found = input_qparams(node.output[0])
                if found is not None:
                    return found
        return None

    def output_qparams(name: str) -> tuple[onnx.NodeProto, tuple[int, int]] | None:
        node = producer.get(name)
        if node is None or node.op_type not in _ONNX_OUTPUT_QPARAM_SLOTS:
            return None
        return node, _ONNX_OUTPUT_QPARAM_SLOTS[node.op_type]

    inputs = tuple(
        io_info(value.name, input_qparams(value.name)) for value in graph.input if value.name not in constants
    )
    outputs = tuple(io_info(value.name, output_qparams(value.name)) for value in graph.output)

    macs = sum(_onnx_node_macs(node, shape_of) for node in graph.node)
    op_counts = dict(
        sorted(
            Counter(
                node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
                for node in graph.node
            ).items()
        )
    )
    return inputs, outputs, param_count, macs, op_counts, weight_dtypes


_LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten"})


def _onnx_dtype_name(elem_type: int) -> str:
    import onnx

    if elem_type == onnx.TensorProto.UNDEFINED:
        return "undefined"
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return str(onnx.TensorProto.DataType.Name(elem_type)).lower()


def _onnx_node_macs(node: onnx.NodeProto, shape_of: Any) -> int:
    op = node.op_type
    if node.domain not in ("", "ai.onnx") or not node.output:
        return 0
    # Slot of the weight (conv) or of A (matmul) for each op.
    conv_weight_slot = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}.get(op)
    matmul_a_slot = {"MatMul": 0, "MatMulInteger": 0, "QLinearMatMul": 0, "Gemm": 0}.get(op)
    out_shape = shape_of(node.output[0])
    if conv_weight_slot is not None:
        # W is [M, C / group, k...]: each output element takes C/group * prod(k) products.
        if len(node.input) <= conv_weight_slot or out_shape is None:
            return 0
        weight_shape = shape_of(node.input[conv_weight_slot])
        if not weight_shape:
            return 0
        return _element_count(out_shape) * _element_count(weight_shape[1:])
    if op == "ConvTranspose":
        # W is [C, M / group, k...]: each input element meets M/group * prod(k) taps.
        in_shape = shape_of(node.input[0])
        weight_shape = shape_of(node.input[1]) if len(node.input) > 1 else None
        if in_shape is None or not weight_shape:
            return 0
        return _element_count(in_shape) * _element_count(weight_shape[1:])
    if matmul_a_slot is not None:
        a_shape = shape_of(node.input[matmul_a_slot])
        if not a_shape or out_shape is None:
            return 0
        k = a_shape[-1]
        if op == "Gemm":
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            k = a_shape[0] if trans_a else a_shape[-1]
        return _element_count(out_shape) * max(int(k), 1)
    return 0
