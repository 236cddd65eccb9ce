"""The worker side: the RQ Worker subclass held to the catalogue (``catalogue_worker``), the work
horse it keeps for job after job (``horse``), a job's steps in Redis (``job_steps``), the pool of
worker processes a consumer runs (``pool``) and where tasks' progress is stored (``progress``).

Nothing is imported here, so that ``workqueue.worker.job_steps`` or ``pool`` can be imported alone.
"""
