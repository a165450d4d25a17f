"""An OpenAI-compatible HTTP server: ``vllm serve`` or any server speaking the same API.

What the HTTP API can express, and so what this backend sends or refuses:
- A text-only request goes to ``POST {base_url}/v1/completions`` with the rendered prompt verbatim. Any prompt works,
  including one that ends in an open user turn, on any server.
- The completions route takes no images, so a request with images goes to ``POST {base_url}/v1/chat/completions``:
  the rendered prompt is split back into the turns of ``EngineConfig.family`` and each turn into typed parts (the
  family's image token becomes an image part, a base64 PNG data URL; text parts lose the separators the family writes
  around them), and the server renders those messages again with its chat template. A prompt ending in an open
  assistant turn is sent as the closed turns, and the server opens the assistant turn. A prompt ending in an open user
  turn (the synthesizer's) is sent as the closed turns and a final empty user message with
  ``continue_final_message: true`` and ``add_generation_prompt: false`` (vLLM extensions): the server continues that
  message, so the text ends with the open user header. A prompt ending inside a turn's text, or with a closed turn,
  is refused with an error result: run it on the ``vllm`` or ``transformers`` backend.
- The server must therefore render messages exactly as ``engine.models.families.render`` does: start it with the
  family's template from ``engine.models.chat_templates`` and without the checkpoint's sampling defaults (the ``vllm``
  backend applies none either), e.g.
  ``vllm serve MODEL --chat-template engine/models/chat_templates/llava-llama3.jinja --generation-config vllm``.
- The prompt is the family's as written (``engine.models.loading.engine_chat_format``); the other backends' prompts
  also carry the BOS of the checkpoint's tokenizer where the family writes none, or in front of the written one when
  the family keeps two (the released synthesizer's). The server adds it when told ``add_special_tokens`` (a vLLM
  extension; the chat route's default is false, the completions route's true), so the backend sets it where the
  default would tokenize otherwise: true on the chat route for such a family, false on the completions route for a
  family that writes its only BOS. A prompt of no chat family (a raw prompt, the judge's) keeps the route's default.
- ``keep_special_tokens`` maps to ``skip_special_tokens: false``, ``stop_at_eos`` False to ``ignore_eos: true``,
  ``stop_token_ids`` to the field of that name (vLLM extensions); each is sent only when needed, so other servers see
  standard fields otherwise.

The API key, if any, is read from the environment variable named by ``EngineConfig.api_key_env``. Connection errors,
HTTP 429 and 5xx are retried a bounded number of times with exponential back-off; any other failure (an HTTP 4xx, a
reply that is not JSON or lacks the completion), and a read timeout (the server may still be generating; a retry
would only add load), gives an error result at once. ``generate`` never raises for a request: each failure is that
request's result, with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from PIL import Image

from engine.config import EngineConfig
from engine.models.backends.base import Backend, GenerationRequest, GenerationResult
from engine.models.families import FAMILIES, ModelFamily, get_family

COMPLETIONS = "completions"
CHAT_COMPLETIONS = "chat/completions"
# Whether a route tokenizes with the tokenizer's special tokens (its BOS) when the request does not say (vLLM).
ADDS_SPECIAL_TOKENS_BY_DEFAULT = {COMPLETIONS: True, CHAT_COMPLETIONS: False}
# How much of a reply an error message quotes.
QUOTED_CHARS = 300


class UnsupportedRequest(ValueError):
    """A request the HTTP API cannot express faithfully."""


class ServerError(RuntimeError):
    """The server answered with an HTTP error, or with a reply that is not a completion."""


class OpenAIBackend(Backend):
    """Sends the requests of a batch concurrently (the server batches them) and waits for all of them."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        max_parallel: int = 8,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        max_attempts: int = 3,
        backoff_seconds: float = 1.0,
    ):
        if not config.base_url:
            raise ValueError("backend 'openai' needs base_url")
        self._model_id = config.model
        self._family = config.family
        self._api_root = _api_root(config.base_url)
        self._timeout = (connect_timeout, read_timeout)
        self._max_attempts = max_attempts
        self._backoff_seconds = backoff_seconds
        self._session = requests.Session()
        api_key = os.environ.get(config.api_key_env)
        if api_key:
            self._session.headers["Authorization"] = f"Bearer {api_key}"
        self._pool = ThreadPoolExecutor(max_parallel, thread_name_prefix="openai-backend")

    @property
    def model_id(self) -> str:
        return self._model_id

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return list(self._pool.map(self._complete, requests))

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        # Not in turns: the requests of every batch in flight share the thread pool, so the server batches them all.
        return await asyncio.to_thread(self.generate, requests)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._session.close()

    def _complete(self, request: GenerationRequest) -> GenerationResult:
        try:
            route, body = request_body(self._model_id, self._family, request)
            url = f"{self._api_root}/{route}"
            return _parse_reply(route, url, self._post(url, body))
        except Exception as error:  # noqa: BLE001 - every failure is this request's result
            return GenerationResult.failure(error)

    def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(1, self._max_attempts + 1):
            try:
                response = self._session.post(url, json=body, timeout=self._timeout)
            except requests.ConnectionError as error:
                failure: Exception = error
            else:
                if response.ok:
                    return _json_object(url, response)
                failure = ServerError(f"HTTP {response.status_code} from {url}: {_server_message(response)}")
                if response.status_code != 429 and response.status_code < 500:
                    raise failure
            if attempt < self._max_attempts:
                time.sleep(self._backoff_seconds * 2 ** (attempt - 1))
        raise type(failure)(f"after {self._max_attempts} attempts: {failure}") from failure


