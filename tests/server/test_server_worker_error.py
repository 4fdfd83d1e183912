"""A worker failure is a 500 (or an error event) with the error's type and message; the service keeps serving."""

from __future__ import annotations

from helpers.server import LiveServer, stream_events


def test_a_rank_that_raises_is_a_500_and_the_next_request_succeeds(probe_server: LiveServer) -> None:
    with probe_server.client() as client:
        failed = client.post("/generate", json={"op": "raise", "on_rank": 1, "message": "bad prompt on purpose"})
        # rank 0 was left in a collective: the runner rebuilds the group, then serves again
        after = client.post("/generate", json={"op": "echo", "message": "still here"})
        ready = client.get("/ready")
    assert failed.status_code == 500
    body = failed.json()
    error = body["error"]
    assert error["type"] == "WorkerError"
    assert error["remote_type"] == "ValueError"
    assert error["rank"] == 1
    assert error["status"] == 500
    assert "bad prompt on purpose" in error["message"]
    assert "Traceback" not in error["message"]  # tracebacks go to the server log only
    assert body["detail"] == error["message"]
    assert after.status_code == 200
    assert after.json()["echo"] == "still here"
    assert ready.json()["ready"] is True


def test_a_worker_that_dies_is_a_500_and_the_group_comes_back(probe_server: LiveServer) -> None:
    with probe_server.client() as client:
        died = client.post("/generate", json={"op": "kill", "on_rank": 0})
        after = client.post("/generate", json={"op": "echo", "message": "respawned"})
    assert died.status_code == 500
    error = died.json()["error"]
    assert error["type"] == "WorkerDiedError"
    assert (error["rank"], error["signal"]) == (0, "SIGKILL")
    assert after.status_code == 200  # auto_restart respawned the group; the request waited for it
    assert after.json()["echo"] == "respawned"


def test_a_failure_while_streaming_is_an_error_event(probe_server: LiveServer) -> None:
    with probe_server.client() as client:
        events = stream_events(client, {"op": "raise", "on_rank": 0, "message": "stream failure"})
        after = stream_events(client, {"op": "echo", "items": 1, "on_rank": 0})
    assert [name for name, _ in events] == ["queued", "error"]
    error = events[1][1]
    assert (error["type"], error["remote_type"], error["rank"], error["status"]) == ("WorkerError", "ValueError", 0, 500)
    assert "stream failure" in error["message"]
    assert [name for name, _ in after] == ["queued", "progress", "result"]
    assert after[1][1] == {"i": 0, "rank": 0}
