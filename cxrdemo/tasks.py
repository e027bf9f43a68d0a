"""The two prediction tasks and their class lists (the only place class names are spelled)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]
    label_column: str  # manifest column the class comes from

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def positive_index(self) -> int:
        """Index of the class whose probability is thresholded (binary) or summed as 'disease'."""
        return 1

    @property
    def positive(self) -> str:
        return self.classes[self.positive_index]


TASKS: dict[str, Task] = {
    "binary": Task("binary", ("NORMAL", "PNEUMONIA"), "label"),
    "subtype": Task("subtype", ("normal", "bacteria", "virus"), "subtype"),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}") from None


BINARY = TASKS["binary"]
NORMAL, PNEUMONIA = BINARY.classes  # the manifest's `label` values
