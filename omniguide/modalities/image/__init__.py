"""Image pipeline families: Stable Diffusion 1.x/2.x, SDXL, SD3, Flux and PixArt-Σ. Importing this
package registers them with the pipeline adapter."""

from . import flux, pixart, sd, sd3, sdxl  # noqa: F401  (each registers its family)
