"""Running a job: the restart loop, the coordinator's shell that executes what the checkpoint
protocol decides, the job's status and progress, and the result of a run."""
