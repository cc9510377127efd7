"""Pure scheduler: reconcile -> feasibility -> ranking -> plan (driver.py runs the pass; see docs/scheduler.md)."""
from raftctl.scheduler.driver import schedule
from raftctl.scheduler.feasibility import explain
from raftctl.scheduler.plan import NewPlacement, Plan
from raftctl.scheduler.reconcile import Reconciled, reconcile

__all__ = ["NewPlacement", "Plan", "Reconciled", "explain", "reconcile", "schedule"]
