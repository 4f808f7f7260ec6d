"""The benchmark's jobs: the content-addressed job graph, the executors and the job functions."""
