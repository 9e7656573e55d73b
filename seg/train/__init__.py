"""seg-train: the run plan (which folder, what to resume), building a run, the epoch loop, resume."""
