"""
An OpenAI-compatible HTTP API over the Engine: FastAPI routes, a pool of model workers, a bounded queue.

    app = create_app([Engine(model, tok)], tok, model_id="speedrun-sft", chat=True)
    uvicorn.run(app, host="127.0.0.1", port=8000)          # what `python -m mini_nanochat serve` does

Routes: POST /v1/chat/completions (chat models), POST /v1/completions (any model: plain text continuation),
GET /v1/models, GET /health, GET /stats. Requests and replies follow OpenAI's API: messages, temperature,
top_p, max_tokens, stop, n, seed, stream (server-sent events, `data: {chunk}` lines ending with
`data: [DONE]`), usage and finish_reason; `top_k` is accepted as an extension. Errors are OpenAI-style JSON
`{"error": {"message", "type", "param", "code"}}` with a 4xx status; no input gives a 500.

The `model` field of a request is accepted whatever it says (clients often hard-code a name); replies name
the model actually served. `logprobs` / `top_logprobs` (chat) and `logprobs: N` (completions) give the log
probability of each generated token under the model itself (temperature 1, before top-k / top-p), computed
by one extra forward pass after generation; not with `stream: true` yet (a 400).

How a request runs: the route validates it, renders the prompt, and puts a Job in a bounded queue (full:
503 with Retry-After). Each worker thread owns one Engine (one per GPU; on a CPU, a configurable number
sharing one model) and runs jobs one at a time, sending each step's text back to the event loop. Between
tokens the worker checks the job's cancel flag, which the route sets when the client disconnects, so an
abandoned request stops costing compute.

A calculator call is shown in the reply's content as `[calculator: 123 + 456 = 579] `, the way the
terminal chat shows it (mini_nanochat/stages/chat.py answer(); the small rendering is repeated here
because the library does not import stages).
"""
from __future__ import annotations

import asyncio
import codecs
import json
import queue
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Literal, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

# ====================================================================================================
# Limits (nanochat's old web server: <= 500 messages, <= 8,000 characters per message, <= 32,000 in all,
# temperature 0-2, top-k 0-200, max_tokens 1-4,096)
# ====================================================================================================


@dataclass
class ServerConfig:
    max_messages: int = 500
    max_message_chars: int = 8000
    max_total_chars: int = 32000
    max_tokens_limit: int = 4096
    default_max_tokens: int = 256   # when a request gives none (also capped by the model's context)
    max_n: int = 8
    max_stop: int = 4               # stop strings per request, as OpenAI
    max_stop_chars: int = 200
    queue_size: int = 16            # requests waiting for a worker; one more gets 503 + Retry-After
    retry_after_s: int = 1
    token_delay_s: float = 0.0      # seconds a worker sleeps per step: for tests and demos of slow models


# ====================================================================================================
# Request bodies
# ====================================================================================================

class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: StrictStr
    text: StrictStr | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[StrictStr, list[ContentPart], None] = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: StrictBool = False


class Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown OpenAI fields (user, presence_penalty, ...) are ignored
    model: StrictStr | None = Field(default=None, max_length=256)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    top_k: StrictInt | None = Field(default=None, ge=0, le=200)
    max_tokens: StrictInt | None = Field(default=None, ge=1)
    max_completion_tokens: StrictInt | None = Field(default=None, ge=1)
    n: StrictInt = Field(default=1, ge=1)
    seed: StrictInt | None = Field(default=None, ge=0, lt=2**63)
    stop: Union[StrictStr, list[StrictStr], None] = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    logprobs: Union[StrictBool, StrictInt, None] = None  # chat: true/false; completions: 0-5 alternatives
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)


class ChatRequest(Sampling):
    messages: list[Message]


class CompletionRequest(Sampling):
    prompt: Union[StrictStr, list[StrictStr]]


