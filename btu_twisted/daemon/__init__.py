"""The running daemon: the service that starts its parts in order, the socket the
BTU app talks to, and one service per site of a bench.

May import every other room; nothing but ``tap`` imports it.
"""
