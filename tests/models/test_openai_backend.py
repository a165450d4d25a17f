"""The OpenAI-compatible HTTP backend, the family chat templates a server renders with, and a real ``vllm serve``.

- Templates: the shipped files are the generator's output, and transformers' own chat-template machinery renders
  every family's conversations through them to exactly the text ``render`` writes.
- Requests: what the backend sends, checked on an HTTP server of the test's own that records it; the same server
  misbehaves (HTTP 500, garbage, a missing completion, no reply in time) and a port nobody listens on refuses, and
  each failure is that request's error result, naming its cause.
- A real server (slow): the tiny synthesizer behind ``vllm serve`` with the shipped template writes, token for token,
  what the in-process vLLM engine writes for the same requests (built by ``ModelSynthesizer``), from prompts of the
  same length; ``/tokenize`` shows the server's prompt is the rendered prompt, both BOS tokens included.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
import requests
from jinja2.exceptions import TemplateError
from PIL import Image
from transformers import AutoTokenizer

from engine.config import EngineConfig
from engine.models.backends import GenerationRequest, GenerationResult, create_backend
from engine.models.backends.openai_backend import OpenAIBackend, request_body
from engine.models.chat_templates import TEMPLATE_DIR, chat_template, template_path
from engine.models.families import FAMILIES, LLAVA_SYSTEM_PROMPT, chat_template_messages, render
from engine.models.loading import chat_format, load_processor, raw_prompt_begin
from engine.synthesis.prompts import synthesizer_prompt
from engine.synthesis.synthesizer import ModelSynthesizer
from tests.conftest import in_process_vllm
from tests.servers import free_port
from tests.vllm_server import SYNTHESIZER_FAMILY, SYNTHESIZER_MODEL, tiny_synthesizer_server  # noqa: F401

SERVED_MODEL = "tiny-served"
CAPTIONS = ("A red square on a white background.", "Two circles, one blue and one green.", "A plate of rice.")
# Different sizes give LLaVA-NeXT different tile grids, so different numbers of image tokens.
IMAGE_SIZES = ((112, 112), (140, 84), (56, 56))
SYNTHESIS_TOKENS = 48


def noise_image(size: tuple[int, int], seed: int) -> Image.Image:
    width, height = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pair_rows() -> list[dict[str, Any]]:
    """Image-caption rows as the synthesize step gets them."""
    return [{"id": str(seed), "caption": caption, "image": png_bytes(noise_image(size, seed)), "problem_reason": None}
            for seed, (caption, size) in enumerate(zip(CAPTIONS, IMAGE_SIZES, strict=True))]


def decoded_image(part: dict) -> Image.Image:
    url = part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


# chat templates

CONVERSATIONS = {
    "text only": [{"role": "user", "content": "What is a tumour?"}],
    "image and text": [{"role": "user", "content": "<image>\nWhat organ is shown?"}],
    "multi-turn": [
        {"role": "user", "content": "<image>\nWhat organ is shown?"},
        {"role": "assistant", "content": "The liver."},
        {"role": "user", "content": "Compare it with this one: <image>\nIs it enlarged?"},
        {"role": "assistant", "content": "Yes.\nIt is."},
    ],
    "explicit system": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "<image>\nDescribe the image."},
        {"role": "assistant", "content": "A cat."},
    ],
}
# transformers renders no empty conversation, but continuing one opens the first user turn.
OPENED = {**CONVERSATIONS, "nothing before": []}


@pytest.fixture(scope="module")
def qwen_tokenizer(tiny_model_dir):
    """Any tokenizer serves: a template renders text; this one only lends transformers' apply_chat_template."""
    return AutoTokenizer.from_pretrained(tiny_model_dir / "tiny-qwen2-vl")


def apply_template(tokenizer, family: str, messages: list[dict], **options) -> str:
    return tokenizer.apply_chat_template(messages, chat_template=chat_template(family), tokenize=False, **options)


def test_shipped_templates_are_the_generators_output():
    shipped = {path.stem for path in TEMPLATE_DIR.glob("*.jinja")}
    assert shipped == set(FAMILIES), "one template per family; regenerate with `python -m engine.models.chat_templates`"
    for name in FAMILIES:
        assert template_path(name).read_text(encoding="utf-8") == chat_template(name), (
            f"{template_path(name)} is stale; regenerate it with `python -m engine.models.chat_templates`"
        )


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_template_renders_what_render_writes(qwen_tokenizer, family, conversation):
    messages = CONVERSATIONS[conversation]
    typed = chat_template_messages(messages)
    for add_generation_prompt in (False, True):
        expected = render(family, messages, add_generation_prompt=add_generation_prompt)
        assert apply_template(qwen_tokenizer, family, typed, add_generation_prompt=add_generation_prompt) == expected
    # Plain-string content is one text part.
    if "<image>" not in json.dumps(messages):
        assert apply_template(qwen_tokenizer, family, messages) == render(family, messages)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("conversation", sorted(OPENED))
