# Sensor node for a Raspberry Pi Pico: a BME280 on I2C0 (GP4/GP5) read every 5 s, readings
# sent to the gateway on UART0 (GP0/GP1, 115200 baud) in leaf's wire format (WIRE.md).
# Copy it to the board's root as main.py, next to the leaf_sensor package:
#   mpremote mip install firmware/   then   mpremote cp firmware/main.py :main.py
# The pins come from leaf_sensor/board.py (rendered from leaf/boards/pico.toml).
# While a file named leaf_hold exists on the board, main.py does not start (nor its
# watchdog), so the board stays at the REPL for maintenance: tools/flash.py creates it
# before copying and removes it after.
import os

from machine import I2C, UART, Pin

from leaf_sensor import board
from leaf_sensor.app import SensorNode
from leaf_sensor.drivers.bme280 import BME280

DEVICE = "pico1"  # 1-32 of A-Z a-z 0-9 _ - : becomes a subject token on the gateway
PERIOD_MS = 5000
WATCHDOG_MS = 8000  # the RP2040's longest watchdog timeout is about 8.3 s
HOLD = "leaf_hold"


def main() -> None:
    uart = UART(board.UART_ID, baudrate=board.BAUD, tx=Pin(board.UART_TX),
                rx=Pin(board.UART_RX))
    i2c = I2C(board.I2C_ID, sda=Pin(board.I2C_SDA), scl=Pin(board.I2C_SCL),
              freq=board.I2C_FREQ)
    node = SensorNode(uart, DEVICE, [BME280(i2c)], PERIOD_MS, watchdog_ms=WATCHDOG_MS)
    led = Pin("LED", Pin.OUT)
    node.on_command("led", lambda args: led.value(1 if args.get("on") else 0))
    node.run()


def held() -> bool:
    try:
        os.stat(HOLD)
        return True
    except OSError:
        return False


if held():
    print("leaf sensor: held by the file", HOLD, "- remove it and reset to run")
else:
    main()
