"""What a run shows a person: TensorBoard scalars and overlays, PNG overlays, console lines."""
