"""``itm serve``: a small web app over ``itm.Matcher`` (FastAPI on uvicorn).

A page (``static/index.html``) to drop an image, type captions and see p(match) as bars, with an
image search over the folder given by ``--images``; and the JSON API behind it, documented at
``/docs`` (OpenAPI). Requests run in FastAPI's thread pool; the Matcher decodes at most two images
at a time and serialises model calls. Clients only ever send bytes and text: no request names a
server path.

Limits, each a clear 4xx rather than work: the request body (``--max-upload-mb``, 413), the time to
receive it (``--read-timeout``, 408), the image's pixel count, read from its header before decoding
(``--max-image-pixels``, 400), the captions of a request (at most ``MAX_CAPTIONS``, 400), and of those the
ones the sentence encoder must embed afresh (at most ``MAX_NEW_CAPTIONS``, 413: the costly part; /api/explain,
which embeds its one caption once per word, takes at most ``MAX_EXPLAIN_WORDS`` words, 413); each
caption and query is checked by the ``Matcher``, whose ``CaptionError`` is a 400, as is text that is not
valid Unicode or a number that is not finite. Past ``--max-connections`` open connections, 503 at once.
Matching and search are the ``Matcher``'s own: this module only speaks HTTP. No answer carries a server
path (``public``).

``--images DIR`` is indexed once, at start: a photo added later is not searched until the server starts
again; one removed or changed since is answered 404; only a file that still resolves inside DIR and is the
file indexed (same device, inode, size and modification time) is ever served.
"""

import asyncio
import json
import math
import mimetypes
import os
import re
import stat
from pathlib import Path

from ..captions import check_captions, visible
from ..defaults import (DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_UPLOAD_MB, DEFAULT_READ_TIMEOUT,
                        MAX_CAPTION_CHARS, MAX_CAPTIONS, MAX_UPLOAD_MB)
from ..errors import ConfigError, DataError, ModelOutputError
from ..log import logger, progress
from ..version import __version__
from .matcher import Matcher, cache_root, identity

STATIC = Path(__file__).parent / "static"
MAX_NEW_CAPTIONS = 8  # captions a request may send to the sentence encoder (not in the run's data folder)
MAX_EXPLAIN_WORDS = 32  # /api/explain embeds its caption once per word (each word left out): the bound of that cost
SERVE_HINT = "pip install '.[serve]'  (fastapi, uvicorn, python-multipart)"


class BodyLimit:
    """ASGI middleware for the request body: 413 for one over ``max_bytes``, by its Content-Length or, when
    streamed without one, as soon as the bytes received pass the cap (never buffered beyond it); 408 for one
    not received whole within ``read_timeout`` seconds of the request's start (a client sending a byte a
    second, or a Content-Length larger than what it sends, holds a coroutine and a connection that long,
    never a worker thread: the handlers run only on a whole body)."""

    def __init__(self, app, max_bytes: int, read_timeout: float = DEFAULT_READ_TIMEOUT):
        self.app, self.max_bytes, self.read_timeout = app, max_bytes, read_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(send, 413, f"request body over the upload limit of {self.max_bytes:,} bytes")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout
        received, started, refusal = 0, False, None

        class Refused(Exception):
            pass

        async def limited_receive():
            nonlocal received, refusal
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                refusal = (408, f"request body not received within {self.read_timeout:g} s")
                raise Refused from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refusal = (413, f"request body over the upload limit of {self.max_bytes:,} bytes")
                    raise Refused
            return message

        async def guarded_send(message):
            # the app may turn Refused into its own error response (FastAPI answers 400 for a body it could
            # not parse): once the body is refused, whatever it answers becomes the 413 or 408.
            nonlocal started
            if message["type"] == "http.response.start":
                if started:
                    return
                started = True
                if refusal:
                    return await self._refuse(send, *refusal)
            elif refusal:
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Refused:
            if not started:
                started = True
                await self._refuse(send, *refusal)

    async def _refuse(self, send, status: int, detail: str):
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def check_limits(port: int, max_upload_mb: float, max_image_pixels: int, read_timeout: float = DEFAULT_READ_TIMEOUT,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS) -> int:
    """The server's limits, checked at start-up; returns the upload cap in bytes."""
    if not math.isfinite(read_timeout) or not 0 < read_timeout <= 3600:
        raise ConfigError(f"--read-timeout must be a number of seconds in (0, 3600], not {read_timeout}")
    if max_connections < 1:
        raise ConfigError(f"--max-connections must be at least 1, not {max_connections}")
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port must lie in 1..65535, not {port}")
    if not math.isfinite(max_upload_mb) or not 0 < max_upload_mb <= MAX_UPLOAD_MB:
        raise ConfigError(f"--max-upload-mb must be a number in (0, {MAX_UPLOAD_MB:g}], not {max_upload_mb}")
    max_bytes = int(max_upload_mb * 2**20)
    if max_bytes < 1024:
        raise ConfigError(f"--max-upload-mb {max_upload_mb} allows {max_bytes} bytes, less than 1 KiB: no image fits")
    if max_image_pixels < 1:
        raise ConfigError(f"--max-image-pixels must be at least 1, not {max_image_pixels}")
    return max_bytes


