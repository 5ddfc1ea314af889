"""Unit tests of the documentation: the README, the docs site and its generated pages."""
