"""Build the tiny random-weight models that tests and the CPU demo use, offline and deterministically.

No model hub is reachable on test machines, so every model is made here from nothing, in the file layout of the real
checkpoint it stands in for (config, weight names, processor and tokenizer files, special tokens, chat template):

* ``tiny-qwen2-vl``: a Qwen2-VL (``Qwen2VLForConditionalGeneration``) shrunk to ~1 M parameters, saved with a full
  ``Qwen2VLProcessor`` (tokenizer + image processor + video processor + chat template) so that
  ``AutoProcessor.from_pretrained`` returns the processor, exactly as for the real checkpoints;
* ``tiny-text-llm``: a Qwen2 text causal LM of the same size class, the consistency-filter judge of the demo;
* ``tiny-qwen2.5-vl``: ``Qwen2_5_VLForConditionalGeneration`` + ``Qwen2_5_VLProcessor`` with the chat template of
  Qwen/Qwen2.5-VL-*-Instruct (chat_template.json; the same rendering as Qwen2-VL's);
* ``tiny-llava-next-hf``: ``LlavaNextForConditionalGeneration`` + ``LlavaNextProcessor`` in the layout of
  llava-hf/llama3-llava-next-8b-hf: image token ``<image>`` and pad ``<pad>`` appended after Llama-3's special tokens
  (special_tokens_map.json, config.json image_token_index), eos ``<|eot_id|>`` (special_tokens_map.json and
  generation_config.json), the chat template of its chat_template.json, CLIP tower, "anyres" grid pinpoints;
* ``tiny-llava-next-synthesizer``: the same architecture in the layout of AdaptLLM/visual-instruction-synthesizer:
  image token ``<|reserved_special_token_4|>`` (processor_config.json), eos ``<|end_of_text|>`` and pad ``<pad>``
  (special_tokens_map.json), and its chat_template.json, which is byte for byte llava-hf's above (it writes
  ``<image>``, not the image token: AdaMLLM renders its prompts itself, see ``engine.synthesis.prompts``);
* ``tiny-mllama``: ``MllamaForConditionalGeneration`` + ``MllamaProcessor`` in the layout of
  meta-llama/Llama-3.2-11B-Vision-Instruct: Llama-3.1's special tokens (``<|finetune_right_pad_id|>``,
  ``<|eom_id|>``, ``<|python_tag|>``), ``<|image|>`` after them, the chat template of its chat_template.json, the
  stop ids of its generation_config.json, cross-attention layers in the text model, tiled vision;
* ``tiny-llama3-text``: ``LlamaForCausalLM`` in the layout of meta-llama/Meta-Llama-3-8B, the recipes' judge: a base
  model, so no chat template, eos ``<|end_of_text|>`` and no pad token (tokenizer_config.json,
  generation_config.json).

The Qwen models share a byte-level BPE tokenizer carrying Qwen2-VL's special tokens; the Llama models share one built
by ``make_llama3_tokenizer``: Llama-3's split pattern, the first eleven of its special tokens appended after the BPE
vocabulary in the checkpoint's order (so their ids minus the BPE size equal their real ids minus 128000), the
checkpoint's own added tokens after them, and a post-processor that prepends ``<|begin_of_text|>`` whenever special
tokens are added, as Llama-3's tokenizer.json does. Both BPEs are trained with the ``tokenizers`` library on
procedurally generated text. The same seed gives byte-identical files: the corpus comes from a seeded
``random.Random`` and the weights from ``torch.manual_seed``. Sampling settings of the real generation configs are left
out: every tiny model decodes greedily, so that tests are deterministic.

Weights are saved under the names of the real checkpoints (``save_in_hub_layout``), which vLLM needs for LLaVA-NeXT.
Where a real file would break the model, the tiny one departs from it, and says so where it is built: the
synthesizer's processor declares CLIP's class token (``make_llava_next_processor``).

A model folder holds a build stamp (seed, builder format, library versions); a folder with a matching stamp is kept,
anything else is rebuilt. Each model is built in a scratch folder and moved into place only when complete, so an
interrupted build never leaves a folder that looks finished.

Usage: ``python tools/make_tiny_models.py [--out models/] [--seed 0] [--force]``
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import shutil
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tokenizers
import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    MllamaConfig,
    MllamaForConditionalGeneration,
    MllamaImageProcessor,
    MllamaProcessor,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEED = 0
# Bump when a change here alters what gets built: stamps from older builds then stop matching.
BUILD_FORMAT = 1
STAMP_FILE = "tiny-model-stamp.json"

VLM_NAME = "tiny-qwen2-vl"
TEXT_LLM_NAME = "tiny-text-llm"
QWEN2_5_VL_NAME = "tiny-qwen2.5-vl"
LLAVA_NEXT_NAME = "tiny-llava-next-hf"
SYNTHESIZER_NAME = "tiny-llava-next-synthesizer"
MLLAMA_NAME = "tiny-mllama"
LLAMA3_TEXT_NAME = "tiny-llama3-text"

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

# Llama-3's special tokens (ids 128000 and up in the real tokenizers).
BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
EOT = "<|eot_id|>"
EOM = "<|eom_id|>"
PYTHON_TAG = "<|python_tag|>"
FINETUNE_PAD = "<|finetune_right_pad_id|>"


def reserved_token(index: int) -> str:
    return f"<|reserved_special_token_{index}|>"


# The first eleven special tokens (ids 128000-128010) of Meta-Llama-3 and of the LLaVA-NeXT models built on it.
LLAMA3_SPECIAL_TOKENS = (
    BEGIN_OF_TEXT, END_OF_TEXT, *map(reserved_token, range(4)), START_HEADER, END_HEADER, reserved_token(4), EOT,
    reserved_token(5),
)  # fmt: skip
# The same ids in Llama 3.1 and 3.2, which gave some reserved tokens a role (tool calls, padding).
LLAMA3_1_SPECIAL_TOKENS = (
    BEGIN_OF_TEXT, END_OF_TEXT, reserved_token(0), reserved_token(1), FINETUNE_PAD, reserved_token(2), START_HEADER,
    END_HEADER, EOM, EOT, PYTHON_TAG,
)  # fmt: skip
LLAVA_IMAGE_TOKEN = "<image>"
LLAVA_PAD = "<pad>"
MLLAMA_IMAGE_TOKEN = "<|image|>"
SYNTHESIZER_IMAGE_TOKEN = reserved_token(4)
# Llama-3's tokenizer.json splits digits into runs of up to three (Qwen2's into single digits) and has no normalizer.
LLAMA3_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)

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
VISION_PATCH = 14
# Qwen2.5-VL attends within windows of 112 px (8x8 patches) except in its last block, as the real model does in
# every eighth block; a 112 px image is then one window.
QWEN2_5_VL_WINDOW = 112
QWEN2_5_VL_FULL_ATTENTION_BLOCKS = [VISION_DEPTH - 1]

# The square tile the CLIP tower of LLaVA-NeXT and Mllama's tiled encoder see: 4x4 patches of 14 px, a sixth of
# LLaVA-NeXT's 336 px and a tenth of Mllama's 560 px.
VISION_TILE = 56
# LLaVA-NeXT's "anyres" resolutions, llava-hf's [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]] in
# tiles of 56 px. A 112 px square image becomes 2x2 tiles plus the downscaled whole: 16 base tokens, 8x8 grid tokens
# and 8 row-end (image_newline) tokens, 88 in all.
LLAVA_GRID_PINPOINTS = [[56, 112], [112, 56], [112, 112], [168, 56], [56, 168]]
LLAVA_IMAGE_TOKENS_PER_TILE = (VISION_TILE // VISION_PATCH) ** 2
# Mllama cuts an image into at most this many tiles (the real model: 4), and its tokenizer's <|image|> stands for all
# of them: the text attends to the tiles through cross-attention layers, placed here between the two self-attention
# layers (every fifth layer in the real model).
MLLAMA_MAX_TILES = 2
MLLAMA_CROSS_ATTENTION_LAYERS = [1]
MLLAMA_INTERMEDIATE_LAYERS = [0]
LLAMA3_ROPE_THETA = 500_000.0

# The model card's bullets wrap at this width.
CARD_WIDTH = 105

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

# Qwen/Qwen2.5-VL-*-Instruct's chat_template.json, verbatim (split only at tag boundaries). It renders exactly like
# QWEN2_VL_CHAT_TEMPLATE, which factors <|im_end|> out of the two branches.
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
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

# llava-hf/llama3-llava-next-8b-hf's chat_template.json, verbatim, which AdaptLLM/visual-instruction-synthesizer ships
# unchanged: Llama-3 headers, the images of a turn first, then "\n" + text + <|eot_id|> per text part. No BOS: the
# tokenizer adds it.
LLAVA_LLAMA3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'}}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] + '<|eot_id|>' }}"
    "{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# meta-llama/Llama-3.2-11B-Vision-Instruct's chat template (chat_template.json, the same as its tokenizer_config.json),
# in its revision that keeps a system message supplied with images: it writes the BOS itself, no default system turn
# when the conversation has images (otherwise one with the knowledge cut-off and today's date), each image as <|image|>
# right before the text of its turn, and <|eot_id|> after every turn.
MLLAMA_CHAT_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
    {%- set user_supplied_system_message = true %}
{%- else %}
    {%- set system_message = "" %}
    {%- set user_supplied_system_message = false %}
{%- endif %}

{#- Find out if there are any images #}
{% set image_ns = namespace(has_images=false) %}
{%- for message in messages %}
    {%- for content in message['content'] %}
        {%- if content['type'] == 'image' %}
            {%- set image_ns.has_images = true %}
        {%- endif %}
    {%- endfor %}
{%- endfor %}

{#- System message if there are no images, or if the user supplied one #}
{%- if user_supplied_system_message or not image_ns.has_images %}
    {{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
    {%- if tools is not none %}
        {{- "Environment: ipython\n" }}
    {%- endif %}
    {{- "Cutting Knowledge Date: December 2023\n" }}
    {{- "Today Date: " + date_string + "\n\n" }}
    {%- if tools is not none and not tools_in_user_message %}
        {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
        {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
        {{- "Do not use variables.\n\n" }}
        {%- for t in tools %}
            {{- t | tojson(indent=4) }}
            {{- "\n\n" }}
        {%- endfor %}
    {%- endif %}
    {{- system_message }}
    {{- "<|eot_id|>" }}
{%- endif %}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}
        {%- if message['content'] is string %}
            {{- message['content'] }}
        {%- else %}
            {%- for content in message['content'] %}
                {%- if content['type'] == 'image' %}
                    {{- '<|image|>' }}
                {%- elif content['type'] == 'text' %}
                    {{- content['text'] }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

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


def train_bpe(
    lines: list[str], vocab_size: int = BPE_VOCAB_SIZE, split_pattern: str = PRETOKENIZE_REGEX, nfc: bool = True
) -> Tokenizer:
    """A byte-level BPE with a Qwen2 or Llama-3 pre-tokenizer and decoder: the split pattern and NFC normalizer are
    what tell the two apart in their tokenizer.json. The defaults are Qwen2's, which Qwen2Tokenizer reloads
    unchanged."""
    bpe = Tokenizer(models.BPE())
    if nfc:
        bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_pattern), behavior="isolated", invert=False),
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


@dataclass(frozen=True)
class Llama3Checkpoint:
    """The tokenizer, prompt and stop facts of one Llama-3-based checkpoint that a tiny model copies."""

    # Llama-3's first special tokens, in the order of the checkpoint's Llama generation.
    special_tokens: tuple[str, ...]
    # Tokens the checkpoint appends after Llama-3's 256 special tokens (ids 128256 and up).
    added_tokens: tuple[str, ...] = ()
    # eos_token of its tokenizer_config.json / special_tokens_map.json.
    eos_token: str = END_OF_TEXT
    # eos_token_id of its generation_config.json: where generation stops.
    stop_tokens: tuple[str, ...] = (END_OF_TEXT,)
    pad_token: str | None = None
    image_token: str | None = None
    chat_template: str | None = None


LLAVA_NEXT_HF = Llama3Checkpoint(
    special_tokens=LLAMA3_SPECIAL_TOKENS,
    added_tokens=(LLAVA_IMAGE_TOKEN, LLAVA_PAD),
    eos_token=EOT,
    stop_tokens=(EOT,),
    pad_token=LLAVA_PAD,
    image_token=LLAVA_IMAGE_TOKEN,
    chat_template=LLAVA_LLAMA3_CHAT_TEMPLATE,
)
# Its generation_config.json could not be read; its tokenizer's eos is the document end, where synthesis stops too.
SYNTHESIZER = Llama3Checkpoint(
    special_tokens=LLAMA3_SPECIAL_TOKENS,
    added_tokens=(LLAVA_PAD,),
    pad_token=LLAVA_PAD,
    image_token=SYNTHESIZER_IMAGE_TOKEN,
    chat_template=LLAVA_LLAMA3_CHAT_TEMPLATE,
)
LLAMA3_2_VISION_INSTRUCT = Llama3Checkpoint(
    special_tokens=LLAMA3_1_SPECIAL_TOKENS,
    added_tokens=(MLLAMA_IMAGE_TOKEN,),
    eos_token=EOT,
    stop_tokens=(END_OF_TEXT, EOM, EOT),
    pad_token=FINETUNE_PAD,
    image_token=MLLAMA_IMAGE_TOKEN,
    chat_template=MLLAMA_CHAT_TEMPLATE,
)
META_LLAMA3_8B = Llama3Checkpoint(special_tokens=LLAMA3_SPECIAL_TOKENS)


def make_llama3_tokenizer(seed: int, checkpoint: Llama3Checkpoint) -> PreTrainedTokenizerFast:
    """A Llama-3 tokenizer over a BPE trained with Llama-3's split pattern: the checkpoint's special tokens appended
    after the vocabulary in its order, <|begin_of_text|> prepended whenever special tokens are added (Llama-3's
    TemplateProcessing post-processor), and the checkpoint's eos, pad and chat template."""
    bpe = train_bpe(corpus_lines(seed), split_pattern=LLAMA3_PRETOKENIZE_REGEX, nfc=False)
    tokens = checkpoint.special_tokens + checkpoint.added_tokens
    bpe.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in tokens])
    bos = (BEGIN_OF_TEXT, bpe.token_to_id(BEGIN_OF_TEXT))
    bpe.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BEGIN_OF_TEXT}:0 $A:0", pair=f"{BEGIN_OF_TEXT}:0 $A:0 {BEGIN_OF_TEXT}:1 $B:1",
                special_tokens=[bos],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BEGIN_OF_TEXT,
        eos_token=checkpoint.eos_token,
        pad_token=checkpoint.pad_token,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
        chat_template=checkpoint.chat_template,
    )


