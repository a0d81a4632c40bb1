"""The job engine: states, tasks, the job store, retries and the worker."""
