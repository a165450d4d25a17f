"""Build the demo data set that `make demo` runs on: offline, CPU-sized, and identical for a given seed.

The domain. Each image is a 112 x 112 drawing of one to three identical flat shapes on a neutral background. Every image
has a ground-truth attribute record (kept as JSON text in the `meta` column):

- shape: circle, square, triangle or star
- colour: red, green, blue or yellow (the fill is jittered slightly, so a colour is a region, not one RGB value)
- size: small or large (all shapes in an image share one size; large is about twice as wide as small)
- count: one, two or three
- background: grey or white, plain or speckled
- region: where a single shape sits (a 3 x 3 grid: "upper left" ... "centre" ... "lower right"); none for several

The question-bearing attributes (shape x colour x size x count = 4 x 4 x 2 x 3) stay small on purpose: a 1 M-parameter
model learns colour in tens of steps on CPU and shape in hundreds (CPU-NOTES.md), so the demo can show a real
before/after gain. Captions describe the attributes in domain prose through several templates and a few synonyms.

What gets written under --out (default data/demo):
- captions/part-*.parquet         image-caption pairs (CAPTION_SCHEMA, PNG bytes), the synthesis input
- captions_jsonl/                 the same pairs as captions.jsonl + images/
- benchmark/demo_vqa.{parquet,jsonl} + images/   held-out VQA (BENCHMARK_SCHEMA): OPEN questions and balanced
                                  yes/no CLOSED questions, scored like VQA-RAD
- seed_tasks/seed_tasks.parquet   seed data for synthesizer tuning (SEED_TASK_SCHEMA)
- real/                           five real images shipped by scikit-image and pydicom, with hand-written captions
- demo_manifest.json              arguments, counts, vocabulary, files and a content hash per file set

Determinism: each image draws from its own generator, numpy.random.default_rng([seed, stream, index]), so the same
seed gives the same rows however many are asked for (a smaller build is a prefix of a larger one) and the training,
benchmark and seed-task images never share a random stream.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from engine.records import BENCHMARK_SCHEMA, CAPTION_SCHEMA, SEED_TASK_SCHEMA

IMAGE_SIZE = 112
# Shapes are drawn at this multiple of the final size and box-filtered down: PIL draws without anti-aliasing.
SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = {
    "red": (205, 45, 40),
    "green": (45, 160, 70),
    "blue": (45, 85, 210),
    "yellow": (230, 195, 35),
}
# Radius ranges in pixels (low inclusive, high exclusive); large is about twice small. A shape reaches out to
# EXTENT_FACTOR x radius from its centre, and large ones must still fit in a quarter of the image (see place_in_cells).
SIZE_RADII = {"small": (9, 12), "large": (17, 21)}
EXTENT_FACTOR = 1.25
COUNTS = (1, 2, 3)
BACKGROUNDS = {"grey": (165, 165, 165), "white": (238, 238, 236)}
TEXTURES = ("plain", "speckled")
COLOUR_JITTER = 14
BACKGROUND_JITTER = 6
SPECKLE_FRACTION = 0.06
EDGE_MARGIN = 2
# A single shape's centre keeps this far from the lines between thirds, so its region is never a judgement call.
REGION_MARGIN = 6

NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
BACKGROUND_NOUNS = ("field", "background", "surface")

# Thirds of the frame, (row, column) -> region name, and how a caption says a shape is there.
REGIONS = {
    (0, 0): "upper left",
    (0, 1): "top",
    (0, 2): "upper right",
    (1, 0): "left",
    (1, 1): "centre",
    (1, 2): "right",
    (2, 0): "lower left",
    (2, 1): "bottom",
    (2, 2): "lower right",
}
REGION_PHRASES = {
    "upper left": "in the upper left corner of the frame",
    "top": "near the top of the frame",
    "upper right": "in the upper right corner of the frame",
    "left": "on the left side of the frame",
    "centre": "in the centre of the frame",
    "right": "on the right side of the frame",
    "lower left": "in the lower left corner of the frame",
    "bottom": "near the bottom of the frame",
    "lower right": "in the lower right corner of the frame",
}
SPREAD_PHRASES = ("spread across the frame", "well apart from one another", "scattered over the frame")

# {Subject} is the capitalised {subject}; {is}, {sits}, {stands} agree with the count.
CAPTION_TEMPLATES = (
    "{Subject} {sits} {where} on a {background}.",
    "The image shows {subject} {where}, drawn on a {background}.",
    "Against a {background}, {subject} {is} visible {where}.",
    "On a {background} there {is} {subject}, {where}.",
    "A {background} with {subject} {where}.",
    "{Subject} {stands} out clearly against a {background}, {where}.",
    "This picture contains {subject} {where}, set against a {background}.",
    "Shown here {is} {subject} on a {background}, {where}.",
)

SHAPE_DESCRIPTIONS = {
    "circle": "a round outline with no corners",
    "square": "four equal straight sides meeting at right angles",
    "triangle": "three straight sides meeting in three corners",
    "star": "five sharp points around its middle",
}

# Independent random streams, one per kind of image; the numbers are part of the data set's identity.
STREAMS = {"train": 0, "benchmark": 1, "seed_tasks": 2, "benchmark_plan": 3}
ID_PREFIXES = {"train": "demo-train", "benchmark": "demo-bench", "seed_tasks": "demo-seed"}

QUESTION_KINDS = ("colour", "shape", "size", "count")
SEED_TASK_KINDS = QUESTION_KINDS + ("background", "position")


@dataclass(frozen=True)
class Scene:
    """The ground truth of one drawn image."""

    shape: str
    colour: str
    size: str
    count: int
    background: str
    texture: str
    radius: int
    centres: tuple[tuple[int, int], ...]
    region: str | None
    fill_rgb: tuple[int, int, int]
    background_rgb: tuple[int, int, int]

    def attributes(self) -> dict:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "count": self.count,
            "background": self.background,
            "texture": self.texture,
            "region": self.region,
            "radius": self.radius,
            "centres": [list(centre) for centre in self.centres],
        }

    def meta_json(self) -> str:
        return json.dumps(self.attributes(), sort_keys=True)


@dataclass(frozen=True)
class DrawnItem:
    id: str
    scene: Scene
    png: bytes


@dataclass(frozen=True)
class BenchmarkItem:
    id: str
    scene: Scene
    png: bytes
    kind: str  # which attribute the question asks about
    answer_type: str  # OPEN | CLOSED
    question: str
    label: str


@dataclass(frozen=True)
class RealImage:
    id: str
    package: str  # the distribution's name on PyPI
    module: str  # its import name
    relative_path: str  # inside the module's folder
    caption: str


REAL_IMAGES = (
    RealImage(
        "real-retina",
        "scikit-image",
        "skimage",
        "data/retina.jpg",
        "A colour fundus photograph of a human retina: a circular orange-red field on a black surround. The bright "
        "yellowish optic disc lies near the left edge, blood vessels branch out from it across the retina, and the "
        "darker macula sits near the centre.",
    ),
    RealImage(
        "real-ihc",
        "scikit-image",
        "skimage",
        "data/ihc.png",
        "A light-microscopy image of colon tissue after immunohistochemical staining. Brown DAB stain outlines the "
        "cells of several colonic glands, while the tissue between the glands is pale with small blue "
        "hematoxylin-stained nuclei.",
    ),
    RealImage(
        "real-cell",
        "scikit-image",
        "skimage",
        "data/cell.png",
        "A greyscale quantitative phase image of a single cell floating in liquid. The cell is a bright round disc "
        "with a dark rim, right of centre and below the middle, on an even grainy grey background.",
    ),
    RealImage(
        "real-ct-small",
        "pydicom",
        "pydicom",
        "data/test_files/CT_small.dcm",
        "An axial CT slice through a thoracic vertebra, shown in greyscale. The bright bony vertebral body and its "
        "arch surround the dark round spinal canal in the middle of the image, dark lung with thin vessels shows in "
        "the upper corners, and the back muscles fill the lower part.",
    ),
    RealImage(
        "real-mr-small",
        "pydicom",
        "pydicom",
        "data/test_files/MR_small.dcm",
        "A small greyscale magnetic resonance image, 64 by 64 pixels. A bright rounded structure with a dark centre "
        "lies right of the middle, bright tissue fills the lower right corner, and the left half is mostly dark "
        "with faint curved bands.",
    ),
)


# ---------------------------------------------------------------------------------------------------------- drawing


def item_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[stream], index])


def item_id(stream: str, index: int) -> str:
    return f"{ID_PREFIXES[stream]}-{index:06d}"


def pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def jitter_rgb(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    offsets = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(np.clip(channel + offset, 0, 255)) for channel, offset in zip(rgb, offsets))


def jitter_brightness(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    # One offset for all channels: a grey or white field must stay neutral, not drift towards a hue.
    offset = int(rng.integers(-amount, amount + 1))
    return tuple(int(np.clip(channel + offset, 0, 255)) for channel in rgb)


def reach(radius: int) -> int:
    """How far a shape of this radius extends from its centre, plus the margin it keeps from any border."""
    return int(np.ceil(EXTENT_FACTOR * radius)) + EDGE_MARGIN


def coordinate_in_third(rng: np.random.Generator, third_index: int, radius: int) -> int:
    third = IMAGE_SIZE / 3
    low = max(int(np.ceil(third_index * third)) + REGION_MARGIN, reach(radius))
    high = min(int((third_index + 1) * third) - REGION_MARGIN, IMAGE_SIZE - reach(radius))
    return int(rng.integers(low, high + 1))


def place_single(rng: np.random.Generator, radius: int) -> tuple[tuple[int, int], str]:
    """A centre and its region; the region is drawn first so all nine are equally common."""
    row, column = pick(rng, tuple(REGIONS))
    centre = (coordinate_in_third(rng, column, radius), coordinate_in_third(rng, row, radius))
    return centre, REGIONS[(row, column)]


def place_in_cells(rng: np.random.Generator, radius: int, count: int) -> tuple[tuple[int, int], ...]:
    # Several shapes each take a distinct cell of a 2 x 2 grid, so they never overlap and can be counted.
    cell = IMAGE_SIZE // 2
    centres = []
    for cell_index in sorted(int(c) for c in rng.permutation(4)[:count]):
        left, top = (cell_index % 2) * cell, (cell_index // 2) * cell
        x = int(rng.integers(left + reach(radius), left + cell - reach(radius) + 1))
        y = int(rng.integers(top + reach(radius), top + cell - reach(radius) + 1))
        centres.append((x, y))
    return tuple(centres)


def sample_scene(rng: np.random.Generator) -> Scene:
    shape = pick(rng, SHAPES)
    colour = pick(rng, tuple(COLOURS))
    size = pick(rng, tuple(SIZE_RADII))
    count = pick(rng, COUNTS)
    background = pick(rng, tuple(BACKGROUNDS))
    texture = pick(rng, TEXTURES)
    radius = int(rng.integers(*SIZE_RADII[size]))
    if count == 1:
        centre, region = place_single(rng, radius)
        centres = (centre,)
    else:
        centres, region = place_in_cells(rng, radius, count), None
    return Scene(
        shape=shape,
        colour=colour,
        size=size,
        count=count,
        background=background,
        texture=texture,
        radius=radius,
        centres=centres,
        region=region,
        fill_rgb=jitter_rgb(rng, COLOURS[colour], COLOUR_JITTER),
        background_rgb=jitter_brightness(rng, BACKGROUNDS[background], BACKGROUND_JITTER),
    )


def star_points(x: float, y: float, outer: float, inner: float) -> list[tuple[float, float]]:
    points = []
    for k in range(10):
        angle = -np.pi / 2 + k * np.pi / 5
        r = outer if k % 2 == 0 else inner
        points.append((x + r * np.cos(angle), y + r * np.sin(angle)))
    return points


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill) -> None:
    # Outlines are scaled so every shape is roughly 2r wide: a size then means about the same width for every shape.
    # None reaches beyond EXTENT_FACTOR * r from the centre (the square's corners come closest).
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "square":
        half = 0.88 * r
        draw.rectangle((x - half, y - half, x + half, y + half), fill=fill)
    elif shape == "triangle":
        outer = EXTENT_FACTOR * r
        corners = [(x + outer * np.cos(a), y + outer * np.sin(a)) for a in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6)]
        draw.polygon(corners, fill=fill)
    elif shape == "star":
        draw.polygon(star_points(x, y, EXTENT_FACTOR * r, 0.5 * r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def background_array(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    pixels = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.int16)
    pixels[:] = scene.background_rgb
    if scene.texture == "speckled":
        specks = rng.random((IMAGE_SIZE, IMAGE_SIZE)) < SPECKLE_FRACTION
        darkening = rng.integers(25, 50, size=(IMAGE_SIZE, IMAGE_SIZE))
        pixels -= (specks * darkening)[..., None].astype(np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def render_scene(scene: Scene, rng: np.random.Generator) -> Image.Image:
    big_size = IMAGE_SIZE * SUPERSAMPLE
    # Nearest upscaling keeps each speck a whole pixel after the box filter brings the canvas back down.
    canvas = Image.fromarray(background_array(scene, rng)).resize((big_size, big_size), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for x, y in scene.centres:
        draw_shape(draw, scene.shape, x * SUPERSAMPLE, y * SUPERSAMPLE, scene.radius * SUPERSAMPLE, scene.fill_rgb)
    return canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def encode_png(image: Image.Image) -> bytes:
    # Fixed options and no text chunks: the same pixels always give the same bytes.
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def draw_item(seed: int, stream: str, index: int) -> tuple[DrawnItem, np.random.Generator]:
    """One image of a stream, and its generator, positioned for whatever text is drawn about it next."""
    rng = item_rng(seed, stream, index)
    scene = sample_scene(rng)
    png = encode_png(render_scene(scene, rng))
    return DrawnItem(item_id(stream, index), scene, png), rng


# ---------------------------------------------------------------------------------------------------------- captions


def shape_phrase(scene: Scene, size_word: str) -> str:
    if scene.count == 1:
        return f"{size_word} {scene.colour} {scene.shape}"
    return f"{NUMBER_WORDS[scene.count]} {size_word} {scene.colour} {scene.shape}s"


def caption_subject(scene: Scene, rng: np.random.Generator) -> str:
    phrase = shape_phrase(scene, pick(rng, SIZE_WORDS[scene.size]))
    if scene.count > 1:
        return phrase
    return pick(rng, ("a ", "a single ")) + phrase


def background_phrase(scene: Scene, rng: np.random.Generator) -> str:
    noun = pick(rng, BACKGROUND_NOUNS)
    if scene.texture == "speckled":
        return f"speckled {scene.background} {noun}"
    return pick(rng, (f"plain {scene.background} {noun}", f"{scene.background} {noun}"))


def location_phrase(scene: Scene, rng: np.random.Generator) -> str:
    return REGION_PHRASES[scene.region] if scene.count == 1 else pick(rng, SPREAD_PHRASES)


def make_caption(scene: Scene, rng: np.random.Generator) -> str:
    template = pick(rng, CAPTION_TEMPLATES)
    subject = caption_subject(scene, rng)
    singular = scene.count == 1
    return template.format(
        Subject=subject[0].upper() + subject[1:],
        subject=subject,
        where=location_phrase(scene, rng),
        background=background_phrase(scene, rng),
        # `is` is a Python keyword, so the agreeing verbs go in as a mapping.
        **{
            "is": "is" if singular else "are",
            "sits": "sits" if singular else "sit",
            "stands": "stands" if singular else "stand",
        },
    )


# --------------------------------------------------------------------------------------------------------- questions


def the_shapes(scene: Scene) -> str:
    return "the shape" if scene.count == 1 else "the shapes"


def be(scene: Scene) -> str:
    return "is" if scene.count == 1 else "are"


def attribute_value(scene: Scene, kind: str) -> str:
    if kind == "count":
        return NUMBER_WORDS[scene.count]
    if kind == "position":
        return scene.region
    return getattr(scene, kind)


def vocabulary_of(kind: str) -> tuple[str, ...]:
    return {
        "colour": tuple(COLOURS),
        "shape": SHAPES,
        "size": tuple(SIZE_RADII),
        "count": tuple(NUMBER_WORDS[n] for n in COUNTS),
        "background": tuple(BACKGROUNDS),
        "position": tuple(REGION_PHRASES),
    }[kind]


def open_question(scene: Scene, kind: str) -> tuple[str, str]:
    """(question, label) asking for the value of one attribute."""
    questions = {
        "colour": f"What colour {be(scene)} {the_shapes(scene)}?",
        "shape": "What shape is shown?",
        "size": f"{be(scene).capitalize()} {the_shapes(scene)} small or large?",
        "count": "How many shapes are there?",
        "background": "What colour is the background?",
        "position": "Where is the shape located?",
    }
    return questions[kind], attribute_value(scene, kind)


def asked_value(scene: Scene, kind: str, answer_yes: bool, rng: np.random.Generator) -> str:
    """The value a yes/no question names: the true one for "yes", another one of the vocabulary for "no"."""
    truth = attribute_value(scene, kind)
    return truth if answer_yes else pick(rng, tuple(value for value in vocabulary_of(kind) if value != truth))


def closed_question(scene: Scene, kind: str, asked: str) -> tuple[str, str]:
    """(question, "yes"/"no") asking whether the image has value `asked` of one attribute."""
    if kind in ("colour", "size"):
        question = f"{be(scene).capitalize()} {the_shapes(scene)} {asked}?"
    elif kind == "shape":
        question = f"Is there a {asked} in the image?"
    elif kind == "count":
        question = "Is there exactly one shape?" if asked == "one" else f"Are there exactly {asked} shapes?"
    else:
        raise ValueError(f"no closed question about {kind!r}")
    return question, "yes" if asked == attribute_value(scene, kind) else "no"


def benchmark_plan(count: int, rng: np.random.Generator) -> list[tuple[str, str, bool | None]]:
    """(answer_type, kind, answer_yes) per question: half OPEN, half CLOSED, kinds and yes/no evenly cycled."""
    closed_total = count // 2
    open_plan = [("OPEN", QUESTION_KINDS[i % len(QUESTION_KINDS)], None) for i in range(count - closed_total)]
    closed_cycle = [(kind, answer) for kind in QUESTION_KINDS for answer in (True, False)]
    closed_plan = [("CLOSED", *closed_cycle[i % len(closed_cycle)]) for i in range(closed_total)]
    plan = open_plan + closed_plan
    return [plan[int(i)] for i in rng.permutation(len(plan))]


def build_benchmark(seed: int, count: int) -> list[BenchmarkItem]:
    plan_rng = np.random.default_rng([seed, STREAMS["benchmark_plan"]])
    items = []
    for index, (answer_type, kind, answer_yes) in enumerate(benchmark_plan(count, plan_rng)):
        drawn, rng = draw_item(seed, "benchmark", index)
        if answer_type == "OPEN":
            question, label = open_question(drawn.scene, kind)
        else:
            question, label = closed_question(drawn.scene, kind, asked_value(drawn.scene, kind, answer_yes, rng))
        items.append(BenchmarkItem(drawn.id, drawn.scene, drawn.png, kind, answer_type, question, label))
    return items


# ------------------------------------------------------------------------------------------------------- seed tasks


def observation(scene: Scene, kind: str, rng: np.random.Generator) -> str:
    """What the image shows about one attribute: the reasoning half of an informative answer."""
    subject = the_shapes(scene)
    if kind == "colour":
        return pick(
            rng,
            (
                f"{subject} {be(scene)} filled with a bright {scene.colour} colour",
                f"every part of {subject} is painted {scene.colour}",
            ),
        )
    if kind == "shape":
        owner = "the figure has" if scene.count == 1 else "each figure has"
        return f"{owner} {SHAPE_DESCRIPTIONS[scene.shape]}"
    if kind == "size":
        each = "the" if scene.count == 1 else "each"
        return f"{each} {scene.shape} is about {2 * scene.radius} pixels across in a {IMAGE_SIZE}-pixel image"
    if kind == "count":
        if scene.count == 1:
            return f"only one {scene.shape} appears in the picture"
        return f"{NUMBER_WORDS[scene.count]} separate {scene.shape}s appear in the picture"
    if kind == "background":
        return f"behind {subject} lies a {scene.texture} {scene.background} field"
    if kind == "position":
        x, y = scene.centres[0]
        return f"the {scene.shape} is centred at x={x}, y={y} in a {IMAGE_SIZE}-pixel square frame"
    raise ValueError(f"unknown kind {kind!r}")


def open_conclusion(scene: Scene, kind: str, label: str) -> str:
    return {
        "colour": f"so {'its' if scene.count == 1 else 'their'} colour is {label}",
        "shape": f"so the shape is a {label}",
        "size": f"so {'it is' if scene.count == 1 else 'they are'} {label}",
        "count": f"so there {be(scene)} {label}",
        "background": f"so the background is {label}",
        "position": f"so it is in the {label} part of the frame",
    }[kind]


def closed_conclusion(scene: Scene, kind: str, label: str, asked: str) -> str:
    # A shape's observation describes the outline without naming it, so the verdict names the shape first.
    if kind == "shape":
        verdict = f"so it is a {scene.shape}" + ("" if label == "yes" else f", not a {asked}")
        return f"{verdict}, and the answer is {label}"
    return "so the answer is yes" if label == "yes" else f"not {asked}, so the answer is no"


def sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def seed_task(scene: Scene, kind: str, rng: np.random.Generator) -> dict:
    # Colour and shape come half the time as yes/no questions, so a tuned synthesizer also learns to pose those.
    if kind in ("colour", "shape") and rng.integers(2):
        asked = asked_value(scene, kind, bool(rng.integers(2)), rng)
        question, label = closed_question(scene, kind, asked)
        conclusion = closed_conclusion(scene, kind, label, asked)
    else:
        question, label = open_question(scene, kind)
        conclusion = open_conclusion(scene, kind, label)
    informative = sentence(f"{observation(scene, kind, rng)}, {conclusion}")
    return {"question": question, "precise": label, "informative": informative}


def seed_task_kinds(scene: Scene, rng: np.random.Generator) -> list[str]:
    applicable = [kind for kind in SEED_TASK_KINDS if kind != "position" or scene.count == 1]
    chosen = rng.choice(len(applicable), size=int(rng.integers(2, 5)), replace=False)
    return [applicable[int(i)] for i in chosen]


def build_seed_tasks(seed: int, count: int) -> list[dict]:
    rows = []
    for index in range(count):
        drawn, rng = draw_item(seed, "seed_tasks", index)
        caption = make_caption(drawn.scene, rng)
        tasks = [seed_task(drawn.scene, kind, rng) for kind in seed_task_kinds(drawn.scene, rng)]
        # No task name: every demo row mixes the same question kinds, so the set is one seed task for the dev split.
        rows.append({"id": drawn.id, "image": drawn.png, "caption": caption, "tasks": tasks, "task_name": None})
    return rows


# ---------------------------------------------------------------------------------------------------- training pairs


def build_captions(seed: int, count: int) -> list[dict]:
    rows = []
    for index in range(count):
        drawn, rng = draw_item(seed, "train", index)
        rows.append(
            {
                "id": drawn.id,
                "image": drawn.png,
                "image_path": None,
                "caption": make_caption(drawn.scene, rng),
                "instruction": None,  # the captions answer the default request, "Describe the image."
                "meta": drawn.scene.meta_json(),
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------------ real images


def package_file(real: RealImage) -> Path:
    # find_spec locates the package without importing it: importing skimage is slow, and nothing here may download.
    spec = importlib.util.find_spec(real.module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {real.package} is not installed, and real/ needs its file {real.module}/{real.relative_path} "
            f"(install the dev extra: pip install -e '.[dev]', or pass --no-real)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / real.relative_path
    if not path.is_file():
        raise FileNotFoundError(
            f"package {real.package} is installed but does not ship {real.module}/{real.relative_path} "
            f"(looked at {path}); this tool never downloads it"
        )
    return path


def dicom_to_png(path: Path) -> bytes:
    import pydicom

    pixels = pydicom.dcmread(path).pixel_array.astype(np.float64)
    low, high = pixels.min(), pixels.max()
    # Window to the slice's own range, so the full 8-bit scale is used whatever the scanner's units.
    scaled = np.round((pixels - low) / max(high - low, 1.0) * 255).astype(np.uint8)
    return encode_png(Image.fromarray(scaled, mode="L"))


def real_image_bytes(path: Path) -> tuple[bytes, str]:
    """(encoded image, file extension): JPEG and PNG files byte for byte, DICOM converted to an 8-bit PNG."""
    if path.suffix.lower() == ".dcm":
        return dicom_to_png(path), ".png"
    return path.read_bytes(), path.suffix.lower()


def build_real() -> list[dict]:
    rows = []
    for real in REAL_IMAGES:
        path = package_file(real)
        image, extension = real_image_bytes(path)
        meta = {
            "source_package": real.package,
            "source_version": importlib.metadata.version(real.package),
            "source_file": f"{real.module}/{real.relative_path}",
        }
        rows.append(
            {
                "id": real.id,
                "image": image,
                "image_path": None,
                "caption": real.caption,
                "instruction": None,
                "meta": json.dumps(meta, sort_keys=True),
                "extension": extension,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------------------- writing


def write_parquet(rows: list[dict], schema: pa.Schema, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {field.name: [row[field.name] for row in rows] for field in schema}
    pq.write_table(pa.Table.from_pydict(columns, schema=schema), path)
    return path


def write_parquet_shards(rows: list[dict], schema: pa.Schema, folder: Path, shard_size: int) -> list[Path]:
    # No rows still gives one (empty) shard: readers then find a file with the schema instead of an empty folder.
    starts = range(0, max(len(rows), 1), shard_size)
    return [
        write_parquet(rows[start : start + shard_size], schema, folder / f"part-{number:05d}.parquet")
        for number, start in enumerate(starts)
    ]


def write_image_files(images: dict[str, bytes], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in images.items():
        (folder / name).write_bytes(data)


def write_jsonl(records: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def write_captions_jsonl(rows: list[dict], folder: Path, jsonl_name: str) -> Path:
    """The pairs as JSONL with one image file each; image_path is relative to the JSONL's folder.

    A row may carry the `extension` of its image format (real JPEGs stay JPEGs); drawn images are PNG.
    """
    extensions = {row["id"]: row.get("extension", ".png") for row in rows}
    write_image_files({f"{row['id']}{extensions[row['id']]}": row["image"] for row in rows}, folder / "images")
    records = [
        {
            "id": row["id"],
            "image_path": f"images/{row['id']}{extensions[row['id']]}",
            "caption": row["caption"],
            "meta": row["meta"],
        }
        for row in rows
    ]
    return write_jsonl(records, folder / jsonl_name)


def benchmark_rows(items: list[BenchmarkItem]) -> list[dict]:
    return [
        {"id": item.id, "image": item.png, "input": item.question, "label": item.label, "answer_type": item.answer_type}
        for item in items
    ]


def write_benchmark(items: list[BenchmarkItem], folder: Path) -> list[Path]:
    rows = benchmark_rows(items)
    parquet = write_parquet(rows, BENCHMARK_SCHEMA, folder / "demo_vqa.parquet")
    write_image_files({f"{row['id']}.png": row["image"] for row in rows}, folder / "images")
    records = [
        {key: row[key] for key in ("id", "input", "label", "answer_type")} | {"image_path": f"images/{row['id']}.png"}
        for row in rows
    ]
    return [parquet, write_jsonl(records, folder / "demo_vqa.jsonl")]


# --------------------------------------------------------------------------------------------------------- manifest

FILE_SETS = ("captions", "captions_jsonl", "benchmark", "seed_tasks", "real")
MANIFEST_NAME = "demo_manifest.json"


def folder_sha256(folder: Path) -> str:
    """One hash over every file's relative path and bytes, in path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def file_set_entry(out: Path, name: str, files: list[Path], rows: int) -> dict:
    folder = out / name
    image_folder = folder / "images"
    return {
        "folder": name,
        "rows": rows,
        "files": [path.relative_to(out).as_posix() for path in files],
        "image_files": sum(1 for _ in image_folder.iterdir()) if image_folder.is_dir() else 0,
        "sha256": folder_sha256(folder),
    }


