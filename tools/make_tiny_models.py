"""Build the tiny random-weight models that tests and the CPU demo use, offline and deterministically.

No model hub is reachable on test machines, so every model is made here from nothing:

* ``tiny-qwen2-vl``: a Qwen2-VL (``Qwen2VLForConditionalGeneration``) shrunk to ~1 M parameters, saved with a full
  ``Qwen2VLProcessor`` (tokenizer + image processor + video processor + chat template) so that
  ``AutoProcessor.from_pretrained`` returns the processor, exactly as for the real checkpoints;
* ``tiny-text-llm``: a Qwen2 text causal LM of the same size class, the consistency-filter judge.

Both share a byte-level BPE tokenizer trained with the ``tokenizers`` library on procedurally generated text, carrying
Qwen2-VL's special tokens and a ChatML chat template. The same seed gives byte-identical files: the corpus comes from a
seeded ``random.Random`` and the weights from ``torch.manual_seed``.

A model folder holds a build stamp (seed, builder format, library versions); a folder with a matching stamp is kept,
anything else is rebuilt. Each model is built in a scratch folder and moved into place only when complete, so an
interrupted build never leaves a folder that looks finished.

Usage: ``python tools/make_tiny_models.py [--out models/] [--seed 0] [--force]``
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tokenizers
import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEED = 0
# Bump when a change here alters what gets built: stamps from older builds then stop matching.
BUILD_FORMAT = 1
STAMP_FILE = "tiny-model-stamp.json"

VLM_NAME = "tiny-qwen2-vl"
TEXT_LLM_NAME = "tiny-text-llm"

# Qwen2-VL's special tokens, appended after the BPE vocabulary in this order (as in the real tokenizer).
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
VISION_PAD = "<|vision_pad|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, VISION_PAD, IMAGE_PAD, VIDEO_PAD)

BPE_VOCAB_SIZE = 1280
CORPUS_LINES = 6000

# 28 px is one merged 2x2 patch group; 112 px square = 4x4 groups = 16 image tokens.
IMAGE_MIN_PIXELS = 56 * 56
IMAGE_MAX_PIXELS = 112 * 112

HIDDEN_SIZE = 128
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_HEADS = 2
INTERMEDIATE_SIZE = 256
MAX_POSITIONS = 4096
# M-RoPE splits head_dim/2 rotary frequencies over (time, height, width); Qwen2-VL's [16, 24, 24] scaled to head_dim 32.
MROPE_SECTION = [4, 6, 6]
VISION_DEPTH = 2
VISION_EMBED_DIM = 64
VISION_HEADS = 4

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# ChatML as Qwen2-VL renders it: a default system turn, string or list content, each image part becomes
# <|vision_start|><|image_pad|><|vision_end|> (the processor expands the pad to the image's token count).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# ChatML for the text judge: string content, or the text parts of list content.
TEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if 'text' in part %}{{ part['text'] }}{% endif %}{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Words of the project's domains (the demo's colours and shapes, biomedicine, food, remote sensing) and of the
# synthesizer's and judge's prompts, so that their text tokenizes into short sequences.
COLOURS = "red green blue yellow orange purple pink brown black white grey cyan magenta violet golden silver".split()
SHAPES = "circle square triangle rectangle star hexagon diamond oval cross ring pentagon arrow heart crescent".split()
SIZES = "small large tiny huge medium thin wide narrow".split()
PLACES = "left right top bottom centre corner middle edge".split()
MODALITIES = "X-ray CT MRI ultrasound microscopy histology endoscopy mammogram angiogram dermoscopy".split()
ORGANS = "lung heart liver kidney brain bone skin retina breast colon stomach spine chest abdomen pancreas".split()
FINDINGS = (
    "nodule lesion fracture tumor inflammation effusion haemorrhage mass cyst calcification oedema infection "
    "stenosis atrophy metastasis carcinoma pneumonia opacity infiltrate"
).split()
QUALIFIERS = "no mild moderate severe benign malignant acute chronic focal diffuse bilateral normal abnormal".split()
FOODS = (
    "bread rice soup apple banana salad noodles pizza burger sushi curry cake cheese tomato potato chicken beef fish "
    "egg carrot broccoli mushroom pasta dumpling taco pancake yogurt chocolate strawberry lemon"
).split()
COOKING = "fried grilled baked boiled steamed roasted raw sliced spicy sweet sour fresh".split()
LAND_COVER = "forest river lake farmland road building airport harbour desert beach mountain field bridge city".split()
SEPARATORS = (" ", " ", "\n", "\n\n")
GENERAL_SENTENCE_SHARE = 0.3
# Everyday English, so that prompts beyond the domain templates do not fall apart into single bytes.
COMMON_WORDS = (
    "the be to of and a in that have it for not on with he as you do at this but his by from they we say her she "
    "or an will my one all would there their what so up out if about who get which go me when make can like time "
    "no just him know take people into year your good some could them see other than then now look only come its "
    "over think also back after use two how our work first well way even new want because any these give day most "
    "us is are was were has had been being does did said each many more such very own same long great little old "
    "right big high different small large next early young important few public bad able colour shape picture "
    "image photo question answer describe detail explain reason because therefore which count number left right "
    "above below between inside outside near far before after during patient doctor hospital diagnosis treatment "
    "disease symptom clinical study result evidence sample cell tissue protein blood dose test level increase "
    "decrease compare similar shown visible appears contains indicates suggests consistent caption instruction "
    "response task context information following correct incorrect true false option choose select best".split()
)
QUESTION_WORDS = "What Which Where How Is Does Are Can Why".split()
ANSWERS = "Yes No".split()

SENTENCE_TEMPLATES = (
    "The image shows a {size} {colour} {shape} in the {place}.",
    "Question: What colour is the {shape}? Answer: {colour}.",
    "Question: What shape is {colour}? Answer: a {shape}.",
    "There are {count} {colour} {shape}s on a {colour2} background.",
    "A {modality} image of the {organ} showing {qualifier} {finding}.",
    "The {modality} scan of the {organ} reveals a {size} {finding} on the {place} side.",
    "Question: Is there a {finding} in the {organ}? Answer: {answer}.",
    "Findings: {qualifier} {finding} of the {organ}. Impression: {qualifier2} {finding2}.",
    "A plate of {cooking} {food} with {food2} and {food3}.",
    "Question: What food is shown? Answer: {cooking} {food}.",
    "This dish contains {food}, {food2} and {count} {food3}s.",
    "A satellite image of a {land} next to a {land2}, {count} km from the {place}.",
    "Question: {question} the {land} visible? Answer: {answer}.",
    "Instruction: Describe the image in detail. Response: A {colour} {shape} near a {land}.",
    "Given the caption, write a question about the image and answer it step by step.",
    "Caption: {cooking} {food} on a {colour} plate. Task: {question} is on the plate?",
    "Is the answer consistent with the caption? Answer {answer} or {answer2}.",
    "Let's think step by step. The {shape} is {colour}, so the answer is {colour}.",
    "Step {count}: look at the {organ}; step {count2}: compare the {finding} with the {finding2}.",
)


@dataclass(frozen=True)
class BuildResult:
    """What happened to one model folder."""

    name: str
    path: Path
    parameters: int
    built: bool
    seconds: float


def corpus_lines(seed: int, count: int = CORPUS_LINES) -> list[str]:
    """Procedural domain text; a seeded `random.Random` gives the same lines on every machine and Python 3.x."""
    rng = random.Random(seed)
    return [_document(rng) for _ in range(count)]


def _document(rng: random.Random) -> str:
    """A few sentences joined by spaces or newlines, so words are learned in both places ("Question", " Question")."""
    sentences = [_sentence(rng) for _ in range(rng.randint(1, 4))]
    return "".join(sentence + rng.choice(SEPARATORS) for sentence in sentences)


def _sentence(rng: random.Random) -> str:
    if rng.random() < GENERAL_SENTENCE_SHARE:
        words = [rng.choice(COMMON_WORDS) for _ in range(rng.randint(4, 14))]
        return " ".join(words).capitalize() + rng.choice(".?!")
    return _fill_template(rng.choice(SENTENCE_TEMPLATES), rng)


def _fill_template(template: str, rng: random.Random) -> str:
    choices = {
        "colour": COLOURS, "colour2": COLOURS, "shape": SHAPES, "size": SIZES, "place": PLACES,
        "modality": MODALITIES, "organ": ORGANS, "finding": FINDINGS, "finding2": FINDINGS,
        "qualifier": QUALIFIERS, "qualifier2": QUALIFIERS, "food": FOODS, "food2": FOODS, "food3": FOODS,
        "cooking": COOKING, "land": LAND_COVER, "land2": LAND_COVER, "question": QUESTION_WORDS,
        "answer": ANSWERS, "answer2": ANSWERS,
    }  # fmt: skip
    values = {key: rng.choice(options) for key, options in choices.items()}
    values["count"] = str(rng.randint(0, 120))
    values["count2"] = str(rng.randint(0, 120))
    return template.format(**values)


def train_bpe(lines: list[str], vocab_size: int = BPE_VOCAB_SIZE) -> Tokenizer:
    """A byte-level BPE with Qwen2's normalizer, pre-tokenizer and decoder: Qwen2Tokenizer reloads it unchanged."""
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(lines, trainer)
    return bpe


