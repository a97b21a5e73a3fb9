"""`itm serve` under slow, bursty and malformed clients (real sockets on loopback, bounded loops), and
`itm predict` / `itm rank` with inputs a careless user gives: each a 4xx or a one-line error, never a hang
or a traceback."""
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import NO_SERVE_EXTRA, itm_cli

from serving_helpers import Server

pytest.importorskip("fastapi", reason=NO_SERVE_EXTRA)
IMAGES = "flickr8k-resised"
READ_TIMEOUT = 3
MAX_CONNECTIONS = 40


@pytest.fixture(scope="module")
def run(faithful_run):
    return faithful_run


@pytest.fixture(scope="module")
def live(run, tiny_data_master, tmp_path_factory):
    """A server of its own, with a short read timeout and few connections, so that both are reached."""
    server = Server(run, tiny_data_master / IMAGES, tmp_path_factory.mktemp("hostile-cache"),
                    extra=("--read-timeout", str(READ_TIMEOUT), "--max-connections", str(MAX_CONNECTIONS)))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pair(tiny_data_master):
    image, caption, _ = (tiny_data_master / "flickr8k.DevImages.txt").read_text().splitlines()[0].split("\t")
    return (tiny_data_master / IMAGES / image).read_bytes(), caption


def match_request(live, pair) -> tuple[bytes, bytes]:
    """The head and body of a well-formed /api/match request, to send by hand."""
    jpeg, caption = pair
    req = httpx.Request("POST", live.url + "/api/match", files={"image": ("x.jpg", jpeg, "image/jpeg")},
                        data={"caption": [caption]})
    body = req.read()
    head = (f"POST /api/match HTTP/1.1\r\nHost: x\r\nContent-Type: {req.headers['content-type']}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head, body


def raw(live, data: bytes, timeout: float = 30) -> bytes:
    """Send ``data`` on a fresh connection and return the status line of the answer."""
    with socket.create_connection(("127.0.0.1", live.port), timeout=timeout) as s:
        s.sendall(data)
        answer = b""
        while b"\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n")[0]


def post(live, pair, client=httpx, timeout=60):
    jpeg, caption = pair
    return client.post(live.url + "/api/match", files={"image": ("x.jpg", jpeg, "image/jpeg")},
                       data={"caption": [caption]}, timeout=timeout)


def server_log(live) -> str:
    live.log.flush()
    live.log.seek(0)
    return live.log.read()


def test_a_client_sending_a_byte_a_second_delays_no_one_and_gets_408(live, pair):
    assert post(live, pair).status_code == 200  # warm: the model's first call traces it
    head, body = match_request(live, pair)
    answer = {}

    def slow_client():
        with socket.create_connection(("127.0.0.1", live.port), timeout=60) as s:
            s.sendall(head)
            s.settimeout(1)
            for i in range(4 * READ_TIMEOUT):  # bounded: 12 bytes at most, far short of the body
                try:
                    s.sendall(body[i:i + 1])
                    answer["status"] = s.recv(4096).split(b"\r\n")[0]
                    return
                except TimeoutError:
                    continue  # nothing yet: one more byte, a second later
                except OSError:
                    return

    slow = threading.Thread(target=slow_client)
    slow.start()
    others = [post(live, pair).status_code for _ in range(5)]
    assert "status" not in answer, answer  # the slow client was still sending while the others were answered
    slow.join(60)
    assert others == [200] * 5
    assert answer.get("status") == b"HTTP/1.1 408 Request Timeout", answer
    assert post(live, pair).status_code == 200


def test_200_concurrent_connections_are_each_answered_or_refused_with_503(live, pair):
    def one(_):
        try:
            with httpx.Client() as client:  # a connection of its own
                return post(live, pair, client, timeout=120).status_code
        except httpx.HTTPError as e:
            return type(e).__name__

    with ThreadPoolExecutor(200) as pool:
        statuses = list(pool.map(one, range(200)))
    assert set(statuses) <= {200, 503}, statuses  # none hung (120 s client timeout), none failed otherwise
    assert 200 in statuses
    assert httpx.get(live.url + "/healthz").status_code == 200


