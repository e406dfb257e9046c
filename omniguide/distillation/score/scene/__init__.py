"""The scene: a representation behind a small interface (a radiance grid for now), a pure-PyTorch
volume renderer and background, cameras with view-dependent prompts, and exports."""

from .cameras import VIEWS, Cameras, CameraSampler, ViewPrompts, orbit, turntable
from .render import RenderOutput, SolidBackground, box_interval, render
from .representation import RadianceGrid, Representation

__all__ = ["box_interval", "CameraSampler", "Cameras", "orbit", "RadianceGrid", "render", "RenderOutput",
           "Representation", "SolidBackground", "turntable", "ViewPrompts", "VIEWS"]
