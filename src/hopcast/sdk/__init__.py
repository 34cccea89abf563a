"""The device SDK: a sans-I/O protocol core (protocol.py) and the clients built on it."""