def vocabulary() -> dict:
    return {
        "shape": list(SHAPES),
        "colour": list(COLOURS),
        "size": list(SIZE_RADII),
        "count": list(COUNTS),
        "background": list(BACKGROUNDS),
        "texture": list(TEXTURES),
        "region": list(REGION_PHRASES),
    }


def generator_sha256() -> str:
    # The rows depend on this file's code as much as on the flags: any edit makes an earlier build stale.
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def build_arguments(args: argparse.Namespace) -> dict:
    """What the data depends on: a manifest with these same values means the build is current."""
    return {
        "generator_sha256": generator_sha256(),
        "seed": args.seed,
        "train": args.train,
        "benchmark": args.benchmark,
        "seed_tasks": args.seed_tasks,
        "shard_size": args.shard_size,
        "real": not args.no_real,
    }


def read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST_NAME
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def is_current(manifest: dict | None, arguments: dict, out: Path) -> bool:
    if manifest is None or manifest.get("arguments") != arguments:
        return False
    return all((out / f).is_file() for entry in manifest["file_sets"].values() for f in entry["files"])


def prepare_output(out: Path, force: bool) -> None:
    """Clear the folders an earlier build wrote, so a smaller rebuild leaves no stale shards behind."""
    ours = set(FILE_SETS) | {MANIFEST_NAME, MANIFEST_NAME + ".tmp"}
    foreign = sorted(p.name for p in out.iterdir() if p.name not in ours) if out.is_dir() else []
    if foreign and not force:
        raise SystemExit(f"{out} holds files this tool does not write ({', '.join(foreign[:5])}); use --force")
    for name in FILE_SETS:
        if (out / name).exists():
            shutil.rmtree(out / name)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def write_manifest(out: Path, arguments: dict, file_sets: dict) -> Path:
    manifest = {
        "generator": "tools/make_demo_data.py",
        "seed": arguments["seed"],
        "arguments": arguments,
        "counts": {name: entry["rows"] for name, entry in file_sets.items()},
        "vocabulary": vocabulary(),
        "file_sets": file_sets,
    }
    # Written last and renamed into place: a build cut short never looks complete.
    staging = out / (MANIFEST_NAME + ".tmp")
    staging.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    staging.replace(out / MANIFEST_NAME)
    return out / MANIFEST_NAME


