"""Named exceptions of fedtiny, in one place."""

from __future__ import annotations

# What each C status means, for error messages (names come from ft_status_name()).
STATUS_HELP: dict[str, str] = {
    "NULL_ARG": "a required argument was missing",
    "TRUNCATED": "the buffer is shorter than the structure it must hold",
    "BAD_MAGIC": "the data does not start with the fedtiny magic 'FTNY'",
    "BAD_VERSION": "unsupported model format version",
    "BAD_HEADER_SIZE": "header size field is not the one of this format version",
    "SIZE_MISMATCH": "the header's file size differs from the data size",
    "BAD_CRC": "CRC-32 of the model body does not match (corrupted file)",
    "TABLE_OUT_OF_RANGE": "layer or tensor table lies outside the file",
    "TENSOR_OUT_OF_RANGE": "tensor data lies outside the file or inside the tables",
    "TENSOR_MISALIGNED": "tensor data is not 4-byte aligned",
    "BAD_DTYPE": "tensor dtype unknown or wrong for its use",
    "BAD_TENSOR_INDEX": "a layer names a tensor that does not exist",
    "TENSOR_SIZE": "a tensor's element count does not fit its layer",
    "BAD_LAYER_TYPE": "unknown layer type",
    "BAD_DIMS": "zero, negative or absurd dimension, stride, padding or class count",
    "SHAPE_MISMATCH": "a layer's input does not match the previous layer's output",
    "BAD_QUANT": "quantization offsets, scales, multipliers or shifts out of range",
    "BAD_ACTIVATION": "unknown activation or bad clamp range",
    "BAD_TRAINABLE_LAYOUT": "trainable layers must be a float32 suffix of the model",
    "TOO_MANY_LAYERS": "layer count is zero or above the trainer's limit",
    "ARENA_TOO_SMALL": "the arena is smaller than the plan",
    "BAD_CONFIG": "trainer configuration out of range",
    "BAD_DATA": "sample buffer does not fit the model",
    "BAD_LABEL": "a label is outside [0, num_classes)",
    "KERNEL": "an int8 kernel rejected its arguments",
    "NOT_INITIALIZED": "trainer used before initialisation",
    "UNSUPPORTED": "valid but not supported on this build",
    "CANCELLED": "the host cancelled the request (training stopped)",
}


class FedtinyError(Exception):
    """Base class of fedtiny's errors."""


class StatusError(FedtinyError):
    """An error reported by the C trainer; ``status`` is its stable name (e.g. ``"BAD_CRC"``)."""

    def __init__(self, status: str, context: str = "") -> None:
        self.status = status
        detail = STATUS_HELP.get(status, "unknown status")
        super().__init__(f"{context}: {status}: {detail}" if context else f"{status}: {detail}")


class ModelFormatError(StatusError, ValueError):
    """A model file was rejected by the loader."""


class TrainerError(StatusError, RuntimeError):
    """The trainer refused a configuration, data set or call."""


class KernelError(FedtinyError, ValueError):
    """An int8 kernel was called with arguments it cannot take."""


class ConfigError(FedtinyError, ValueError):
    """A configuration value is invalid."""


class TFLiteError(ConfigError):
    """A ``.tflite`` file fedtiny cannot read (damaged, not a TFLite flatbuffer) or cannot import
    (an operator, data type or quantization its int8 layers do not have); the message names it."""


class RunFailed(FedtinyError, RuntimeError):
    """A run finished without aggregating any update: its results would only show the
    pretrained model. ``summary.json`` is still written, with ``status`` ``failed`` (clients
    failed or were rejected) or ``declined`` (every device declined: its energy budget affords
    no epoch); ``status`` is that value."""

    def __init__(self, message: str, status: str = "failed") -> None:
        super().__init__(message)
        self.status = status


class Stopped(BaseException):
    """The process was asked to stop (SIGTERM). A BaseException like KeyboardInterrupt (Ctrl-C),
    so no ``except Exception`` on the way swallows it: every ``finally`` and context manager
    between the signal and the command line runs, and the run's processes stop with it."""
