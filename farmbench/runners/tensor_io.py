"""Tensors as the native tools read and write them: raw bytes of exactly one tensor, no header.

``benchmark_model --input_layer_value_files=NAME:FILE`` reads FILE as the raw bytes of the input tensor (its size
must be exactly the tensor's), and ``--output_filepath=FILE`` writes the outputs of the last run, each output's raw
bytes concatenated in output order. The files carry no shapes or dtypes: those come from the model, inspected on
the host (:func:`farmbench.variants.inspect.inspect_model`).

Values cross as float32 on the host side: an integer input is quantised with the tensor's own scale and zero
point (as the host reference run does), an integer output dequantised the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from farmbench.errors import RunnerError, UsageError
from farmbench.variants.hostrun import dequantize, quantize
from farmbench.variants.inspect import TensorInfo


def _static_shape(info: TensorInfo, batch: int = 1) -> tuple[int, ...]:
    shape = tuple(batch if (i == 0 and d in (-1, 0)) else d for i, d in enumerate(info.shape))
    if any(d < 1 for d in shape):
        raise UsageError(f"tensor {info.name!r} has a dynamic shape {list(info.shape)} beyond the batch dimension",
                         hint="export the model with a fixed input size to measure its outputs on a device")
    return shape


def tensor_nbytes(info: TensorInfo) -> int:
    """Bytes of one batch-1 tensor."""
    return int(np.prod(_static_shape(info))) * np.dtype(info.dtype).itemsize


def input_bytes(sample: np.ndarray, info: TensorInfo) -> bytes:
    """One input (batch 1, float values) as the raw bytes the tool reads for tensor ``info``."""
    shape = _static_shape(info)
    values = np.asarray(sample, dtype=np.float32)
    if values.size != int(np.prod(shape)):
        raise UsageError(f"input of shape {list(values.shape)} does not fit tensor {info.name!r} {list(shape)}")
    values = values.reshape(shape)
    dtype = np.dtype(info.dtype)
    if dtype.kind in "iu":
        if not info.quant_scale:
            raise UsageError(f"integer input {info.name!r} has no quantisation parameters")
        zero = info.quant_zero_point[0] if info.quant_zero_point else 0
        raw = quantize(values, float(info.quant_scale[0]), int(zero), dtype)
    else:
        raw = values.astype(dtype)
    return raw.astype(raw.dtype.newbyteorder("<")).tobytes(order="C")


def split_outputs(raw: bytes, outputs: Sequence[TensorInfo]) -> list[np.ndarray]:
    """The tool's concatenated output bytes -> one float32 array per output (batch 1), dequantised."""
    sizes = [tensor_nbytes(info) for info in outputs]
    if len(raw) != sum(sizes):
        described = ", ".join(f"{o.name} {list(_static_shape(o))} {o.dtype}" for o in outputs)
        raise RunnerError(f"the output file holds {len(raw)} bytes, the model's outputs take {sum(sizes)}"
                          f" ({described})",
                          hint="the binary wrote something else than this model's outputs: check that it supports"
                               " --output_filepath (LiteRT/TF 2.13 and later)")
    arrays: list[np.ndarray] = []
    offset = 0
    for info, size in zip(outputs, sizes):
        dtype = np.dtype(info.dtype).newbyteorder("<")
        values = np.frombuffer(raw, dtype=dtype, count=size // dtype.itemsize, offset=offset)
        values = values.reshape(_static_shape(info))
        offset += size
        if dtype.kind in "iu":
            if not info.quant_scale:
                raise RunnerError(f"integer output {info.name!r} has no quantisation parameters")
            zero = info.quant_zero_point[0] if info.quant_zero_point else 0
            arrays.append(dequantize(values, float(info.quant_scale[0]), int(zero)))
        else:
            arrays.append(values.astype(np.float32))
    return arrays


__all__ = ["input_bytes", "split_outputs", "tensor_nbytes"]
