"""What every zoo test runs inside: the network guard (offline, always) and the state-leak guard."""
