"""The ``qtorch`` command: ``qtorch formats`` and ``qtorch demo`` (see ``qtorch --help``)."""