def config_token_ids(tokenizer: PreTrainedTokenizerBase, tokens: tuple[str, ...]) -> int | list[int]:
    """Token ids as configs write them: a single id bare, several as a list."""
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    return ids[0] if len(ids) == 1 else ids


def make_qwen_vl_processor(
    processor_class: type[ProcessorMixin], tokenizer: Qwen2Tokenizer, chat_template: str
) -> ProcessorMixin:
    """The stock processor with small image limits; the video processor is saved too so AutoProcessor can rebuild it."""
    pixel_limits = {"min_pixels": IMAGE_MIN_PIXELS, "max_pixels": IMAGE_MAX_PIXELS}
    return processor_class(
        image_processor=Qwen2VLImageProcessor(**pixel_limits),
        video_processor=Qwen2VLVideoProcessor(**pixel_limits),
        tokenizer=tokenizer,
        chat_template=chat_template,
    )


def make_llava_next_processor(tokenizer: PreTrainedTokenizerFast, checkpoint: Llama3Checkpoint) -> LlavaNextProcessor:
    """LLaVA-NeXT's processor over 56 px tiles, expanding the checkpoint's image token.

    One additional image token is declared for CLIP's class token, which the "default" feature selection then drops,
    as in llava-hf's processor_config.json. The synthesizer's processor_config.json leaves it out, and transformers'
    LlavaNextProcessor then writes one image token fewer than the model produces features, so it is set here for both.
    """
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": VISION_TILE},
        crop_size={"height": VISION_TILE, "width": VISION_TILE},
        image_grid_pinpoints=LLAVA_GRID_PINPOINTS,
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=VISION_PATCH,
        vision_feature_select_strategy="default",
        chat_template=checkpoint.chat_template,
        image_token=checkpoint.image_token,
        num_additional_image_tokens=1,
    )


