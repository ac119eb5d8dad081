"""The routers of ``fastsam3d serve``, one module per area of the API.

Their paths are in :mod:`fastsam3d.server.routes`, what they share in :mod:`fastsam3d.server.deps`.
"""
