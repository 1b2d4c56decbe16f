"""The evaluator: data set loaders (``knowedit``), ``cases``, ``metrics``, the ``runner``,
``report`` writing, and the ``memedit eval`` command (``cli``)."""
