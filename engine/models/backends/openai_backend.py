"""An OpenAI-compatible HTTP server: ``vllm serve`` or any server speaking the same API.

What the HTTP API can express, and so what this backend sends or refuses:
- A text-only request goes to ``POST {base_url}/v1/completions`` with the rendered prompt verbatim. Any prompt works,
  including one that ends in an open user turn.
- The completions route takes no images, so a request with images goes to ``POST {base_url}/v1/chat/completions``:
  the rendered prompt is split back into the turns of ``EngineConfig.family`` and each image token becomes an image
  part (a base64 PNG data URL). The server renders those messages again with the served model's own chat template and
  opens an assistant turn. Hence only a prompt that ends with an empty assistant turn can be sent this way, and the
  model sees the same text as with the other backends only if its chat template matches the family format. A prompt
  that ends in an open user turn (the synthesizer's) or inside an assistant answer is refused with an error result:
  run such requests on the ``vllm`` or ``transformers`` backend.
- ``keep_special_tokens`` maps to ``skip_special_tokens: false``, a vLLM extension of the API; it is sent only when
  needed, so other servers see standard fields otherwise.

The API key, if any, is read from the environment variable named by ``EngineConfig.api_key_env``. Connection errors,
HTTP 429 and 5xx are retried a bounded number of times with exponential back-off; any other failure, and a read timeout
(the server may still be generating; a retry would only add load), gives an error result at once.
"""

from __future__ import annotations

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
from engine.models.families import ModelFamily, get_family

COMPLETIONS = "completions"
CHAT_COMPLETIONS = "chat/completions"


class UnsupportedRequest(ValueError):
    """A request the HTTP API cannot express faithfully."""


class ServerError(RuntimeError):
    """The server answered with an HTTP error."""


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

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._session.close()

    def _complete(self, request: GenerationRequest) -> GenerationResult:
        try:
            route, body = self._route(request)
            return _parse_reply(route, self._post(route, body))
        except Exception as error:  # noqa: BLE001 - every failure is this request's result
            return GenerationResult.failure(error)

    def _route(self, request: GenerationRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": self._model_id,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.keep_special_tokens:
            body["skip_special_tokens"] = False
        if not request.images:
            return COMPLETIONS, {**body, "prompt": request.prompt}
        return CHAT_COMPLETIONS, {**body, "messages": chat_messages(self._family, request.prompt, request.images)}

    def _post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self._api_root}/{route}"
        for attempt in range(1, self._max_attempts + 1):
            try:
                response = self._session.post(url, json=body, timeout=self._timeout)
            except requests.ConnectionError as error:
                failure: Exception = error
            else:
                if response.ok:
                    return response.json()
                failure = ServerError(f"HTTP {response.status_code} from {url}: {_server_message(response)}")
                if response.status_code != 429 and response.status_code < 500:
                    raise failure
            if attempt < self._max_attempts:
                time.sleep(self._backoff_seconds * 2 ** (attempt - 1))
        raise type(failure)(f"after {self._max_attempts} attempts: {failure}") from failure


def _api_root(base_url: str) -> str:
    """``http://host:8000`` and ``http://host:8000/v1`` (the OpenAI clients' convention) both name the same API."""
    root = base_url.rstrip("/")
    return root if root.endswith("/v1") else f"{root}/v1"


def _server_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return response.text[:500]


def _parse_reply(route: str, reply: dict[str, Any]) -> GenerationResult:
    choice = reply["choices"][0]
    text = choice["text"] if route == COMPLETIONS else choice["message"].get("content")
    usage = reply.get("usage") or {}
    return GenerationResult(
        text=text or "",
        prompt_tokens=usage.get("prompt_tokens", 0),
        output_tokens=usage.get("completion_tokens", 0),
    )


def chat_messages(family_name: str, prompt: str, images: Sequence[Image.Image]) -> list[dict[str, Any]]:
    """The chat messages that a rendered ``prompt`` holds, its image tokens replaced by ``images`` in order.

    Raises UnsupportedRequest when the chat API cannot express the prompt.
    """
    try:
        family = get_family(family_name)
    except ValueError:
        raise UnsupportedRequest(f"family {family_name!r} has no chat format to send images in") from None
    turns, open_role, open_text = split_turns(family, prompt)
    if open_role != "assistant" or open_text:
        ending = {None: "a closed turn", "assistant": "inside an assistant answer"}.get(open_role)
        raise UnsupportedRequest(
            f"the prompt ends in {ending or f'an open {open_role} turn'}, but the chat API can only open a new "
            "assistant turn (the server renders the messages with its own chat template); use the vllm or "
            "transformers backend for this prompt"
        )
    image_tokens = sum(text.count(family.image_token) for _, text in turns)
    if image_tokens != len(images):
        raise UnsupportedRequest(f"the prompt has {image_tokens} image tokens but the request has {len(images)} images")
    image_parts = iter([_image_part(image) for image in images])
    return [{"role": role, "content": _content(text, family.image_token, image_parts)} for role, text in turns]


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


def _content(text: str, image_token: str, image_parts: Iterator[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """A message's content: plain text, or text and image parts in the order the prompt names them."""
    pieces = text.split(image_token)
    if len(pieces) == 1:
        return text
    content: list[dict[str, Any]] = []
    for index, piece in enumerate(pieces):
        if index:
            content.append(next(image_parts))
        if piece:
            content.append({"type": "text", "text": piece})
    return content


def _image_part(image: Image.Image) -> dict[str, Any]:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}
