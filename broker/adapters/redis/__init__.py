"""Redis I/O (L2): the grant store, its key layout and Lua scripts, and the other Redis stores."""
