"""The resource-service SDK: the local grant view, enforcement helpers, tokens, budgets."""
