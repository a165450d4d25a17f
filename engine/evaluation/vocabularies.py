"""The class vocabularies of the food benchmarks, loaded from the package's data files.

Each function returns the names in id order (position = class id). The files and their sources are listed in
engine/data/SOURCES.md. Loading is cached: the files are read once per process.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any


def _load_data_file(filename: str) -> dict[str, Any]:
    text = files("engine").joinpath("data").joinpath(filename).read_text(encoding="utf-8")
    return json.loads(text)


@cache
def food101_classes() -> tuple[str, ...]:
    """The 101 Food-101 class names; option `i` of a Food101 question is class `i`."""
    return tuple(_load_data_file("food101_classes.json")["classes"])


@cache
def foodseg103_classes() -> tuple[str, ...]:
    """The 104 FoodSeg103 class names, ids 0..103 (0 background, 103 other ingredients)."""
    classes = _load_data_file("foodseg103_classes.json")["classes"]
    names_by_id = {int(class_id): name for class_id, name in classes.items()}
    # The file keys classes by id; a gap would silently shift every later class onto the wrong id.
    if sorted(names_by_id) != list(range(len(names_by_id))):
        raise ValueError("foodseg103_classes.json: class ids are not contiguous from 0")
    return tuple(names_by_id[class_id] for class_id in range(len(names_by_id)))


@cache
def nutrition5k_ingredients() -> tuple[str, ...]:
    """The 555 Nutrition5k ingredient names, ids 0..554 (retired ids are named 'deprecated')."""
    return tuple(_load_data_file("nutrition5k_ingredients.json")["ingredients"])