def request_body(model: str, family_name: str, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
    """The route for ``request`` and the JSON body to post there.

    Raises UnsupportedRequest when the API cannot express the request.
    """
    if request.images:
        route, prompt_fields = CHAT_COMPLETIONS, chat_fields(family_name, request.prompt, request.images)
    else:
        route, prompt_fields = COMPLETIONS, {"prompt": request.prompt}
    return route, {"model": model, **prompt_fields, **special_tokens_field(family_name, route),
                   **sampling_fields(request)}


def special_tokens_field(family_name: str, route: str) -> dict[str, bool]:
    """``add_special_tokens`` where the route's default would not tokenize the prompt as the other backends do."""
    family = FAMILIES.get(family_name)
    if family is None:  # a raw prompt: the server adds what its model needs
        return {}
    wants_tokenizer_bos = family.double_bos or not family.begin
    if wants_tokenizer_bos == ADDS_SPECIAL_TOKENS_BY_DEFAULT[route]:
        return {}
    return {"add_special_tokens": wants_tokenizer_bos}


def sampling_fields(request: GenerationRequest) -> dict[str, Any]:
    """The request's decoding settings as the API's fields; vLLM's extensions only where they change something."""
    fields: dict[str, Any] = {"max_tokens": request.max_tokens, "temperature": request.temperature}
    if request.stop:
        fields["stop"] = list(request.stop)
    if request.stop_token_ids:
        fields["stop_token_ids"] = list(request.stop_token_ids)
    if request.keep_special_tokens:
        fields["skip_special_tokens"] = False
    if not request.stop_at_eos:
        fields["ignore_eos"] = True
    return fields


def _api_root(base_url: str) -> str:
    """``http://host:8000`` and ``http://host:8000/v1`` (the OpenAI clients' convention) both name the same API."""
    root = base_url.rstrip("/")
    return root if root.endswith("/v1") else f"{root}/v1"


def _json_object(url: str, response: requests.Response) -> dict[str, Any]:
    try:
        reply = response.json()
    except ValueError:
        raise ServerError(f"the reply from {url} is not JSON: {response.text[:QUOTED_CHARS]!r}") from None
    if not isinstance(reply, dict):
        raise ServerError(f"the reply from {url} is not a JSON object: {response.text[:QUOTED_CHARS]!r}")
    return reply


def _server_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:QUOTED_CHARS]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return response.text[:QUOTED_CHARS]


def _parse_reply(route: str, url: str, body: dict[str, Any]) -> GenerationResult:
    field = "choices[0].text" if route == COMPLETIONS else "choices[0].message.content"
    try:
        choice = body["choices"][0]
        # A chat message with nothing generated may carry content null.
        text = choice["text"] if route == COMPLETIONS else choice["message"]["content"] or ""
        usage = body.get("usage") or {}
        prompt_tokens, output_tokens = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    except (KeyError, IndexError, TypeError, ValueError):
        raise ServerError(f"the reply from {url} has no {field} or a malformed usage: "
                          f"{str(body)[:QUOTED_CHARS]}") from None
    if not isinstance(text, str):
        raise ServerError(f"the reply from {url} has a {field} that is not a string: {text!r}"[:QUOTED_CHARS])
    return GenerationResult(text=text, prompt_tokens=prompt_tokens, output_tokens=output_tokens)


