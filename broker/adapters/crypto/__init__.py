"""Cryptography I/O (L2): JOSE keys and signatures, JWE, key files, tokens, enrollment."""