# ------------------------------------------------------------------------------------------------------------ build


def build_demo_data(out: Path, arguments: dict) -> dict:
    """Write every file set under `out` and return the manifest's file_sets section."""
    seed, shard_size = arguments["seed"], arguments["shard_size"]
    file_sets = {}

    captions = build_captions(seed, arguments["train"])
    shards = write_parquet_shards(captions, CAPTION_SCHEMA, out / "captions", shard_size)
    file_sets["captions"] = file_set_entry(out, "captions", shards, len(captions))
    jsonl = write_captions_jsonl(captions, out / "captions_jsonl", "captions.jsonl")
    file_sets["captions_jsonl"] = file_set_entry(out, "captions_jsonl", [jsonl], len(captions))

    benchmark = build_benchmark(seed, arguments["benchmark"])
    benchmark_files = write_benchmark(benchmark, out / "benchmark")
    file_sets["benchmark"] = file_set_entry(out, "benchmark", benchmark_files, len(benchmark))

    seed_tasks = build_seed_tasks(seed, arguments["seed_tasks"])
    seed_file = write_parquet(seed_tasks, SEED_TASK_SCHEMA, out / "seed_tasks" / "seed_tasks.parquet")
    file_sets["seed_tasks"] = file_set_entry(out, "seed_tasks", [seed_file], len(seed_tasks))

    if arguments["real"]:
        real = build_real()
        real_files = [
            write_parquet(real, CAPTION_SCHEMA, out / "real" / "part-00000.parquet"),
            write_captions_jsonl(real, out / "real", "real.jsonl"),
        ]
        file_sets["real"] = file_set_entry(out, "real", real_files, len(real))
    return file_sets


