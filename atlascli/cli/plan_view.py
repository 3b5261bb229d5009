"""Showing plans: the one-line plan on stderr before long work, and the full plan of ``--dry-run``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from atlascli.cli.common import console, emit_json, err


class PlanSink:
    """The ``on_plan`` callback of library calls: prints the plan line on stderr and keeps the plan for ``--json``."""

    def __init__(self) -> None:
        self.plans: list[Any] = []

    def __call__(self, plan: Any) -> None:
        if not self.plans:  # nested calls (fit -> extract) re-plan their parts; the first plan says it all
            err.print(plan.line(), highlight=False, soft_wrap=True, markup=False)
        self.plans.append(plan)

    @property
    def json(self) -> dict[str, Any] | None:
        """The first plan as JSON (None when none was made)."""
        return self.plans[0].to_json() if self.plans else None


def dry_run(make_plan: Callable[[], Any], json_out: bool) -> None:
    """Check the inputs, print the plan (what is reused, the work left, time, disk) and return (exit 0)."""
    plan = make_plan()
    err.print(plan.line(), highlight=False, soft_wrap=True, markup=False)
    if json_out:
        emit_json({"dry_run": True, "plan": plan.to_json()})
        return
    console.print(f"dry run of {plan.command}: every input checked, nothing computed or written", highlight=False)
    console.print("reused: " + (", ".join(plan.reused) if plan.reused else "nothing"), highlight=False, soft_wrap=True)
    console.print("work left:" + ("" if plan.work else " none"), highlight=False)
    for step in plan.work:
        console.print(f"  - {step.text}", highlight=False, soft_wrap=True, markup=False)