def _fastapi():
    """FastAPI and pydantic, from the serve extra (imported only when a server is made)."""
    try:
        import fastapi.responses  # binds fastapi too
        import pydantic
    except ImportError as e:
        raise DataError(f"'itm serve' needs {e.name}: {SERVE_HINT}") from None
    return fastapi, fastapi.responses, pydantic


def _api_models(pydantic):
    """The JSON API's request and response bodies (what /docs shows)."""
    BaseModel, Field = pydantic.BaseModel, pydantic.Field

    class MatchResult(BaseModel):
        caption: str
        p_match: float = Field(description="the model's probability that the caption fits the image")
        match: bool = Field(description="p_match > threshold")

    def notes_field():
        return Field(default_factory=list, description="what a reader of this answer should know, e.g. how many of "
                                                       "its captions were not in the run's data folder")

    class MatchResponse(BaseModel):
        results: list[MatchResult]
        threshold: float
        threshold_source: str
        notes: list[str] = notes_field()

    class SearchRequest(BaseModel):
        query: str = Field(min_length=1, description=f"a caption, at most {MAX_CAPTION_CHARS:,} characters")
        top: int = Field(default=8, ge=1, le=100)

    class SearchResult(BaseModel):
        image: str = Field(description="the image's path inside the served folder")
        url: str
        p_match: float
        match: bool

    class SearchResponse(BaseModel):
        results: list[SearchResult]
        threshold: float
        images: int
        notes: list[str] = notes_field()

    class WordScore(BaseModel):
        word: str
        score: float = Field(description="p(match) with the word minus p(match) without it")

    class ExplainResponse(BaseModel):
        caption: str
        p_match: float
        match: bool
        threshold: float
        threshold_source: str
        grid: list[list[float]] = Field(description="Grad-CAM of p(match) over the image, rows top to bottom, each "
                                                    "value in [0, 1]")
        grid_shape: list[int]
        feature_map: str = Field(description="the image tower's layer whose map it is")
        words: list[WordScore] | None = Field(description="null when the server has no sentence encoder")
        notes: list[str] = notes_field()

    return MatchResponse, SearchRequest, SearchResponse, ExplainResponse


def create_app(matcher, images_dir=None, max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20),
               max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, read_timeout: float = DEFAULT_READ_TIMEOUT):
    """The ASGI app for ``matcher``: the page, /healthz, /api/match and, with ``images_dir``, /api/search
    over that folder; wrapped in the body limits."""
    fastapi, responses, pydantic = _fastapi()
    matcher.max_pixels = max_image_pixels
    app = fastapi.FastAPI(title="itm", version=__version__,
                          description="Image-text matching: does this caption fit this image? p(match) from a "
                                      "trained run.")
    models = _api_models(pydantic)

    hidden = _server_paths(matcher, images_dir)

    @app.exception_handler(DataError)
    async def data_error(request, exc):  # unreadable image, caption that cannot be embedded, ...
        return responses.JSONResponse({"detail": public(str(exc), hidden)}, status_code=400)

    @app.exception_handler(ModelOutputError)
    async def model_error(request, exc):  # the run's fault, not the client's: a 500 that says so, never a null
        logger.warning(f"error: {exc}")
        return responses.JSONResponse({"detail": public(str(exc), hidden)}, status_code=500)

    @app.exception_handler(fastapi.exceptions.RequestValidationError)
    async def invalid(request, exc):
        """FastAPI's 422, without echoing the input (which may be NaN or a lone surrogate, neither of which
        JSON can carry back: the default handler failed with a 500); a non-finite number or text that is not
        valid Unicode is a 400."""
        errors = exc.errors()
        if any(_not_finite(e.get("input")) for e in errors):
            return responses.JSONResponse({"detail": "numbers in a request must be finite (NaN and Infinity are "
                                                     "not numbers JSON allows)"}, status_code=400)
        if any(e.get("type") == "string_unicode" for e in errors):
            return responses.JSONResponse({"detail": "text in a request must be valid Unicode (it holds a lone "
                                                     "surrogate such as \\ud800)"}, status_code=400)
        detail = [{"loc": [_text(x) for x in e.get("loc", ())], "msg": _text(e.get("msg", "")),
                   "type": _text(e.get("type", ""))} for e in errors]
        return responses.JSONResponse({"detail": detail}, status_code=422)

    @app.get("/", response_class=responses.HTMLResponse, include_in_schema=False)
    def page():
        return responses.HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/healthz")
    def healthz():
        """Liveness and what this server holds."""
        return {"status": "ok", "run": matcher.run_dir.name if matcher.run_dir else None,
                "image_size": matcher.image_size, "threshold": matcher.threshold,
                "threshold_source": matcher.threshold_source, "search": images_dir is not None,
                "max_upload_bytes": max_upload_bytes, "max_image_pixels": max_image_pixels,
                "max_captions": MAX_CAPTIONS, "max_caption_chars": MAX_CAPTION_CHARS,
                "max_new_captions": MAX_NEW_CAPTIONS, "max_explain_words": MAX_EXPLAIN_WORDS,
                "notes": matcher.run_notes}  # what a reader of any score should know (e.g. demo training data)

    _add_match_api(app, fastapi, matcher, models[0], models[3])
    _add_search_api(app, fastapi, responses, matcher, images_dir, *models[1:3])
    return BodyLimit(app, max_upload_bytes, read_timeout)


