/*
 * Kiln: fleet machines are headless. stage1's messages (the host's name and
 * the address it configures) also go to the first serial port, where
 * serial-over-LAN and boot tests read them.
 */
#if ! defined ( SERIAL_NULL )
#define CONSOLE_SERIAL
#endif