def make_mllama_processor(tokenizer: PreTrainedTokenizerFast, checkpoint: Llama3Checkpoint) -> MllamaProcessor:
    """Mllama's processor over 56 px tiles, at most MLLAMA_MAX_TILES of them per image."""
    image_processor = MllamaImageProcessor(
        size={"height": VISION_TILE, "width": VISION_TILE}, max_image_tiles=MLLAMA_MAX_TILES
    )
    return MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=checkpoint.chat_template)


def _text_dimensions(tokenizer: PreTrainedTokenizerBase) -> dict:
    """The decoder size every tiny model shares."""
    return {
        # Exactly the tokenizer's size: a random model may sample any id, and every id must decode.
        "vocab_size": len(tokenizer),
        "hidden_size": HIDDEN_SIZE,
        "intermediate_size": INTERMEDIATE_SIZE,
        "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS,
        "num_key_value_heads": NUM_KV_HEADS,
        "max_position_embeddings": MAX_POSITIONS,
    }


def _qwen_text_dimensions(tokenizer: Qwen2Tokenizer) -> dict:
    ids = special_token_ids(tokenizer)
    return _text_dimensions(tokenizer) | {
        "max_window_layers": NUM_LAYERS,
        "bos_token_id": ids[ENDOFTEXT],
        "eos_token_id": ids[IM_END],
        "pad_token_id": ids[ENDOFTEXT],
    }


