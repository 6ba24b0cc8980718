"""Simulated LIV plate: firmware behaviour, plate physics and accelerometer model."""
