"""The control endpoint of a running job: savepoint and stop requests over local HTTP, and stopping
on SIGTERM and Ctrl-C."""
