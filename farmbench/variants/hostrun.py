"""Run a model file on the host, float in and float out, whatever its quantisation.

Used to check every artifact right after it is built, and as the host reference for drift. Integer inputs are
quantised with the model's own scale and zero point; integer outputs are dequantised the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from farmbench.errors import ArtifactVerificationError


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype[Any]) -> np.ndarray:
    info = np.iinfo(dtype)
    q = np.round(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - zero_point) * scale


class HostModel:
    """A loaded model: ``run(batch)`` takes float32 (N, H, W, C) and returns float32 (N, ...) outputs."""

    def __init__(self, path: Path, num_threads: int | None = None) -> None:
        self.path = Path(path)
        self.format = self.path.suffix.lstrip(".")
        try:
            if self.format == "tflite":
                self._init_tflite(num_threads)
            elif self.format == "onnx":
                self._init_onnx(num_threads)
            else:
                raise ArtifactVerificationError(f"{path}: unknown model format")
        except ArtifactVerificationError:
            raise
        except Exception as exc:  # the runtimes raise RuntimeError/ValueError/their own types
            raise ArtifactVerificationError(f"{path} does not load in the host runtime: {str(exc)[:400]}") from exc

    def _init_tflite(self, num_threads: int | None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self._interp = Interpreter(model_path=str(self.path), num_threads=num_threads)
        self._interp.allocate_tensors()
        self._in = self._interp.get_input_details()[0]
        self._out = self._interp.get_output_details()[0]
        self.input_dtype = np.dtype(self._in["dtype"])
        self.output_dtype = np.dtype(self._out["dtype"])
        self.input_quant = _tflite_quant(self._in)
        self.output_quant = _tflite_quant(self._out)

    def _init_onnx(self, num_threads: int | None) -> None:
        import onnxruntime as ort

        from farmbench.variants.inspect import inspect_model

        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        facts = inspect_model(self.path)
        inp, out = facts.inputs[0], facts.outputs[0]
        self._input_name = inp.name
        self.input_dtype = np.dtype(inp.dtype)
        self.output_dtype = np.dtype(out.dtype)
        self.input_quant = _pair(inp.quant_scale, inp.quant_zero_point)
        self.output_quant = _pair(out.quant_scale, out.quant_zero_point)

    def run(self, batch: np.ndarray) -> np.ndarray:
        outputs = [self.run_one(sample[None, ...]) for sample in batch]
        return np.concatenate(outputs, axis=0)

    def run_one(self, x: np.ndarray) -> np.ndarray:
        """One inference of a batch-1 float32 input."""
        feed = x.astype(np.float32)
        if self.input_dtype.kind in "iu":
            if self.input_quant is None:
                raise ArtifactVerificationError(f"{self.path}: integer input without quantisation parameters")
            feed = quantize(feed, *self.input_quant, self.input_dtype)
        elif self.input_dtype != np.float32:
            feed = feed.astype(self.input_dtype)
        if self.format == "tflite":
            self._interp.set_tensor(self._in["index"], feed)
            self._interp.invoke()
            raw = self._interp.get_tensor(self._out["index"])
        else:
            raw = self._session.run(None, {self._input_name: feed})[0]
        if self.output_dtype.kind in "iu":
            if self.output_quant is None:
                raise ArtifactVerificationError(f"{self.path}: integer output without quantisation parameters")
            return dequantize(raw, *self.output_quant)
        return np.asarray(raw, dtype=np.float32)


def _tflite_quant(detail: dict[str, Any]) -> tuple[float, int] | None:
    scales = detail.get("quantization_parameters", {}).get("scales", [])
    if len(scales) == 0:
        return None
    zeros = detail["quantization_parameters"]["zero_points"]
    return float(scales[0]), int(zeros[0])


def _pair(scale: tuple[float, ...] | None, zero: tuple[int, ...] | None) -> tuple[float, int] | None:
    if not scale:
        return None
    return float(scale[0]), int(zero[0]) if zero else 0
