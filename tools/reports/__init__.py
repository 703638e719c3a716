"""What optc shows about a model: inspection tables and diffs, ``--compare``, graph
pictures and the ``optc report`` HTML page (and screenshots of them)."""