def make_tokenizer(seed: int, chat_template: str) -> Qwen2Tokenizer:
    """Qwen2Tokenizer over the trained BPE, special tokens appended in Qwen2-VL's order, ChatML template."""
    bpe_model = json.loads(train_bpe(corpus_lines(seed)).to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=bpe_model["vocab"],
        merges=[tuple(merge) for merge in bpe_model["merges"]],
        errors="replace",
        unk_token=None,
        # The constructor registers the special tokens it is given; passing <|endoftext|> alone keeps it first.
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    # Registered as extra special tokens (v5's name for additional_special_tokens), as in Qwen2-VL's tokenizer.
    tokenizer.add_special_tokens(
        {"extra_special_tokens": [AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS[1:]]}
    )
    # Chat models stop at the end of a turn, as Qwen2-VL-Instruct does.
    tokenizer.eos_token = IM_END
    tokenizer.chat_template = chat_template
    return tokenizer


def special_token_ids(tokenizer: Qwen2Tokenizer) -> dict[str, int]:
    return {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}


def make_qwen2_vl_processor(tokenizer: Qwen2Tokenizer) -> Qwen2VLProcessor:
    """The stock processor with small image limits; the video processor is saved too so AutoProcessor can rebuild it."""
    pixel_limits = {"min_pixels": IMAGE_MIN_PIXELS, "max_pixels": IMAGE_MAX_PIXELS}
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixel_limits),
        video_processor=Qwen2VLVideoProcessor(**pixel_limits),
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


