"""Host side of the LIV plate link: wire protocol, device client, transports, simulated device."""
