"""papermill runner, scheduler, executors (local, Dask) and MLflow glue for the improvement loop."""
