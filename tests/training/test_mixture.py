"""Training mixtures: conversation counts, turn orders, image placement, seeding, synthesizer-tuning conversations."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from engine.config import TrainingConfig
from engine.synthesis.examples import CAPTION_PROMPT
from engine.synthesis.prompts import INFORMATIVE_HINT, PRECISE_HINT
from engine.training import mixture
from tests.conftest import REPO_ROOT
from tests.fixtures import png_bytes

IMAGE = png_bytes(size=112)


def instruction_row(index: int, kind: str) -> dict:
    """A row as synthesis writes it: the caption exchange first, then the synthetic one (canonical order)."""
    messages = []
    if kind in ("caption", "caption+synthetic"):
        messages += [{"role": "user", "content": CAPTION_PROMPT}, {"role": "assistant", "content": f"Caption {index}."}]
    if kind in ("synthetic", "caption+synthetic"):
        question = f"Question {index}?" if messages else f"<image>\nQuestion {index}?"
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": f"Answer {index}."}]
    return {"id": f"row-{index:04d}", "images": [IMAGE], "messages": messages, "kind": kind}


def mixed_rows(count: int = 40) -> list[dict]:
    kinds = ("caption+synthetic", "caption+synthetic", "caption", "synthetic")
    return [instruction_row(index, kinds[index % len(kinds)]) for index in range(count)]


def seed_row(index: int, tasks: int = 3) -> dict:
    return {
        "id": f"seed-{index:04d}",
        "image": png_bytes((20, 200, 20), size=84),
        "caption": f"Seed caption {index}.",
        "tasks": [{"question": f"Q{index}-{t}?", "precise": f"P{t}", "informative": f"I{t}, so P{t}."}
                  for t in range(tasks)],
    }


def contents(conversation: dict) -> list[str]:
    return [message["content"] for message in conversation["messages"]]


def roles(conversation: dict) -> list[str]:
    return [message["role"] for message in conversation["messages"]]


def expand(rows: list[dict], phase_expander, seed: int = 0) -> list[dict]:
    return [conversation for row in rows for conversation in phase_expander(row, seed)]


# ------------------------------------------------------------------------------------------------------ single stage


def test_single_stage_makes_one_conversation_per_image_with_every_exchange():
    rows = mixed_rows()
    conversations = expand(rows, mixture.single_stage)
    assert len(conversations) == len(rows)
    for row, conversation in zip(rows, conversations):
        assert conversation["id"] == row["id"] and conversation["images"] == row["images"]
        assert conversation["loss_from"] is None
        assert roles(conversation) == ["user", "assistant"] * (len(row["messages"]) // 2)
        assert sorted(contents(conversation)[1::2]) == sorted(m["content"] for m in row["messages"][1::2])


def test_single_stage_puts_the_caption_turn_first_or_last_at_random_and_seeded():
    rows = [instruction_row(index, "caption+synthetic") for index in range(200)]
    conversations = expand(rows, mixture.single_stage, seed=7)
    caption_first = [contents(c)[1].startswith("Caption") for c in conversations]
    assert 70 < sum(caption_first) < 130  # a fair coin per row
    assert expand(rows, mixture.single_stage, seed=7) == conversations  # same seed, same draws
    reseeded = expand(rows, mixture.single_stage, seed=8)
    assert [contents(c)[1] for c in reseeded] != [contents(c)[1] for c in conversations]
    # The draw depends on the row, not on its position in the stream.
    assert expand(rows[::-1], mixture.single_stage, seed=7) == conversations[::-1]


def test_the_image_always_opens_the_first_user_turn():
    for conversation in expand(mixed_rows(), mixture.single_stage, seed=3):
        texts = contents(conversation)
        assert texts[0].startswith("<image>\n")
        assert sum(text.count("<image>") for text in texts) == 1
    caption_last = next(c for c in expand(mixed_rows(), mixture.single_stage, seed=3)
                        if len(c["messages"]) == 4 and contents(c)[1].startswith("Answer"))
    index = int(caption_last["id"][4:])
    assert contents(caption_last) == [f"<image>\nQuestion {index}?", f"Answer {index}.", "Describe the image.",
                                      f"Caption {index}."]


# -------------------------------------------------------------------------------------- two-stage and the ablations


def test_two_stage_gives_captions_first_then_instructions():
    rows = mixed_rows(40)  # 30 rows with a caption, 30 with a synthetic task
    phases = mixture.phases("two_stage")
    assert [name for name, _ in phases] == [mixture.CAPTION_PHASE, mixture.INSTRUCTION_PHASE]
    captions, instructions = (expand(rows, expander) for _, expander in phases)
    assert len(captions) == 30 and len(instructions) == 30
    for conversation in captions:
        assert contents(conversation) == [CAPTION_PROMPT, f"Caption {int(conversation['id'][4:])}."]
    for conversation in instructions:
        index = int(conversation["id"][4:])
        assert contents(conversation) == [f"<image>\nQuestion {index}?", f"Answer {index}."]


def test_the_caption_exchange_is_known_by_its_place_not_its_instruction():
    row = instruction_row(5, "caption+synthetic")
    row["messages"][0]["content"] = "<image>\nGenerate a recipe for this delicious food."
    without_kind = {key: value for key, value in row.items() if key != "kind"}
    for candidate in (row, without_kind):
        example = mixture.parse_example(candidate)
        assert example.caption == mixture.Exchange("Generate a recipe for this delicious food.", "Caption 5.")
        assert example.synthetic == [mixture.Exchange("Question 5?", "Answer 5.")]
    assert mixture.example_kind(without_kind) == "caption+synthetic"
    (caption_phase,) = mixture.phases("caption_only")
    assert contents(caption_phase[1](row, 0)[0]) == ["<image>\nGenerate a recipe for this delicious food.",
                                                     "Caption 5."]


@pytest.mark.parametrize("name", list(mixture.MIXTURES))
def test_phase_counts_match_the_expansion(name):
    rows = mixed_rows(40)
    expected = {phase: len(expand(rows, expander)) for phase, expander in mixture.phases(name)}
    assert mixture.phase_counts([row["kind"] for row in rows], name) == expected
    # Rows without a kind column (LLaMA-Factory JSON) count the same once their kind is recomputed.
    assert mixture.phase_counts([mixture.example_kind(row) for row in rows], name) == expected


def test_caption_only_and_synthetic_only_are_single_phases():
    rows = mixed_rows(40)
    (caption_phase,) = mixture.phases("caption_only")
    (synthetic_phase,) = mixture.phases("synthetic_only")
    assert len(expand(rows, caption_phase[1])) == 30
    assert len(expand(rows, synthetic_phase[1])) == 30
    with pytest.raises(ValueError, match="unknown mixture"):
        mixture.phases("three_stage")


def test_a_system_message_is_kept_first():
    row = instruction_row(1, "caption+synthetic")
    row["messages"].insert(0, {"role": "system", "content": "Be brief."})
    for seed in range(4):
        (conversation,) = mixture.single_stage(row, seed)
        assert conversation["messages"][0] == {"role": "system", "content": "Be brief."}
        assert conversation["messages"][1]["content"].startswith("<image>\n")


def test_malformed_rows_are_refused_with_their_id():
    row = instruction_row(1, "caption")
    row["images"] = [IMAGE, IMAGE]
    with pytest.raises(ValueError, match="row-0001.*1 <image> placeholders for 2 images"):
        mixture.single_stage(row, 0)
    row = instruction_row(2, "caption+synthetic")
    row["messages"] = row["messages"][:3]
    with pytest.raises(ValueError, match="alternate"):
        mixture.single_stage(row, 0)


# ---------------------------------------------------------------------------------------------- synthesizer tuning


def test_synthesizer_conversation_has_the_caption_then_shuffled_hinted_qa_turns():
    row = seed_row(0, tasks=3)
    (conversation,) = mixture.synthesizer_conversation(row, seed=0, blank_image_fraction=0.0)
    texts = contents(conversation)
    assert texts[:2] == [CAPTION_PROMPT, "Seed caption 0."]
    assert conversation["loss_from"] == mixture.SYNTHESIZER_LOSS_FROM == 2
    assert roles(conversation) == ["user", "assistant"] * 7
    turns = list(zip(texts[2::2], texts[3::2]))
    expected = {(f"{hint}\nQ0-{t}?", answer) for t in range(3)
                for hint, answer in ((PRECISE_HINT, f"P{t}"), (INFORMATIVE_HINT, f"I{t}, so P{t}."))}
    assert set(turns) == expected and len(turns) == 6
    orders = {tuple(contents(mixture.synthesizer_conversation(row, seed, 0.0)[0])) for seed in range(10)}
    assert len(orders) > 1  # shuffled, and the shuffle follows the seed
    assert mixture.synthesizer_conversation(row, 3, 0.0) == mixture.synthesizer_conversation(row, 3, 0.0)


def test_blank_images_replace_the_given_fraction():
    rows = [seed_row(index, tasks=1) for index in range(200)]
    blanked = [mixture.synthesizer_conversation(row, 0, 0.25)[0]["images"][0] != row["image"] for row in rows]
    assert 30 < sum(blanked) < 70
    row = rows[0]
    blank = mixture.synthesizer_conversation(row, 0, 1.0)[0]["images"][0]
    with Image.open(io.BytesIO(blank)) as image:
        # The release's Blank.jpg: a white 237 x 150 JPEG, whatever the image it replaces.
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (237, 150))
        assert image.getextrema() == ((255, 255), (255, 255), (255, 255))
    assert mixture.synthesizer_conversation(rows[1], 0, 1.0)[0]["images"][0] == blank
    assert mixture.synthesizer_conversation(row, 0, 0.0)[0]["images"] == [row["image"]]


def named(task_name: str | None, count: int) -> list[tuple[str, str | None]]:
    """`count` (id, task_name) pairs of one seed task."""
    return [(f"{task_name}-{index:03d}", task_name) for index in range(count)]


@pytest.mark.parametrize(("rows", "dev"), [(20, 2), (10, 1), (15, 2), (9, 1), (1, 1), (100, 10)])
def test_the_dev_split_holds_out_exactly_what_the_releases_cut_leaves(rows, dev):
    # The release trains on int(0.9 n) of a task's rows: 18 of 20, 9 of 10, 13 of 15 (int truncates 13.5; rounding
    # would give 14), 8 of 9, none of 1, 90 of 100. The rest are dev.
    assert len(mixture.dev_ids(named("vqa", rows), seed=3, dev_fraction=0.1)) == dev


def test_each_seed_task_is_split_on_its_own():
    rows = named("caption", 20) + named("count", 10) + named("ocr", 5)
    dev = mixture.dev_ids(rows, seed=3, dev_fraction=0.1)
    # 20 -> 2, 10 -> 1, 5 -> 1 (int(4.5) = 4 trained): per task, not 10% of the 35 rows (int(31.5) = 31, 4 dev).
    per_task = {name: sum(row_id.startswith(f"{name}-") for row_id in dev) for name in ("caption", "count", "ocr")}
    assert per_task == {"caption": 2, "count": 1, "ocr": 1}
    # Rows without a task name (null or empty) are one task: 12 of them -> int(10.8) = 10 trained, 2 dev.
    unnamed = [(f"u-{index}", None if index % 2 else "") for index in range(12)]
    assert len(mixture.dev_ids(unnamed, 3, 0.1)) == 2
    assert len(mixture.dev_ids(rows, 3, 0.0)) == 0  # no split unless asked


def test_the_dev_split_is_a_seeded_shuffle_of_each_task_whatever_the_row_order():
    rows = named("vqa", 20)
    dev = mixture.dev_ids(rows, seed=3, dev_fraction=0.1)
    # The rule written out: the task's ids sorted, shuffled by Random("{seed}:dev:{task name}"), the last 2 of 20 dev.
    ids = sorted(row_id for row_id, _ in rows)
    random.Random("3:dev:vqa").shuffle(ids)
    assert dev == frozenset(ids[18:])
    assert mixture.dev_ids(list(reversed(rows)), 3, 0.1) == dev  # file order does not matter
    assert mixture.dev_ids(rows, 3, 0.1) == dev  # the same every time
    assert mixture.dev_ids(rows, 4, 0.1) != dev  # it follows the seed


def test_dev_rows_are_held_out_and_the_others_are_unchanged():
    rows = [seed_row(index, tasks=1) for index in range(20)]
    dev = mixture.dev_ids([(row["id"], None) for row in rows], 3, 0.1)
    held_out = {row["id"] for row in rows if not mixture.synthesizer_conversation(row, 3, 0.0, dev=dev)}
    assert held_out == dev and len(held_out) == 2
    # The split is not a draw of the row's own: the blank-image and shuffle draws of the rows kept are unchanged by it.
    kept = next(row for row in rows if row["id"] not in dev)
    assert mixture.synthesizer_conversation(kept, 3, 0.5, dev) == mixture.synthesizer_conversation(kept, 3, 0.5)
    assert all(mixture.synthesizer_conversation(row, 3, 0.0) for row in rows)  # no split unless asked


def test_the_tuning_section_defaults_to_the_releases_two_epochs_and_ten_percent_dev():
    base = {"model": "org/model", "family": "qwen2-vl", "use_gpu": False, "precision": "fp32",
            "deepspeed_config": str(REPO_ROOT / "configs" / "deepspeed" / "zero2.json")}
    tuning = TrainingConfig.model_validate(base | {"task": "synthesizer"})
    assert (tuning.epochs, tuning.dev_fraction, tuning.blank_image_fraction) == (2, 0.1, 0.1)
    assert TrainingConfig.model_validate(base | {"task": "synthesizer", "epochs": 3}).epochs == 3
    assert TrainingConfig.model_validate(base).epochs == 1  # post-training: the paper's one epoch
