"""A local stand-in for Novita's async text-to-image and Kling image-to-video APIs."""

from novita_simulator.config import SimulatorConfig
from novita_simulator.simulator import NovitaSimulator

__all__ = ["NovitaSimulator", "SimulatorConfig"]
