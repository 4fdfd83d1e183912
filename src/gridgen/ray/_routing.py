"""How Ray Serve's proxies and handles pick a gridgen replica for each request."""

from __future__ import annotations

import random

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

__all__ = ["LeastBusyRouter"]


class LeastBusyRouter(FIFOMixin, RequestRouter):
    """Power of two choices over every replica, wherever it runs.

    Ray Serve's default router first tries the replicas on the caller's own node and sends
    there as long as they have room. A gridgen replica runs one request at a time, so that
    queues requests behind the proxy's local replica while replicas on other nodes sit idle.
    This one draws two replicas from all of them and Ray sends the request to the one with
    fewer ongoing requests (among those with room), as its default router does otherwise.
    """

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]
