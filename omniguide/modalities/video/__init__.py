"""Video: denoisers with per-frame noise levels and history guidance, multi-condition and
spatiotemporal guidance, long rollouts, diffusers video pipelines through the adapter, and
MP4/GIF outputs. Importing this package registers the pipeline families, guiders and scales."""

from . import cogvideox, history, ltx, multicond, scales, stg, svd, wan  # noqa: F401  (each registers what it defines)
