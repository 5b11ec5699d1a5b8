"""The measure layer: one cell, from a resolved spec to a finished cell folder (docs/architecture.md).

``cell`` runs it (launch, telemetry, load, teardown, summary), ``cli`` is ``kvharness cell``, ``guard``
keeps a cell's processes from outliving it, ``validity`` judges the finished folder, ``uwork`` reads the
U_work result a cell may run at.
"""