def _llama3_text_dimensions(tokenizer: PreTrainedTokenizerFast, checkpoint: Llama3Checkpoint) -> dict:
    return _text_dimensions(tokenizer) | {
        "rope_parameters": {"rope_type": "default", "rope_theta": LLAMA3_ROPE_THETA},
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": config_token_ids(tokenizer, checkpoint.stop_tokens),
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }


def qwen_vl_config(
    config_class: type[PretrainedConfig], tokenizer: Qwen2Tokenizer, vision_config: dict
) -> PretrainedConfig:
    """A Qwen2-VL or Qwen2.5-VL config: the text decoder with M-RoPE, `vision_config`, and the vision token ids."""
    ids = special_token_ids(tokenizer)
    text_config = _qwen_text_dimensions(tokenizer) | {
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": MROPE_SECTION},
    }
    return config_class(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
    )


def qwen2_vl_config(tokenizer: Qwen2Tokenizer) -> Qwen2VLConfig:
    vision_config = {
        "depth": VISION_DEPTH,
        "embed_dim": VISION_EMBED_DIM,
        "num_heads": VISION_HEADS,
        # The merger projects vision features into the text model's hidden size.
        "hidden_size": HIDDEN_SIZE,
    }
    return qwen_vl_config(Qwen2VLConfig, tokenizer, vision_config)