def summary_line(name: str, entry: dict, out: Path) -> str:
    files = len(entry["files"]) + entry["image_files"]
    digest = entry["sha256"][:12]
    return f"{name:<15} {entry['rows']:>5} rows {files:>5} files  sha256 {digest}  {out / entry['folder']}"


def count_argument(minimum: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="output folder (default: data/demo)")
    parser.add_argument("--seed", type=count_argument(0), default=0, help="seed of all random streams (default: 0)")
    parser.add_argument("--train", type=count_argument(0), default=800, help="image-caption pairs (default: 800)")
    parser.add_argument(
        "--benchmark", type=count_argument(0), default=120, help="benchmark questions, one per held-out image"
    )
    parser.add_argument(
        "--seed-tasks", type=count_argument(0), default=200, help="seed-task images for synthesizer tuning"
    )
    parser.add_argument("--shard-size", type=count_argument(1), default=200, help="rows per caption shard")
    parser.add_argument("--no-real", action="store_true", help="skip real/ (needs scikit-image and pydicom)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the manifest says the data is current")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    arguments = build_arguments(args)
    if not args.force and is_current(read_manifest(args.out), arguments, args.out):
        print(f"{args.out / MANIFEST_NAME} is current for these arguments; nothing to do (use --force to rebuild)")
        return 0
    prepare_output(args.out, args.force)
    try:
        file_sets = build_demo_data(args.out, arguments)
    except FileNotFoundError as missing:
        raise SystemExit(f"make_demo_data: {missing}") from missing
    for name, entry in file_sets.items():
        print(summary_line(name, entry, args.out))
    print(f"manifest        {write_manifest(args.out, arguments, file_sets)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
