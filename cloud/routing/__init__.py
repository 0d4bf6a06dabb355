"""The cloud router: policy, quarantine, exactly-once hand-off, housekeeping (entry point: ``cloud.router``)."""
