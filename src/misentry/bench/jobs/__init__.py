"""The benchmark's jobs: the content-addressed job graph (:mod:`.graph`), the task an executor
runs (:mod:`.task`), the executors (:mod:`.executors`, :mod:`.ray_executor`) and the runner's
job functions (:mod:`.tasks`)."""
