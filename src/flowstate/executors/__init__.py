"""Where the tasks of an attempt run: the ``Executor`` port (``base``), threads of this process
(``threads``), worker processes (``processes``, started by ``forkserver`` or as fresh interpreters
through ``start``, each running ``worker``, speaking ``protocol``) and Ray actors (``ray_cluster``)."""
