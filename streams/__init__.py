"""Stream processors (faust): decode at the edge, call the core, publish what it returns.

Nothing imports this package.
"""
