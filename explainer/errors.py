"""The errors onnxcam raises: one root, :class:`OnnxcamError`, and a subclass per kind of problem.

Every error of the project (runtime and exporters alike) is an :class:`OnnxcamError`, so a caller
can catch that one class. The subclasses keep the built-in mixins callers expect
(``except ValueError`` still catches a bad target). Messages name the file, tensor, node, op or
value at fault and say what to do.

``exit_code`` is what the ``onnxcam`` command returns for the error: 2 for usage and input errors
(the command was asked something it cannot do), 1 for failures while explaining.
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "ExplainerError",
    "ImageError",
    "InputError",
    "LabelError",
    "MethodError",
    "OnnxcamError",
    "OutputError",
    "ProviderError",
    "TargetError",
    "UsageError",
    "VisualizeError",
]


class OnnxcamError(Exception):
    """Root of every error onnxcam raises."""

    #: exit code of the ``onnxcam`` command for this error (1: failure while explaining)
    exit_code: int = 1


class UsageError(OnnxcamError, ValueError):
    """The caller asked for something that cannot be done as asked (bad argument or input)."""

    exit_code = 2


class ExplainerError(OnnxcamError, RuntimeError):
    """A failure while running a bundle (ONNX Runtime error, unusable session options)."""


class ProviderError(UsageError):
    """An execution provider was asked for that this ONNX Runtime build does not have."""


class InputError(UsageError):
    """The input batch does not match the model input (rank, shape, dtype, NaN, empty)."""


class BundleError(UsageError):
    """A bundle is missing a file, or its manifest does not match its graphs or this version."""


class TargetError(UsageError):
    """A target spec is malformed or names a class the model does not have."""


class ImageError(UsageError):
    """An image cannot be read, or the preprocessing that turns it into an input is invalid."""


class OutputError(UsageError):
    """An output would overwrite an input or an existing file, or cannot be written."""


class MethodError(UsageError):
    """An unknown CAM method was asked for, or the method does not fit the bundle."""


class LabelError(UsageError):
    """An unknown label-set name, or a label list that does not fit the model."""


class VisualizeError(UsageError):
    """A heatmap, image, colormap or figure option that cannot be drawn."""