def test_continuing_an_empty_user_message_opens_a_user_turn(qwen_tokenizer, family, conversation):
    messages = OPENED[conversation]
    expected = render(family, messages, open_user_turn=True)
    # vLLM hands the template an empty string as a list with one empty text part; both must work.
    for empty in ("", [{"type": "text", "text": ""}]):
        continued = [*chat_template_messages(messages), {"role": "user", "content": empty}]
        assert apply_template(qwen_tokenizer, family, continued, add_generation_prompt=False,
                              continue_final_message=True) == expected


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_template_refuses_what_render_refuses(qwen_tokenizer, family):
    with pytest.raises(TemplateError, match="message 1 has role 'tool'"):
        apply_template(qwen_tokenizer, family, [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "x"}])
    with pytest.raises(TemplateError, match="message 1 is a system message"):
        apply_template(qwen_tokenizer, family, [{"role": "user", "content": "Hi"}, {"role": "system", "content": "x"}])
    with pytest.raises(TemplateError, match="content part of type 'video'"):
        apply_template(qwen_tokenizer, family, [{"role": "user", "content": [{"type": "video"}]}])


def test_vllm_passes_typed_parts_to_every_template():
    # vLLM inspects a template: one that does not loop over a message's parts gets text with vLLM's own image
    # placeholders instead of image parts, and would not write the family's image token.
    hf_renderer = pytest.importorskip("vllm.renderers.hf")
    for name in FAMILIES:
        assert hf_renderer._detect_content_format(chat_template(name), default="string") == "openai", name


# requests, on an HTTP server of the test's own


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes | dict | None = None  # None: a completion of the route asked
    delay_s: float = 0.0


COMPLETION_TEXT = "a red square"
USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


