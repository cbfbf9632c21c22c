"""The job engine.

- ``job``: the job record and its typed parts (``JobStatus``, ``Avatar``, ``JobError``,
  ``JobProgress``; the crop is ``photos.geometry.Crop``).
- ``records``: the store of job records, which is also the service's own queue
  (``migrations`` versions its schema).
- ``engine``: the public face (submit, get, wait, cancel, preview).
- ``dispatcher``: one worker per ComfyUI server pulls jobs when its server has a free slot;
  server health and failover (``servers``), estimated starts (``estimates``).
- ``prompt``: the prompt's life on one server, a small state machine fed by typed events.
- ``results``: fetching and saving a finished prompt's images.
- ``outcomes``: the one mapping of ComfyUI outcomes to job results and error codes.
- ``ledger``: every state change of a job, written then published.
"""

from __future__ import annotations

from .engine import GenerateRequest, JobEngine
from .job import Avatar, Job, JobError, JobProgress, JobStatus
from .records import JobRecords

__all__ = [
    "Avatar",
    "GenerateRequest",
    "Job",
    "JobEngine",
    "JobError",
    "JobProgress",
    "JobRecords",
    "JobStatus",
]
