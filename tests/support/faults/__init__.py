"""Support of the fault suite: private stacks, clusters, workers, the property model, the report."""