def _text_dimensions(tokenizer: Qwen2Tokenizer) -> dict:
    ids = special_token_ids(tokenizer)
    return {
        # Exactly the tokenizer's size: a random model may sample any id, and every id must decode.
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": INTERMEDIATE_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": NUM_KV_HEADS,
        "max_position_embeddings": MAX_POSITIONS,
        "max_window_layers": NUM_LAYERS,
        "bos_token_id": ids[ENDOFTEXT],
        "eos_token_id": ids[IM_END],
        "pad_token_id": ids[ENDOFTEXT],
    }


def qwen2_vl_config(tokenizer: Qwen2Tokenizer) -> Qwen2VLConfig:
    ids = special_token_ids(tokenizer)
    text_config = _text_dimensions(tokenizer) | {
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": MROPE_SECTION},
    }
    vision_config = {
        "depth": VISION_DEPTH,
        "embed_dim": VISION_EMBED_DIM,
        "num_heads": VISION_HEADS,
        # The merger projects vision features into the text model's hidden size.
        "hidden_size": HIDDEN_SIZE,
    }
    return Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
    )


def text_llm_config(tokenizer: Qwen2Tokenizer) -> Qwen2Config:
    return Qwen2Config(**_text_dimensions(tokenizer), rope_parameters={"rope_type": "default", "rope_theta": 1e6})


