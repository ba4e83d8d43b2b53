"""The object classes our models know, with their Cityscapes ids: one table, no cityscapesscripts import.

The values are Cityscapes' (cityscapesscripts.helpers.labels); a test checks every entry against that table,
so this module can be imported on the runtime path without loading cityscapesscripts.

- label id: what *_gtFine_labelIds.png stores and what published instances carry as class_id (person 24);
- train id: Cityscapes' training index (person 11); the 8 instance classes have train ids 11..18;
- colour: Cityscapes' RGB colour of the class.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectClass:
    """name (Cityscapes name), label_id, train_id, colour (R, G, B) uint8 values."""

    name: str
    label_id: int
    train_id: int
    colour: tuple[int, int, int]


# The 8 Cityscapes classes with instances, in Cityscapes' order, then the two "thing-like" classes the
# extreme-point model is also trained on (objects without instance annotation in Cityscapes).
CLASS_TABLE: tuple[ObjectClass, ...] = (
    ObjectClass("person", 24, 11, (220, 20, 60)),
    ObjectClass("rider", 25, 12, (255, 0, 0)),
    ObjectClass("car", 26, 13, (0, 0, 142)),
    ObjectClass("truck", 27, 14, (0, 0, 70)),
    ObjectClass("bus", 28, 15, (0, 60, 100)),
    ObjectClass("train", 31, 16, (0, 80, 100)),
    ObjectClass("motorcycle", 32, 17, (0, 0, 230)),
    ObjectClass("bicycle", 33, 18, (119, 11, 32)),
    ObjectClass("traffic light", 19, 6, (250, 170, 30)),
    ObjectClass("traffic sign", 20, 7, (220, 220, 0)),
)
CLASSES_BY_NAME: dict[str, ObjectClass] = {c.name: c for c in CLASS_TABLE}

# The Cityscapes instance classes (the streaming models' default class list), in Cityscapes' order.
INSTANCE_CLASSES: tuple[str, ...] = tuple(c.name for c in CLASS_TABLE[:8])
INSTANCE_LABEL_IDS: tuple[int, ...] = tuple(CLASSES_BY_NAME[name].label_id for name in INSTANCE_CLASSES)
# The extreme-point annotation model's 9 classes, in the order of its paper.
ANNOTATION_CLASSES: tuple[str, ...] = ("car", "traffic sign", "bicycle", "person", "rider", "motorcycle",
                                       "traffic light", "truck", "bus")


def label_ids(names: tuple[str, ...] | list[str]) -> list[int]:
    """Cityscapes label ids of class names; ValueError naming the unknown ones."""
    unknown = [name for name in names if name not in CLASSES_BY_NAME]
    if unknown:
        raise ValueError(f"unknown classes {unknown}; known: {', '.join(CLASSES_BY_NAME)}")
    return [CLASSES_BY_NAME[name].label_id for name in names]
