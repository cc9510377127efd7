"""Pure scheduler: reconcile -> feasibility -> score -> plan (see pipeline.py)."""
from raftctl.scheduler.pipeline import NewPlacement, Plan, Reconciled, explain, reconcile, schedule

__all__ = ["NewPlacement", "Plan", "Reconciled", "explain", "reconcile", "schedule"]