def chat_fields(family_name: str, prompt: str, images: Sequence[Image.Image]) -> dict[str, Any]:
    """The chat route's fields for a rendered ``prompt``: its messages, its image tokens replaced by ``images`` in
    order, and how the server is to end the text (see the module docstring).

    Raises UnsupportedRequest when the chat API cannot express the prompt.
    """
    try:
        family = get_family(family_name)
    except ValueError:
        raise UnsupportedRequest(f"family {family_name!r} has no chat format to send images in") from None
    turns, open_role, open_text = split_turns(family, prompt)
    if open_role is None or open_text:
        ending = "a closed turn" if open_role is None else f"inside the text of its open {open_role} turn"
        raise UnsupportedRequest(
            f"the prompt ends in {ending}, but the chat API can only open an assistant turn or continue an empty user "
            "turn; use the vllm or transformers backend for this prompt"
        )
    image_tokens = sum(text.count(family.image_token) for _, text in turns)
    if image_tokens != len(images):
        raise UnsupportedRequest(f"the prompt has {image_tokens} image tokens but the request has {len(images)} images")
    image_parts = iter([_image_part(image) for image in images])
    messages = [{"role": role, "content": _content(family, role, text, image_parts)} for role, text in turns]
    if open_role == "assistant":
        return {"messages": messages}  # the API's default opens the assistant turn
    # transformers continues the final message by cutting the rendering where its (empty) text starts.
    return {"messages": [*messages, {"role": "user", "content": ""}], "add_generation_prompt": False,
            "continue_final_message": True}


def split_turns(family: ModelFamily, prompt: str) -> tuple[list[tuple[str, str]], str | None, str]:
    """Split a prompt rendered by ``engine.models.families.render`` into its closed turns ``(role, text)`` and the
    turn it leaves open (role and text so far; role None when the prompt ends with a closed turn)."""
    text = prompt.removeprefix(family.begin)
    if not text.startswith(family.role_open):
        raise UnsupportedRequest(f"the prompt does not start with a {family.name} turn header")
    chunks = text.split(family.role_open)[1:]
    turns: list[tuple[str, str]] = []
    for position, chunk in enumerate(chunks):
        role, separator, content = chunk.partition(family.role_close)
        if not separator:
            raise UnsupportedRequest(f"a turn header of the prompt is not closed by {family.role_close!r}")
        if content.endswith(family.turn_end):
            turns.append((role, content.removesuffix(family.turn_end)))
        elif position == len(chunks) - 1:
            return turns, role, content
        else:
            raise UnsupportedRequest(f"the prompt's {role} turn is not closed by {family.turn_end!r}")
    return turns, None, ""


def _content(family: ModelFamily, role: str, text: str,
             image_parts: Iterator[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A rendered turn's text as message content, undoing ``render_content``: plain text for a turn without images,
    else text and image parts in order; the separator after each image and the prefix of each text piece are the
    template's to write, so they are taken off (the server's template writes them again)."""
    pieces = text.split(family.image_token)
    if len(pieces) == 1:
        return _text(family, role, text)
    content: list[dict[str, Any]] = []
    for index, piece in enumerate(pieces):
        if index:
            content.append(next(image_parts))
            piece = _strip(piece, family.image_separator, f"after an image in a {role} turn", family)
        if piece:
            content.append({"type": "text", "text": _text(family, role, piece)})
    return content


def _text(family: ModelFamily, role: str, piece: str) -> str:
    return _strip(piece, family.text_prefix, f"before a text in a {role} turn", family) if piece else piece


def _strip(piece: str, written: str, where: str, family: ModelFamily) -> str:
    if not piece.startswith(written):
        raise UnsupportedRequest(f"the prompt lacks the {written!r} that the {family.name} format writes {where} "
                                 f"(at {piece[:40]!r}); was it rendered in another format?")
    return piece.removeprefix(written)


def _image_part(image: Image.Image) -> dict[str, Any]:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}
