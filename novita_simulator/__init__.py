"""A local stand-in for Novita's text-to-image (async Stable Diffusion, synchronous Seedream 3.0),
Kling image-to-video and task-result APIs, with webhooks, media links and fault switches.

It has two personalities, the integration guide's Novita and the public reference's (see config).
"""

from novita_simulator.config import SimulatorConfig
from novita_simulator.simulator import NovitaSimulator

__all__ = ["NovitaSimulator", "SimulatorConfig"]
