"""The scheduler's former single module, kept so its importers keep working: every public name it had,
re-exported from the modules it was split into (reconcile, machines, constraints, feasibility, ranking, place,
preemption, driver). New code imports from those modules."""
from __future__ import annotations

from raftctl.scheduler.constraints import (MATCH_CACHE, MATCH_CACHE_TEXT, MAX_REGEX_LENGTH, REGEX_CACHE, REGEX_MAX_MEM,
                                           RegexError, attr_value, compile_regex, constraint_ok, regex_search)
from raftctl.scheduler.driver import schedule
from raftctl.scheduler.feasibility import (FILTERS, Filter, allocate_ports, explain, f_constraints, f_ports, f_resources,
                                           f_schedulable)
from raftctl.scheduler.machines import MachineView, build_views
from raftctl.scheduler.place import place_job
from raftctl.scheduler.plan import RESOURCES, Check, NewPlacement, Plan, no_check
from raftctl.scheduler.preemption import preempt_for
from raftctl.scheduler.ranking import WEIGHTS, score_anti_affinity, score_binpack, score_spread, tie
from raftctl.scheduler.reconcile import Reconciled, reconcile

__all__ = ["FILTERS", "MATCH_CACHE", "MATCH_CACHE_TEXT", "MAX_REGEX_LENGTH", "REGEX_CACHE", "REGEX_MAX_MEM",
           "RESOURCES", "WEIGHTS", "Check", "Filter", "MachineView", "NewPlacement", "Plan", "Reconciled", "RegexError",
           "allocate_ports", "attr_value", "build_views", "compile_regex", "constraint_ok", "explain",
           "f_constraints", "f_ports", "f_resources", "f_schedulable", "no_check",
           "place_job", "preempt_for", "reconcile", "regex_search", "schedule", "score_anti_affinity",
           "score_binpack", "score_spread", "tie"]
