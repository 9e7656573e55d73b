"""What a run shows a person: TensorBoard scalars and overlays, PNG overlays, console lines, and an optional
MLflow run beside TensorBoard (logger=mlflow)."""
