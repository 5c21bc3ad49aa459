"""Error messages as a command-line user reads them: the Python arguments a message suggests
become the ``onnxcam`` flags that set them."""

from __future__ import annotations

import re

__all__ = ["cli_message"]

#: Python argument -> command-line flag, for messages the library writes for Python callers
_FLAGS = {
    "input_layout": "--input-layout", "layout": "--layout", "target": "--layer",
    "output": "--output", "labels": "--labels", "preprocessing": "--preprocessing",
    "task": "--task", "format": "--format", "targets": "--targets", "top_k": "--top-k",
    "contrast": "--contrast", "score": "--score", "method": "--method", "conf": "--conf",
    "iou": "--iou", "renormalize": "--renormalize", "fuse": "--fuse",
    "max_pixels": "--max-pixels", "cache_dir": "--cache-dir", "providers": "--providers",
    "threads": "--threads",
}
_SWITCHES = {"pre_softmax=False": "--keep-softmax", "input_gradient=True": "--input-gradient"}
#: a flag a message may name by its former name (deprecated alias) -> the flag's name now
_RENAMED = re.compile(r"--target(?![\w-])")
_ARGUMENT = re.compile(r"(?<![\w.-])(" + "|".join(_FLAGS) + r")="
                       r"(?:'([\w.-]*)'(?: or '([\w.-]*)')?)?")


def cli_message(message: str) -> str:
    """``message`` as a command-line user reads it: each Python argument it suggests
    (``target=``, ``input_layout='NCHW' or 'NHWC'``, ``pre_softmax=False``) becomes its flag
    (``--layer``, ``--input-layout NCHW or NHWC``, ``--keep-softmax``), unless the message
    names that flag already; a flag named by its deprecated name (``--target``) gets its name
    now (``--layer``)."""
    message = _RENAMED.sub("--layer", message)
    for python, flag in _SWITCHES.items():
        if flag not in message:
            message = message.replace(python, flag)

    def flag_of(match: re.Match[str]) -> str:
        flag = _FLAGS[match.group(1)]
        if re.search(re.escape(flag) + r"(?![\w-])", message):
            return match.group(0)  # named both ways already: "--layer (target=)"
        values = [v for v in match.groups()[1:] if v]
        return " or ".join([f"{flag} {values[0]}", *values[1:]]) if values else flag

    return _ARGUMENT.sub(flag_of, message)
