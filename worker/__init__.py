"""RQ jobs that execute one step each and report back to the engine."""