def _add_match_api(app, fastapi, matcher, MatchResponse, ExplainResponse) -> None:
    File, Form, HTTPException, UploadFile = fastapi.File, fastapi.Form, fastapi.HTTPException, fastapi.UploadFile

    @app.post("/api/match", response_model=MatchResponse)
    def match(image: UploadFile | None = File(None, description="the image file (JPEG, PNG, GIF, BMP, WebP, ...)"),  # noqa: B008
              caption: list[str] = Form(default_factory=list,  # noqa: B008 (FastAPI's way of declaring a form field)
                                        description="one or more captions (repeat the field)")):
        """p(match) of one uploaded image with each caption."""
        if image is None:
            raise HTTPException(400, "no image: send the image file in the multipart field 'image'")
        captions = [c.strip() for c in caption if visible(c)]
        if not captions:
            raise HTTPException(400, "no caption: send one or more non-empty 'caption' fields")
        if len(captions) > MAX_CAPTIONS:
            raise HTTPException(400, f"too many captions: {len(captions)}, at most {MAX_CAPTIONS} per request")
        check_captions(captions)  # length and text, before the cost is counted
        check_cost(matcher, captions)
        data = image.file.read()
        if not data:
            raise HTTPException(400, "the uploaded image file is empty")
        p = matcher.score(data, captions)[0]
        return {"results": [{"caption": c, "p_match": float(q), "match": matcher.is_match(q)}
                            for c, q in zip(captions, p)],
                "threshold": matcher.threshold, "threshold_source": matcher.threshold_source,
                "notes": matcher.caption_notes(captions)}

    @app.post("/api/explain", response_model=ExplainResponse)
    def explain(image: UploadFile | None = File(None, description="the image file (JPEG, PNG, GIF, BMP, WebP, ...)"),  # noqa: B008
                caption: str = Form("", description="one caption")):  # noqa: B008
        """Why the uploaded image and the caption match or not: p(match), a Grad-CAM map over the image and each
        word's score (p(match) minus p(match) without the word), as ``itm explain --json``."""
        if image is None:
            raise HTTPException(400, "no image: send the image file in the multipart field 'image'")
        if not visible(caption):
            raise HTTPException(400, "no caption: send one non-empty 'caption' field")
        caption = caption.strip()
        check_captions([caption])
        words = len(caption.split())
        if words > MAX_EXPLAIN_WORDS:
            raise HTTPException(413, f"a caption of {words} words: explain scores each word by embedding the caption "
                                     f"without it, for at most {MAX_EXPLAIN_WORDS} words per request")
        check_cost(matcher, [caption])
        data = image.file.read()
        if not data:
            raise HTTPException(400, "the uploaded image file is empty")
        e = matcher.explain(data, caption)
        return {**e.to_json(), "threshold_source": matcher.threshold_source,
                "notes": matcher.caption_notes([caption]) + [n for n in e.notes if n not in matcher.run_notes]}

    def check_cost(matcher, captions):
        new = matcher.to_embed(captions)
        if new > MAX_NEW_CAPTIONS:
            raise HTTPException(413, f"{new} captions not in the run's data folder would need embedding; at most "
                                     f"{MAX_NEW_CAPTIONS} per request (send the rest in further requests)")


