"""Canonical preference pairs from any input: readers for every file kind (``readers``), the
per-row formats and flags (``formats``), named datasets and where they are found (``sources``),
``load_pairs`` and the canonical schema (``pairs``), and dataset summaries (``describe``)."""