class PeerServer(ThreadingHTTPServer):
    """Records each request and answers it: by its completions prompt when ``by_prompt`` names it, else from
    ``script`` in order, else with a completion."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), PeerHandler)
        self.received: list[dict] = []
        self.script: list[Reply] = []
        self.by_prompt: dict[str, Reply] = {}
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def reply(self, path: str, headers: dict, body: dict) -> Reply:
        with self.lock:
            self.received.append({"path": path, "headers": headers, "body": body})
            if body.get("prompt") in self.by_prompt:
                return self.by_prompt[body["prompt"]]
            return self.script.pop(0) if self.script else Reply()

    def handle_error(self, request, client_address):
        pass  # a client that gave up on a slow reply closed the socket; that is the point of the test


def completion(path: str, body: dict) -> dict:
    if path.endswith("/chat/completions"):
        choice = {"index": 0, "message": {"role": "assistant", "content": COMPLETION_TEXT}, "finish_reason": "stop"}
    else:
        choice = {"index": 0, "text": f"echo {len(body['prompt'])}", "finish_reason": "length"}
    return {"id": "cmpl-1", "object": "text_completion", "choices": [choice], "usage": USAGE}


class PeerHandler(BaseHTTPRequestHandler):
    server: PeerServer

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        reply = self.server.reply(self.path, dict(self.headers), body)
        time.sleep(reply.delay_s)
        data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body or completion(self.path, body))
        data = data.encode() if isinstance(data, str) else data
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def peer(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = PeerServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def http_backend(base_url: str, family: str = "qwen2-vl", read_timeout: float = 10) -> OpenAIBackend:
    config = EngineConfig(model=SERVED_MODEL, family=family, backend="openai", base_url=base_url,
                          api_key_env="PEER_KEY")
    return OpenAIBackend(config, max_attempts=3, backoff_seconds=0.01, read_timeout=read_timeout)


def vlm_prompt(question: str, family: str = "qwen2-vl") -> str:
    return render(family, [{"role": "user", "content": f"<image>\n{question}"}], add_generation_prompt=True)


def test_text_prompt_goes_verbatim_to_the_completions_route(peer, monkeypatch):
    monkeypatch.setenv("PEER_KEY", "secret")
    prompt = render("qwen2-vl", [{"role": "user", "content": "Hi"}], open_user_turn=True)
    # The OpenAI clients' base URL ends in /v1; the bare server address works too (see the chat route tests).
    with http_backend(peer.url + "/v1/") as backend:
        (result,) = backend.generate([GenerationRequest(prompt, max_tokens=7, stop=["<|endoftext|>"],
                                                        keep_special_tokens=True, stop_at_eos=False)])
    assert result == GenerationResult(text=f"echo {len(prompt)}", prompt_tokens=11, output_tokens=3)
    (sent,) = peer.received
    assert sent["path"] == "/v1/completions"
    assert sent["headers"]["Authorization"] == "Bearer secret"
    assert sent["body"] == {
        "model": SERVED_MODEL,
        "prompt": prompt,  # verbatim, open user turn included
        "max_tokens": 7,
        "temperature": 0.0,
        "stop": ["<|endoftext|>"],
        "skip_special_tokens": False,
        "ignore_eos": True,
    }


def test_image_prompt_ending_in_an_open_assistant_turn_goes_to_the_chat_route(peer):
    image = noise_image((64, 48), 1)
    with http_backend(peer.url) as backend:
        (result,) = backend.generate([GenerationRequest(vlm_prompt("What colour is it?"), [image], max_tokens=5)])
    assert result == GenerationResult(text=COMPLETION_TEXT, prompt_tokens=11, output_tokens=3)
    (sent,) = peer.received
    assert sent["path"] == "/v1/chat/completions"
    assert "Authorization" not in sent["headers"]  # PEER_KEY is not set
    body = sent["body"]
    system, user = body.pop("messages")
    # The server opens the assistant turn (the API's default); a Qwen2-VL prompt writes no BOS, so the tokenizer's
    # own (none for Qwen2) is asked for, as the other backends tokenize.
    assert body == {"model": SERVED_MODEL, "max_tokens": 5, "temperature": 0.0, "add_special_tokens": True}
    assert system == {"role": "system", "content": "You are a helpful assistant."}
    image_part, text_part = user["content"]
    assert text_part == {"type": "text", "text": "What colour is it?"}
    assert decoded_image(image_part).size == (64, 48)


def test_synthesizer_request_continues_an_empty_user_turn(peer):
    """The request ModelSynthesizer makes, sent as the server needs it, and the chat reply parsed into a task."""
    turn = "<|eot_id|><|start_header_id|>{}<|end_header_id|>\n\n"
    output = ("Answer with a precise response.\nWhat shape is it?" + turn.format("assistant") + "A square."
              + turn.format("user") + "Answer with an informative response.\nWhat shape is it?"
              + turn.format("assistant") + "It is a red square." + turn.format("user"))
    peer.script = [Reply(body={"choices": [{"message": {"role": "assistant", "content": output}}], "usage": USAGE})]
    engine = EngineConfig(model=SERVED_MODEL, family="llava-llama3", backend="openai", base_url=peer.url)
    synthesizer = ModelSynthesizer(engine, "adamllm")
    row = pair_rows()[0]
    synthesizer.process([row])
    assert (row["question"], row["precise"], row["informative"]) == ("What shape is it?", "A square.",
                                                                     "It is a red square.")
    (sent,) = peer.received
    assert sent["path"] == "/v1/chat/completions"
    body = sent["body"]
    image_part = body["messages"][1]["content"][0]
    assert decoded_image(image_part).tobytes() == Image.open(io.BytesIO(row["image"])).convert("RGB").tobytes()
    assert body == {
        "model": SERVED_MODEL,
        "messages": [
            {"role": "system", "content": LLAVA_SYSTEM_PROMPT},
            {"role": "user", "content": [image_part, {"type": "text", "text": "Describe the image."}]},
            {"role": "assistant", "content": CAPTIONS[0]},
            {"role": "user", "content": ""},
        ],
        "add_generation_prompt": False,
        "continue_final_message": True,
        # The prompt writes <|begin_of_text|> and the synthesizer was trained with the tokenizer's BOS before it.
        "add_special_tokens": True,
        "skip_special_tokens": False,
        "ignore_eos": True,
        "stop": ["<|end_of_text|>"],
        "max_tokens": 512,
        "temperature": 0.0,
    }


def add_special_tokens_sent(family: str, request: GenerationRequest) -> bool | None:
    return request_body(SERVED_MODEL, family, request)[1].get("add_special_tokens")


@pytest.mark.parametrize(("family", "chat", "completions"), [
    ("llava-llama3", True, None),  # writes a BOS and keeps the tokenizer's in front of it
    ("llava-hf-llama3", True, None),  # writes none: the tokenizer's
    ("qwen2-vl", True, None),  # writes none (and Qwen2's tokenizer adds none)
    ("mllama", None, False),  # writes its only BOS
    ("text", None, None),  # a raw prompt, never on the chat route: the server adds what its model needs
])
def test_the_tokenizers_bos_is_asked_for_where_the_other_backends_have_it(family, chat, completions):
    """``add_special_tokens`` as sent on each route; None: not sent (chat's default is false, completions' true)."""
    assert add_special_tokens_sent(family, GenerationRequest("A plate of")) is completions
    if family in FAMILIES:
        with_image = GenerationRequest(vlm_prompt("What is it?", family), [noise_image((56, 56), 0)])
        assert add_special_tokens_sent(family, with_image) is chat


def test_text_parts_lose_the_separators_the_template_writes_again(peer):
    caption_chat = [{"role": "user", "content": "Look: <image>\nWhat is it?"},
                    {"role": "assistant", "content": "A cat."}]
    with http_backend(peer.url, family="llava-hf-llama3") as backend:
        (result,) = backend.generate([GenerationRequest(render("llava-hf-llama3", caption_chat, open_user_turn=True),
                                                        [noise_image((56, 56), 0)])])
    assert result.error is None
    user, assistant, opened = peer.received[0]["body"]["messages"]
    assert [part.get("text") for part in user["content"]] == ["Look: ", None, "What is it?"]  # no "\n" prefixes
    assert assistant == {"role": "assistant", "content": "A cat."}
    assert opened == {"role": "user", "content": ""}


def test_what_the_chat_api_cannot_express_is_refused_without_a_request(peer):
    image = noise_image((56, 56), 2)
    caption_chat = [{"role": "user", "content": "<image>\nDescribe the image."},
                    {"role": "assistant", "content": "A cat."}]
    requests_ = [
        GenerationRequest(render("qwen2-vl", caption_chat) + "<|im_start|>assistant\nIt is", [image]),
        GenerationRequest(render("qwen2-vl", caption_chat), [image]),
        GenerationRequest(vlm_prompt("Two images?"), [image, image]),
        GenerationRequest(vlm_prompt("Fine."), [image]),
    ]
    with http_backend(peer.url) as backend:
        results = backend.generate(requests_)
    assert "inside the text of its open assistant turn" in results[0].error
    assert "ends in a closed turn" in results[1].error and "vllm or transformers backend" in results[1].error
    assert "1 image tokens but the request has 2 images" in results[2].error
    assert results[3].text == COMPLETION_TEXT
    assert len(peer.received) == 1  # refused requests never reach the server


def test_server_errors_are_retried_then_succeed(peer):
    peer.script = [Reply(500, {"error": {"message": "engine busy"}}),
                   Reply(503, {"object": "error", "message": "later"})]
    with http_backend(peer.url) as backend:
        (result,) = backend.generate([GenerationRequest("A plate of", max_tokens=3)])
    assert result.error is None and result.text == "echo 10"
    assert len(peer.received) == 3


def test_each_misbehaving_reply_is_its_requests_error_naming_the_cause(peer):
    peer.by_prompt = {
        "http 500": Reply(500, b"<html>Internal Server Error</html>"),
        "client error": Reply(400, {"error": {"message": "This model's maximum context length is 16 tokens"}}),
        "not json": Reply(200, b"<html>proxy login</html>"),
        "json list": Reply(200, b"[1, 2]"),
        "no choices": Reply(200, {"id": "x", "object": "text_completion", "usage": USAGE}),
        "text not a string": Reply(200, {"choices": [{"text": 7}]}),
        "slow": Reply(200, None, delay_s=2.0),
    }
    prompts = [*peer.by_prompt, "fine"]
    with http_backend(peer.url, read_timeout=0.5) as backend:
        results = dict(zip(prompts, backend.generate([GenerationRequest(p, max_tokens=3) for p in prompts]),
                           strict=True))
    assert results["fine"] == GenerationResult(text="echo 4", prompt_tokens=11, output_tokens=3)
    errors = {prompt: result.error for prompt, result in results.items() if prompt != "fine"}
    assert all(result.text is None for prompt, result in results.items() if prompt != "fine")
    assert "after 3 attempts" in errors["http 500"] and "HTTP 500" in errors["http 500"]
    assert "Internal Server Error" in errors["http 500"]
    assert "HTTP 400" in errors["client error"] and "maximum context length" in errors["client error"]
    assert "is not JSON: '<html>proxy login</html>'" in errors["not json"]
    assert "is not a JSON object" in errors["json list"]
    assert "has no choices[0].text" in errors["no choices"]
    assert "choices[0].text that is not a string: 7" in errors["text not a string"]
    assert errors["slow"].startswith("ReadTimeout") and "read timeout=0.5" in errors["slow"]
    attempts = [sent["body"]["prompt"] for sent in peer.received]
    # 5xx is retried; a client error, a bad reply and a read timeout are not (the server may still be generating).
    assert {prompt: attempts.count(prompt) for prompt in prompts} == {
        "http 500": 3, "client error": 1, "not json": 1, "json list": 1, "no choices": 1, "text not a string": 1,
        "slow": 1, "fine": 1}


def test_connection_refused_is_an_error_result_after_bounded_retries():
    port = free_port()  # nothing listens on it any more
    with http_backend(f"http://127.0.0.1:{port}") as backend:
        started = time.monotonic()
        results = backend.generate([GenerationRequest("x"), GenerationRequest("y")])
    assert time.monotonic() - started < 5
    for result in results:
        assert result.text is None
        assert "ConnectionError" in result.error and "after 3 attempts" in result.error
        assert "Connection refused" in result.error


def test_create_backend_picks_the_configured_backend(peer):
    config = EngineConfig(model="m", family="text", backend="openai", base_url=peer.url)
    with create_backend(config) as backend:
        assert isinstance(backend, OpenAIBackend)
        assert backend.model_id == "m"


# a real vllm serve: the comparison runs first, so that the in-process engine is gone before the server starts (a
# 2-core machine must never run two engines at once)


def synthesizer_engine(model: str, backend: str, **fields) -> EngineConfig:
    return EngineConfig(model=model, family=SYNTHESIZER_FAMILY, backend=backend, device="cpu",
                        max_tokens=SYNTHESIS_TOKENS, **fields)


def other_requests(synthesizer: ModelSynthesizer) -> list[GenerationRequest]:
    """Besides the synthesizer's: a question about an image (the open assistant turn) and a text-only prompt, each
    written as the pipeline writes it for the synthesizer's engine (the BOS in the text for an in-process engine)."""
    question = render(synthesizer._family, [{"role": "user", "content": "<image>\nWhat is shown?"}],
                      add_generation_prompt=True)
    return [GenerationRequest(question, [noise_image((112, 112), 5)], max_tokens=16, keep_special_tokens=True),
            GenerationRequest(raw_prompt_begin(synthesizer._engine) + "A plate of", max_tokens=16)]