def qwen2_5_vl_config(tokenizer: Qwen2Tokenizer) -> Qwen2_5_VLConfig:
    vision_config = {
        "depth": VISION_DEPTH,
        "hidden_size": VISION_EMBED_DIM,
        "intermediate_size": 2 * VISION_EMBED_DIM,
        "num_heads": VISION_HEADS,
        # Qwen2.5-VL names the merger's output size out_hidden_size (Qwen2-VL: hidden_size).
        "out_hidden_size": HIDDEN_SIZE,
        "window_size": QWEN2_5_VL_WINDOW,
        "fullatt_block_indexes": QWEN2_5_VL_FULL_ATTENTION_BLOCKS,
        "tokens_per_second": 2,
    }
    return qwen_vl_config(Qwen2_5_VLConfig, tokenizer, vision_config)


def text_llm_config(tokenizer: Qwen2Tokenizer) -> Qwen2Config:
    return Qwen2Config(**_qwen_text_dimensions(tokenizer), rope_parameters={"rope_type": "default", "rope_theta": 1e6})


def llama3_text_config(tokenizer: PreTrainedTokenizerFast, checkpoint: Llama3Checkpoint) -> LlamaConfig:
    return LlamaConfig(**_llama3_text_dimensions(tokenizer, checkpoint))


def llava_next_config(tokenizer: PreTrainedTokenizerFast, checkpoint: Llama3Checkpoint) -> LlavaNextConfig:
    """llava-hf's LLaVA-NeXT: a CLIP tower whose second-to-last layer, class token dropped, feeds a Llama-3."""
    vision_config = {
        "model_type": "clip_vision_model",
        "hidden_size": VISION_EMBED_DIM,
        "intermediate_size": 2 * VISION_EMBED_DIM,
        "num_hidden_layers": VISION_DEPTH,
        "num_attention_heads": VISION_HEADS,
        "image_size": VISION_TILE,
        "patch_size": VISION_PATCH,
        "projection_dim": VISION_EMBED_DIM,
    }
    return LlavaNextConfig(
        text_config={"model_type": "llama"} | _llama3_text_dimensions(tokenizer, checkpoint),
        vision_config=vision_config,
        image_token_index=tokenizer.convert_tokens_to_ids(checkpoint.image_token),
        image_grid_pinpoints=LLAVA_GRID_PINPOINTS,
        image_seq_length=LLAVA_IMAGE_TOKENS_PER_TILE,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )


