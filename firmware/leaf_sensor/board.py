# Pins of board profile pico (leaf/boards/pico.toml): Raspberry Pi Pico, RP2040, MicroPython rp2.
# Written by hand to match that file; tools/render_board.py renders the same names from any
# microcontroller profile, and flashing copies its output over this file.

try:
    from micropython import const
except ImportError:  # CPython
    const = lambda x: x  # noqa: E731 (for mypy a def would have to match the stub)

BOARD = "pico"
CHIP = "RP2040"

UART_ID = const(0)  # the link to the gateway
UART_TX = const(0)  # GP0, pin 1
UART_RX = const(1)  # GP1, pin 2
BAUD = const(115200)  # UART_ID's baud rate

I2C_ID = const(0)  # sensor bus (BME280 at 0x76/0x77)
I2C_SDA = const(4)  # GP4, pin 6
I2C_SCL = const(5)  # GP5, pin 7
I2C_FREQ = const(400000)

ONEWIRE_PIN = const(22)  # GP22, pin 29 (DS18B20, 4.7 kOhm pull-up to 3V3)

RESERVED_PINS = (23, 24, 25, 29)
