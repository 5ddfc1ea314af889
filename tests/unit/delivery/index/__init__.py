"""Unit tests of the grant view's index: its model, compact grants, baselines, the fold."""