def mllama_config(tokenizer: PreTrainedTokenizerFast, checkpoint: Llama3Checkpoint) -> MllamaConfig:
    """Llama-3.2-Vision: a tiled vision encoder (local then global layers, intermediate layers concatenated to the
    output) read by cross-attention layers of a Llama-3.1 text model.

    As in the real checkpoint, <|image|> is the last token and the text vocabulary stops just before it: the text
    model's embedding table has 8 extra rows for it, and its output layer cannot produce it.
    """
    image_token_id = tokenizer.convert_tokens_to_ids(checkpoint.image_token)
    text_config = _llama3_text_dimensions(tokenizer, checkpoint) | {
        "vocab_size": image_token_id,
        "num_hidden_layers": NUM_LAYERS + len(MLLAMA_CROSS_ATTENTION_LAYERS),
        "cross_attention_layers": MLLAMA_CROSS_ATTENTION_LAYERS,
    }
    vision_config = {
        "hidden_size": VISION_EMBED_DIM,
        "intermediate_size": 2 * VISION_EMBED_DIM,
        "num_hidden_layers": VISION_DEPTH,
        "num_global_layers": 1,
        "attention_heads": VISION_HEADS,
        "image_size": VISION_TILE,
        "patch_size": VISION_PATCH,
        "max_num_tiles": MLLAMA_MAX_TILES,
        "supported_aspect_ratios": [[1, 1], [1, 2], [2, 1]],
        "intermediate_layers_indices": MLLAMA_INTERMEDIATE_LAYERS,
        # The last hidden state and each intermediate layer's, concatenated.
        "vision_output_dim": VISION_EMBED_DIM * (1 + len(MLLAMA_INTERMEDIATE_LAYERS)),
    }
    return MllamaConfig(text_config=text_config, vision_config=vision_config, image_token_index=image_token_id)


def greedy_generation_config(
    bos_token_id: int, eos_token_id: int | list[int], pad_token_id: int | None
) -> GenerationConfig:
    """The checkpoint's special ids, and greedy decoding, so that tests are deterministic."""
    return GenerationConfig(
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, do_sample=False
    )


def generation_config(tokenizer: Qwen2Tokenizer) -> GenerationConfig:
    """A turn ends at <|im_end|> and a document at <|endoftext|>, as in Qwen2-VL-Instruct."""
    ids = special_token_ids(tokenizer)
    return greedy_generation_config(ids[ENDOFTEXT], [ids[IM_END], ids[ENDOFTEXT]], ids[ENDOFTEXT])


def llama3_generation_config(tokenizer: PreTrainedTokenizerFast, checkpoint: Llama3Checkpoint) -> GenerationConfig:
    return greedy_generation_config(
        tokenizer.bos_token_id, config_token_ids(tokenizer, checkpoint.stop_tokens), tokenizer.pad_token_id
    )


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def random_model(model_class: type[PreTrainedModel], config: PretrainedConfig, seed: int) -> PreTrainedModel:
    # Seeding right before construction makes the weights depend on the seed alone, not on earlier RNG use.
    torch.manual_seed(seed)
    return model_class(config).eval()


def save_in_hub_layout(model: PreTrainedModel, path: Path) -> None:
    """save_pretrained with weight names as in the hub's checkpoints of the model's class.

    transformers renames checkpoint weights on load and reverses the renames on save, but a model built from a config
    carries no record of them, and save_pretrained then skips prefix changes: a LLaVA-NeXT's CLIP tower would be
    written as vision_tower.embeddings.* instead of llava-hf's vision_tower.vision_model.embeddings.*, which vLLM does
    not load. Attaching the class's conversion mapping, as from_pretrained does, makes the save reverse all of them.
    """
    model._weight_conversions = get_model_conversion_mapping(model, add_legacy=False)
    model.save_pretrained(path)


def write_checkpoint(
    path: Path,
    seed: int,
    model_class: type[PreTrainedModel],
    config: PretrainedConfig,
    generation: GenerationConfig,
    processor: ProcessorMixin | PreTrainedTokenizerBase,
) -> int:
    """Random weights for `config` with their generation config and processor (or tokenizer) in `path`; returns the
    parameter count."""
    model = random_model(model_class, config, seed)
    model.generation_config = generation
    save_in_hub_layout(model, path)
    processor.save_pretrained(path)
    return count_parameters(model)


