"""The ``spotlight run`` configuration: a tree of typed sections and its loader.

``sections`` (run, trainer, planner) and ``pool`` (spot, prices, rewards, rollout) and ``tracking`` declare and
validate the fields; ``system`` is the tree and the component configs built from it (each
section builds its component's config itself, so nodes never copy fields by hand);
``build`` turns plain data into the dataclasses; ``loader`` reads files and ``--set``.
"""

from spotlight.config.checks import ConfigError
from spotlight.config.loader import apply_overrides, load_config, read_file
from spotlight.config.pool import PricesSection, RewardsSection, RolloutSection, SpotSection
from spotlight.config.sections import PlannerSection, RunSection, TrainerSection
from spotlight.config.system import SystemConfig
from spotlight.config.tracking import TrackingSection

__all__ = [
    "ConfigError",
    "PlannerSection",
    "PricesSection",
    "RewardsSection",
    "RolloutSection",
    "RunSection",
    "SpotSection",
    "SystemConfig",
    "TrackingSection",
    "TrainerSection",
    "apply_overrides",
    "load_config",
    "read_file",
]