def generation_config(tokenizer: Qwen2Tokenizer) -> GenerationConfig:
    """Greedy by default; a turn ends at <|im_end|> and a document at <|endoftext|>, as in Qwen2-VL-Instruct."""
    ids = special_token_ids(tokenizer)
    return GenerationConfig(
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=[ids[IM_END], ids[ENDOFTEXT]],
        pad_token_id=ids[ENDOFTEXT],
        do_sample=False,
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def random_model(model_class: type[PreTrainedModel], config: PretrainedConfig, seed: int) -> PreTrainedModel:
    # Seeding right before construction makes the weights depend on the seed alone, not on earlier RNG use.
    torch.manual_seed(seed)
    return model_class(config).eval()


def build_tiny_qwen2_vl(path: Path, seed: int) -> int:
    """Write the tiny Qwen2-VL (weights, config, processor) into `path`; returns its parameter count."""
    tokenizer = make_tokenizer(seed, QWEN2_VL_CHAT_TEMPLATE)
    model = random_model(Qwen2VLForConditionalGeneration, qwen2_vl_config(tokenizer), seed)
    model.generation_config = generation_config(tokenizer)
    model.save_pretrained(path)
    make_qwen2_vl_processor(tokenizer).save_pretrained(path)
    return count_parameters(model)


def build_tiny_text_llm(path: Path, seed: int) -> int:
    """Write the tiny text causal LM (weights, config, tokenizer) into `path`; returns its parameter count."""
    tokenizer = make_tokenizer(seed, TEXT_CHAT_TEMPLATE)
    model = random_model(Qwen2ForCausalLM, text_llm_config(tokenizer), seed)
    model.generation_config = generation_config(tokenizer)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return count_parameters(model)


@dataclass(frozen=True)
class TinyModel:
    name: str
    build: Callable[[Path, int], int]
    description: str


TINY_MODELS = (
    TinyModel(
        VLM_NAME,
        build_tiny_qwen2_vl,
        f"Qwen2-VL (Qwen2VLForConditionalGeneration): {NUM_LAYERS} text layers, hidden {HIDDEN_SIZE}, {NUM_HEADS} "
        f"heads ({NUM_KV_HEADS} KV), vision depth {VISION_DEPTH} / embed {VISION_EMBED_DIM}, mrope_section "
        f"{MROPE_SECTION}; Qwen2VLProcessor with min_pixels {IMAGE_MIN_PIXELS}, max_pixels {IMAGE_MAX_PIXELS} "
        "(a 112 px image is 16 image tokens).",
    ),
    TinyModel(
        TEXT_LLM_NAME,
        build_tiny_text_llm,
        f"Qwen2 text causal LM (Qwen2ForCausalLM): {NUM_LAYERS} layers, hidden {HIDDEN_SIZE}, {NUM_HEADS} heads "
        f"({NUM_KV_HEADS} KV); the consistency-filter judge of tests and the CPU demo.",
    ),
)


def build_stamp(seed: int) -> dict:
    """Everything that decides the bytes of a build: a folder stamped otherwise is rebuilt."""
    return {
        "builder": "tools/make_tiny_models.py",
        "build_format": BUILD_FORMAT,
        "seed": seed,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def read_stamp(path: Path) -> dict | None:
    try:
        return json.loads((path / STAMP_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def model_card(model: TinyModel, seed: int, parameters: int) -> str:
    return (
        f"# {model.name}\n\n"
        "RANDOM WEIGHTS: this model knows nothing. It exists so that tests and the CPU demo can exercise the real\n"
        "loading, inference and training code paths without a GPU or a model hub.\n\n"
        f"- Architecture: {model.description}\n"
        f"- Parameters: {parameters:,}\n"
        "- Tokenizer: byte-level BPE trained with the `tokenizers` library on procedurally generated domain text\n"
        "  (colours, shapes, medicine, food, remote sensing), with Qwen2-VL's special tokens and a ChatML chat\n"
        "  template.\n"
        f"- Built by `python tools/make_tiny_models.py --seed {seed}`: `torch.manual_seed({seed})` for the weights\n"
        f"  and `random.Random({seed})` for the tokenizer's training text; the same seed and library versions give\n"
        f"  byte-identical files (see `{STAMP_FILE}`).\n"
    )


def build_model(model: TinyModel, out_dir: Path, seed: int, force: bool = False) -> BuildResult:
    """Build one model into out_dir/name unless a folder with a matching stamp is already there."""
    target = out_dir / model.name
    started = time.perf_counter()
    stamp = read_stamp(target)
    if not force and stamp is not None and stamp.get("build") == build_stamp(seed):
        return BuildResult(model.name, target, stamp["parameters"], False, time.perf_counter() - started)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{model.name}-") as scratch:
        staging = Path(scratch) / model.name
        parameters = model.build(staging, seed)
        (staging / "README.md").write_text(model_card(model, seed, parameters))
        stamp = {"build": build_stamp(seed), "parameters": parameters}
        (staging / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return BuildResult(model.name, target, parameters, True, time.perf_counter() - started)


def build_all(out_dir: Path, seed: int = DEFAULT_SEED, force: bool = False) -> list[BuildResult]:
    return [build_model(model, out_dir, seed, force) for model in TINY_MODELS]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "models", help="parent folder (default: models/)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed for weights and tokenizer text")
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching build is present")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for result in build_all(args.out, args.seed, args.force):
        action = "built" if result.built else "kept (build stamp matches)"
        print(f"{result.name}: {action} {result.path}  {result.parameters:,} parameters  {result.seconds:.1f} s")


if __name__ == "__main__":
    main()
