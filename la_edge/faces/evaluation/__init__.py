"""`la-edge eval`: principle adherence, fluency and personal-preference accuracy of Linear Alignment."""

from .checkers import CHECKERS, check, fluency
from .runner import EvalConfig, load_preferences, load_tasks, run_mc, run_principles

__all__ = ["CHECKERS", "EvalConfig", "check", "fluency", "load_preferences", "load_tasks", "run_mc",
           "run_principles"]
