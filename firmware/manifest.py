# Freeze or install the sensor-node package, micropython-lib style:
#   mpremote mip install <this folder>, or include("<this folder>/manifest.py") in a board manifest.
metadata(description="Sensor-node side of leaf's serial wire format (COBS + CBOR + CRC-16).",
         version="0.1.0")

package("leaf_sensor")
