"""``burrow node``: GPU slots, one worker process per slot, each restarted alone when it dies."""

from .supervisor import ChildSpec, Supervisor, plan_slots, restart_delay, worker_specs

__all__ = ["ChildSpec", "Supervisor", "plan_slots", "restart_delay", "worker_specs"]
