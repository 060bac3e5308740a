# Freeze or install the sensor-node package, micropython-lib style:
#   mpremote mip install <this folder>, or include("<this folder>/manifest.py") in a board manifest.
# main.py (the Pico example) is not frozen: copy it to the board with mpremote cp.
metadata(description="Sensor-node side of leaf's serial wire format (COBS + CBOR + CRC-16), "
                     "with the node application and sensor drivers.",
         version="0.1.0")

package("leaf_sensor", files=(
    "__init__.py",
    "wire.py",
    "cbor.py",
    "cobs.py",
    "crc16.py",
    "frame.py",
    "decoder.py",
    "ticks.py",
    "resend.py",
    "app.py",
    "board.py",
    "drivers/__init__.py",
    "drivers/bme280.py",
    "drivers/ds18b20.py",
))
