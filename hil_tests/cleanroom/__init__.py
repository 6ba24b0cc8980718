"""A second plate firmware, written from docs/protocol.md alone (a contract check).

`device.py` implements the device side of protocol 2.1 without importing anything from
`firmware_bridge`, `controller` or `sessions`, so that the host and the qualification suite can be
run against a device whose authors never saw the reference implementation.
"""