def all_requests(synthesizer: ModelSynthesizer) -> list[GenerationRequest]:
    return [synthesizer._request(row) for row in pair_rows()] + other_requests(synthesizer)


def synthesize(synthesizer: ModelSynthesizer) -> dict[str, Any]:
    """Raw outputs of the synthesizer's requests and of ``other_requests``, and the rows ``process`` fills.

    One request at a time, in the same order on both engines: requests sent together over HTTP reach the server at
    moments of their own, so the server batches them otherwise than ``LLM.generate`` does, and a greedy token of
    random weights may flip with the batch a request shares.
    """
    raw = [synthesizer._backend.generate([request])[0] for request in all_requests(synthesizer)]
    rows = pair_rows()
    for row in rows:
        synthesizer.process([row])
    return {"raw": raw, "rows": [{key: value for key, value in row.items() if key != "image"} for row in rows]}


@pytest.fixture(scope="module")
def synthesized_in_process(tiny_model_dir) -> dict[str, Any]:
    pytest.importorskip("vllm")
    with in_process_vllm():
        engine = synthesizer_engine(str(tiny_model_dir / SYNTHESIZER_MODEL), "vllm", dtype="float32",
                                    enforce_eager=True, kv_cache_gib=0.25, max_model_len=1024)
        synthesizer = ModelSynthesizer(engine, "adamllm")
        try:
            return synthesize(synthesizer)
        finally:
            synthesizer._backend.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_served_synthesizer_writes_what_the_in_process_engine_writes(
    synthesized_in_process, tiny_synthesizer_server, record_property  # noqa: F811
):
    record_property("vllm_serve_start_seconds", round(tiny_synthesizer_server.start_seconds, 1))
    print(f"vllm serve answered /health {tiny_synthesizer_server.start_seconds:.1f} s after it was started")
    engine = synthesizer_engine(tiny_synthesizer_server.model, "openai", base_url=tiny_synthesizer_server.url)
    synthesizer = ModelSynthesizer(engine, "adamllm")
    served = synthesize(synthesizer)
    local = synthesized_in_process
    for result in [*local["raw"], *served["raw"]]:
        assert result.error is None, f"{result.error}\n{tiny_synthesizer_server.log_tail()}"
        assert result.output_tokens > 0
    assert [result.text for result in served["raw"]] == [result.text for result in local["raw"]]
    assert [result.prompt_tokens for result in served["raw"]] == [result.prompt_tokens for result in local["raw"]]
    assert [result.output_tokens for result in served["raw"]] == [result.output_tokens for result in local["raw"]]
    # Random weights write no valid task: the parse outcome (a reason) must still agree; the lineage names the model
    # as each engine knows it (a path here, the served name there).
    same_model = {"synthesizer": tiny_synthesizer_server.model}
    assert [{**row, **same_model} for row in served["rows"]] == [{**row, **same_model} for row in local["rows"]]
    # Sent together, as the synthesize step sends a batch: the server answers every request, from the same prompts.
    together = synthesizer._backend.generate(all_requests(synthesizer))
    assert [result.error for result in together] == [None] * len(together)
    assert [result.prompt_tokens for result in together] == [result.prompt_tokens for result in local["raw"]]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("ending", ["open user turn", "open assistant turn"])
