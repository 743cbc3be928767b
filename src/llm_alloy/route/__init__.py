"""Query-level routing: pick one arm (model + prompt style) per query from its embedding.

Five router kinds (knn, mlp, svm, mf, graph) regress each arm's scenario reward and route by argmax,
cheapest arm on ties. Routers save as router.safetensors + router.json and load with `load_router`.
Torch and sklearn load only when a router that needs them is built.
"""

from __future__ import annotations

from llm_alloy.route.base import ROUTER_KINDS, Router, RouterError, argmax_cheapest, load_router, make_router

__all__ = ["ROUTER_KINDS", "Router", "RouterError", "argmax_cheapest", "load_router", "make_router"]
