"""The router: berth's data plane. `http://<router>/<project>/<slug>[/<spec_version>]/...` is proxied to
a ready replica of the deployment, balanced as its spec says; the routing table follows bus events."""

from services.router.app import RouterHandle, start_router

__all__ = ["RouterHandle", "start_router"]
