"""POST /generate: the grid (and the images when asked) as data URLs, with seeds and timings."""

from __future__ import annotations

from helpers.server import SMALL, LiveServer, decode_data_url


def test_generate_returns_the_grid_seeds_and_timings(sdxl_server: LiveServer) -> None:
    with sdxl_server.client() as client:
        response = client.post("/generate", json={**SMALL, "seed": 41})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["seeds"] == [41, 42]  # num_images defaults to one per worker
    assert (body["num_images"], body["width"], body["height"]) == (2, 64, 64)
    assert body["images"] == []  # output defaults to "grid"
    grid = decode_data_url(body["grid"])
    assert grid.size == (128, 64)  # two 64x64 cells side by side
    assert grid.mode == "RGB"
    timings = body["timings"]
    assert set(timings) == {"setup", "denoise", "decode", "gather", "encode", "total"}
    assert timings["total"] >= timings["denoise"] > 0


def test_generate_returns_single_images_when_asked(sdxl_server: LiveServer) -> None:
    request = {**SMALL, "seed": 5, "num_images": 3, "output": "both", "image_format": "jpeg"}
    with sdxl_server.client() as client:
        body = client.post("/generate", json=request).json()
    assert body["seeds"] == [5, 6, 7]
    images = [decode_data_url(url, "image/jpeg") for url in body["images"]]
    assert [image.size for image in images] == [(64, 64)] * 3
    assert decode_data_url(body["grid"], "image/jpeg").size == (128, 128)  # 2 x 2 cells, one empty


def test_same_seed_same_grid(sdxl_server: LiveServer) -> None:
    with sdxl_server.client() as client:
        first = client.post("/generate", json={**SMALL, "seed": 9}).json()
        second = client.post("/generate", json={**SMALL, "seed": 9}).json()
        other = client.post("/generate", json={**SMALL, "seed": 10}).json()
    assert first["grid"] == second["grid"]
    assert first["grid"] != other["grid"]
