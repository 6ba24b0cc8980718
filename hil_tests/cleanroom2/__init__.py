"""A second clean-room plate firmware, written from docs/protocol.md alone (see device.py)."""
