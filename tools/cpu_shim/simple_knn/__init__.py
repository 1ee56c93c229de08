"""CPU stand-in for 3DGS's simple_knn extension (see tools/cpu_shim/run.py)."""
