"""Identity, the pure part: signature rules, the registry, answers, inventory, token claims."""
