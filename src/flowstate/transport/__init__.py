"""Moving items between tasks: the ports a task sees (``ports``), in-process channels and wiring
(``channels``), and channels between processes (``remote``, over the frames of ``frames``)."""