def test_served_prompt_is_the_rendered_prompt_token_for_token(
    tiny_synthesizer_server, tiny_model_dir, ending  # noqa: F811
):
    """``/tokenize`` renders a chat request as the chat route does and expands the image as transformers' processor
    does: the same ids as the processor gives for the prompt the in-process engines get (the family as the checkpoint
    needs it, tokenized as written), both BOS tokens first."""
    processor = load_processor(tiny_model_dir / SYNTHESIZER_MODEL)
    in_process_family = chat_format(SYNTHESIZER_FAMILY, processor).family
    chat = [{"role": "user", "content": "<image>\nWhat is shown?"}]

    def prompt(family) -> str:
        if ending == "open user turn":
            return synthesizer_prompt(CAPTIONS[0], family)
        return render(family, chat, add_generation_prompt=True)

    image = noise_image((112, 112), 0)
    _, body = request_body(tiny_synthesizer_server.model, SYNTHESIZER_FAMILY,
                           GenerationRequest(prompt(SYNTHESIZER_FAMILY), [image]))
    rendering = ("model", "messages", "add_generation_prompt", "continue_final_message", "add_special_tokens")
    reply = requests.post(f"{tiny_synthesizer_server.url}/tokenize",
                          json={key: body[key] for key in rendering if key in body}, timeout=60)
    assert reply.ok, reply.text
    expected = processor(text=prompt(in_process_family), images=[image], add_special_tokens=False)["input_ids"][0]
    bos = processor.tokenizer.bos_token_id
    assert reply.json()["tokens"][:3] == [bos, bos, processor.tokenizer.convert_tokens_to_ids("<|start_header_id|>")]
    assert reply.json()["tokens"] == list(expected)


def test_batches_awaited_together_reach_the_server_together(peer):
    """Two batches in flight on one actor: the first batch's answers are held until a request of the second arrives,
    which happens only if the second is sent while the first is still out."""
    first, second = ([GenerationRequest(f"{name} {index}") for index in range(2)] for name in ("first", "second"))
    second_arrived = threading.Event()
    answer = peer.reply

    def held_until_the_second_batch(path: str, headers: dict, body: dict) -> Reply:
        if body["prompt"].startswith("second"):
            second_arrived.set()
        elif not second_arrived.wait(timeout=10):  # batches in turns: the second never comes while this waits
            return Reply(body={"choices": [{"index": 0, "text": "in turns", "finish_reason": "stop"}]})
        return answer(path, headers, body)

    peer.reply = held_until_the_second_batch

    async def both():
        return await asyncio.gather(backend.agenerate(first), backend.agenerate(second))

    with http_backend(peer.url) as backend:
        results = asyncio.run(both())
    assert [[result.text for result in batch] for batch in results] == [
        [f"echo {len(request.prompt)}" for request in batch] for batch in (first, second)]