def build_tiny_qwen2_vl(path: Path, seed: int) -> int:
    tokenizer = make_tokenizer(seed, QWEN2_VL_CHAT_TEMPLATE)
    processor = make_qwen_vl_processor(Qwen2VLProcessor, tokenizer, QWEN2_VL_CHAT_TEMPLATE)
    config = qwen2_vl_config(tokenizer)
    return write_checkpoint(
        path, seed, Qwen2VLForConditionalGeneration, config, generation_config(tokenizer), processor
    )


def build_tiny_text_llm(path: Path, seed: int) -> int:
    tokenizer = make_tokenizer(seed, TEXT_CHAT_TEMPLATE)
    return write_checkpoint(
        path, seed, Qwen2ForCausalLM, text_llm_config(tokenizer), generation_config(tokenizer), tokenizer
    )


def build_tiny_qwen2_5_vl(path: Path, seed: int) -> int:
    tokenizer = make_tokenizer(seed, QWEN2_5_VL_CHAT_TEMPLATE)
    processor = make_qwen_vl_processor(Qwen2_5_VLProcessor, tokenizer, QWEN2_5_VL_CHAT_TEMPLATE)
    config = qwen2_5_vl_config(tokenizer)
    return write_checkpoint(
        path, seed, Qwen2_5_VLForConditionalGeneration, config, generation_config(tokenizer), processor
    )


def build_tiny_llava_next(path: Path, seed: int, checkpoint: Llama3Checkpoint) -> int:
    tokenizer = make_llama3_tokenizer(seed, checkpoint)
    return write_checkpoint(
        path,
        seed,
        LlavaNextForConditionalGeneration,
        llava_next_config(tokenizer, checkpoint),
        llama3_generation_config(tokenizer, checkpoint),
        make_llava_next_processor(tokenizer, checkpoint),
    )


def build_tiny_mllama(path: Path, seed: int) -> int:
    tokenizer = make_llama3_tokenizer(seed, LLAMA3_2_VISION_INSTRUCT)
    return write_checkpoint(
        path,
        seed,
        MllamaForConditionalGeneration,
        mllama_config(tokenizer, LLAMA3_2_VISION_INSTRUCT),
        llama3_generation_config(tokenizer, LLAMA3_2_VISION_INSTRUCT),
        make_mllama_processor(tokenizer, LLAMA3_2_VISION_INSTRUCT),
    )


def build_tiny_llama3_text(path: Path, seed: int) -> int:
    tokenizer = make_llama3_tokenizer(seed, META_LLAMA3_8B)
    return write_checkpoint(
        path,
        seed,
        LlamaForCausalLM,
        llama3_text_config(tokenizer, META_LLAMA3_8B),
        llama3_generation_config(tokenizer, META_LLAMA3_8B),
        tokenizer,
    )


@dataclass(frozen=True)
class TinyModel:
    name: str
    build: Callable[[Path, int], int]
    description: str
    # What the model card says the tokenizer carries besides the trained BPE.
    tokenizer: str


QWEN_TOKENIZER = "Qwen2-VL's special tokens and a ChatML chat template."

