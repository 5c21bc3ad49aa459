"""Text recognizers (``task="sequence"``): greedy CTC decoding, and which characters to explain.

Format ``ctc`` (the manifest's ``format``): the explained tensor is ``[N, T, V]`` per-timestep
class scores over a vocabulary of V (logits, or probabilities after a Softmax; a ``[T, N, V]``
output is transposed by the export). Index ``blank`` (default 0) is the CTC blank. Greedy
decoding takes each timestep's best class, merges repeats and drops blanks; each decoded
:class:`Character` keeps the timesteps it was read at.

Labels are the vocabulary: V names, or V - 1 (the blank is added first), or V - 2 (a
PaddleOCR dictionary file: the blank first and a space last).

Targets (one map each; terms combine with ``+`` or in a list):

* ``"characters"`` (default): each decoded character: its class's scores at its timesteps;
* ``"string"``: the whole decoded string: the sum of every kept timestep's score;
* an int i: the i-th decoded character (0-based).

A map explains ``sum(W * f(z))`` (see :mod:`explainer.seeds`) with ``W`` one at each kept
(timestep, class).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import LabelError, TargetError
from .seeds import WeightedTarget, probabilities
from .tasks.spec import FormatSpec

__all__ = ["SPECS", "Character", "Transcript", "check_sequence_spec", "ctc_decode",
           "plan_characters", "sequence_labels"]

BLANK_LABEL = "<blank>"


@dataclass(frozen=True)
class Character:
    """One decoded character (or, with ``index == -1``, the whole decoded string).

    Attributes:
        text: the character (its label, or ``#<index>`` without labels), or the string.
        index: its vocabulary index; -1 for the whole string.
        timesteps: the output timesteps it was read at.
        score: the mean probability of the character at those timesteps.
        box: ``(x1, y1, x2, y2)``: the input columns its timesteps cover (timestep t covers
            ``[t W / T, (t + 1) W / T)``), the input's full height.
        image_box: ``box`` in the original image's pixels, where the preprocessing is known.
    """

    text: str
    index: int
    timesteps: tuple[int, ...]
    score: float
    box: tuple[float, float, float, float]
    image_box: tuple[float, float, float, float] | None = None

    @property
    def class_id(self) -> int:
        """The vocabulary index (as a detection's or region's class)."""
        return self.index

    @property
    def label(self) -> str:
        return self.text

    def title(self) -> str:
        """``"'<text>' <score>"``, as figures show it."""
        return f"{self.text!r} {self.score:.3g}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``summary.json``)."""
        return {"text": self.text, "index": int(self.index),
                "timesteps": [int(t) for t in self.timesteps], "score": float(self.score),
                "box": [round(float(v), 2) for v in self.box],
                "image_box": None if self.image_box is None else
                [round(float(v), 2) for v in self.image_box]}


@dataclass(frozen=True)
class Transcript:
    """One image's greedy CTC decoding.

    Attributes:
        text: the decoded string.
        characters: each decoded character, in reading order.
        score: the mean of the characters' scores (0 when nothing was read).
    """

    text: str
    characters: tuple[Character, ...] = field(default_factory=tuple)
    score: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``summary.json``)."""
        return {"text": self.text, "score": float(self.score),
                "characters": [c.to_dict() for c in self.characters]}


def sequence_labels(labels: Sequence[str] | None, size: int, blank: int = 0
                    ) -> list[str] | None:
    """The vocabulary of V = ``size`` entries from ``labels`` (see the module docstring).

    Raises:
        LabelError: a length other than V, V - 1 or V - 2.
    """
    if labels is None:
        return None
    names = list(labels)
    if len(names) == size:
        return names
    if len(names) == size - 1:
        return [*names[:blank], BLANK_LABEL, *names[blank:]]
    if len(names) == size - 2 and blank == 0:
        return [BLANK_LABEL, *names, " "]
    raise LabelError(f"{len(names)} labels for a vocabulary of {size} (the CTC output's last "
                     f"axis): give {size} names, or {size - 1} without the blank, or "
                     f"{size - 2} as a PaddleOCR dictionary (blank and space added)")


def ctc_decode(explained: np.ndarray, params: dict[str, Any], labels: Sequence[str] | None,
               width: int, height: int) -> Transcript:
    """Greedy CTC decoding of one image's explained tensor [T, V] (``width``/``height``: the
    model input's, for the characters' boxes)."""
    p = probabilities(explained, {"activation": "softmax", **params, "axis": -1})
    steps = p.shape[0]
    best = p.argmax(axis=-1)
    blank = int(params.get("blank", 0))
    chars: list[Character] = []
    run: list[int] = []

    def close() -> None:
        if run:
            v = int(best[run[0]])
            text = labels[v] if labels is not None else f"#{v}"
            box = (run[0] * width / steps, 0.0, (run[-1] + 1) * width / steps, float(height))
            chars.append(Character(text, v, tuple(run), float(p[run, v].mean()), box))
            run.clear()

    for t in range(steps):
        v = int(best[t])
        if run and v != best[run[-1]]:
            close()
        if v != blank:
            run.append(t)
        else:
            close()
    close()
    score = float(np.mean([c.score for c in chars])) if chars else 0.0
    return Transcript("".join(c.text for c in chars), tuple(chars), score)


def _terms(spec: Any) -> list[Any]:
    if spec is None:
        return ["characters"]
    if isinstance(spec, str):
        return [t for t in spec.replace(" ", "").split("+") if t]
    if isinstance(spec, (list, tuple)):
        return [t for item in spec for t in _terms(item)]
    return [spec]


def check_sequence_spec(spec: Any) -> None:
    """Validate a text recognizer's target spec before any image.

    Raises:
        TargetError: naming the term at fault.
    """
    for term in _terms(spec):
        if isinstance(term, (int, np.integer)) and not isinstance(term, bool) and term >= 0:
            continue
        if isinstance(term, str) and (term.lower() in ("characters", "string")
                                      or term.isdigit()):
            continue
        raise TargetError(f"cannot read text-recognition target {term!r}; use 'characters', "
                          "'string' or a character's position (0-based)")


def plan_characters(spec: Any, transcript: Transcript, shape: tuple[int, ...]
                    ) -> list[WeightedTarget]:
    """The targets of one image (see the module docstring): each a :class:`Character` (the
    whole string as ``index == -1``) with its weights over the explained [T, V]. Positions past
    the decoded string are skipped (the caller notes an empty string)."""
    chars = transcript.characters

    def weights(of: Sequence[Character]) -> np.ndarray:
        w = np.zeros(shape, np.float32)
        for c in of:
            w[list(c.timesteps), c.index] = 1.0
        return w

    out: list[WeightedTarget] = []
    for term in _terms(spec):
        word = str(term).lower()
        if word == "characters":
            out += [WeightedTarget(c, weights([c])) for c in chars]
        elif word == "string":
            if chars:
                whole = Character(transcript.text, -1, tuple(t for c in chars
                                                            for t in c.timesteps),
                                  transcript.score,
                                  (chars[0].box[0], 0.0, chars[-1].box[2], chars[0].box[3]))
                out.append(WeightedTarget(whole, weights(chars)))
        elif int(term) < len(chars):
            out.append(WeightedTarget(chars[int(term)], weights([chars[int(term)]])))
    return out


#: the text recognition formats (see :class:`~explainer.tasks.spec.FormatSpec`)
SPECS = (
    FormatSpec("ctc", "sequence", "[N, T, V] or [T, N, V]",
               "per-timestep scores over a vocabulary of V (logits, or probabilities after a "
               "Softmax), index `blank` the CTC blank; decoded greedily",
               ("outputs", "layout", "blank", "classes", "explained", "activation", "tensor",
                "axis"), ctc_decode, default_targets="characters"),
)
