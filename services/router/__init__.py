"""The router: berth's data plane. `http://<router>/<project>/<slug>/...` (and `<slug>@<version-or-alias>`)
is proxied to a ready replica of the deployment, balanced as its spec says; the routing table applies
the scheduler's traffic assignments."""

from services.router.app import RouterHandle, start_router

__all__ = ["RouterHandle", "start_router"]
