"""pyserial URL handlers: ``serial.protocol_handler_packages`` entry for sim://."""