TINY_MODELS = (
    TinyModel(
        VLM_NAME,
        build_tiny_qwen2_vl,
        f"Qwen2-VL (Qwen2VLForConditionalGeneration): {NUM_LAYERS} text layers, hidden {HIDDEN_SIZE}, {NUM_HEADS} "
        f"heads ({NUM_KV_HEADS} KV), vision depth {VISION_DEPTH} / embed {VISION_EMBED_DIM}, mrope_section "
        f"{MROPE_SECTION}; Qwen2VLProcessor with min_pixels {IMAGE_MIN_PIXELS}, max_pixels {IMAGE_MAX_PIXELS} "
        "(a 112 px image is 16 image tokens).",
        QWEN_TOKENIZER,
    ),
    TinyModel(
        TEXT_LLM_NAME,
        build_tiny_text_llm,
        f"Qwen2 text causal LM (Qwen2ForCausalLM): {NUM_LAYERS} layers, hidden {HIDDEN_SIZE}, {NUM_HEADS} heads "
        f"({NUM_KV_HEADS} KV); the consistency-filter judge of tests and the CPU demo.",
        QWEN_TOKENIZER,
    ),
    TinyModel(
        QWEN2_5_VL_NAME,
        build_tiny_qwen2_5_vl,
        f"Qwen2.5-VL (Qwen2_5_VLForConditionalGeneration): {NUM_LAYERS} text layers, hidden {HIDDEN_SIZE}, "
        f"{NUM_HEADS} heads ({NUM_KV_HEADS} KV), windowed vision depth {VISION_DEPTH} / hidden {VISION_EMBED_DIM}, "
        f"mrope_section {MROPE_SECTION}; Qwen2_5_VLProcessor with min_pixels {IMAGE_MIN_PIXELS}, max_pixels "
        f"{IMAGE_MAX_PIXELS} (a 112 px image is 16 image tokens).",
        "Qwen2-VL's special tokens and the chat template of Qwen/Qwen2.5-VL-7B-Instruct.",
    ),
    TinyModel(
        LLAVA_NEXT_NAME,
        functools.partial(build_tiny_llava_next, checkpoint=LLAVA_NEXT_HF),
        f"LLaVA-NeXT (LlavaNextForConditionalGeneration) in the layout of llava-hf/llama3-llava-next-8b-hf: Llama "
        f"text model ({NUM_LAYERS} layers, hidden {HIDDEN_SIZE}), CLIP tower (depth {VISION_DEPTH}, hidden "
        f"{VISION_EMBED_DIM}, {VISION_TILE} px tiles); LlavaNextProcessor with grid pinpoints {LLAVA_GRID_PINPOINTS} "
        f"(a 112 px image is 88 `<image>` tokens).",
        "Meta-Llama-3's special tokens, then `<image>` and `<pad>`, and the chat template of "
        "llava-hf/llama3-llava-next-8b-hf.",
    ),
    TinyModel(
        SYNTHESIZER_NAME,
        functools.partial(build_tiny_llava_next, checkpoint=SYNTHESIZER),
        f"LLaVA-NeXT (LlavaNextForConditionalGeneration) in the layout of AdaptLLM/visual-instruction-synthesizer: "
        f"as tiny-llava-next-hf, with the image token `{SYNTHESIZER_IMAGE_TOKEN}` (a 112 px image is 88 of them).",
        "Meta-Llama-3's special tokens, then `<pad>`, and the chat template of "
        "AdaptLLM/visual-instruction-synthesizer.",
    ),
    TinyModel(
        MLLAMA_NAME,
        build_tiny_mllama,
        f"Llama-3.2-Vision (MllamaForConditionalGeneration): Llama text model with {NUM_LAYERS} self-attention and "
        f"{len(MLLAMA_CROSS_ATTENTION_LAYERS)} cross-attention layers (hidden {HIDDEN_SIZE}), tiled vision encoder "
        f"({VISION_TILE} px tiles, at most {MLLAMA_MAX_TILES}); MllamaProcessor (one `<|image|>` token per image).",
        "Llama 3.1's special tokens, then `<|image|>`, and the chat template of "
        "meta-llama/Llama-3.2-11B-Vision-Instruct.",
    ),
    TinyModel(
        LLAMA3_TEXT_NAME,
        build_tiny_llama3_text,
        f"Llama-3 text causal LM (LlamaForCausalLM) in the layout of meta-llama/Meta-Llama-3-8B: {NUM_LAYERS} layers, "
        f"hidden {HIDDEN_SIZE}, {NUM_HEADS} heads ({NUM_KV_HEADS} KV); the recipes' consistency judge, a base model.",
        "Meta-Llama-3's special tokens and no chat template (a base model).",
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
    tokenizer = (
        "- Tokenizer: byte-level BPE trained with the `tokenizers` library on procedurally generated domain text "
        f"(colours, shapes, medicine, food, remote sensing), with {model.tokenizer}"
    )
    return (
        f"# {model.name}\n\n"
        "RANDOM WEIGHTS: this model knows nothing. It exists so that tests and the CPU demo can exercise the real\n"
        "loading, inference and training code paths without a GPU or a model hub.\n\n"
        f"- Architecture: {model.description}\n"
        f"- Parameters: {parameters:,}\n"
        f"{textwrap.fill(tokenizer, width=CARD_WIDTH, subsequent_indent='  ')}\n"
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
