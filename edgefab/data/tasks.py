"""Tasks: a subset or a grouping of a dataset's classes (NN-Factory's "scenarios").

``--task classes=0,1,2,3`` keeps four classes; ``--task groups=even:0,2,4,6,8/odd:1,3,5,7,9``
makes a two-way task whose labels are the groups. Classes are named as the data names them (for
the embedded digits, ``"0"`` to ``"9"``). A task is plain data: the factory encodes it for its
assembler, and :func:`apply_task` relabels a dataset for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgefab.data.sources import Dataset
from edgefab.errors import EdgefabError


@dataclass(frozen=True)
class Task:
    """Named groups of the data's class indices; a plain subset has one group per class."""

    groups: tuple[tuple[str, tuple[int, ...]], ...]
    text: str = "all"

    @property
    def names(self) -> list[str]:
        """The task's output labels, in logit order."""
        return [name for name, _ in self.groups]

    def classes(self) -> list[int]:
        """Every data class the task uses, sorted."""
        return sorted(c for _, members in self.groups for c in members)

    def group_of(self, num_classes: int) -> np.ndarray:
        """For each data class, the index of its group (-1 where the task leaves it out)."""
        mapping = np.full(num_classes, -1, dtype=np.int64)
        for index, (_, members) in enumerate(self.groups):
            mapping[list(members)] = index
        return mapping

    def to_dict(self) -> dict:
        """JSON form for manifests."""
        return {"text": self.text, "groups": {name: list(members) for name, members in self.groups}}


def all_classes(classes: list[str]) -> Task:
    """The task of every class on its own (the data's own labels)."""
    return Task(tuple((name, (index,)) for index, name in enumerate(classes)), "all")


def parse_task(text: str | None, classes: list[str]) -> Task:
    """``classes=A,B,...`` or ``groups=NAME:A,B/NAME:C,D``, classes named as in ``classes``."""
    if text is None or text == "all":
        return all_classes(classes)
    kind, _, body = text.partition("=")
    index = {name: i for i, name in enumerate(classes)}
    if kind == "classes":
        names = _names(body, text)
        groups = tuple((name, (_class_index(name, index, classes),)) for name in names)
    elif kind == "groups":
        groups = tuple(_group(part, index, classes, text) for part in body.split("/") if part.strip())
    else:
        raise EdgefabError(f"--task '{text}': use classes=A,B,... or groups=NAME:A,B/NAME:C,D")
    used = [c for _, members in groups for c in members]
    if len(groups) < 2:
        raise EdgefabError(f"--task '{text}' has {len(groups)} output(s); a classifier needs at least 2")
    if len(set(used)) != len(used):
        raise EdgefabError(f"--task '{text}' names a class twice; each class belongs to at most one group")
    return Task(groups, text)


def apply_task(data: Dataset, task: Task) -> Dataset:
    """The samples of the task's classes, labelled by group, with the groups as class names."""
    mapping = task.group_of(data.num_classes)
    keep = np.flatnonzero(mapping[data.labels] >= 0)
    return Dataset(
        f"{data.name}[{task.text}]" if task.text != "all" else data.name,
        data.images[keep],
        mapping[data.labels[keep]],
        task.names,
    )


def _names(body: str, text: str) -> list[str]:
    names = [name.strip() for name in body.split(",") if name.strip()]
    if not names:
        raise EdgefabError(f"--task '{text}' names no class; list at least two, e.g. classes=0,1")
    return names


def _class_index(name: str, index: dict[str, int], classes: list[str]) -> int:
    if name not in index:
        shown = ", ".join(classes[:12]) + (" ..." if len(classes) > 12 else "")
        raise EdgefabError(f"--task names class '{name}' but the data's classes are: {shown}")
    return index[name]


def _group(part: str, index: dict[str, int], classes: list[str], text: str) -> tuple[str, tuple[int, ...]]:
    name, colon, members = part.partition(":")
    if not colon or not name.strip():
        raise EdgefabError(f"--task '{text}': write each group as NAME:A,B (got '{part}')")
    return name.strip(), tuple(_class_index(m, index, classes) for m in _names(members, text))
