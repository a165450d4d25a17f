"""Collation on the tiny Qwen2-VL: labels cover exactly the assistant turns, image tokens stay whole, truncation rules
are counted, and the batches the collator builds go through the model."""

from __future__ import annotations

import pytest
import torch

from engine.models.families import chat_template_messages, get_family
from engine.models.loading import load_model, load_processor
from engine.synthesis.examples import CAPTION_PROMPT
from engine.training import mixture
from engine.training.collate import (
    DROPPED_IMAGE_OVER_LENGTH,
    DROPPED_NO_LABELS,
    DROPPED_UNREADABLE_IMAGE,
    IGNORE_INDEX,
    KEPT,
    TRUNCATED,
    CollationError,
    Collator,
    expand_labels,
    render_with_spans,
)
from tests.fixtures import png_bytes

QWEN = get_family("qwen2-vl")
IMAGE_TOKENS_112 = 16  # a 112 px image: 8x8 patches of 14 px, merged 2x2


@pytest.fixture(scope="module")
def processor(tiny_model_dir):
    return load_processor(tiny_model_dir / "tiny-qwen2-vl")


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir / "tiny-qwen2-vl", "image-text-to-text", dtype="float32")


def conversation(answer: str = "It is red. Therefore, the answer is red.", question: str = "What colour is it?",
                 caption: str = "A red square on a white field.", size: int = 112) -> dict:
    return {
        "id": "example",
        "images": [png_bytes((220, 30, 30), size=size)],
        "loss_from": None,
        "messages": [
            {"role": "user", "content": CAPTION_PROMPT},
            {"role": "assistant", "content": caption},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
    }


def labelled_runs(example: dict) -> list[list[int]]:
    """The labelled token ids, as runs of consecutive positions."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for label in example["labels"][0].tolist():
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(label)
        previous = label
    return runs


def image_positions(example: dict, processor) -> list[int]:
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    return [i for i, token in enumerate(example["input_ids"][0].tolist()) if token == image_id]


def test_the_family_format_is_the_models_chat_template(processor):
    messages = conversation()["messages"]
    template = processor.apply_chat_template(chat_template_messages(messages), tokenize=False)
    assert render_with_spans(QWEN, messages).text == template


def test_labels_cover_exactly_the_assistant_turns(processor):
    collator = Collator(processor, QWEN, max_length=512)
    example = collator.encode(conversation())
    decoded = [processor.tokenizer.decode(run) for run in labelled_runs(example)]
    # Each assistant turn's content and its end-of-turn token, nothing else: not the system prompt, the user turns,
    # the role headers, the image or the layout newline after <|im_end|>.
    assert decoded == ["A red square on a white field.<|im_end|>", "It is red. Therefore, the answer is red.<|im_end|>"]
    ids, labels = example["input_ids"][0], example["labels"][0]
    labelled = labels != IGNORE_INDEX
    assert torch.equal(labels[labelled], ids[labelled])  # labels are the tokens themselves (the model shifts them)
    assert collator.counts == {KEPT: 1}


def test_labels_follow_the_turn_order_when_the_caption_comes_last(processor):
    row = {"id": "r", "images": conversation()["images"], "messages": conversation()["messages"],
           "kind": "caption+synthetic"}
    caption_last = next(c for seed in range(20) for c in mixture.single_stage(row, seed)
                        if c["messages"][1]["content"].startswith("It is red"))
    example = Collator(processor, QWEN, max_length=512).encode(caption_last)
    decoded = [processor.tokenizer.decode(run) for run in labelled_runs(example)]
    assert decoded == ["It is red. Therefore, the answer is red.<|im_end|>", "A red square on a white field.<|im_end|>"]


def test_image_tokens_are_intact_and_never_labelled(processor):
    example = Collator(processor, QWEN, max_length=512).encode(conversation())
    positions = image_positions(example, processor)
    assert len(positions) == IMAGE_TOKENS_112 == int(example["image_grid_thw"].prod()) // 4
    assert positions == list(range(positions[0], positions[0] + IMAGE_TOKENS_112))  # one contiguous run
    ids = example["input_ids"][0].tolist()
    tokenizer = processor.tokenizer
    assert ids[positions[0] - 1] == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert ids[positions[-1] + 1] == tokenizer.convert_tokens_to_ids("<|vision_end|>")
    assert (example["labels"][0, positions] == IGNORE_INDEX).all()
    assert example["pixel_values"].shape[0] == IMAGE_TOKENS_112 * 4
    assert example["mm_token_type_ids"][0].tolist() == [int(i in positions) for i in range(len(ids))]


def test_a_long_example_loses_text_not_image_tokens(processor):
    collator = Collator(processor, QWEN, max_length=80)
    long_answer = " ".join(["The shape is red and square."] * 30)
    example = collator.encode(conversation(answer=long_answer))
    assert example["input_ids"].shape == example["labels"].shape == example["mm_token_type_ids"].shape == (1, 80)
    assert len(image_positions(example, processor)) == IMAGE_TOKENS_112
    assert example["pixel_values"].shape[0] == IMAGE_TOKENS_112 * 4  # the pixels still match the image tokens
    assert collator.counts == {TRUNCATED: 1, KEPT: 1}


def test_a_cut_through_an_image_drops_the_example(processor):
    collator = Collator(processor, QWEN, max_length=30)  # the image tokens run from about 20 to 36
    assert collator.encode(conversation()) is None
    assert collator.counts == {DROPPED_IMAGE_OVER_LENGTH: 1}
    # The image must be followed by its closing token inside the window: a cut right after the last image token drops.
    full = Collator(processor, QWEN, max_length=512).encode(conversation())
    last_image = image_positions(full, processor)[-1]
    edge = Collator(processor, QWEN, max_length=last_image + 1)
    assert edge.encode(conversation()) is None
    closed = Collator(processor, QWEN, max_length=last_image + 2)
    assert closed.encode(conversation()) is None and closed.counts == {TRUNCATED: 1, DROPPED_NO_LABELS: 1}


def test_a_truncation_that_leaves_no_labels_drops_the_example(processor):
    collator = Collator(processor, QWEN, max_length=60)
    long_prompt = {**conversation(), "messages": [
        {"role": "user", "content": "<image>\n" + " ".join(["Look at the picture carefully."] * 20)},
        {"role": "assistant", "content": "Red."},
    ]}
    assert collator.encode(long_prompt) is None
    assert collator.counts == {TRUNCATED: 1, DROPPED_NO_LABELS: 1}


def test_a_family_the_checkpoint_cannot_speak_is_refused_by_name(processor):
    # mllama's format writes Llama-3 headers; this Qwen2-VL tokenizer has none of them.
    with pytest.raises(ValueError, match="no <\\|begin_of_text\\|>.*'mllama' format"):
        Collator(processor, "mllama", max_length=512)


def test_an_unreadable_image_is_dropped_and_counted(processor):
    collator = Collator(processor, QWEN, max_length=512)
    broken = {**conversation(), "images": [png_bytes(size=112)[:40]]}
    assert collator([broken, conversation()])["input_ids"].shape[0] == 1
    assert collator.counts == {DROPPED_UNREADABLE_IMAGE: 1, KEPT: 1}
    with pytest.raises(ValueError, match="placeholders"):
        collator.encode({**conversation(), "images": []})


def test_synthesizer_tuning_labels_everything_after_the_caption_turn(processor):
    row = {"id": "s", "image": png_bytes(size=112), "caption": "A red square.",
           "tasks": [{"question": "What colour?", "precise": "red", "informative": "It is red, so red."}]}
    (synthesizer,) = mixture.synthesizer_conversation(row, seed=0, blank_image_fraction=0.0)
    example = Collator(processor, QWEN, max_length=512).encode(synthesizer)
    (run,) = labelled_runs(example)
    rendered = render_with_spans(QWEN, synthesizer["messages"], synthesizer["loss_from"])
    caption_end = rendered.text.index("A red square.<|im_end|>\n") + len("A red square.<|im_end|>\n")
    # As in the release's tuning, the first QA turn's user header is labelled too, and everything after it.
    assert processor.tokenizer.decode(run) == rendered.text[caption_end:]
    assert processor.tokenizer.decode(run).startswith("<|im_start|>user\nAnswer with a")
    assert processor.tokenizer.decode(run).endswith("<|im_end|>\n<|endoftext|>")
    assert "A red square." not in processor.tokenizer.decode(run)


def test_synthesizer_tuning_labels_from_the_first_qa_header_in_the_released_format():
    messages = [{"role": "user", "content": "<image>\nDescribe the image."}, {"role": "assistant", "content": "Cap."},
                {"role": "user", "content": "Answer with a precise response.\nQ?"},
                {"role": "assistant", "content": "A"}]
    rendered = render_with_spans("llava-llama3", messages, loss_from=2)
    (span,) = rendered.spans
    assert rendered.text[span[0]:span[1]] == ("<|start_header_id|>user<|end_header_id|>\n\nAnswer with a precise "
                                              "response.\nQ?<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
                                              "\n\nA<|eot_id|><|end_of_text|>")
    assert rendered.text[:span[0]].endswith("Cap.<|eot_id|>")  # the caption turn's end token is not learnt


def test_a_batch_pads_tokens_concatenates_images_and_runs_through_the_model(processor, model):
    collator = Collator(processor, QWEN, max_length=512)
    short = conversation(answer="Red.", size=56)
    long = conversation(answer="It is red. " * 5, size=112)
    batch = collator([short, long])
    lengths = [collator.encode(c)["input_ids"].shape[1] for c in (short, long)]
    assert batch["input_ids"].shape == (2, max(lengths))
    pad = lengths[1] - lengths[0]
    assert (batch["input_ids"][0, -pad:] == processor.tokenizer.pad_token_id).all()
    assert (batch["labels"][0, -pad:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][0, -pad:] == 0).all() and (batch["attention_mask"][1] == 1).all()
    assert batch["image_grid_thw"].shape == (2, 3)
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(dim=1).sum())
    with torch.no_grad():
        loss = model(**batch).loss
    assert torch.isfinite(loss) and loss > 0


def test_misaligned_tokens_are_refused():
    assert expand_labels([1, 9, 2], [False, False, True], [1, 9, 9, 9, 2], image_token_id=9) == [-100, -100, -100,
                                                                                                 -100, 2]
    with pytest.raises(CollationError):
        expand_labels([1, 2, 3], [False, True, True], [1, 2, 4], image_token_id=9)
    with pytest.raises(CollationError):
        expand_labels([1, 2], [False, True], [1, 2, 3], image_token_id=9)