def test_malformed_requests_each_get_a_4xx_and_no_traceback(live, pair):
    head, body = match_request(live, pair)
    deep = b'{"query": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    multipart = b"Content-Type: multipart/form-data; boundary=zz\r\n"
    cases = {
        "malformed multipart": (b"POST /api/match HTTP/1.1\r\nHost: x\r\n" + multipart
                                + b"Content-Length: 20\r\n\r\n--zz\r\ngarbage\r\n\r\n\r\n", 400),
        "multipart without its boundary": (b"POST /api/match HTTP/1.1\r\nHost: x\r\n"
                                           b"Content-Type: multipart/form-data\r\nContent-Length: 4\r\n\r\nabcd", 400),
        "Content-Length larger than the body": (head.replace(f"Content-Length: {len(body)}".encode(),
                                                             f"Content-Length: {len(body) + 500}".encode())
                                                + body, 408),
        "JSON nested 100,000 deep": (b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                     + f"Content-Length: {len(deep)}\r\n\r\n".encode() + deep, 400),
        "invalid JSON": (b"POST /api/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 5\r\n\r\n{{{{{", 422),
    }
    for path in ("/static/../../etc/passwd", "/static/..%2F..%2Fetc%2Fpasswd", "/static/%2e%2e/%2e%2e/etc/passwd",
                 "/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2fetc%2fpasswd", "/api/images/..%2F..%2Fetc%2Fpasswd"):
        cases[f"GET {path}"] = (f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(), (404, 422))
    for method in ("HEAD", "OPTIONS", "PUT", "DELETE", "PATCH"):
        for path in ("/api/match", "/api/search"):
            cases[f"{method} {path}"] = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                                         "Connection: close\r\n\r\n".encode(), 405)
    for name, (request, status) in cases.items():
        line = raw(live, request)
        code = int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else None
        assert code in (status if isinstance(status, tuple) else (status,)), (name, line)
    caption = pair[1]
    r = httpx.post(live.url + "/api/match", files={"image": ("x.jpg", b"%PDF-1.4 not an image at all", "image/jpeg")},
                   data={"caption": [caption]}, timeout=60)
    assert r.status_code == 400 and "not an image" in r.json()["detail"], r.text
    assert httpx.get(live.url + "/healthz").status_code == 200
    log = server_log(live)
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


def test_read_timeout_and_connections_are_checked_at_start_up(run):
    for option, message in ((["--read-timeout", "0"], "--read-timeout"), (["--max-connections", "0"], "--max-connections")):
        r = itm_cli("serve", "--run", run, *option)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


# ---------------------------------------------------------------- the command line

def _png(width, height, path):
    from PIL import Image

    Image.new("L", (width, height)).save(path, format="PNG", optimize=True)
    return path


@pytest.mark.slow
def test_predict_and_rank_with_careless_inputs_answer_in_one_line(run, pair, tiny_data_master, tmp_path):
    jpeg, caption = pair
    image = tmp_path / "good.jpg"
    image.write_bytes(jpeg)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "folder.jpg").mkdir()
    captions = (tiny_data_master / "flickr8k.TrainImages.txt").read_text().splitlines()
    known = sorted({line.split("\t")[1] for line in captions})
    many = [known[i % len(known)] for i in range(10_000)]
    (tmp_path / "many.txt").write_text("\n".join(many) + "\n")
    (tmp_path / "blank.txt").write_text("\n  \n")
    (tmp_path / "one.txt").write_text(caption + "\n")
    bad_images = {
        "0-byte image": (tmp_path / "empty.jpg", "is an empty file (0 bytes)"),
        "folder as image": (tmp_path / "folder.jpg", "Is a directory"),
        "30,000 x 30,000 PNG": (_png(30_000, 30_000, tmp_path / "huge.png"), "too large"),
        "URL": ("https://example.com/dog.jpg", "is a URL"),
    }
    cases = [(name, message, command[0], ["-m", "itm", command[0], "--run", str(run), "--image", str(path), *command[1:]])
             for name, (path, message) in bad_images.items()
             for command in (["predict", "--caption", caption], ["rank", "--captions", str(tmp_path / "one.txt")])]
    cases += [("empty caption", "error: give at least one caption", "predict",
               ["-m", "itm", "predict", "--run", str(run), "--image", str(image), "--caption", ""]),
              ("blank captions file", "holds no captions", "rank",
               ["-m", "itm", "rank", "--run", str(run), "--image", str(image), "--captions", str(tmp_path / "blank.txt")])]
    for (name, message, command, _), r in zip(cases, [itm_cli(*args[2:]) for *_, args in cases]):
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert r.returncode == 2 and len(errors) == 1 and message in errors[0], (name, command, r.stderr[-2000:])
        assert "Traceback" not in r.stderr
    # 10,000 captions: one answer line each from predict, the top ones from rank
    ranked = itm_cli("rank", "--run", run, "--image", image, "--captions", tmp_path / "many.txt", "--top", "3")
    r = itm_cli("predict", "--run", run, "--image", image, *[a for c in many for a in ("--caption", c)])
    assert ranked.returncode == 0, ranked.stderr[-2000:]
    assert len([x for x in ranked.stdout.splitlines() if "p(match)=" in x]) == 3
    assert r.returncode == 0, r.stderr[-2000:]
    assert len([x for x in r.stdout.splitlines() if x.startswith("Caption: ")]) == 10_000