class APIError(Exception):
    """An error for the client: HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers or {}


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ====================================================================================================
# Rendering: tokens -> text, with the calculator call shown as [calculator: expr = result]
# ====================================================================================================


class TextRenderer:
    """One sample's tokens in, its reply text out: complete UTF-8 characters only, special tokens either
    shown as the calculator's brackets or dropped."""

    def __init__(self, tok):
        self.tok = tok
        from .engine import tool_display

        self.shown = tool_display(tok)
        self.special = set(tok.special_tokens.values())
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        if token in self.shown:
            return self.decoder.decode(b"", final=True) + self.shown[token]
        if token in self.special:
            return ""
        return self.decoder.decode(self.tok.enc.decode_single_token_bytes(token))

    def finish(self) -> str:
        return self.decoder.decode(b"", final=True)


class StopFilter:
    """Applies stop strings to a growing text: `push(piece)` returns what may be sent now (holding back a
    tail that could be the start of a stop string) and whether a stop string was hit."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.buffer = ""

    def push(self, piece: str) -> tuple[str, bool]:
        self.buffer += piece
        if self.stops:
            hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
            if hits:
                out, self.buffer = self.buffer[:min(hits)], ""
                return out, True
        cut = max(0, len(self.buffer) - self.hold)
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out, False

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


# ====================================================================================================
# The worker pool
# ====================================================================================================


class Job:
    """One request's generation. `fn(engine, job)` runs on a worker thread and reports through emit();
    the route reads `events` on the event loop. `cancel` is set when the client goes away."""

    def __init__(self, fn, loop: asyncio.AbstractEventLoop | None = None):
        self.fn = fn
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.tokens = 0

    def emit(self, event) -> None:
        if self.loop is None:
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed (server shutting down): nobody is listening
            self.cancel.set()


class QueueFull(Exception):
    pass


class WorkerPool:
    """Worker threads, one Engine each, fed by a bounded queue of Jobs."""

    def __init__(self, engines: list, queue_size: int = 16):
        if not engines:
            raise ValueError("the pool needs at least one engine")
        if queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        self.engines = engines
        self.jobs: queue.Queue = queue.Queue(maxsize=queue_size)
        self.lock = threading.Lock()
        self.busy = 0
        self.tokens_served = 0
        self.busy_seconds = 0.0
        self.requests_done = 0
        self.requests_cancelled = 0
        self.requests_rejected = 0
        self.started = time.time()
        self.threads = [threading.Thread(target=self._work, args=(e,), daemon=True, name=f"mnc-worker-{i}")
                        for i, e in enumerate(engines)]
        for t in self.threads:
            t.start()

    def submit(self, job: Job) -> Job:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            with self.lock:
                self.requests_rejected += 1
            raise QueueFull() from None
        return job

    def _work(self, engine) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            with self.lock:
                self.busy += 1
            t0 = time.perf_counter()
            try:
                if not job.cancel.is_set():
                    job.fn(engine, job)
            except Exception as e:  # noqa: BLE001 - reported to the client as a server error, never a crash
                job.emit(("error", f"{type(e).__name__}: {str(e)[:200]}"))
            finally:
                with self.lock:
                    self.busy -= 1
                    self.busy_seconds += time.perf_counter() - t0
                    self.tokens_served += job.tokens
                    self.requests_done += 1
                    self.requests_cancelled += job.cancel.is_set()
                job.emit(("end", None))

    def stats(self) -> dict:
        with self.lock:
            return {"workers": len(self.engines), "busy_workers": self.busy, "queue_length": self.jobs.qsize(),
                    "queue_size": self.jobs.maxsize, "requests_done": self.requests_done,
                    "requests_cancelled": self.requests_cancelled, "requests_rejected": self.requests_rejected,
                    "tokens_served": self.tokens_served,
                    "tokens_per_second": round(self.tokens_served / self.busy_seconds, 2) if self.busy_seconds else 0.0,
                    "uptime_s": round(time.time() - self.started, 1)}

    def close(self) -> None:
        for _ in self.threads:
            try:
                self.jobs.put(None, timeout=1)
            except queue.Full:
                pass


def token_logprobs(model, ids: list[int], completion: list[int], top: int) -> list[tuple]:
    """Log probabilities of `completion` after `ids` under the model (temperature 1, no top-k/top-p):
    [(token, logprob, [(alt token, logprob), ...top])]. One teacher-forced forward pass over the whole
    sequence, after generation: the Engine does not expose its logits."""
    import torch

    if not completion:
        return []
    device = model.wte.weight.device
    with torch.inference_mode():
        logits = model(torch.tensor([ids + completion[:-1]], device=device))[0, len(ids) - 1:]  # (len(completion), V)
        lp = torch.log_softmax(logits.float(), dim=-1)
        chosen = lp.gather(-1, torch.tensor(completion, device=device)[:, None])[:, 0].tolist()
        alts = lp.topk(top, dim=-1) if top else None
        out = []
        for j, t in enumerate(completion):
            others = list(zip(alts.indices[j].tolist(), alts.values[j].tolist())) if alts is not None else []
            out.append((t, chosen[j], others))
    return out


def run_generation(engine, job: Job, ids: list[int], n: int, max_tokens: int, temperature: float,
                   top_k: int | None, top_p: float | None, seed: int, stops: list[str], delay: float = 0.0,
                   logprobs: int | None = None) -> None:
    """Generate n samples on a worker thread; emit ("delta", i, text) as text becomes final and
    ("finish", i, reason, completion_tokens) once per sample. Stops early when the job is cancelled.
    With `logprobs` (the number of alternatives, 0 or more), also ("logprobs", i, token_logprobs(...)) per
    sample, once all samples have finished."""
    counts = [0] * n
    _generate(engine, job, ids, n, max_tokens, temperature, top_k, top_p, seed, stops, delay, counts)
    if logprobs is not None and not job.cancel.is_set():
        for i in range(n):
            job.emit(("logprobs", i, token_logprobs(engine.model, ids, engine.last_tokens[i][:counts[i]], logprobs)))


def _generate(engine, job, ids, n, max_tokens, temperature, top_k, top_p, seed, stops, delay, counts) -> None:
    tok = engine.tokenizer
    renderers = [TextRenderer(tok) for _ in range(n)]
    filters = [StopFilter(stops) for _ in range(n)]
    done = [False] * n
    steps = 0
    for column in engine.generate(ids, num_samples=n, max_tokens=max_tokens, temperature=temperature,
                                  top_k=top_k, top_p=top_p, seed=seed):
        if job.cancel.is_set():
            return
        steps += 1
        for i, t in enumerate(column):
            if done[i]:
                continue
            if t in engine.stop_ids and engine.last_masks[i][-1] == 1:
                done[i] = True
                text = filters[i].push(renderers[i].finish())[0] + filters[i].flush()
                if text:
                    job.emit(("delta", i, text))
                job.emit(("finish", i, "stop", counts[i]))
                continue
            counts[i] += 1
            job.tokens += 1
            text, hit = filters[i].push(renderers[i].push(t))
            if text:
                job.emit(("delta", i, text))
            if hit:
                done[i] = True
                job.emit(("finish", i, "stop", counts[i]))
        if delay:
            time.sleep(delay)
        if all(done):
            return
    for i in range(n):
        if not done[i]:
            text, hit = filters[i].push(renderers[i].finish())
            text += "" if hit else filters[i].flush()
            if text:
                job.emit(("delta", i, text))
            job.emit(("finish", i, "stop" if hit else "length", counts[i]))


# ====================================================================================================
# The app
# ====================================================================================================


def format_logprobs(tok, entries: list[tuple], kind: str) -> dict:
    """token_logprobs() output in OpenAI's shape: chat {"content": [{token, logprob, bytes, top_logprobs}]},
    completions {"tokens", "token_logprobs", "top_logprobs", "text_offset"}."""
    names = {v: k for k, v in tok.special_tokens.items()}

    def raw(t: int) -> bytes:
        return names[t].encode() if t in names else tok.enc.decode_single_token_bytes(t)

    def text(t: int) -> str:
        return raw(t).decode("utf-8", errors="replace")

    if kind == "chat":
        return {"content": [{"token": text(t), "logprob": lp, "bytes": list(raw(t)),
                             "top_logprobs": [{"token": text(a), "logprob": alp, "bytes": list(raw(a))}
                                              for a, alp in alts]} for t, lp, alts in entries], "refusal": None}
    offsets, pos = [], 0
    for t, _, _ in entries:
        offsets.append(pos)
        pos += len(text(t))
    return {"tokens": [text(t) for t, _, _ in entries], "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [{text(a): alp for a, alp in alts} for _, _, alts in entries], "text_offset": offsets}


def _validation_message(errors) -> tuple[str, str | None]:
    """The first pydantic error as one line and the parameter it concerns (only strings: an error's input
    or context may hold values that cannot be serialised)."""
    if not errors:
        return "invalid request", None
    e = errors[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    kind = str(e.get("type", ""))
    if kind in ("json_invalid", "json_type"):
        return "the request body is not valid JSON", None
    msg = str(e.get("msg", "invalid value"))
    return (f"{param}: {msg}" if param else msg), param


def create_app(engines: list, tokenizer, model_id: str = "mini-nanochat", chat: bool = True,
               config: ServerConfig | None = None, context: int | None = None):
    """The FastAPI app serving `engines` (one worker each; they may share a model on a CPU). `chat` says
    whether the model is a chat model (fine-tuned: meta["sft"]); `context` is its window in tokens
    (default: the first engine's model's sequence_len)."""
    cfg = config or ServerConfig()
    tok = tokenizer
    window = context or engines[0].model.config.sequence_len
    pool = WorkerPool(engines, cfg.queue_size)
    app = FastAPI(title="mini-nanochat", version="0.1.0")
    app.state.pool, app.state.config, app.state.model_id, app.state.chat = pool, cfg, model_id, chat
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        message, param = _validation_message(e.errors())
        return JSONResponse(error_body(message, param=param, code="invalid_value"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(e.detail), kind), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):  # never a traceback to the client
        return JSONResponse(error_body("internal server error", "server_error"), status_code=500)

    @app.get("/", include_in_schema=False)
    async def index():
        """The web chat: one static page (mini_nanochat/static/index.html) that talks to the API above."""
        from pathlib import Path

        page = Path(__file__).parent / "static" / "index.html"
        if not page.is_file():
            return JSONResponse(error_body("the web chat page is not installed", "not_found_error"), status_code=404)
        return HTMLResponse(page.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "chat": chat, "workers": len(engines)}

    @app.get("/stats")
    async def stats():
        return {"model": model_id, **pool.stats()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "mini-nanochat"}]}

    @app.get("/v1/models/{name}")
    async def model_info(name: str):
        if name != model_id:
            raise APIError(404, f"the model {name!r:.80} does not exist; this server serves {model_id!r}",
                           "model", "model_not_found")
        return {"id": model_id, "object": "model", "created": created, "owned_by": "mini-nanochat"}

    def sampling(req: Sampling, prompt_len: int) -> dict:
        """Checked sampling settings of a request whose prompt has prompt_len tokens."""
        lp = None
        if isinstance(req, ChatRequest):
            if isinstance(req.logprobs, int) and not isinstance(req.logprobs, bool):
                raise APIError(400, "logprobs must be true or false (top_logprobs: how many alternatives)", "logprobs")
            if req.top_logprobs is not None and not req.logprobs:
                raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
            lp = (req.top_logprobs or 0) if req.logprobs else None
        elif req.logprobs is not None and req.logprobs is not False:
            if req.logprobs is True or not 0 <= req.logprobs <= 5:
                raise APIError(400, "logprobs must be an integer in [0, 5] (alternatives per token)", "logprobs")
            lp = req.logprobs
        if lp is not None and req.stream:
            raise APIError(400, "logprobs with stream: true is not supported yet; ask without streaming",
                           "logprobs", "unsupported_parameter")
        if req.n > cfg.max_n:
            raise APIError(400, f"n must be at most {cfg.max_n}, got {req.n}", "n", "invalid_value")
        max_tokens = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
        room = window - prompt_len
        if max_tokens is not None and max_tokens > cfg.max_tokens_limit:
            raise APIError(400, f"max_tokens must be at most {cfg.max_tokens_limit}, got {max_tokens}",
                           "max_tokens", "invalid_value")
        if room < 1:
            raise APIError(400, f"the prompt is {prompt_len} tokens; this model's context is {window} tokens",
                           "messages", "context_length_exceeded")
        if max_tokens is None:
            max_tokens = min(cfg.default_max_tokens, room)
        elif max_tokens > room:
            raise APIError(400, f"this model's context is {window} tokens; the prompt ({prompt_len}) plus "
                           f"max_tokens ({max_tokens}) exceed it", "max_tokens", "context_length_exceeded")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > cfg.max_stop or any(not s or len(s) > cfg.max_stop_chars for s in stops):
            raise APIError(400, f"stop: at most {cfg.max_stop} non-empty strings of at most {cfg.max_stop_chars} "
                           f"characters", "stop", "invalid_value")
        temperature = 1.0 if req.temperature is None else float(req.temperature)
        top_p = None if req.top_p is None or req.top_p >= 1 else float(req.top_p)
        seed = req.seed if req.seed is not None else secrets.randbits(63)
        return dict(n=req.n, max_tokens=max_tokens, temperature=temperature, top_k=req.top_k or None,
                    top_p=top_p, seed=seed, stops=stops, logprobs=lp)

    def chat_prompt(req: ChatRequest) -> list[int]:
        msgs = req.messages
        if not msgs:
            raise APIError(400, "messages must hold at least one message", "messages", "invalid_value")
        if len(msgs) > cfg.max_messages:
            raise APIError(400, f"at most {cfg.max_messages} messages, got {len(msgs)}", "messages", "invalid_value")
        system, convo, total = [], [], 0
        for i, m in enumerate(msgs):
            if m.content is None or isinstance(m.content, str):
                text = m.content or ""
            else:
                if any(p.type != "text" or p.text is None for p in m.content):
                    raise APIError(400, f"messages.{i}.content: only text parts are supported", f"messages.{i}.content")
                text = "".join(p.text for p in m.content)
            if len(text) > cfg.max_message_chars:
                raise APIError(400, f"messages.{i}: at most {cfg.max_message_chars} characters per message, got "
                               f"{len(text)}", f"messages.{i}.content", "invalid_value")
            total += len(text)
            if m.role in ("system", "developer"):
                if convo:
                    raise APIError(400, f"messages.{i}: a {m.role} message must come before the conversation",
                                   f"messages.{i}.role")
                system.append(text)
            else:
                convo.append({"role": m.role, "content": text})
        if total > cfg.max_total_chars:
            raise APIError(400, f"at most {cfg.max_total_chars} characters in all messages, got {total}",
                           "messages", "invalid_value")
        if not convo or convo[-1]["role"] != "user":
            raise APIError(400, "the last message must come from the user", "messages", "invalid_value")
        if system:  # the model was never trained with a system turn: it becomes the start of the first message
            convo[0] = {"role": "user", "content": "\n\n".join(system + [convo[0]["content"]])}
        try:
            return tok.render_for_completion(convo)
        except Exception as e:  # noqa: BLE001 - TokenizerError: roles do not alternate, ...
            raise APIError(400, f"messages: {e}", "messages", "invalid_value") from None

    def text_prompt(req: CompletionRequest) -> list[int]:
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(400, "prompt: one prompt per request (a string or a list of one string)", "prompt")
            prompt = prompt[0]
        if len(prompt) > cfg.max_total_chars:
            raise APIError(400, f"prompt: at most {cfg.max_total_chars} characters, got {len(prompt)}", "prompt")
        return tok.encode(prompt, prepend=tok.bos_id)

    def start(ids: list[int], s: dict) -> Job:
        job = Job(lambda engine, job: run_generation(engine, job, ids, s["n"], s["max_tokens"], s["temperature"],
                                                     s["top_k"], s["top_p"], s["seed"], s["stops"],
                                                     cfg.token_delay_s, s["logprobs"]),
                  asyncio.get_running_loop())
        try:
            return pool.submit(job)
        except QueueFull:
            raise APIError(503, "the server is busy (its queue is full); retry shortly", None, "server_busy",
                           "server_error", {"Retry-After": str(cfg.retry_after_s)}) from None

    async def events(job: Job, request: Request, poll: bool):
        """The job's events as they come; the job is cancelled when the consumer stops early. With `poll`
        (a whole answer, no stream), the client's connection is checked every 0.25 s and a client that
        went away cancels the job; a stream needs no polling: Starlette cancels a streaming response
        whose client disconnects, which closes this generator."""
        last = time.monotonic()
        try:
            while True:
                try:
                    event = await asyncio.wait_for(job.events.get(), timeout=0.25)
                except asyncio.TimeoutError:
                    event = None
                if poll and time.monotonic() - last >= 0.25:
                    last = time.monotonic()
                    if await request.is_disconnected():
                        return
                if event is None:
                    continue
                if event[0] == "end":
                    return
                yield event
        finally:
            job.cancel.set()

    async def respond(request: Request, req: Sampling, ids: list[int], kind: str):
        s = sampling(req, len(ids))
        job = start(ids, s)
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        now = int(time.time())
        obj = "chat.completion" if kind == "chat" else "text_completion"
        n = s["n"]

        def usage(completion: int) -> dict:
            return {"prompt_tokens": len(ids), "completion_tokens": completion, "total_tokens": len(ids) + completion}

        if not req.stream:
            texts, reasons, counts, lps = [""] * n, [None] * n, [0] * n, [None] * n
            async for ev in events(job, request, poll=True):
                if ev[0] == "logprobs":
                    lps[ev[1]] = format_logprobs(tok, ev[2], kind)
                elif ev[0] == "delta":
                    texts[ev[1]] += ev[2]
                elif ev[0] == "finish":
                    reasons[ev[1]], counts[ev[1]] = ev[2], ev[3]
                elif ev[0] == "error":
                    raise APIError(500, "generation failed", type="server_error")
            if kind == "chat":
                choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]}, "logprobs": lps[i],
                            "finish_reason": reasons[i] or "stop"} for i in range(n)]
            else:
                choices = [{"index": i, "text": texts[i], "logprobs": lps[i], "finish_reason": reasons[i] or "stop"}
                           for i in range(n)]
            return {"id": rid, "object": obj, "created": now, "model": model_id, "system_fingerprint": None,
                    "choices": choices, "usage": usage(sum(counts))}

        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        chunk_obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(i: int, text: str | None, reason: str | None, first: bool = False) -> str:
            if kind == "chat":
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text is not None else {})
                choice = {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}
            else:
                choice = {"index": i, "text": text or "", "logprobs": None, "finish_reason": reason}
            body = {"id": rid, "object": chunk_obj, "created": now, "model": model_id, "system_fingerprint": None,
                    "choices": [choice]}
            if include_usage:
                body["usage"] = None
            return f"data: {json.dumps(body)}\n\n"

        async def stream():
            completion = 0
            if kind == "chat":
                for i in range(n):
                    yield chunk(i, None, None, first=True)
            async for ev in events(job, request, poll=False):
                if ev[0] == "delta":
                    yield chunk(ev[1], ev[2], None)
                elif ev[0] == "finish":
                    completion += ev[3]
                    yield chunk(ev[1], None, ev[2])
                elif ev[0] == "error":
                    yield f"data: {json.dumps(error_body('generation failed', 'server_error'))}\n\n"
                    break
            if include_usage:
                body = {"id": rid, "object": chunk_obj, "created": now, "model": model_id, "system_fingerprint": None,
                        "choices": [], "usage": usage(completion)}
                yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        if not chat:
            raise APIError(400, f"{model_id!r} is a base model (pretrained, not fine-tuned for chat): it continues "
                           f"text. Use POST /v1/completions with a prompt, or serve a chat model (after sft).",
                           "model", "not_a_chat_model")
        return await respond(request, req, chat_prompt(req), "chat")

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        return await respond(request, req, text_prompt(req), "text")

    return app


class BackgroundServer:
    """Serve `app` with uvicorn in a daemon thread on a free 127.0.0.1 port (tests, benchmarks, notebooks):

        with BackgroundServer(create_app(...)) as srv:
            OpenAI(base_url=srv.url + "/v1", api_key="unused").chat.completions.create(...)
    """

    def __init__(self, app, startup_timeout: float = 30.0):
        import socket

        import uvicorn

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout = startup_timeout

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.time() + self.startup_timeout
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
