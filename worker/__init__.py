"""RQ jobs that execute one step each and report back to the engine.

- :mod:`worker.jobs`      ``execute_step``, the job the engine enqueues for action and http steps
- :mod:`worker.process`   ``run_worker``: a forking RQ worker plus timers and the reaper
- :mod:`worker.reaper`    hands steps of dead workers and vanished jobs back to the engine
- :mod:`worker.action_step`, :mod:`worker.http_step`  what each step type does
- :mod:`worker.actions`   built-in actions; :mod:`worker.settings` tuning (``SWITCHBOARD_*``)
"""
