"""Labelers: the `Labeler` interface, `label_many`, and the simulated (gold-scorer) labeler."""

from rlhf.labelers.base import Labeler, label_many
from rlhf.labelers.simulated import SimulatedLabeler, gold_preference

__all__ = ["Labeler", "SimulatedLabeler", "gold_preference", "label_many"]
