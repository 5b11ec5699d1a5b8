"""The plan layer: config files -> validated config -> one resolved spec per cell (docs/architecture.md).

``config`` loads and checks the workflow config and the stack files and expands hypotheses into cells;
``axes`` declares the sweep axes; ``pressure`` and ``workingset`` size a cell's pressure load and working
set; ``estimate`` is ``kvharness plan`` (cells and expected wall time). Defaults with readers outside this
layer live below it: engine/simulator defaults in ``kvharness.defaults``, the load's in the load
generator's own spec table (``kvharness.loadgen.spec``).
"""
