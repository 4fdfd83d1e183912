"""Stream a generation from ``/stream`` with httpx and save every preview and the final grid.

    python examples/stream_client.py "a lighthouse at dawn" --url http://127.0.0.1:8000 \\
        --width 256 --height 256 --steps 8 --out previews/

Works against ``gridgen serve`` (named events: ``queued``, ``progress`` with
``preview_image``, ``result`` with ``grid``, or ``error``) and against the seed-style app in
``examples/seed_app_fastapi.py`` (unnamed ``data:`` events carrying ``{"image": {"url": ...}}``
in fal's shape, the last one being the result). Writes ``preview-001.jpg``, ``preview-002.jpg``,
... (or ``.png``, as the server encoded them) and ``result.png`` into ``--out``. Ctrl-C closes the connection, which cancels the request
on the server's workers.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

_EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """``(event, data)`` pairs from the lines of a ``text/event-stream`` body."""
    event, data = "message", list[str]()
    for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", list[str]()
            continue
        if line.startswith(":"):
            continue  # a comment (the server's keep-alive ping)
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if data:
        yield event, "\n".join(data)


def save_data_url(url: str, path_without_ext: Path) -> Path:
    """Write a ``data:image/...;base64,`` URL to ``path_without_ext`` + its extension."""
    header, _, payload = url.partition(",")
    mime = header.removeprefix("data:").split(";")[0]
    path = path_without_ext.with_suffix("." + _EXTENSIONS.get(mime, "bin"))
    path.write_bytes(base64.b64decode(payload))
    return path


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        return stream(args)
    except httpx.ConnectError:
        print(
            f"no server at {args.url}: start one first (gridgen serve --model tiny --device cpu) "
            "or pass --url",
            file=sys.stderr,
        )
        return 1


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prompt")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the service's base URL")
    parser.add_argument("--out", default="previews", help="folder for the previews and the result")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--steps", type=int, dest="num_inference_steps")
    parser.add_argument("--num-images", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--preview-every", type=int)
    return parser.parse_args(argv)


def stream(args: argparse.Namespace) -> int:
    """POST the request to ``/stream`` and report and save what comes back."""
    body: dict[str, Any] = {"prompt": args.prompt}
    for key in ("width", "height", "num_inference_steps", "num_images", "seed", "preview_every"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    previews = 0
    last_image: str | None = None
    timeout = httpx.Timeout(10.0, read=None)  # generation may take long between events
    with (
        httpx.Client(base_url=args.url, timeout=timeout) as client,
        client.stream("POST", "/stream", json=body, headers={"Accept": "text/event-stream"}) as response,
    ):
        if response.status_code != 200:
            response.read()
            print(f"HTTP {response.status_code}: {response.text}", file=sys.stderr)
            return 1
        for event, data in sse_events(response.iter_lines()):
            message = json.loads(data)
            elapsed = time.perf_counter() - started
            if event == "queued":
                print(f"{elapsed:6.2f}s queued, {message['position']} request(s) ahead")
            elif event == "progress":
                previews += 1
                note = f"{elapsed:6.2f}s step {message['step']}/{message['total_steps']}"
                if message.get("preview_image"):
                    note += f" -> {save_data_url(message['preview_image'], out / f'preview-{previews:03d}')}"
                print(note)
            elif event == "result":
                path = save_data_url(message["grid"], out / "result")
                print(f"{elapsed:6.2f}s result -> {path}; seeds {message['seeds']}; timings {message['timings']}")
                return 0
            elif event == "error":
                print(f"{elapsed:6.2f}s error: {message['type']}: {message['message']}", file=sys.stderr)
                return 1
            elif "image" in message:  # the seed app: unnamed events, the last is the result
                if last_image is not None:
                    previews += 1
                    path = save_data_url(last_image, out / f"preview-{previews:03d}")
                    print(f"{elapsed:6.2f}s preview -> {path}")
                image = message["image"]  # fal's shape: {"url", "content_type", "width", "height"}
                last_image = image["url"] if isinstance(image, dict) else image
            elif "error" in message:  # a failed stream's last event: {"error": {"type", "message", "rank"}}
                error = message["error"]
                text = f"{error['type']}: {error['message']}" if isinstance(error, dict) else error
                print(f"{elapsed:6.2f}s error: {text}", file=sys.stderr)
                return 1
    if last_image is not None:
        print(f"result -> {save_data_url(last_image, out / 'result')}")
        return 0
    print("the stream ended without a result", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