def _add_search_api(app, fastapi, responses, matcher, images_dir, SearchRequest, SearchResponse) -> None:
    HTTPException = fastapi.HTTPException
    # The folder is indexed (image features cached on disk) once, at start: every search is then one
    # caption encoding plus the small head over the cached features.
    folder = matcher.index_folder(images_dir, log=progress) if images_dir is not None else None

    def index():
        if folder is None:
            raise HTTPException(404, "image search is off: start the server with --images DIR")
        return folder

    @app.post("/api/search", response_model=SearchResponse)
    def search(request: SearchRequest):
        """The images of the served folder that best fit a caption, best first."""
        idx = index()
        root = Path(images_dir).resolve()
        query = request.query.strip()
        hits = matcher.search_index(idx, query, request.top)  # a CaptionError is a 400
        results = [{"image": idx.paths[i].relative_to(root).as_posix(), "url": f"/api/images/{i}", "p_match": p,
                    "match": matcher.is_match(p)} for i, p in hits]
        return {"results": results, "threshold": matcher.threshold, "images": len(idx.paths),
                "notes": matcher.caption_notes([query])}

    @app.get("/api/images/{number}", include_in_schema=True)
    def image_file(number: int):
        """An image of the served folder by its number in the index (never by a client-given path): 404 for
        a file removed since, one that now resolves outside the folder, or one that is no longer the file
        indexed (another size or modification time)."""
        idx = index()
        if not 0 <= number < len(idx.paths):
            raise HTTPException(404, "no such image")
        data = indexed_file(idx.paths[number], Path(images_dir).resolve(), idx.identities[number])
        if data is None:
            raise HTTPException(404, "that image is no longer the one indexed (removed or changed since the "
                                     "server started)")
        return responses.Response(data, media_type=_media_type(idx.paths[number]))


def indexed_file(path: Path, root: Path, indexed: tuple | None) -> bytes | None:
    """The bytes of ``path`` if it still resolves inside ``root`` to the regular file indexed (``indexed``:
    ``matcher.identity``, device, inode, modification time and size), read through the one descriptor that
    was checked; else None."""
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(root):
        return None
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:  # gone, a symlink swapped in since realpath, a fifo, no permission
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or identity(st) != indexed:
            return None
        return f.read(st.st_size + 1)[: st.st_size]


def _media_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _server_paths(matcher, images_dir) -> list[tuple[str, str]]:
    """(path, what to call it) for each folder of this server an error message might name, longest first."""
    named = [(matcher.captions.source, "the run's data folder"), (matcher.run_dir, "the run folder"),
             (images_dir, "the served folder"), (cache_root(matcher), "the server's cache"),
             (Path.home(), "~")]
    out = {}
    for path, name in named:
        if path:
            for p in {str(path), str(Path(path).resolve()), str(Path(path).absolute())}:
                out.setdefault(p.rstrip("/") or "/", name)
    return sorted(((p, n) for p, n in out.items() if len(p) > 1), key=lambda pn: -len(pn[0]))


ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/(?:[\w.@+~-]+/)+[\w.@+~-]*")


def public(message: str, paths: list[tuple[str, str]]) -> str:
    """``message`` without server paths: this server's folders by name, any other absolute path as
    '<server path>'."""
    for path, name in paths:
        message = message.replace(path, name)
    return ABSOLUTE_PATH.sub("<server path>", message)


def _not_finite(value) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _text(value) -> str:
    """``value`` as text JSON can carry (a lone surrogate becomes U+FFFD)."""
    return str(value).encode("utf-8", "replace").decode("utf-8")


def serve(run, data_dir=None, images=None, host: str = "127.0.0.1", port: int = 8000,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
          log_level: str = "warning", read_timeout: float = DEFAULT_READ_TIMEOUT,
          max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
    """Load the run and serve it until interrupted; every limit is checked before anything loads."""
    max_bytes = check_limits(port, max_upload_mb, max_image_pixels, read_timeout, max_connections)
    try:
        import uvicorn
    except ImportError:
        raise DataError(f"'itm serve' needs uvicorn: {SERVE_HINT}") from None
    if images and not Path(images).is_dir():
        raise DataError(f"--images {images} is not a folder")
    matcher = Matcher.load(run, data_dir=data_dir)
    app = create_app(matcher, images, max_bytes, max_image_pixels, read_timeout)
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(f"warning: serving on {host}, reachable from other machines; the app has no authentication")
    for note in matcher.run_notes:
        logger.warning(f"note: {note}")
    print(f"itm serve: http://{host}:{port}/  (threshold: {matcher.threshold_source})", flush=True)
    # limit_concurrency: past it uvicorn answers 503 at once; timeout_keep_alive: an idle connection is closed
    uvicorn.run(app, host=host, port=port, log_level=log_level, limit_concurrency=max_connections,
                timeout_keep_alive=5, backlog=2048)
