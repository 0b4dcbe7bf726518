"""Keras MobileNet models and their weights.

Only the build worker imports this module: it pulls in TensorFlow and Keras, which the CLI, the cache and the
device agent never need.

Weights
-------
* ``imagenet`` -- the real Keras loading path (``keras.applications.*(weights="imagenet")``). It downloads from
  Google's storage on first use and keeps the file under ``$KERAS_HOME/models`` (default ``~/.keras/models``).
  Offline, and without that file already there, it fails with :class:`WeightsUnavailableError` naming the file.
* ``file`` -- a user's Keras weights file (``.weights.h5``/``.h5``) loaded into the architecture.
* ``random`` -- seeded initialisation followed by a short training run on a synthetic task
  (``variants.images.synthetic_task``). Plain ``weights=None`` gives logits with a standard deviation of
  1e-11..1e-20 and a uniform softmax, so every variant "agrees" with fp32 and full-int8 outputs are all zeros:
  drift numbers would be meaningless. Re-estimating BatchNorm statistics alone gives pessimistic drift.
  A few hundred steps on a small task make outputs depend on the input the way a trained MobileNet's do.
  The recipe (``TRAINING_RECIPE``) is part of the weights cache key.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from farmbench.errors import BuildError, WeightsUnavailableError
from farmbench.variants import images
from farmbench.variants.spec import Group, imagenet_weights_status

# Everything that changes the trained weights. Bump "version" when the training code changes.
TRAINING_RECIPE: dict[str, Any] = {
    "version": 2,
    # Chosen on mobilenet_v2 a0.35 r96 (64 evaluation images): 200 steps at lr 1e-3 left train accuracy at 0.14,
    # a mean top probability of 0.26 and int8 top-1 agreement 0.69 (too pessimistic); this recipe gives 0.68,
    # 0.57 (close to real ImageNet MobileNets) and 0.88.
    "steps": 400,
    "batch_size": 32,
    "pool_images": 800,
    "learning_rate": 2e-3,
    "max_train_resolution": 64,
    "bn_momentum_train": 0.9,
    "bn_reestimate_images": 64,
    "task": "synthetic_task",
    "images_version": images.IMAGES_VERSION,
}


def input_range(family: str) -> tuple[float, float]:
    """The value range the model's input expects. V3 models include their own rescaling layer and take
    0..255 pixels; V1 and V2 take pixels scaled to -1..1 (keras.applications ``preprocess_input``)."""
    if family.startswith("mobilenet_v3"):
        return (0.0, 255.0)
    return (-1.0, 1.0)


def preprocess(family: str, pixels: np.ndarray) -> np.ndarray:
    """uint8 (or float 0..255) pixels -> the float32 input the family expects."""
    x = pixels.astype(np.float32)
    low, high = input_range(family)
    if (low, high) == (0.0, 255.0):
        return x
    return x / 127.5 - 1.0


def _constructor(family: str) -> Any:
    import keras

    return {
        "mobilenet_v1": keras.applications.MobileNet,
        "mobilenet_v2": keras.applications.MobileNetV2,
        "mobilenet_v3_small": keras.applications.MobileNetV3Small,
        "mobilenet_v3_large": keras.applications.MobileNetV3Large,
    }[family]


def _architecture(group: Group, weights: str | None, batch_size: int | None = 1) -> Any:
    """The Keras model with a fixed batch of 1: a ``None`` batch adds SHAPE/STRIDED_SLICE ops to the converted
    graph that break litert-benchmark and slow older runtimes."""
    import keras

    inp = keras.Input(shape=(group.resolution, group.resolution, 3), batch_size=batch_size, name="input")
    kwargs: dict[str, Any] = {"input_tensor": inp, "alpha": group.width, "weights": weights}
    if group.family.startswith("mobilenet_v3"):
        kwargs["minimalistic"] = group.minimalistic
    return _constructor(group.family)(**kwargs)


def keras_models_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def _load_imagenet(group: Group) -> Any:
    status = imagenet_weights_status(group.family, group.width, group.resolution)
    if status == "none":
        raise WeightsUnavailableError(
            f"Keras publishes no ImageNet weights for {group.family} at width {group.width}"
            f" (resolution {group.resolution})",
            hint="use --weights random, or a weights file of your own; `farmbench build --plan` lists which"
            " (width, resolution) pairs have ImageNet weights",
        )
    before = set(keras_models_dir().glob("*")) if keras_models_dir().exists() else set()
    try:
        return _architecture(group, "imagenet")
    except Exception as exc:  # keras raises a bare Exception("URL fetch failure ...") when offline
        text = str(exc)
        if "URL fetch failure" in text or "urlopen" in text or "Name or service" in text or "resolution" in text:
            after = set(keras_models_dir().glob("*")) if keras_models_dir().exists() else set()
            partial = ", ".join(str(p) for p in sorted(after - before)) or "none"
            raise WeightsUnavailableError(
                f"ImageNet weights for {group.name()} must be downloaded by Keras and this machine cannot reach"
                f" the download server ({text.splitlines()[0][:200]})",
                hint=f"connect to the internet once, or copy the Keras weights file into {keras_models_dir()}"
                f" (partial files left: {partial}); or build with --weights random",
            ) from exc
        raise BuildError(f"Keras could not build {group.name()} with ImageNet weights: {text[:300]}") from exc


def _train_random(model: Any, group: Group) -> dict[str, float]:
    """Seeded synthetic training, then BatchNorm statistics re-estimated at the final weights.

    BatchNorm moving averages use momentum 0.999 in keras.applications; after 200 steps they would still be
    mostly their initial values (mean 0, variance 1), so inference outputs would not match training. We train
    with momentum 0.9 and finish with one pass in training mode at momentum 0, which sets every moving statistic
    to the statistics of a representative batch.
    """
    import keras

    recipe = TRAINING_RECIPE
    # MobileNets are fully convolutional, so the weights do not depend on the input size: train at a small
    # resolution (cheap), then re-estimate BatchNorm statistics at the target resolution below.
    train_resolution = min(group.resolution, recipe["max_train_resolution"])
    pixels, labels = images.synthetic_task(recipe["pool_images"], train_resolution, seed=group.weights.seed)
    x = preprocess(group.family, pixels)
    # The model's batch dimension is fixed at 1 for conversion; train a batch-flexible twin, then copy weights.
    train_group = dataclasses.replace(group, resolution=train_resolution)
    train_model = _architecture(train_group, None, batch_size=None)
    train_model.set_weights(model.get_weights())
    bn_layers = [layer for layer in train_model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bn_layers:
        layer.momentum = recipe["bn_momentum_train"]
    train_model.compile(
        optimizer=keras.optimizers.Adam(recipe["learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    epochs = max(1, round(recipe["steps"] * recipe["batch_size"] / recipe["pool_images"]))
    history = train_model.fit(x, labels, batch_size=recipe["batch_size"], epochs=epochs, shuffle=True, verbose=0)
    calib = preprocess(group.family, images.natural_images(recipe["bn_reestimate_images"], group.resolution,
                                                           seed=group.weights.seed + 7919))
    stats_model = _architecture(group, None, batch_size=None)
    stats_model.set_weights(train_model.get_weights())
    stats_bn = [layer for layer in stats_model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in stats_bn:
        layer.momentum = 0.0
    stats_model(calib, training=True)
    model.set_weights(stats_model.get_weights())
    return {
        "train_accuracy": float(history.history["accuracy"][-1]),
        "train_loss": float(history.history["loss"][-1]),
    }


def build_keras_model(group: Group, weights_cache: Path | None) -> tuple[Any, dict[str, Any]]:
    """The Keras model of a group with its weights, and facts about the weights for the manifest.

    ``weights_cache``: a path where trained random weights are kept (``.weights.h5``); reused when present.
    """
    import keras

    info: dict[str, Any] = {"weights": group.weights.label()}
    kind = group.weights.kind
    if kind == "imagenet":
        model = _load_imagenet(group)
        info["imagenet_status"] = imagenet_weights_status(group.family, group.width, group.resolution)
        return model, info
    keras.utils.set_random_seed(group.weights.seed)
    model = _architecture(group, None)
    if kind == "file":
        try:
            model.load_weights(group.weights.path)
        except Exception as exc:
            raise BuildError(
                f"cannot load weights file {group.weights.path} into {group.name()}: {str(exc)[:300]}",
                hint="the file must hold Keras weights for this family and width (model.save_weights)",
            ) from exc
        info["weights_sha256"] = group.weights.sha256
        return model, info
    if kind != "random":
        raise BuildError(f"unknown weights kind {kind!r}")
    info["training_recipe"] = TRAINING_RECIPE
    if weights_cache is not None and weights_cache.exists():
        model.load_weights(weights_cache)
        info["weights_cache"] = "hit"
        return model, info
    info.update(_train_random(model, group))
    info["weights_cache"] = "trained"
    if weights_cache is not None:
        weights_cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = weights_cache.with_name(f".{weights_cache.name}.{os.getpid()}.tmp.weights.h5")
        model.save_weights(tmp)
        os.replace(tmp, weights_cache)
    return model, info


def count_macs(model: Any) -> int:
    """Multiply-accumulates of one inference, from the Keras layers (Conv2D, DepthwiseConv2D, Dense)."""
    import keras

    total = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            out = layer.output.shape
            kh, kw = layer.kernel_size
            total += int(np.prod(out[1:])) * kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            out = layer.output.shape
            kh, kw = layer.kernel_size
            in_c = layer.input.shape[-1]
            total += int(np.prod(out[1:])) * kh * kw * int(in_c) // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            total += int(layer.input.shape[-1]) * int(layer.units)
    return total


def _all_layers(model: Any) -> list[Any]:
    out = []
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            out.extend(_all_layers(layer))
        else:
            out.append(layer)
    return out
